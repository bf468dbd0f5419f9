"""Faithfulness beyond insertion/deletion: MoRF / LeRF perturbation curves with AOPC, and infidelity.

AOPC (Samek et al., IEEE TNNLS 2017, "Evaluating the visualization of what a deep neural network has
learned"). The image is cut into regions: single pixels (`region_size=1`, pixel flipping) or
`region_size` x `region_size` squares on a grid from the top-left corner (the last row and column of
squares cut by the border). A region's relevance is the sum of the map (resized bilinearly to the image)
over its pixels; regions are ranked by it, ties broken by the seeded permutation of
`perturbation.pixel_ranks`. Step k = 0..L (L = `steps`) replaces the n_k first regions with the substrate,
n_k = round(k * R / L) for R regions (`perturbation.step_counts`: the whole image at k = L), or
n_k = min(k * `regions_per_step`, R) (Samek's protocol: one region per step, `regions_per_step=1`).
MoRF takes the most relevant regions first, LeRF the least relevant first. With f the target's score
(softmax probability, or the logit with `score="logit"`) and x_k the image after step k:

    AOPC = 1 / (L + 1) * sum_{k=0}^{L} (f(x_0) - f(x_k)),   x_0 = x,

per image, for each order (the k = 0 term is 0). A faithful map has a large MoRF AOPC (the score falls
at once) and a small, even negative, LeRF AOPC. Samek et al. flip overlapping 9 x 9 windows greedily
(as Quantus's RegionPerturbation); the grid here keeps every step one batched mask, the same regions
for every map.

Infidelity (Yeh et al., NeurIPS 2019, "On the (in)fidelity and sensitivity of explanations"), with
Gaussian perturbations I ~ N(0, sigma^2) on every channel and pixel of the [0, 1] image:

    INFD(e, f, x) = E_I[(I^T e - (f(x) - f(x - I)))^2],   I^T e = sum_{c,h,w} I[c, h, w] * e[h, w],

estimated over `n_samples` draws; e is the map resized bilinearly to the image and shared by the three
channels, f the target's logit by default. `optimal_scale=True` replaces e by beta * e with the
least-squares beta = sum_s a_s d_s / sum_s a_s^2 (a_s = I_s^T e, d_s = f(x) - f(x - I_s); beta = 0 when
every a_s is 0), as Yeh et al.'s released code does, so a map is judged by its shape and not its scale
(min-max normalised maps have no common scale with the logits). The draws come from `seed` and are the
same for every image, so a result does not depend on batching or sharding.
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
    check_samples,
    check_score,
    eval_mode,
    make_substrate,
    perturbed_scores,
    pixel_ranks,
    resolve_targets,
    step_counts,
    target_scores,
)


@dataclass(frozen=True)
class AOPCResult:
    """AOPC (B,) of each order, the curves (B, steps + 1) of target scores f(x_k), and the scored classes."""

    morf: Tensor
    lerf: Tensor
    morf_curve: Tensor
    lerf_curve: Tensor
    targets: Tensor


def aopc_of(curve: Tensor) -> Tensor:
    """AOPC (...) of curves (..., L + 1) of scores f(x_0), ..., f(x_L): the mean of f(x_0) - f(x_k) over k."""
    return (curve[..., :1] - curve).mean(dim=-1)


def region_ranks(maps: Tensor, region_size: int, tie_seed: int = 0) -> tuple[Tensor, Tensor, int]:
    """(MoRF ranks (B, H*W), LeRF ranks (B, H*W), number of regions R) of `maps` (B, H, W): every pixel
    carries the rank of its region (0 = removed first); regions ranked by their map sum, ties by the seeded
    permutation (of the regions, in MoRF and LeRF alike)."""
    n_img, height, width = maps.shape
    grid_h, grid_w = -(-height // region_size), -(-width // region_size)
    padded = F.pad(maps, (0, grid_w * region_size - width, 0, grid_h * region_size - height))
    sums = padded.view(n_img, grid_h, region_size, grid_w, region_size).sum(dim=(2, 4))
    rows = torch.arange(height, device=maps.device) // region_size
    cols = torch.arange(width, device=maps.device) // region_size
    region_of_pixel = (rows[:, None] * grid_w + cols[None, :]).flatten().expand(n_img, -1)
    morf = pixel_ranks(sums, tie_seed).gather(1, region_of_pixel)
    lerf = pixel_ranks(-sums, tie_seed).gather(1, region_of_pixel)
    return morf, lerf, grid_h * grid_w


def aopc(
    classifier: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    targets: Tensor | Sequence[int] | None = None,
    steps: int = 100,
    region_size: int = 1,
    regions_per_step: int | None = None,
    substrate: str = "black",
    score: str = "probability",
    batch_size: int = 64,
    target_mode: str = "given",
    substrate_value: Sequence[float] | Tensor | None = None,
    blur_sigma: float | None = None,
    tie_seed: int = 0,
) -> AOPCResult:
    """MoRF and LeRF curves and AOPC (module docstring) of `maps` (B, h, w) for `images` (B, 3, H, W) in [0, 1].

    `substrate`, `substrate_value`, `blur_sigma`, `target_mode` and `classifier` as in
    `insertion_deletion`. Model calls: B (predicted mode) + 2 * B * steps when the last step removes every region
    (the clean image and the substrate scored once per image for both orders), 2 * B * steps + B otherwise.
    """
    name = "aopc"
    images, maps = check_inputs(name, images, maps, steps, batch_size, target_mode)
    check_score(name, score)
    if not isinstance(region_size, int) or isinstance(region_size, bool) or region_size < 1:
        raise VfmxaiError(f"{name}: region_size must be a positive integer, got {region_size}")
    if regions_per_step is not None and (not isinstance(regions_per_step, int) or regions_per_step < 1):
        raise VfmxaiError(f"{name}: regions_per_step must be a positive integer or None, got {regions_per_step}")
    _, _, height, width = images.shape
    device = images.device
    with eval_mode(classifier), torch.no_grad():
        targets = resolve_targets(name, classifier, images, targets, target_mode, batch_size)
        base = make_substrate(images, substrate, substrate_value, blur_sigma)
        morf, lerf, n_regions = region_ranks(resize_maps(maps, (height, width)), region_size, tie_seed)
        if regions_per_step is None:
            counts = step_counts(n_regions, steps, device)
        else:
            counts = (torch.arange(steps + 1, device=device) * regions_per_step).clamp_max(n_regions)
        removes = torch.tensor([True, True], device=device)
        curves = perturbed_scores(
            name, classifier, images, base, torch.stack([morf, lerf]), removes, counts, targets, batch_size, score
        )
    return AOPCResult(aopc_of(curves[0]), aopc_of(curves[1]), curves[0], curves[1], targets)


def infidelity(
    classifier: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    targets: Tensor | Sequence[int] | None = None,
    sigma: float = 0.1,
    n_samples: int = 32,
    seed: int = 0,
    score: str = "logit",
    optimal_scale: bool = False,
    batch_size: int = 64,
    target_mode: str = "given",
) -> Tensor:
    """Infidelity (B,) of `maps` (B, h, w) for `images` (B, 3, H, W) (module docstring). Model calls:
    B (the clean images) + B * n_samples."""
    name = "infidelity"
    images, maps = check_inputs(name, images, maps, 1, batch_size, target_mode)
    check_score(name, score)
    check_samples(name, n_samples)
    if not float(sigma) > 0:
        raise VfmxaiError(f"{name}: sigma must be a positive number, got {sigma}")
    n_img, _, height, width = images.shape
    device = images.device
    generator = torch.Generator().manual_seed(int(seed))
    noise = (torch.randn((n_samples, *images.shape[1:]), generator=generator) * float(sigma)).to(device)
    explained = resize_maps(maps, (height, width))
    with torch.autocast(device.type, enabled=False):  # float32 even under a bf16 autocast
        projections = torch.einsum("schw,bhw->bs", noise, explained.float())  # a_s = I_s^T e per image, draw
    with eval_mode(classifier), torch.no_grad():
        targets = resolve_targets(name, classifier, images, targets, target_mode, batch_size)
        chunks = zip(images.split(batch_size), targets.split(batch_size), strict=True)
        clean = torch.cat([target_scores(classifier(chunk), t, score) for chunk, t in chunks])
        perturbed = torch.empty(n_img * n_samples, device=device)
        for start in range(0, n_img * n_samples, batch_size):
            jobs = torch.arange(start, min(start + batch_size, n_img * n_samples), device=device)
            image, draw = jobs // n_samples, jobs % n_samples
            logits = classifier(images[image] - noise[draw])
            check_logits(name, logits, len(jobs), targets, check_targets=start == 0)
            perturbed[start : start + len(jobs)] = target_scores(logits, targets[image], score)
    drops = clean.unsqueeze(1) - perturbed.view(n_img, n_samples)  # d_s = f(x) - f(x - I_s)
    if optimal_scale:
        power = (projections**2).sum(1, keepdim=True)
        beta = torch.where(power > 0, (projections * drops).sum(1, keepdim=True) / power.clamp_min(1e-30), 0.0)
        projections = beta * projections
    return ((projections - drops) ** 2).mean(dim=1)
