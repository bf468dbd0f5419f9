"""Insertion and deletion (the ALA paper's definition, after RISE: Petsiuk et al., BMVC 2018).

For each image x with map alpha, pixels are ranked by alpha descending; ties are broken by one seeded
random permutation of the pixel positions (`tie_seed`, the same permutation for every image of a size, so
a result does not depend on how images are batched or sharded). A flat region is thus inserted in no
particular order: raster order put the top rows first and inflated insertion of ReLU'd maps. For k = 0..steps,
n_k = round(k * H * W / steps) (half up, in exact integer arithmetic), and
  insertion image: x on the top-n_k pixels, the substrate elsewhere,
  deletion image:  the substrate on the top-n_k pixels, x elsewhere.
The curve is the softmax probability of the target class at each k (both endpoints), and the score is
the trapezoid area with the x-axis k / steps in [0, 1]. The map is only resized (bilinear) to the image:
min-max normalisation is monotone and would change no rank.

Every perturbed image is made on the images' device from the rank map and run through the model in
chunks of `batch_size`; the Python loop is over chunks only. The mechanics here (ranks, step counts,
substrates, chunked perturbed passes) also serve AOPC and ROAD (`metrics.faithfulness`, `metrics.road`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmxai.errors import VfmxaiError
from vfmxai.maps import resize_maps
from vfmxai.vocabulary import SCORES, SUBSTRATES, TARGET_MODES


@dataclass(frozen=True)
class InsDelResult:
    """Scores (B,) and curves (B, steps + 1) of one batch; `targets` are the classes that were scored."""

    insertion: Tensor
    deletion: Tensor
    insertion_curve: Tensor
    deletion_curve: Tensor
    targets: Tensor

    @property
    def id_score(self) -> Tensor:
        return id_score(self.insertion, self.deletion)


def id_score(insertion: Tensor, deletion: Tensor) -> Tensor:
    """ID score = insertion - deletion (the ALA paper's insertion-deletion score)."""
    return insertion - deletion


def auc(curve: Tensor) -> Tensor:
    """Trapezoid area under curves (..., K + 1) sampled at x = 0, 1/K, ..., 1 -> (...)."""
    if curve.shape[-1] < 2:
        raise VfmxaiError(f"a curve needs at least 2 points for its area, got {curve.shape[-1]}")
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), dim=-1)


def step_counts(n_pixels: int, steps: int, device: torch.device | str | None = None) -> Tensor:
    """n_k = round(k * n_pixels / steps) for k = 0..steps, half rounded up (int64, exact)."""
    k = torch.arange(steps + 1, device=device, dtype=torch.int64)
    return (2 * k * n_pixels + steps) // (2 * steps)


def pixel_ranks(maps: Tensor, tie_seed: int = 0) -> Tensor:
    """Rank (B, H*W) of every pixel: 0 = the largest map value; ties in the order of a random permutation of
    the positions drawn from `tie_seed`."""
    flat = maps.flatten(1)
    generator = torch.Generator().manual_seed(int(tie_seed))
    shuffle = torch.randperm(flat.shape[1], generator=generator).to(flat.device)
    order = shuffle[torch.sort(flat[:, shuffle], dim=1, descending=True, stable=True).indices]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def gaussian_blur(images: Tensor, sigma: float, border: str = "replicate") -> Tensor:
    """Separable Gaussian blur (B, C, H, W), kernel radius ceil(3 sigma) (at least 1).

    `border`: "replicate" repeats the edge pixels (scipy's "nearest"; the blur substrate); "reflect" mirrors
    the image without repeating the edge (scipy's "mirror"; IG's blur baseline), and since a mirror reaches
    at most one image width, its radius is clipped to min(H, W) - 1."""
    if border not in ("replicate", "reflect"):
        raise VfmxaiError(f"gaussian_blur: border must be replicate or reflect, got '{border}'")
    radius = max(1, math.ceil(3 * sigma))
    if border == "reflect":
        radius = max(1, min(radius, min(images.shape[-2:]) - 1))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode=border)
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def make_substrate(
    images: Tensor,
    substrate: str = "black",
    substrate_value: Sequence[float] | Tensor | None = None,
    blur_sigma: float | None = None,
) -> Tensor:
    """What replaces removed pixels, (B, 3, H, W).

    "black": zeros in pixel space (the paper's). "blur": a Gaussian blur of the image, sigma = `blur_sigma`
    or max(H, W) / 16 by default. "mean": a per-channel constant, `substrate_value` (e.g. the dataset's
    mean colour in [0, 1]) or, when it is None, each image's own per-channel mean.
    """
    if substrate not in SUBSTRATES:
        raise VfmxaiError(f"substrate must be one of {', '.join(SUBSTRATES)}, got '{substrate}'")
    if substrate_value is not None and substrate != "mean":
        raise VfmxaiError(f"substrate_value is only used with substrate 'mean', not '{substrate}'")
    if blur_sigma is not None and (substrate != "blur" or not blur_sigma > 0):
        raise VfmxaiError(f"blur_sigma must be a positive number used with substrate 'blur', got {blur_sigma}")
    if substrate == "black":
        return torch.zeros_like(images)
    if substrate == "blur":
        return gaussian_blur(images, blur_sigma or max(images.shape[-2:]) / 16)
    if substrate_value is None:
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    value = torch.as_tensor(substrate_value, dtype=images.dtype, device=images.device).flatten()
    if value.numel() != images.shape[1]:
        raise VfmxaiError(f"substrate_value needs {images.shape[1]} values (one per channel), got {value.numel()}")
    return value.view(1, -1, 1, 1).expand_as(images)


