"""Classification accuracy of the model being explained."""

from __future__ import annotations

import torch
from torch import Tensor

from vfmxai.errors import VfmxaiError


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of rows whose argmax (first maximum on ties) equals the label."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] == 0:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise VfmxaiError(f"accuracy: logits must be a non-empty (N, C) tensor, got {shape}")
    labels = torch.as_tensor(labels, device=logits.device).long().flatten()
    if labels.numel() != logits.shape[0]:
        raise VfmxaiError(f"accuracy: {labels.numel()} labels for {logits.shape[0]} rows of logits")
    return float((logits.argmax(dim=1) == labels).double().mean())
