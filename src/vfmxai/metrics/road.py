"""ROAD: RemOve And Debias (Rong et al., ICML 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods").

For each percentile p (default 10, 20, ..., 90) the n_p = round(p * H * W / 100) pixels ranked first
(MoRF: largest map values; LeRF: smallest; ties by the seeded permutation of `perturbation.pixel_ranks`)
are removed and filled by noisy linear imputation, and the model scores the imputed image: the target's
softmax probability (or logit) and whether its prediction is the target. No retraining (ROAD's point:
the imputation leaks no mask shape the model could read, so the model need not be retrained).

Noisy linear imputation (Rong et al.'s `NoisyLinearImputer`): every removed pixel i takes the weighted mean
of its 8 neighbours inside the image, weight 1/6 for the four direct neighbours and 1/12 for the four
diagonal ones, renormalised over the neighbours that exist at the border:

    d_i v_i - sum_{j removed} w_ij v_j = sum_{j kept} w_ij x_j,   d_i = sum_{j in the image} w_ij,

for each channel, then Gaussian noise of std `noise` (pixel units, [0, 1] images) is added to the removed
pixels; kept pixels are unchanged. The system is symmetric positive definite (every connected set of
removed pixels short of the whole image touches a kept one) and is solved for all images and channels at
once on the device, in float32 even under autocast, by conjugate gradients preconditioned by one geometric
multigrid V-cycle (about 8 iterations whatever the size or shape of the holes), the 3 x 3 stencil applied as
shifted sums, started from a pull-push fill (kept pixels averaged down a pyramid and back). A linear image
satisfies every interior equation, so it is reproduced exactly where the removed pixels lie off the border
(the test). Rong et al. solve each image with a sparse direct solver on the CPU.
The noise comes from `seed`, one draw per order and percentile, the same for every image (no dependence
on batching or sharding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vfmxai.errors import VfmxaiError
from vfmxai.maps import resize_maps
from vfmxai.metrics.perturbation import (
    check_inputs,
    check_logits,
    check_score,
    eval_mode,
    pixel_ranks,
    resolve_targets,
    target_scores,
)

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
NEIGHBOUR_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))
"""Rong et al.'s weights of the 8 neighbours (they sum to 1)."""


@dataclass(frozen=True)
class ROADResult:
    """Per image (B, P) at each percentile: the target's score and whether the prediction is the target (0/1)."""

    percentiles: Tensor
    morf_curve: Tensor
    lerf_curve: Tensor
    morf_correct: Tensor
    lerf_correct: Tensor
    targets: Tensor


def noisy_linear_imputation(
    images: Tensor,
    removed: Tensor,
    noise: float = 0.01,
    seed: int = 0,
    draws: Tensor | None = None,
    tol: float = 1e-5,
    max_iter: int | None = None,
) -> Tensor:
    """`images` (N, C, H, W) with the pixels where `removed` (N, H, W) is true imputed (module docstring).

    The noise is `noise` times `draws` (N, C, H, W) of std 1, or one draw from `seed` for all N. CG stops
    when every system's residual is at most `tol` times its right-hand side's norm, or after `max_iter`
    iterations (default 200).
    """
    if images.dim() != 4 or removed.shape != (images.shape[0], *images.shape[2:]):
        raise VfmxaiError(f"imputation: images (N, C, H, W) and removed (N, H, W), got {tuple(images.shape)} and "
                          f"{tuple(removed.shape)}")
    _, channels, height, width = images.shape
    with torch.autocast(images.device.type, enabled=False):
        x = images.float()
        hole = removed.to(x.device, torch.bool).unsqueeze(1).float()
        solution = _harmonic_fill(x, hole, tol, max_iter)
        if draws is None:
            draws = torch.randn((1, channels, height, width), generator=torch.Generator().manual_seed(int(seed)))
        filled = solution + float(noise) * draws.to(x.device, torch.float32) * hole
        return torch.where(hole.bool(), filled, x).to(images.dtype)


