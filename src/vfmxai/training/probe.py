"""`fit_probe(config, out)`: a linear probe on a frozen backbone, the run folder every post-hoc method explains.

logits = W · pooled(h^(k)) + b (`vfmxai.classifier.LinearProbe`). The backbone is frozen, so its pooled
embeddings of the train and validation images are computed once (no augmentation) and the head is fitted on
them full-batch with AdamW for `train.epochs` steps at `train.lr`, weight decay `train.weight_decay`; the
weights kept are the last step's. Deterministic given the config. The run folder has the files of an ALA run
except `last.ckpt` and `map_check.json`: a fit takes seconds, so an interrupted one is started again.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vfmxai.backbones import load_backbone
from vfmxai.checkpoint import save_weights
from vfmxai.classifier import LinearProbe
from vfmxai.config import RunConfig
from vfmxai.data import collate
from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write_text
from vfmxai.run_folder import CONFIG, LOG, WEIGHTS, write_run_files

PROBE_LOG_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")


def fit_probe(config: RunConfig, out: str | Path, splits: dict[str, Dataset]) -> LinearProbe:
    run_dir = Path(out)
    if (run_dir / WEIGHTS).exists() or (run_dir / CONFIG).exists():
        raise VfmxaiError(f"--out {run_dir}: already holds a run; choose another folder")
    tc = config.train
    if not isinstance(tc.epochs, int) or tc.epochs < 1:
        raise VfmxaiError(f"train.epochs={tc.epochs}: a probe needs at least one step")
    torch.manual_seed(tc.seed)
    backbone = load_backbone(config.backbone.name, config.backbone.image_size, seed=tc.seed)
    backbone.requires_grad_(False)
    model = LinearProbe(backbone, splits["train"].num_classes).eval()
    features = {split: _embed(backbone, data, tc.batch_size) for split, data in splits.items()}
    head = model.head
    optimizer = torch.optim.AdamW(head.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    rows = []
    for epoch in range(1, tc.epochs + 1):
        x, y = features["train"]
        loss = F.cross_entropy(head(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rows.append([epoch, *_scores(head, *features["train"]), *_scores(head, *features["val"])])
    config.model.num_classes = model.num_classes
    write_run_files(run_dir, config, splits["train"].class_names)
    lines = [",".join(PROBE_LOG_COLUMNS), *(f"{r[0]}," + ",".join(f"{v:.6f}" for v in r[1:]) for r in rows)]
    atomic_write_text(run_dir / LOG, "\n".join(lines) + "\n")
    save_weights(model, run_dir / WEIGHTS)
    return model


def _embed(backbone, dataset: Dataset, batch_size: int) -> tuple[Tensor, Tensor]:
    """(pooled embeddings (N, D), labels (N,)) of a split, in one no-grad pass."""
    pooled, labels = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            pooled.append(backbone.embedding(batch["image"]))
            labels.append(batch["label"])
    if not pooled:
        return torch.zeros(0, backbone.hidden_size), torch.zeros(0, dtype=torch.long)
    return torch.cat(pooled), torch.cat(labels).long()


def _scores(head: torch.nn.Linear, x: Tensor, y: Tensor) -> tuple[float, float]:
    if len(y) == 0:
        return math.nan, math.nan
    with torch.no_grad():
        logits = head(x)
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
