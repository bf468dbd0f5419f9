"""Map post-processing shared by explainers and metrics: resize to the image, min-max normalise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, h, w) -> (B, H, W), bilinear (DESIGN §4)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False).squeeze(1)


def normalize_maps(maps: Tensor) -> Tensor:
    """Per-image min-max to [0, 1]; a constant map becomes all zeros instead of dividing by zero."""
    flat = maps.flatten(1).float()
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    out = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.view_as(maps)
