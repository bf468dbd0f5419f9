"""Tiny models shared by the explainer tests (gradient/CAM/RISE and the attention-based methods).

- `tiny_probe()`: a `LinearProbe` on the random `tiny` CLIP backbone (4 blocks, width 32, 32 px, 4x4 patches).
- `planted_images(n, seed)`: images whose class is decided by ONE region only. A 16x16 square (2x2 patches,
  aligned to the 8-px patch grid, at one of 9 positions) holds high-contrast stripes: horizontal for
  class 0, vertical for class 1; everything else is colour noise that carries no class signal. The
  region's mask is returned, so a method's map can be scored against the evidence.
- `planted_classifier()`: a `LinearProbe` on the tiny backbone, trained end to end on `planted_images`
  (about a second on CPU, cached per process, deterministic, parameters frozen) to 100 % accuracy on
  fresh images.
- `mass_inside(maps, masks)`: each map's share of its mass inside the mask (chance = the mask's area, 1/4).
- `randomization_check(method, classifier, images)`: the model-randomisation sanity check (Adebayo et al.
  2018): mean Spearman rank correlation between a method's maps before and after re-initialising the head
  and the last blocks. A method that explains the model gives a low number; one that only reflects the
  image (an edge detector) stays near 1.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from vfmxai.backbones import load_backbone
from vfmxai.classifier import Classifier, LinearProbe
from vfmxai.explainers import get

IMAGE_SIZE = 32
OBJECT_SIZE = 16
POSITIONS = (0, 8, 16)


def tiny_probe(num_classes: int = 3, seed: int = 0) -> LinearProbe:
    """A LinearProbe on the random tiny CLIP backbone, head initialised from `seed`; eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(load_backbone("tiny", seed=seed), num_classes)
    return probe.eval()


def planted_images(n: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(images (n, 3, 32, 32) in [0, 1], labels (n,) in {0, 1}, masks (n, 32, 32) bool of the evidence)."""
    gen = torch.Generator().manual_seed(seed)
    images = (0.5 + 0.15 * torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)).clamp(0, 1)
    labels = torch.randint(0, 2, (n,), generator=gen)
    pos = torch.tensor(POSITIONS)
    rows = pos[torch.randint(0, len(POSITIONS), (n,), generator=gen)]
    cols = pos[torch.randint(0, len(POSITIONS), (n,), generator=gen)]
    stripes = (torch.arange(OBJECT_SIZE) // 2 % 2).float() * 0.9 + 0.05
    horizontal = stripes.view(-1, 1).expand(OBJECT_SIZE, OBJECT_SIZE)
    pattern = torch.stack([horizontal, horizontal.T])[labels]
    ys = torch.arange(IMAGE_SIZE)
    in_rows = (ys.view(1, -1) >= rows.view(-1, 1)) & (ys.view(1, -1) < rows.view(-1, 1) + OBJECT_SIZE)
    in_cols = (ys.view(1, -1) >= cols.view(-1, 1)) & (ys.view(1, -1) < cols.view(-1, 1) + OBJECT_SIZE)
    masks = in_rows.unsqueeze(2) & in_cols.unsqueeze(1)
    placed = torch.zeros(n, IMAGE_SIZE, IMAGE_SIZE)
    placed[masks] = pattern.flatten()
    images = torch.where(masks.unsqueeze(1), placed.unsqueeze(1).expand_as(images), images)
    return images, labels, masks


@functools.cache
def planted_classifier(seed: int = 0, steps: int = 100) -> LinearProbe:
    """A LinearProbe (tiny backbone, all weights trained) classifying `planted_images` by the striped square.

    Cached: every test in the process shares one trained model. Do not modify it in place; deep-copy first.
    """
    model = tiny_probe(num_classes=2, seed=seed).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            images, labels, _ = planted_images(64, seed=10_000 * (seed + 1) + step)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval().requires_grad_(False)


def accuracy(model: torch.nn.Module, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(dim=1) == labels).float().mean().item()


def mass_inside(maps: Tensor, masks: Tensor) -> Tensor:
    """(B, H, W) non-negative maps, (B, H, W) bool masks -> (B,) share of each map's mass inside its mask."""
    maps = maps.clamp_min(0).flatten(1)
    return (maps * masks.flatten(1)).sum(1) / maps.sum(1).clamp_min(1e-12)


def randomized_copy(classifier: Classifier, n_blocks: int = 2, seed: int = 0) -> Classifier:
    """A deep copy with the head and last `n_blocks` blocks re-initialised (cascading randomisation)."""
    model = copy.deepcopy(classifier)
    blocks = list(model.backbone.blocks)[-n_blocks:] if n_blocks else []
    heads = [m for name, m in model.named_children() if name != "backbone"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part in heads + blocks:
            for module in part.modules():
                if isinstance(module, nn.Linear | nn.LayerNorm | nn.Conv2d):
                    module.reset_parameters()
    return model.eval()


def randomization_check(method: str, classifier: Classifier, images: Tensor, n_blocks: int = 2, **options) -> float:
    """Mean over images of the Spearman rank correlation between `method`'s maps on `classifier` and on
    its `randomized_copy` (same targets: the original model's predictions). A constant map has no ranks:
    its correlation counts as 0."""
    with torch.no_grad():
        targets = classifier(images).argmax(dim=1)
    with get(method, classifier, **options) as explainer:
        before = explainer(images, targets)
    with get(method, randomized_copy(classifier, n_blocks), **options) as explainer:
        after = explainer(images, targets)
    pairs = zip(before.flatten(1).numpy(), after.flatten(1).numpy(), strict=True)
    rhos = [spearmanr(a, b).statistic for a, b in pairs]
    return float(np.nan_to_num(np.asarray(rhos, dtype=float), nan=0.0).mean())