def _harmonic_fill(x: Tensor, hole: Tensor, tol: float, max_iter: int | None) -> Tensor:
    """The solution of the imputation system (N, C, H, W) where `hole` (N, 1, H, W) is 1, x elsewhere: CG
    preconditioned by one multigrid V-cycle (`_v_cycle`), started from the pull-push fill."""
    holes = [hole]
    while min(holes[-1].shape[-2:]) >= 8:  # a coarse pixel is removed when all its (up to four) pixels are
        holes.append(-F.max_pool2d(-holes[-1], 2, ceil_mode=True))
    degrees = [_neighbours(torch.ones(1, 1, *h.shape[-2:], device=x.device)) for h in holes]
    rhs = hole * _neighbours((1 - hole) * x)
    solution = _conjugate_gradients(
        _system(hole, degrees[0]), rhs, lambda r: _v_cycle(r, holes, degrees), hole * _pull_push(x, 1 - hole), tol,
        max_iter or 200,
    )
    return torch.where(hole.bool(), solution, x)


def _system(hole: Tensor, degree: Tensor) -> Callable[[Tensor], Tensor]:
    """v -> the system's left-hand side on the removed pixels (0 elsewhere)."""
    return lambda v: hole * (degree * v - _neighbours(hole * v))


def _v_cycle(residual: Tensor, holes: list[Tensor], degrees: list[Tensor], level: int = 0) -> Tensor:
    """An approximate solution of system(e) = residual: two damped Jacobi sweeps (omega 0.8), the residual
    summed 2 x 2 onto the next level and its correction copied back (restriction = prolongation transposed,
    so the preconditioner stays symmetric), two sweeps again. The coarse operator is the same stencil on the
    coarse grid; summing, not averaging, the residual accounts for its 4x smaller scale."""
    hole, degree = holes[level], degrees[level]
    system = _system(hole, degree)
    correction = torch.zeros_like(residual)
    for _ in range(2):
        correction = correction + 0.8 * hole * (residual - system(correction)) / degree
    if level + 1 < len(holes):
        coarse = F.avg_pool2d(residual - system(correction), 2, ceil_mode=True, divisor_override=1)
        coarse = _v_cycle(coarse, holes, degrees, level + 1)
        height, width = residual.shape[-2:]
        correction = correction + hole * F.interpolate(coarse, scale_factor=2, mode="nearest")[..., :height, :width]
    for _ in range(2):
        correction = correction + 0.8 * hole * (residual - system(correction)) / degree
    return correction


def _neighbours(v: Tensor) -> Tensor:
    """sum_j w_ij v_j over the neighbours inside the image: NEIGHBOUR_WEIGHTS = (outer([1, 2, 1], [1, 2, 1]) -
    4 delta) / 12, applied as two separable 3-tap sums on the zero-padded image (several times faster than a
    one-channel 3 x 3 convolution on a CPU)."""
    height, width = v.shape[-2:]
    padded = F.pad(v, (1, 1, 1, 1))
    rows = padded[..., :, :width] + 2 * padded[..., :, 1 : width + 1] + padded[..., :, 2:]
    both = rows[..., :height, :] + 2 * rows[..., 1 : height + 1, :] + rows[..., 2:, :]
    return (both - 4 * v) / 12


def _conjugate_gradients(
    system: Callable[[Tensor], Tensor],
    rhs: Tensor,
    precondition: Callable[[Tensor], Tensor],
    start: Tensor,
    tol: float,
    max_iter: int,
) -> Tensor:
    """Solve system(v) = rhs for every (N, C) system at once, preconditioned; converged systems stop."""

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(dim=(2, 3), keepdim=True)

    v = start
    residual = rhs - system(v)
    z = precondition(residual)
    direction = z
    rz = dot(residual, z)
    limit = (tol * dot(rhs, rhs).sqrt()).clamp_min(1e-30)
    for _ in range(max_iter):
        active = dot(residual, residual).sqrt() > limit
        if not bool(active.any()):
            break
        product = system(direction)
        curvature = dot(direction, product)
        alpha = torch.where(active & (curvature > 0), rz / curvature.clamp_min(1e-30), 0.0)
        v = v + alpha * direction
        residual = residual - alpha * product
        z = precondition(residual)
        rz_next = dot(residual, z)
        beta = torch.where(active, rz_next / rz.clamp_min(1e-30), 0.0)
        direction = z + beta * direction
        rz = rz_next
    return v


