"""The command that made the shipped default backbone (`src/vfmxai/backbones/default/`).

    python scripts/pretrain_default_backbone.py --seed 0     (writes src/vfmxai/backbones/default/)

A CLIP-architecture ViT (width 192, 6 blocks, 3 heads, patch 8, QuickGELU, 64×64 input) is trained
from scratch, every weight, on the synthetic *pretrain* task (cross/frame/triangle/star × dots/grid, a
class set disjoint from the demo's disc/ring/bar × stripes/checker), so the demo starts from pretrained
features that were never shown its classes, as the paper starts from CLIP.

Objective: cross-entropy of the image class from the layer-normed mean of the last patch tokens, plus
cross-entropy of a per-patch label (the object's class where the patch is mostly object, else
background) from each last patch token. A ViT trained from scratch on a few thousand images gets one
bit of signal per image from the class alone and barely leaves chance in the ~1000 steps a CPU allows;
the per-patch term gives it 64 labels per image (as dense pretraining does) and it learns in minutes.
Both heads are discarded. Only the encoder is saved (`config.json` +
`model.safetensors`, float32); the head is discarded. Deterministic from `--seed` on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from vfmxai.backbones.base import Backbone
from vfmxai.backbones.loading import CLIP_MEAN, CLIP_STD, DEFAULT_DIR
from vfmxai.data.synthetic import SyntheticDataset, class_names
from vfmxai.data.transforms import augment
from vfmxai.io import atomic_write_text


class PretrainHeads(torch.nn.Module):
    """Image-class logits from the normed mean patch token, per-patch logits (background + classes) per token."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.norm = torch.nn.LayerNorm(backbone.hidden_size)
        self.image_head = torch.nn.Linear(backbone.hidden_size, num_classes)
        self.patch_head = torch.nn.Linear(backbone.hidden_size, num_classes + 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = self.norm(self.backbone(images).hidden_states[-1][:, self.backbone.num_prefix_tokens :])
        return self.image_head(patches.mean(dim=1)), self.patch_head(patches)


def patch_labels(masks: torch.Tensor, labels: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, N) per-patch targets: label + 1 where more than half of the patch is object, else 0."""
    cover = F.avg_pool2d(masks[:, None].float(), patch).flatten(1)
    return torch.where(cover > 0.5, labels[:, None] + 1, torch.zeros_like(labels[:, None]))


def default_backbone_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=192,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=3,
        image_size=64,
        patch_size=8,
        hidden_act="quick_gelu",
    )


def pretrain(
    out: Path, seed: int = 0, n_train: int = 4000, n_val: int = 400, steps: int = 1200, batch_size: int = 64
) -> dict:
    torch.manual_seed(seed)
    config = default_backbone_config()
    backbone = Backbone(CLIPVisionModel(config), "clip", config.image_size, CLIP_MEAN, CLIP_STD, "default")
    train_images, train_masks, train_labels = SyntheticDataset("train", n_train, 64, seed, task="pretrain").tensors()
    val_images, _, val_labels = SyntheticDataset("val", n_val, 64, seed, task="pretrain").tensors()
    model = PretrainHeads(backbone, int(train_labels.max()) + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    warmup = max(1, steps // 12)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_train, generator=generator)
    history = []
    start = time.time()
    for step in range(1, steps + 1):
        offset = (step - 1) * batch_size % n_train
        if offset + batch_size > n_train:
            order, offset = torch.randperm(n_train, generator=generator), 0
        index = order[offset : offset + batch_size]
        model.train()
        stacked = torch.cat([train_images[index], train_masks[index, None].float()], dim=1)
        stacked = augment(stacked, generator, flip=True, crop_scale=0.85)
        images, masks = stacked[:, :3], stacked[:, 3] > 0.5
        image_logits, token_logits = model(images)
        targets = patch_labels(masks, train_labels[index], config.patch_size)
        loss = F.cross_entropy(image_logits, train_labels[index]) + F.cross_entropy(token_logits.flatten(0, 1),
                                                                                     targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                accuracy = (model(val_images)[0].argmax(1) == val_labels).float().mean().item()
            history.append({"step": step, "train_loss": round(loss.item(), 4), "val_accuracy": round(accuracy, 4)})
            seconds = time.time() - start
            print(f"step {step}/{steps}: loss {loss.item():.3f}, val acc {accuracy:.3f}, {seconds:.0f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    backbone.model.save_pretrained(out, safe_serialization=True)
    record = {
        "command": f"python scripts/pretrain_default_backbone.py --out {out} --seed {seed}",
        "task": "synthetic pretrain task (classes disjoint from the demo's): " + ", ".join(class_names("pretrain")),
        "objective": "CE(image class | mean patch token) + CE(per-patch class or background | patch token)",
        "chance_accuracy": 1 / (int(train_labels.max()) + 1),
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "steps": steps,
        "batch_size": batch_size,
        "optimizer": "AdamW lr 5e-4, weight decay 0.05, linear warm-up over 1/12 of the steps, cosine decay, "
        "grad clip 1.0",
        "history": history,
        "seconds": round(time.time() - start),
    }
    atomic_write_text(out / "pretraining.json", json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--n-train", type=int, default=4000)
    args = parser.parse_args()
    pretrain(args.out, args.seed, n_train=args.n_train, steps=args.steps)


if __name__ == "__main__":
    main()
