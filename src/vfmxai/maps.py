"""Map post-processing shared by explainers and metrics: resize to the image, min-max normalise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, h, w) -> (B, H, W), bilinear: the same resize for every method before it is scored."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False).squeeze(1)


ROUNDING_ULPS = 64
"""A map whose range is within this many float32 ulps of its largest magnitude is constant up to rounding."""


def normalize_maps(maps: Tensor) -> Tensor:
    """Per-image min-max to [0, 1]; a constant map becomes all zeros instead of dividing by zero.

    "Constant" includes constant up to rounding: bilinear resizing of a constant map leaves differences of
    a few ulps, which min-max would otherwise stretch into a full-range 0/1 pattern. So a map whose
    range is at most `ROUNDING_ULPS` float32 ulps of its largest |value| (relative 7.6e-6) becomes zeros.
    """
    flat = maps.flatten(1).float()
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    span = high - low
    noise = ROUNDING_ULPS * torch.finfo(flat.dtype).eps * torch.maximum(low.abs(), high.abs())
    out = torch.where(span > noise, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.view_as(maps)