def _pull_push(x: Tensor, known: Tensor) -> Tensor:
    """A smooth fill of the unknown pixels (the CG's start): kept pixels averaged 2 x 2 down a pyramid
    ("pull"), then every level's holes filled from the level below, upsampled ("push")."""
    values, weights = [x * known], [known]
    while min(values[-1].shape[-2:]) > 1:
        values.append(F.avg_pool2d(values[-1], 2, ceil_mode=True))
        weights.append(F.avg_pool2d(weights[-1], 2, ceil_mode=True))
    fill = values[-1] / weights[-1].clamp_min(1e-12)
    for value, weight in zip(reversed(values[:-1]), reversed(weights[:-1]), strict=True):
        coarse = F.interpolate(fill, size=value.shape[-2:], mode="bilinear", align_corners=False)
        fill = torch.where(weight > 0, value / weight.clamp_min(1e-12), coarse)
    return fill


def removal_counts(n_pixels: int, percentiles: Tensor) -> Tensor:
    """n_p = round(p * n_pixels / 100), half up (int64)."""
    return torch.floor(percentiles.double() * n_pixels / 100 + 0.5).long()


def road(
    classifier: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    targets: Tensor | Sequence[int] | None = None,
    percentiles: Sequence[float] = PERCENTILES,
    noise: float = 0.01,
    seed: int = 0,
    score: str = "probability",
    batch_size: int = 64,
    target_mode: str = "given",
    tie_seed: int = 0,
) -> ROADResult:
    """ROAD's MoRF and LeRF curves (module docstring) of `maps` (B, h, w) for `images` (B, 3, H, W) in [0, 1].

    Model calls: B (predicted mode) + 2 * B * len(percentiles); imputations in chunks of `batch_size`.
    """
    name = "road"
    images, maps = check_inputs(name, images, maps, 1, batch_size, target_mode)
    check_score(name, score)
    levels = torch.as_tensor(list(percentiles), dtype=torch.float64).flatten()
    if levels.numel() == 0 or not bool(((levels > 0) & (levels < 100)).all()):
        got = list(percentiles)
        raise VfmxaiError(f"{name}: percentiles must be a non-empty list of numbers in (0, 100), got {got}")
    if not float(noise) >= 0:
        raise VfmxaiError(f"{name}: noise must be a number >= 0, got {noise}")
    n_img, channels, height, width = images.shape
    device = images.device
    n_levels = levels.numel()
    counts = removal_counts(height * width, levels).to(device)
    generator = torch.Generator().manual_seed(int(seed))
    draws = torch.randn((2, n_levels, channels, height, width), generator=generator).to(device)
    with eval_mode(classifier), torch.no_grad():
        targets = resolve_targets(name, classifier, images, targets, target_mode, batch_size)
        resized = resize_maps(maps, (height, width))
        ranks = torch.stack([pixel_ranks(resized, tie_seed), pixel_ranks(-resized, tie_seed)])
        total = 2 * n_img * n_levels
        scores = torch.empty(total, device=device)
        correct = torch.empty(total, device=device)
        for start in range(0, total, batch_size):
            jobs = torch.arange(start, min(start + batch_size, total), device=device)
            order, image, level = jobs // (n_img * n_levels), (jobs // n_levels) % n_img, jobs % n_levels
            removed = (ranks[order, image] < counts[level].unsqueeze(1)).view(-1, height, width)
            imputed = noisy_linear_imputation(images[image], removed, noise, draws=draws[order, level])
            logits = classifier(imputed)
            check_logits(name, logits, len(jobs), targets, check_targets=start == 0)
            scores[start : start + len(jobs)] = target_scores(logits, targets[image], score)
            correct[start : start + len(jobs)] = (logits.argmax(dim=1) == targets[image]).float()
    scores, correct = scores.view(2, n_img, n_levels), correct.view(2, n_img, n_levels)
    return ROADResult(levels.float(), scores[0], scores[1], correct[0], correct[1], targets)