def insertion_deletion(
    classifier: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    targets: Tensor | Sequence[int] | None = None,
    steps: int = 100,
    substrate: str = "black",
    batch_size: int = 64,
    target_mode: str = "given",
    substrate_value: Sequence[float] | Tensor | None = None,
    blur_sigma: float | None = None,
    tie_seed: int = 0,
) -> InsDelResult:
    """Insertion and deletion curves and AUCs of `maps` (B, h, w) for `images` (B, 3, H, W) in [0, 1].

    `classifier`: images -> logits (N, C), an nn.Module (run in eval mode, its mode restored after) or
    any function. `target_mode`: "given" scores `targets` (the ground truth, as the paper), "predicted"
    the classifier's argmax on the clean image. Model calls: B (predicted mode) + 2 * B * steps.
    """
    name = "insertion/deletion"
    images, maps = check_inputs(name, images, maps, steps, batch_size, target_mode)
    n_img, _, height, width = images.shape
    with eval_mode(classifier), torch.no_grad():
        targets = resolve_targets(name, classifier, images, targets, target_mode, batch_size)
        base = make_substrate(images, substrate, substrate_value, blur_sigma)
        ranks = pixel_ranks(resize_maps(maps, (height, width)), tie_seed)
        counts = step_counts(height * width, steps, images.device)
        removes = torch.tensor([False, True], device=images.device)
        scores = perturbed_scores(
            name, classifier, images, base, ranks.expand(2, -1, -1), removes, counts, targets, batch_size
        )
    ins_curve, del_curve = scores.unbind(0)
    return InsDelResult(auc(ins_curve), auc(del_curve), ins_curve, del_curve, targets)


