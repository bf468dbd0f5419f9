"""How alike two maps of the same image are: Spearman's rank correlation, batched.

rho = Pearson correlation of the two maps' pixel ranks, equal values sharing the average of the ranks they
span (scipy.stats.spearmanr's convention). A constant map ranks no pixel above another, so its rho is NaN,
as scipy's; callers decide what that means (`vfmxai.evaluation.sanity`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vfmxai.errors import VfmxaiError


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..N along the last dimension of (B, N) values, ties given the mean of their ranks (float64; float32
    on MPS, which has no float64: exact up to 2^23 values)."""
    n = values.shape[-1]
    dtype = torch.float32 if values.device.type == "mps" else torch.float64
    ordered, order = values.sort(dim=-1, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.cumsum(dim=-1) - 1  # each sorted position's tie group, 0-based
    positions = torch.arange(n, device=values.device, dtype=dtype).expand(values.shape[0], n)
    first = torch.full(values.shape, float(n), dtype=dtype, device=values.device)
    last = torch.full(values.shape, -1.0, dtype=dtype, device=values.device)
    first = first.scatter_reduce(-1, group, positions, reduce="amin")
    last = last.scatter_reduce(-1, group, positions, reduce="amax")
    sorted_ranks = (first.gather(-1, group) + last.gather(-1, group)) / 2 + 1
    return torch.empty_like(sorted_ranks).scatter_(-1, order, sorted_ranks)


def spearman_correlation(maps_a: Tensor, maps_b: Tensor) -> Tensor:
    """Per image, Spearman's rho between maps (B, H, W) and (B, H, W) -> (B,) float32; NaN where either map is
    constant. Computed on the maps' device."""
    if maps_a.shape != maps_b.shape or maps_a.dim() < 2:
        raise VfmxaiError(
            f"spearman_correlation: maps must share one (B, H, W) shape, got {tuple(maps_a.shape)} and "
            f"{tuple(maps_b.shape)}"
        )
    ranks_a = average_ranks(maps_a.flatten(1).float())
    ranks_b = average_ranks(maps_b.flatten(1).float())
    centred_a = ranks_a - ranks_a.mean(dim=-1, keepdim=True)
    centred_b = ranks_b - ranks_b.mean(dim=-1, keepdim=True)
    spread = (centred_a.square().sum(-1) * centred_b.square().sum(-1)).sqrt()
    rho = (centred_a * centred_b).sum(-1) / spread
    return torch.where(spread > 0, rho, torch.nan).float()
