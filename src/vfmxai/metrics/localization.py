"""Localisation metrics: a map against a binary object mask (mIoU and the pointing games of the ALA paper,
TorchRay's pointing-game tolerance, and Arras et al.'s relevance mass and rank accuracy).

Common preprocessing, the same for every method: the map (B, h, w) is resized bilinearly to the mask's
size (B, H, W) and min-max normalised per image with `vfmxai.maps` (a constant map becomes all zeros).
`normalize=False` skips the min-max step for maps already on the [0, 1] scale the threshold refers to.

Choices the paper leaves open (also in docs/design-notes.md, Metrics):
- Binarisation is `map >= tau`. With min-max normalisation the map's maximum is exactly 1, so `>=` keeps
  the peak even at tau = 1, and an all-ones map taken as is (`normalize=False`) marks every pixel as
  object; it also matches the mask convention "object = value >= 128".
- IoU of two empty sets (empty mask, empty prediction) is 1.0: the prediction agrees with the mask
  exactly (the Jaccard convention J(∅, ∅) = 1, as scipy's jaccard distance 0). It can only arise with an
  empty mask, which the data checks flag; in the dataset-level IoU such an image adds 0 to both sums.
- Masks are bool or numeric with values in {0, 1}; soft masks must be thresholded by the data module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vfmxai.errors import VfmxaiError
from vfmxai.maps import normalize_maps, resize_maps
from vfmxai.metrics.perturbation import pixel_ranks


def default_thresholds(device: torch.device | str | None = None) -> Tensor:
    """The oracle's grid: tau = 0.05, 0.10, ..., 0.95 (19 values)."""
    return torch.arange(1, 20, device=device, dtype=torch.float32) / 20