@contextmanager
def eval_mode(classifier: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """An nn.Module runs in eval mode (no dropout noise in the curves); every submodule's mode is restored."""
    modes = [(m, m.training) for m in classifier.modules()] if isinstance(classifier, nn.Module) else []
    if modes:
        classifier.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.train(training)


def resolve_targets(
    name: str,
    classifier: Callable[[Tensor], Tensor],
    images: Tensor,
    targets: Tensor | Sequence[int] | None,
    target_mode: str,
    batch_size: int,
) -> Tensor:
    """The scored classes (B,) int64: `targets` ("given") or the classifier's argmax on the clean images."""
    if target_mode == "predicted":
        with torch.no_grad():
            targets = torch.cat([classifier(chunk).argmax(dim=1) for chunk in images.split(batch_size)])
    elif targets is None:
        raise VfmxaiError(f"{name}: targets are required with target_mode 'given'")
    targets = torch.as_tensor(targets, device=images.device).long().flatten()
    if targets.numel() != images.shape[0]:
        raise VfmxaiError(f"{name}: {targets.numel()} targets for {images.shape[0]} images")
    return targets


def target_scores(logits: Tensor, targets: Tensor, score: str) -> Tensor:
    """Each row's target score (N,) in float32: its softmax probability or its logit (`vocabulary.SCORES`)."""
    logits = logits.float()
    values = logits.softmax(dim=1) if score == "probability" else logits
    return values.gather(1, targets.unsqueeze(1)).squeeze(1)


def perturbed_scores(
    name: str,
    classifier: Callable[[Tensor], Tensor],
    images: Tensor,
    base: Tensor,
    ranks: Tensor,
    removes: Tensor,
    counts: Tensor,
    targets: Tensor,
    batch_size: int,
    score: str = "probability",
) -> Tensor:
    """Target scores (R, B, K) of the images perturbed along R rankings (R, B, H*W) at K pixel counts.

    Job (r, b, k)'s image takes the substrate on the pixels of rank < n_k when `removes[r]` (deletion, MoRF /
    LeRF), x on them otherwise (insertion), the other one on the rest. A job whose every pixel comes from x
    (the clean image) or from the substrate is the same image whatever its ranking and step: those two are
    scored once per image, so insertion + deletion at L steps make 2·L calls per image, not 2·(L + 1), and
    MoRF + LeRF the same when the last step removes everything. Only one chunk of `batch_size` perturbed
    images exists at a time.
    """
    n_img = ranks.shape[1]
    _, _, height, width = images.shape
    whole_x, whole_base = _whole_images(ranks, removes, counts)
    out = torch.empty(whole_x.shape, device=images.device)
    checked = False
    for whole, source in ((whole_x, images), (whole_base, base)):
        if whole.any():
            scores = torch.cat(
                [_scores(name, classifier, chunk, t, score, not checked)
                 for chunk, t in zip(source.split(batch_size), targets.split(batch_size), strict=True)]
            )
            checked = True
            out[whole] = scores.view(1, n_img, 1).expand_as(out)[whole]
    mixed = (~(whole_x | whole_base)).flatten().nonzero().squeeze(1)
    per_image = counts.numel()
    for start in range(0, len(mixed), batch_size):
        jobs = mixed[start : start + batch_size]
        ranking, image, step = jobs // (n_img * per_image), (jobs // per_image) % n_img, jobs % per_image
        take_x = (ranks[ranking, image] < counts[step].unsqueeze(1)) ^ removes[ranking].unsqueeze(1)
        batch = torch.where(take_x.view(-1, 1, height, width), images[image], base[image])
        out.view(-1)[jobs] = _scores(name, classifier, batch, targets[image], score, not checked)
        checked = True
    return out


def _whole_images(ranks: Tensor, removes: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Masks (R, B, K) of the jobs whose image is x alone and of those whose image is the substrate alone: no
    pixel below the count (n_k = 0) or every pixel below it (n_k above the ranking's largest rank)."""
    none = (counts == 0).view(1, 1, -1)
    every = counts.view(1, 1, -1) > ranks.amax(dim=2, keepdim=True)
    removed = removes.view(-1, 1, 1)
    whole_x = (none & removed) | (every & ~removed)
    whole_base = (none & ~removed) | (every & removed)
    return whole_x, whole_base


def _scores(
    name: str, classifier: Callable[[Tensor], Tensor], batch: Tensor, targets: Tensor, score: str, check: bool
) -> Tensor:
    logits = classifier(batch)
    check_logits(name, logits, len(batch), targets, check_targets=check)
    return target_scores(logits, targets, score)


def check_inputs(
    name: str, images: Tensor, maps: Tensor, steps: int, batch_size: int, target_mode: str
) -> tuple[Tensor, Tensor]:
    """(images as float, maps as float on the images' device), or a one-line VfmxaiError naming `name`."""
    check_images(name, images)
    if not isinstance(maps, Tensor) or maps.dim() != 3 or maps.shape[0] != images.shape[0]:
        n_img = images.shape[0]
        raise VfmxaiError(f"{name}: maps must be (B, h, w) with B = {n_img} as the images, got {_shape(maps)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise VfmxaiError(f"{name}: steps must be a positive integer, got {steps}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise VfmxaiError(f"{name}: batch_size must be a positive integer, got {batch_size}")
    if target_mode not in TARGET_MODES:
        modes = ", ".join(TARGET_MODES)
        raise VfmxaiError(f"{name}: target_mode must be one of {modes}, got '{target_mode}'")
    maps = maps.to(images.device).float()
    if not torch.isfinite(maps).all():
        raise VfmxaiError(f"{name}: maps contain NaN or infinite values")
    return images.float(), maps


def check_images(name: str, images: object) -> None:
    """A one-line VfmxaiError naming `name` unless `images` is a non-empty (B, 3, H, W) tensor."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise VfmxaiError(f"{name}: images must be a non-empty (B, 3, H, W) tensor, got {_shape(images)}")


def check_score(name: str, score: str) -> None:
    if score not in SCORES:
        raise VfmxaiError(f"{name}: score must be one of {', '.join(SCORES)}, got '{score}'")


def check_samples(name: str, n_samples: int) -> None:
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise VfmxaiError(f"{name}: n_samples must be a positive integer, got {n_samples}")


def check_logits(name: str, logits: Tensor, n: int, targets: Tensor, check_targets: bool) -> None:
    if logits.dim() != 2 or logits.shape[0] != n:
        raise VfmxaiError(f"{name}: the classifier must return logits (N, C), got {_shape(logits)}")
    if not torch.isfinite(logits).all():
        raise VfmxaiError(f"{name}: the classifier returned NaN or infinite logits on a perturbed image")
    n_classes = logits.shape[1]
    if check_targets and (targets.min() < 0 or targets.max() >= n_classes):
        got = targets.tolist()
        raise VfmxaiError(f"{name}: targets must be class indices in [0, {n_classes}), got {got}")


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
