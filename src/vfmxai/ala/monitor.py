"""The health of ALA's map while and after it trains: per-image statistics and the degenerate-map verdict.

A map that collapses (constant, all on, a frame along the border) still lets the perception branch
classify, so accuracy alone does not show it. These statistics do; training logs their epoch means in
`log.csv` and `check_map` judges the trained map on the validation split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from vfmxai.metrics.localization import mean_iou, pointing_game

MAP_THRESHOLD = 0.5
"""`area` counts grid cells with alpha >= this raw (unnormalised) sigmoid value."""

FLAT_SPREAD = 0.02
"""A map whose mean within-image standard deviation of alpha is below this is called nearly constant."""


def map_statistics(alpha: Tensor) -> dict[str, Tensor]:
    """Per-image statistics (B,) of raw maps alpha (B, G, G) in [0, 1].

    - `area`: share of cells with alpha >= MAP_THRESHOLD;
    - `mean`, `spread`: mean and standard deviation of alpha within the image;
    - `entropy`: Shannon entropy of alpha / sum(alpha) over the cells, divided by log(G·G), so 1 is a
      uniform map and 0 a single lit cell;
    - `border`: mean alpha on the outermost ring of cells minus the mean inside it (> 0: a frame).
    """
    flat = alpha.flatten(1).float()
    mass = flat / flat.sum(1, keepdim=True).clamp_min(1e-12)
    entropy = -(mass * mass.clamp_min(1e-12).log()).sum(1) / math.log(flat.shape[1])
    ring = torch.ones_like(alpha[0], dtype=torch.bool)
    if min(alpha.shape[-2:]) > 2:
        ring[1:-1, 1:-1] = False
    border = alpha[:, ring].float().mean(1) - (alpha[:, ~ring].float().mean(1) if (~ring).any() else 0.0)
    return {
        "area": (flat >= MAP_THRESHOLD).float().mean(1),
        "mean": flat.mean(1),
        "spread": flat.std(1, correction=0),
        "entropy": entropy,
        "border": border,
    }


def localisation_statistics(alpha: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """Per-image (B,) pointing game, IoU at tau 0.5 after min-max normalisation, and the mask's share of the
    image (the pointing game's chance level for a map that ignores the image)."""
    return {
        "pg": pointing_game(alpha, masks),
        "iou": mean_iou(alpha, masks),
        "mask_share": masks.flatten(1).float().mean(1),
    }


@dataclass(frozen=True)
class MapCheck:
    """`check_map`'s verdict on a trained map over the validation split (written to `map_check.json`)."""

    n_images: int
    n_with_mask: int
    spread: float
    border: float
    pointing_game: float | None
    chance: float | None
    problems: tuple[str, ...]

    @property
    def degenerate(self) -> bool:
        return bool(self.problems)

    def to_dict(self) -> dict:
        return {**asdict(self), "problems": list(self.problems), "degenerate": self.degenerate}


def check_map(alpha: Tensor, masks: Tensor, has_mask: Tensor) -> MapCheck:
    """Judge maps (N, G, G) of the validation split: nearly constant (mean spread < FLAT_SPREAD), or, where
    masks exist, a pointing game not above chance: at most chance + 1.645·sqrt(chance·(1−chance)/n), the
    one-sided 95 % bound for n images hit at the mask's mean share of the image."""
    stats = map_statistics(alpha)
    spread, border = float(stats["spread"].mean()), float(stats["border"].mean())
    problems = []
    if spread < FLAT_SPREAD:
        problems.append(f"nearly constant (mean within-image spread of alpha {spread:.4f} < {FLAT_SPREAD})")
    pg = chance = None
    n_mask = int(has_mask.sum())
    if n_mask:
        loc = localisation_statistics(alpha[has_mask], masks[has_mask])
        pg, chance = float(loc["pg"].mean()), float(loc["mask_share"].mean())
        bound = chance + 1.645 * math.sqrt(chance * (1 - chance) / n_mask)
        if pg <= bound:
            problems.append(
                f"pointing game {pg:.3f} on {n_mask} validation image(s) is not above chance "
                f"({chance:.3f}, 95 % bound {bound:.3f})"
            )
    return MapCheck(len(alpha), n_mask, spread, border, pg, chance, tuple(problems))