def prepare(maps: Tensor, masks: Tensor, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """Checked (maps resized to the masks and normalised (B, H, W) float, masks (B, H, W) bool)."""
    if not isinstance(masks, Tensor) or masks.dim() != 3:
        raise VfmxaiError(f"masks must be a (B, H, W) tensor, got {_shape(masks)}")
    if not isinstance(maps, Tensor) or maps.dim() != 3 or maps.shape[0] != masks.shape[0]:
        raise VfmxaiError(f"maps must be a (B, h, w) tensor with B = {masks.shape[0]} as the masks, got {_shape(maps)}")
    if masks.dtype != torch.bool:
        if not ((masks == 0) | (masks == 1)).all():
            raise VfmxaiError("masks must be binary (bool or values in {0, 1}); threshold soft masks first")
        masks = masks != 0
    maps = maps.to(masks.device).float()
    if not torch.isfinite(maps).all():
        raise VfmxaiError("maps contain NaN or infinite values")
    maps = resize_maps(maps, tuple(masks.shape[-2:]))
    return (normalize_maps(maps) if normalize else maps), masks


def iou_counts(maps: Tensor, masks: Tensor, threshold: float = 0.5, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """Per-image (intersection (B,), union (B,)) pixel counts (int64) of `map >= threshold` and the mask."""
    _check_threshold(threshold)
    maps, masks = prepare(maps, masks, normalize)
    pred = maps >= threshold
    return (pred & masks).flatten(1).sum(1), (pred | masks).flatten(1).sum(1)


def mean_iou(maps: Tensor, masks: Tensor, threshold: float = 0.5, normalize: bool = True) -> Tensor:
    """Per-image IoU (B,); the paper's mean IoU is its mean over the dataset."""
    inter, union = iou_counts(maps, masks, threshold, normalize)
    return _ratio(inter, union)


def dataset_iou(intersections: Tensor | Sequence[Tensor], unions: Tensor | Sequence[Tensor]) -> float:
    """Dataset-level IoU = sum I / sum U over every image (counts from `iou_counts`, one tensor or a list of batches).

    Pixels of large images weigh more than in the per-image mean. All unions empty -> 1.0 (see module doc).
    """
    inter, union = _cat(intersections, "intersections"), _cat(unions, "unions")
    if inter.shape != union.shape:
        raise VfmxaiError(f"intersections {tuple(inter.shape)} and unions {tuple(union.shape)} differ in shape")
    total_i, total_u = inter.double().sum(), union.double().sum()
    return 1.0 if total_u == 0 else float(total_i / total_u)


def iou_curve(
    maps: Tensor, masks: Tensor, thresholds: Tensor | Sequence[float] | None = None, normalize: bool = True
) -> Tensor:
    """Per-image IoU (B, T) at every threshold of a grid (default `default_thresholds()`).

    Vectorised over thresholds without a (B, T, H*W) tensor: each image's map values (all pixels, and the
    object pixels alone) are sorted once, and the number of values >= tau is read off with searchsorted.
    The counts are exactly those of `iou_counts` at each tau.
    """
    maps, masks = prepare(maps, masks, normalize)
    flat, obj = maps.flatten(1), masks.flatten(1)
    taus = _thresholds(thresholds, maps.device).expand(flat.shape[0], -1).contiguous()
    n_pix = flat.shape[1]
    object_values = torch.where(obj, flat, float("-inf"))  # background pixels sort below every tau
    pred_count = n_pix - torch.searchsorted(flat.sort(dim=1).values, taus)
    inter = n_pix - torch.searchsorted(object_values.sort(dim=1).values, taus)
    union = obj.sum(1, keepdim=True) + pred_count - inter
    return _ratio(inter, union)


def best_tau_iou(curves: Tensor, thresholds: Tensor | Sequence[float] | None = None) -> tuple[float, float]:
    """Best-tau oracle (value, tau): max over tau of the mean over images of `iou_curve` rows (N, T).

    One tau for the whole dataset, chosen on the very images it is scored on, so it is an upper bound on
    what any fixed threshold achieves, not a held-out score. Ties go to the smallest tau.
    """
    if not isinstance(curves, Tensor) or curves.dim() != 2 or curves.shape[0] == 0:
        raise VfmxaiError(f"curves must be a non-empty (N, T) tensor from iou_curve, got {_shape(curves)}")
    taus = _thresholds(thresholds, curves.device)
    if taus.numel() != curves.shape[1]:
        raise VfmxaiError(f"curves have {curves.shape[1]} thresholds but {taus.numel()} were given")
    means = curves.double().mean(dim=0)
    best = int(means.argmax())
    return float(means[best]), float(taus[best])


def pointing_game(maps: Tensor, masks: Tensor, tolerance: float = 0) -> Tensor:
    """Per-image hit (B,) float: 1.0 if the map's maximum (after resizing) lies inside the mask, or, with
    `tolerance` t > 0 (pixels of the mask), if some object pixel lies at Euclidean distance < t from it
    (TorchRay's acceptance disc, `dy^2 + dx^2 < t^2`; TorchRay's benchmark uses t = 15).

    Ties: the first maximum in raster order counts (deterministic). Counting a hit when ANY maximal pixel
    is inside would give a flat (uninformative) map a hit on every image with an object; with the raster
    rule a constant map scores by its top-left pixel, usually background.
    """
    if not float(tolerance) >= 0:
        raise VfmxaiError(f"pointing game: tolerance must be a number >= 0 (pixels), got {tolerance}")
    maps, masks = prepare(maps, masks, normalize=False)
    height, width = masks.shape[-2:]
    peak = maps.flatten(1).argmax(dim=1)
    reach = math.ceil(tolerance)
    steps = torch.arange(-reach, reach + 1, device=masks.device)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    inside = (dy**2 + dx**2 < tolerance**2) | ((dy == 0) & (dx == 0))
    dy, dx = dy[inside], dx[inside]
    rows = (peak // width).unsqueeze(1) + dy + reach
    cols = (peak % width).unsqueeze(1) + dx + reach
    padded = F.pad(masks, (reach, reach, reach, reach))
    hits = padded[torch.arange(len(peak), device=masks.device).unsqueeze(1), rows, cols]
    return hits.any(dim=1).float()


def energy_pointing_game(maps: Tensor, masks: Tensor, normalize: bool = True) -> Tensor:
    """Per-image share (B,) of the (normalised) map's mass inside the mask: sum(map * mask) / sum(map).

    An all-zero map (e.g. a constant map after normalisation) has no mass and scores 0.
    """
    maps, masks = prepare(maps, masks, normalize)
    if not normalize and (maps < 0).any():
        raise VfmxaiError("energy pointing game with normalize=False needs non-negative maps")
    return _mass_inside(maps, masks)


def relevance_mass(maps: Tensor, masks: Tensor) -> Tensor:
    """Relevance mass accuracy (B,) (Arras et al., Information Fusion 2022, CLEVR-XAI): R_within / R_total,
    the share of the map's positive relevance inside the mask, the map resized to the mask and NOT min-max
    normalised (its own zero; negative relevance is left out). On a min-max normalised map this would be
    the energy pointing game. No positive relevance scores 0."""
    maps, masks = prepare(maps, masks, normalize=False)
    return _mass_inside(maps.clamp_min(0), masks)


def relevance_rank(maps: Tensor, masks: Tensor, tie_seed: int = 0) -> Tensor:
    """Relevance rank accuracy (B,) (Arras et al. 2022): with K = the mask's pixel count, the share of the
    map's top-K pixels (after resizing; ties by the seeded permutation of `pixel_ranks`) that lie inside
    the mask. An empty mask scores 0 (the evaluation leaves such images out)."""
    maps, masks = prepare(maps, masks, normalize=False)
    flat = masks.flatten(1)
    size = flat.sum(1, keepdim=True)
    top = pixel_ranks(maps, tie_seed) < size
    hits = (top & flat).sum(1)
    return torch.where(size.squeeze(1) > 0, hits / size.squeeze(1).clamp_min(1), 0.0).float()


def _mass_inside(maps: Tensor, masks: Tensor) -> Tensor:
    """sum(map * mask) / sum(map) per image (B,), 0 where the map has no mass."""
    flat = maps.flatten(1)
    total = flat.sum(1)
    inside = (flat * masks.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(total))


def _ratio(inter: Tensor, union: Tensor) -> Tensor:
    """I / U as float, 1.0 where the union is empty (both sets empty)."""
    return torch.where(union > 0, inter.float() / union.clamp_min(1).float(), torch.ones_like(inter, dtype=torch.float))


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= float(threshold) <= 1.0:
        raise VfmxaiError(f"threshold must be in [0, 1], got {threshold}")


def _thresholds(thresholds: Tensor | Sequence[float] | None, device: torch.device) -> Tensor:
    if thresholds is None:
        return default_thresholds(device)
    taus = torch.as_tensor(thresholds, dtype=torch.float32, device=device).flatten()
    if taus.numel() == 0 or not ((taus >= 0) & (taus <= 1)).all():
        raise VfmxaiError(f"thresholds must be a non-empty list of values in [0, 1], got {taus.tolist()}")
    return taus


def _cat(parts: Tensor | Sequence[Tensor], name: str) -> Tensor:
    if isinstance(parts, Tensor):
        return parts.flatten()
    if len(parts) == 0:
        raise VfmxaiError(f"{name}: no counts given")
    return torch.cat([torch.as_tensor(p).flatten().cpu() for p in parts])


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
