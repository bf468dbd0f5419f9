"""Robustness of a method: max- and average sensitivity (Yeh et al., NeurIPS 2019, "On the (in)fidelity and
sensitivity of explanations").

The explanation e is recomputed on `n_samples` perturbed images x' = x + u, u uniform in the L-infinity
ball of radius r (every channel and pixel of the [0, 1] image independently in [-r, r], not clipped;
Yeh et al.'s Monte-Carlo estimate), for the same target class. Per draw, the relative change is

    s(x') = ||e(x') - e(x)||_F / ||e(x)||_F      (Frobenius norm over the map's pixels),

and max-sensitivity = max over draws, average sensitivity = mean over draws (Yeh et al.'s SENS_MAX and,
normalised the same way, the average of Bhatt et al. 2020). 0/0 (a zero map that stays zero) counts 0;
a zero map that changes is NaN (no scale to be relative to). Lower is more stable. The draws come from
`seed` and are the same for every image, so a result does not depend on batching or sharding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from vfmxai.errors import VfmxaiError
from vfmxai.metrics.perturbation import check_images, check_samples

Explain = Callable[[Tensor, Tensor], Tensor]
"""(images (N, 3, H, W), targets (N,)) -> maps (N, h, w), e.g. an `Explainer` bound to its model."""


def sensitivity_ratios(
    explain: Explain,
    images: Tensor,
    targets: Tensor | Sequence[int],
    maps: Tensor | None = None,
    radius: float = 0.02,
    n_samples: int = 10,
    seed: int = 0,
    batch_size: int = 16,
) -> Tensor:
    """The relative changes s(x') (B, n_samples) of each image's map under each draw (module docstring).

    `maps`: e(x) when already computed (as `explain(images, targets)` returns it), else computed here.
    Explanations are made `batch_size` perturbed images at a time: B * n_samples of them (+ B without maps).
    """
    name = "sensitivity"
    check_images(name, images)
    check_samples(name, n_samples)
    if not float(radius) > 0:
        raise VfmxaiError(f"{name}: radius must be a positive number, got {radius}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise VfmxaiError(f"{name}: batch_size must be a positive integer, got {batch_size}")
    images = images.float()
    n_img = images.shape[0]
    targets = torch.as_tensor(targets, device=images.device).long().flatten()
    if targets.numel() != n_img:
        raise VfmxaiError(f"{name}: {targets.numel()} targets for {n_img} images")
    clean = (explain(images, targets) if maps is None else maps).detach().float().to(images.device)
    generator = torch.Generator().manual_seed(int(seed))
    noise = ((torch.rand((n_samples, *images.shape[1:]), generator=generator) * 2 - 1) * float(radius))
    noise = noise.to(images.device)
    changes = torch.empty(n_img * n_samples, device=images.device)
    for start in range(0, n_img * n_samples, batch_size):
        jobs = torch.arange(start, min(start + batch_size, n_img * n_samples), device=images.device)
        image, draw = jobs // n_samples, jobs % n_samples
        moved = explain(images[image] + noise[draw], targets[image]).detach().float()
        if moved.shape[1:] != clean.shape[1:]:
            shapes = f"{tuple(clean.shape[1:])} but explain gave {tuple(moved.shape[1:])}"
            raise VfmxaiError(f"{name}: maps of shape {shapes}")
        changes[start : start + len(jobs)] = (moved - clean[image]).flatten(1).norm(dim=1)
    changes = changes.view(n_img, n_samples)
    scale = clean.flatten(1).norm(dim=1, keepdim=True)
    ratios = changes / scale.clamp_min(torch.finfo(changes.dtype).tiny)
    ratios = torch.where(scale > 0, ratios, torch.where(changes > 0, float("nan"), 0.0))
    return ratios


def max_sensitivity(
    explain: Explain,
    images: Tensor,
    targets: Tensor | Sequence[int],
    maps: Tensor | None = None,
    radius: float = 0.02,
    n_samples: int = 10,
    seed: int = 0,
    batch_size: int = 16,
) -> Tensor:
    """Max-sensitivity (B,): the largest relative change of the map over the draws (module docstring)."""
    return sensitivity_ratios(explain, images, targets, maps, radius, n_samples, seed, batch_size).amax(dim=1)


def avg_sensitivity(
    explain: Explain,
    images: Tensor,
    targets: Tensor | Sequence[int],
    maps: Tensor | None = None,
    radius: float = 0.02,
    n_samples: int = 10,
    seed: int = 0,
    batch_size: int = 16,
) -> Tensor:
    """Average sensitivity (B,): the mean relative change of the map over the draws (module docstring)."""
    return sensitivity_ratios(explain, images, targets, maps, radius, n_samples, seed, batch_size).mean(dim=1)
