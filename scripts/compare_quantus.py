"""vfmxai's metrics beside Quantus's (issue 14 item 6): the same model, images and maps through both libraries.

The model is the shipped default backbone (CLIP-style ViT, 8-px patches) at 48 px with a linear probe fitted in
a second on the synthetic demo task; the images are synthetic demo test images with their object masks; the
maps are vfmxai's Grad-CAM and Integrated Gradients at image resolution (min-max normalised), explaining the
model's predicted class (the target both libraries score). For every metric whose definition coincides once
Quantus's options are set to match (the notes under the table say which options, and what still differs), it
prints the per-image agreement (largest |difference| and Pearson r over every image, map and curve point) and
the seconds per image of each library, single-threaded, as one markdown table.

    pip install -c constraints.txt -e '.[peers]'          # Quantus's dependencies (headless OpenCV)
    pip install -c constraints.txt --no-deps quantus       # Quantus itself (it names opencv-python)
    OMP_NUM_THREADS=1 python scripts/compare_quantus.py [--images 16]

Times are CPU seconds of the process per image (so other load on the machine does not count), the best of
`--repeat` runs for the metrics of the maps alone and of `--model-repeat` runs for the rest (which run the
model); a metric scored on both methods' maps adds the two. Beside them, the backbone passes each library made
per image (images entering the patch embedding, counted by a hook): where both make the same passes through the
same model, the time is the model's and a ratio near 1 is the most either can reach. vfmxai's metrics that
run the model are given batch_size = the number of images: the batch Quantus runs the model on.
48 px and not the backbone's native 64: Quantus's pixel flipping steps through the map broadcast to the 3
channels but asserts that its step (in channel values) divides H*W, so whole-pixel steps need 3 | H*W.
Where Quantus draws noise (ROAD, infidelity, sensitivity), it is handed vfmxai's seeded draws through its
`perturb_func` hook; where it breaks ties by numpy's unstable argsort, it is handed vfmxai's tie-broken order
as the map (-rank: the same order with no ties), so both libraries score the same perturbed images.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

try:
    import quantus
except ImportError:
    sys.exit(
        "compare_quantus.py needs Quantus: pip install -c constraints.txt -e '.[peers]' && "
        "pip install -c constraints.txt --no-deps quantus"
    )

import numpy as np
import torch
from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation
from quantus.functions.similarity_func import correlation_spearman
from torch import Tensor

from vfmxai import metrics
from vfmxai.backbones import load_backbone
from vfmxai.classifier import LinearProbe
from vfmxai.data.synthetic import class_names, render
from vfmxai.evaluation.randomisation import cascade
from vfmxai.explainers import get
from vfmxai.maps import resize_maps
from vfmxai.metrics.faithfulness import region_ranks
from vfmxai.metrics.road import PERCENTILES, removal_counts

METHODS = ("gradcam", "ig")
IMAGE_SIZE = 48
PATCH = 8


@dataclass
class Setup:
    """One model, its images (N, 3, H, W) in [0, 1], predicted targets (N,), object masks (N, H, W) and a map
    (N, H, W) per method; `x`, `y`, `s` and `a` are the same as fresh numpy arrays for Quantus (some of its
    metrics change their input arrays in place)."""

    model: LinearProbe
    images: Tensor
    targets: Tensor
    masks: Tensor
    maps: dict[str, Tensor]
    seed: int
    passes: PassCounter
    repeat: int = 3

    @property
    def n(self) -> int:
        return len(self.images)

    @property
    def x(self) -> np.ndarray:
        return self.images.numpy().copy()

    @property
    def y(self) -> np.ndarray:
        return self.targets.numpy().copy()

    @property
    def s(self) -> np.ndarray:
        return self.masks[:, None].numpy().astype(np.float32)

    def a(self, method: str) -> np.ndarray:
        return self.maps[method][:, None].numpy().copy()


class PassCounter:
    """Counts the images that enter the backbone's patch embedding: every model pass of either library, the
    randomised copies of MPRT included (a deep copy keeps the hook, which holds this counter)."""

    def __init__(self, model: torch.nn.Module):
        self.images = 0

        def count(_: torch.nn.Module, args: tuple[Tensor, ...]) -> None:  # a function: deep copies share it
            self.images += len(args[0])

        embedding = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        embedding.register_forward_pre_hook(count)


@dataclass
class Cost:
    """CPU seconds and backbone passes (images through the model) per scored item."""

    seconds: float = 0.0
    passes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.seconds + other.seconds, self.passes + other.passes)

    def __truediv__(self, n: float) -> Cost:
        return Cost(self.seconds / n, self.passes / n)


@dataclass
class Row:
    metric: str
    agreement: str
    quantus: Cost
    vfmxai: Cost
    note: str


def fit_setup(n_images: int, seed: int, repeat: int) -> Setup:
    """The default backbone with a probe on the demo task (Adam on cached embeddings), n test images, maps."""
    torch.manual_seed(seed)
    backbone = load_backbone("default", image_size=IMAGE_SIZE)
    n_classes = len(class_names("demo"))
    model = LinearProbe(backbone, n_classes).eval().requires_grad_(False)
    train_x, train_y, _ = _render_split(seed, "train", 16 * n_classes)
    with torch.no_grad():
        features = backbone.embedding(train_x)
    head = torch.nn.Linear(features.shape[1], n_classes)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(head(features), train_y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.head.load_state_dict(head.state_dict())
    images, labels, masks = _render_split(seed, "test", n_images)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    print(f"probe accuracy on the {n_images} test images: {(targets == labels).float().mean():.2f}", file=sys.stderr)
    maps = {}
    for method in METHODS:
        with get(method, model) as explainer:
            maps[method] = resize_maps(explainer(images, targets), tuple(images.shape[-2:])).contiguous()
    return Setup(model, images, targets, masks, maps, seed, PassCounter(model), repeat)


def _render_split(seed: int, split: str, n: int) -> tuple[Tensor, Tensor, Tensor]:
    drawn = [render(seed, split, i, size=IMAGE_SIZE) for i in range(n)]
    images = torch.from_numpy(np.stack([d[0] for d in drawn])).permute(0, 3, 1, 2).float() / 255
    return images.contiguous(), torch.tensor([d[2] for d in drawn]), torch.from_numpy(np.stack([d[1] for d in drawn]))


def timed(run: Callable[[], object], setup: Setup, repeat: int | None = None) -> tuple[object, Cost]:
    """(the result of `run`, its Cost per image: the best CPU time of `repeat` runs (default `setup.repeat`), the
    backbone passes of one run).

    CPU time of the process, not the wall clock: on one thread it is the work done, whatever else the machine
    is running; the best of several runs, as run-to-run spread (±10 %) is larger than the gaps between
    libraries that run the same passes."""
    best, result, passes = math.inf, None, 0
    for _ in range(setup.repeat if repeat is None else repeat):
        start, counted = time.process_time(), setup.passes.images
        result = run()
        best = min(best, time.process_time() - start)
        passes = setup.passes.images - counted
    return result, Cost(best, passes) / setup.n


def agreement(quantus_values: list[object], vfmxai_values: list[object]) -> str:
    """'max abs diff d, r = c' over every value of every result (r left out when one side is constant), and how
    many values are NaN (a correlation with a constant map) in both or in one library only."""
    q = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in quantus_values])
    v = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in vfmxai_values])
    if q.shape != v.shape:
        raise SystemExit(f"internal error: {q.size} Quantus values against {v.size} of vfmxai's")
    both, one = np.isnan(q) & np.isnan(v), np.isnan(q) ^ np.isnan(v)
    q, v = q[~(both | one)], v[~(both | one)]
    text = f"max abs diff {np.abs(q - v).max():.1e}"
    if q.std() > 0 and v.std() > 0:
        text += f", r = {np.corrcoef(q, v)[0, 1]:.4f}"
    if both.any():
        text += f"; NaN in both: {both.sum()} (constant maps)"
    if one.any():
        text += f"; NaN in one only: {one.sum()}"
    return text


def order_maps(maps: Tensor, region_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(-MoRF rank, -LeRF rank) (N, 1, H, W) of vfmxai's region order (pixels when region_size is 1): maps
    whose descending order is vfmxai's tie-broken MoRF (LeRF) order, constant over each region."""
    morf, lerf, _ = region_ranks(maps, region_size)
    shape = (maps.shape[0], 1, *maps.shape[1:])
    return -morf.view(shape).float().numpy(), -lerf.view(shape).float().numpy()


def replayed(draws: np.ndarray, sign: float = 1.0) -> Callable[..., np.ndarray]:
    """A Quantus `perturb_func` adding the next of `draws` (S, C, H, W), times `sign`, to the whole batch
    (B, C*H*W) at each call: the s-th call gets draw s, as vfmxai's s-th sample (call S + s again draw s: a
    timed run repeated)."""
    calls = itertools.count()

    def perturb(arr: np.ndarray, **_: object) -> np.ndarray:
        return arr + sign * draws[next(calls) % len(draws)].reshape(1, -1)

    return perturb


def quantus_explainer(method: str, normalize: bool) -> Callable[..., np.ndarray]:
    """Quantus's `explain_func`: vfmxai's `method` on numpy inputs -> maps (B, H, W)."""

    def explain(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
        with get(method, model) as explainer:
            maps = explainer(torch.as_tensor(inputs), torch.as_tensor(targets), normalize=normalize)
        return maps.detach().numpy()

    return explain


def row_pixel_flipping(setup: Setup) -> Row:
    """Pixel flipping (Bach et al. 2015): MoRF and LeRF curves of `aopc(region_size=1)`, n pixels a step."""
    _, _, height, width = setup.images.shape
    steps = height * width // IMAGE_SIZE  # 48 pixels a step: 3 * 48 = 144 channel values divide H * W
    flip = quantus.PixelFlipping(
        features_in_step=3 * height * width // steps, perturb_baseline=0.0, normalise=False, disable_warnings=True
    )
    q_curves, v_curves, q_time, v_time = [], [], Cost(), Cost()
    for method in METHODS:
        for order_map in order_maps(setup.maps[method]):
            curve, t = timed(partial(flip, setup.model, setup.x, setup.y, a_batch=order_map, device="cpu"), setup)
            q_curves.append(curve)
            q_time += t
        result, t = timed(
            partial(
                metrics.aopc, setup.model, setup.images, setup.maps[method], setup.targets, steps=steps,
                batch_size=setup.n,
            ),
            setup,
        )
        v_curves += [result.morf_curve[:, 1:], result.lerf_curve[:, 1:]]
        v_time += t
    note = (
        f"`PixelFlipping(features_in_step={3 * height * width // steps}, perturb_baseline=0.0, normalise=False)`, "
        f"once on each order, against `aopc(region_size=1, steps={steps})`'s MoRF and LeRF curves at "
        f"k = 1..{steps} (softmax probability of the target). Quantus's curve has no k = 0 point and its AUC is "
        f"`np.trapz(dx=1)`: AUC_Quantus = {steps}·AUC_[0,1] − (p_0 + p_1)/2; vfmxai's AOPC is "
        "mean_k (p_0 − p_k). Quantus's default 'black' is each image's minimum, hence perturb_baseline=0.0 "
        "(vfmxai's black is 0 in pixel space); it has no LeRF order (given −LeRF rank as the map instead) and "
        "steps through the map broadcast to the 3 channels (a step of 3·n values is n pixels)."
    )
    return Row("pixel flipping, MoRF + LeRF curves", agreement(q_curves, v_curves), q_time, v_time, note)


def row_region_perturbation(setup: Setup) -> Row:
    """Region perturbation (Samek et al. 2017) on the 8 x 8 patch grid, one region a step, both orders."""
    n_regions = (IMAGE_SIZE // PATCH) ** 2
    q_values, v_values, q_time, v_time = [], [], Cost(), Cost()
    for method in METHODS:
        morf_map, lerf_map = order_maps(setup.maps[method], PATCH)
        for order, order_map in (("morf", morf_map), ("lerf", -lerf_map)):
            regions = quantus.RegionPerturbation(
                patch_size=PATCH, order=order, regions_evaluation=n_regions, perturb_baseline=0.0, normalise=False,
                disable_warnings=True,
            )
            drops, t = timed(partial(regions, setup.model, setup.x, setup.y, a_batch=order_map, device="cpu"), setup)
            q_values.append(drops)
            q_time += t
        result, t = timed(
            partial(
                metrics.aopc, setup.model, setup.images, setup.maps[method], setup.targets, steps=n_regions,
                region_size=PATCH, regions_per_step=1, batch_size=setup.n,
            ),
            setup,
        )
        v_values += [curve[:, :1] - curve[:, 1:] for curve in (result.morf_curve, result.lerf_curve)]
        v_time += t
    note = (
        f"`RegionPerturbation(patch_size={PATCH}, order='morf' / 'lerf', regions_evaluation={n_regions}, "
        f"perturb_baseline=0.0, normalise=False)` against `aopc(region_size={PATCH}, regions_per_step=1, "
        f"steps={n_regions})`: p_0 − p_k for k = 1..{n_regions}; vfmxai's AOPC is their sum / {n_regions + 1} "
        "(Quantus returns the curve only). Both cut the image into a grid of non-overlapping patches (Quantus "
        "pads a grid that does not fit around the image, vfmxai cuts the last row and column); Samek et al.'s "
        "own windows overlap. Ties between patch sums: the map given to Quantus is constant on each patch at "
        "−(vfmxai's patch rank)."
    )
    return Row("region perturbation (8x8), MoRF + LeRF", agreement(q_values, v_values), q_time, v_time, note)


class PerImageROAD(quantus.ROAD):
    """Quantus's ROAD keeping each image's 0/1 (prediction = target) per percentage; its own post-processing
    averages them over the images of the first batch only."""

    def custom_postprocess(self, **kwargs: object) -> None:
        self.evaluation_scores = np.concatenate(self.evaluation_scores)


def row_road(setup: Setup, noise: float = 0.01) -> Row:
    """ROAD (Rong et al. 2022): noisy linear imputation of the top n_p pixels, MoRF and LeRF, p = 10..90."""
    _, channels, height, width = setup.images.shape
    n_pixels = height * width
    levels = torch.tensor(PERCENTILES, dtype=torch.float64)
    counts = removal_counts(n_pixels, levels)
    # Quantus keeps int(H*W * p / 100) of the 3*H*W channel values: these p take 3 n_p of them, n_p pixels
    percentages = [(3 * int(c) + 0.5) * 100 / n_pixels for c in counts]
    draws = torch.randn((2, len(levels), channels, height, width), generator=torch.Generator().manual_seed(0)).numpy()

    def imputer(order: int, imputed: list[np.ndarray]) -> Callable[..., np.ndarray]:
        """Quantus's imputation of the pixels behind the channel-broadcast `indices`, plus vfmxai's noise draw of
        this order and percentage (Quantus calls it per percentage, then per image; again so when the timed run
        is repeated: `imputed` then holds each run's images in turn)."""
        calls = itertools.count()

        def impute(arr: np.ndarray, indices: np.ndarray, **_: object) -> np.ndarray:
            level = next(calls) // setup.n % len(levels)
            pixels = np.unique(indices % n_pixels)
            out = quantus_imputation(arr, pixels, noise=0.0)
            flat = out.reshape(channels, -1)
            flat[:, pixels] += noise * draws[order, level].reshape(channels, -1)[:, pixels]
            imputed.append(out)
            return out

        return impute

    q_correct, v_correct, q_probs, v_probs, gaps, q_time, v_time = [], [], [], [], [], Cost(), Cost()
    for method in METHODS:
        for order, order_map in enumerate(order_maps(setup.maps[method])):
            imputed: list[np.ndarray] = []
            road = PerImageROAD(
                percentages=percentages, perturb_func=imputer(order, imputed), normalise=False, disable_warnings=True
            )
            correct, t = timed(partial(road, setup.model, setup.x, setup.y, a_batch=order_map, device="cpu"), setup)
            q_time += t
            q_correct.append(correct)
            q_images = torch.from_numpy(np.stack(imputed[: len(levels) * setup.n])).float()  # (level, image), run 1
            with torch.no_grad():
                probs = setup.model(q_images).softmax(dim=1)
            targets = setup.targets.repeat(len(levels))
            q_probs.append(probs[torch.arange(len(q_images)), targets].view(len(levels), setup.n).T)
            removed = torch.from_numpy(order_map[:, 0] > -counts.view(-1, 1, 1, 1).float().numpy())  # (level, N, H, W)
            v_images = metrics.noisy_linear_imputation(
                setup.images.repeat(len(levels), 1, 1, 1), removed.flatten(0, 1), noise,
                draws=torch.from_numpy(draws[order]).repeat_interleave(setup.n, dim=0),
            )
            gaps.append((v_images - q_images).abs().max().item())
        result, t = timed(
            partial(
                metrics.road, setup.model, setup.images, setup.maps[method], setup.targets, noise=noise,
                batch_size=setup.n,
            ),
            setup,
        )
        v_time += t
        v_correct += [result.morf_correct, result.lerf_correct]
        v_probs += [result.morf_curve, result.lerf_curve]
    same = sum(int((np.asarray(q) == np.asarray(v)).sum()) for q, v in zip(q_correct, v_correct, strict=True))
    total = sum(np.asarray(q).size for q in q_correct)
    text = (
        f"p(target): {agreement(q_probs, v_probs)}; imputed pixels max abs diff {max(gaps):.1e}; "
        f"prediction = target identical in {same}/{total}"
    )
    note = (
        f"`ROAD(percentages≈{list(PERCENTILES)}, perturb_func=…, normalise=False)` on each order against "
        f"`road(noise={noise})`, n_p = round(p·H·W/100) pixels. Quantus's ROAD cannot score an RGB image with "
        "one map per pixel: it ranks the 3·H·W values of the map broadcast to the channels but its imputation "
        "indexes H·W pixels (IndexError), and keeps int(H·W·p/100) values (p/3 % of the pixels); so its "
        "perturb_func maps the indices back to pixels and the percentages are set to remove 3·n_p values. "
        "Quantus has only MoRF (LeRF: −LeRF rank as the map), returns only whether the prediction is still the "
        "target (p(target) here: the model on the images Quantus imputed), averaged over the first batch "
        "(kept per image here). Same equations (Rong et al.'s 8-neighbour weights); Quantus solves each image "
        "with scipy's spsolve, vfmxai all at once by CG (tol 1e-5). Noise: vfmxai's seeded N(0, 1) draws "
        f"(one per order and percentage) times {noise}, added to Quantus's noiseless imputation."
    )
    return Row("ROAD, MoRF + LeRF", text, q_time, v_time, note)


def row_infidelity(setup: Setup, sigma: float = 0.1, n_samples: int = 32) -> Row:
    """Infidelity (Yeh et al. 2019) with Gaussian perturbations I: E[(I^T e - (f(x) - f(x - I)))^2], logit."""
    _, _, height, width = setup.images.shape
    generator = torch.Generator().manual_seed(0)
    noise = (torch.randn((n_samples, 3, height, width), generator=generator) * sigma).numpy()
    q_values, v_values, q_time, v_time = [], [], Cost(), Cost()
    for method in METHODS:
        infidelity = quantus.Infidelity(
            loss_func="mse", perturb_patch_sizes=[height], n_perturb_samples=n_samples,
            perturb_func=replayed(noise, sign=-1.0), normalise=False, abs=False, disable_warnings=True,
        )
        value, t = timed(
            partial(infidelity, setup.model, setup.x, setup.y, a_batch=setup.a(method), softmax=False, device="cpu"),
            setup,
        )
        q_values.append(value)
        q_time += t
        value, t = timed(
            partial(
                metrics.infidelity, setup.model, setup.images, setup.maps[method], setup.targets, sigma=sigma,
                n_samples=n_samples, batch_size=setup.n,
            ),
            setup,
        )
        v_values.append(value)
        v_time += t
    note = (
        f"`Infidelity(loss_func='mse', perturb_patch_sizes=[{height}], n_perturb_samples={n_samples}, "
        f"perturb_func=x − I_s, normalise=False)` against `infidelity(sigma={sigma}, n_samples={n_samples})`, the "
        "target's logit, I_s vfmxai's seeded N(0, 0.1²) draws. One patch the size of the image makes Quantus's "
        "loop Yeh et al.'s estimator; its default (4-px patches replaced one after another by each image's "
        "minimum, 10 samples) measures something else, and it has no optimal scaling (vfmxai's "
        "`optimal_scale=True`, off here)."
    )
    return Row("infidelity (Gaussian)", agreement(q_values, v_values), q_time, v_time, note)


def row_sensitivity(setup: Setup, kind: str, method: str, radius: float = 0.02, n_samples: int = 10) -> Row:
    """Max- or average sensitivity of `method` under uniform L-inf noise of `radius`, the same draws in both."""
    _, _, height, width = setup.images.shape
    generator = torch.Generator().manual_seed(0)
    noise = ((torch.rand((n_samples, 3, height, width), generator=generator) * 2 - 1) * radius).numpy()
    metric = quantus.MaxSensitivity if kind == "max" else quantus.AvgSensitivity
    ours = metrics.max_sensitivity if kind == "max" else metrics.avg_sensitivity
    sensitivity = metric(
        nr_samples=n_samples, perturb_func=replayed(noise), lower_bound=radius, normalise=False, abs=False,
        disable_warnings=True,
    )
    explain = quantus_explainer(method, normalize=True)
    q_value, q_time = timed(
        lambda: sensitivity(setup.model, setup.x, setup.y, a_batch=setup.a(method), explain_func=explain, device="cpu"),
        setup,
    )
    with get(method, setup.model) as explainer:
        v_value, v_time = timed(
            partial(
                ours, explainer, setup.images, setup.targets, setup.maps[method], radius=radius, n_samples=n_samples,
                batch_size=setup.n,
            ),
            setup,
        )
    note = (
        f"{method}: `{metric.__name__}(nr_samples={n_samples}, lower_bound={radius}, perturb_func=…, "
        f"normalise=False, abs=False)` against `{ours.__name__}(radius={radius}, n_samples={n_samples})`"
    )
    if kind == "max":
        note += (
            ": max over draws of ||e(x + u) − e(x)||_F / ||e(x)||_F, u uniform in [−r, r] per channel and pixel "
            "(vfmxai's seeded draws, replayed through perturb_func), not clipped, e the min-max normalised map. "
            f"Both spend the time in the explainer ({n_samples} explanations per image), on batches of as many "
            "perturbed images as there are images."
        )
    else:
        note += ": as the row above, the mean over the draws."
    return Row(f"{kind}-sensitivity, {method}", agreement([q_value], [v_value]), q_time, v_time, note)


def row_mprt(setup: Setup, method: str) -> Row:
    """MPRT: Spearman's rho between the original maps and the maps of a cumulatively randomised model."""
    explain = quantus_explainer(method, normalize=False)
    original = explain(setup.model, setup.x, setup.y)
    mprt = quantus.MPRT(
        similarity_func=correlation_spearman, layer_order="top_down", seed=setup.seed, abs=False, normalise=False,
        disable_warnings=True,
    )
    q_scores, q_time = timed(
        lambda: mprt(setup.model, setup.x, setup.y, a_batch=original[:, None], explain_func=explain, device="cpu"),
        setup,
    )
    q_steps = len(q_scores) - 1  # its first entry is the original model against itself

    def vfmxai_mprt() -> list[tuple[Tensor, Tensor]]:
        maps = torch.from_numpy(original)
        steps = []
        for _, randomised in cascade(setup.model, setup.seed):
            with get(method, randomised) as explainer:
                after = explainer(setup.images, setup.targets, normalize=False)
            steps.append((after, metrics.spearman_correlation(maps, after)))
        return steps

    v_steps, v_time = timed(vfmxai_mprt, setup)
    # the same similarity on the same pairs: the original maps and those of each of vfmxai's randomised models
    q_rho = [
        correlation_spearman(original.reshape(setup.n, -1), after.flatten(1).numpy(), batched=True)
        for after, _ in v_steps
    ]
    v_rho = [rho for _, rho in v_steps]
    q_last = np.nanmean(list(q_scores.values())[-1])
    v_last = float(v_rho[-1].nanmean())
    note = (
        f"{method}: `MPRT(similarity_func=correlation_spearman, layer_order='top_down', abs=False, "
        "normalise=False)` against `evaluation.randomisation.cascade` + `metrics.spearman_correlation` (what "
        "`vfmxai sanity` runs). The cascades differ by definition, so the times are per image and per cascade "
        f"step ({q_steps} Quantus steps, one per module with `reset_parameters`, top down, every reset seeded "
        f"seed + 1; {len(v_steps)} vfmxai steps: head, final norm, one block at a time, then the embeddings), "
        "and the agreement is of the similarity on the same map pairs (the original maps and those of each of "
        "vfmxai's randomised models). Quantus re-draws CLIP's position embeddings from nn.Embedding's N(0, 1) "
        "and keeps the class token; vfmxai re-draws every raw parameter from its own mean and std. Mean rho "
        f"once all is randomised: Quantus {q_last:.3f}, vfmxai {v_last:.3f}."
    )
    return Row(f"MPRT, {method} (per step)", agreement(q_rho, v_rho), q_time / q_steps, v_time / len(v_steps), note)


def row_sparseness(setup: Setup, repeat: int) -> Row:
    sparseness = quantus.Sparseness(abs=True, normalise=False, disable_warnings=True)
    return _map_row(
        setup, repeat, "sparseness (Gini)",
        lambda method: sparseness(setup.model, setup.x, setup.y, a_batch=setup.a(method)),
        lambda method: metrics.sparseness(setup.maps[method]),
        "`Sparseness(abs=True, normalise=False)` against `sparseness`: Gini index of |map|. Quantus adds 1e-7 to "
        "every value first (a zero map then scores 0 by a 0/0 it avoids); its default normalise divides every "
        "map by the largest |value| in the whole batch (scale-free here).",
    )


def row_complexity(setup: Setup, repeat: int) -> Row:
    complexity = quantus.Complexity(abs=True, normalise=False, disable_warnings=True)
    return _map_row(
        setup, repeat, "complexity (entropy)",
        lambda method: complexity(setup.model, setup.x, setup.y, a_batch=setup.a(method)),
        lambda method: metrics.complexity(setup.maps[method]),
        "`Complexity(abs=True, normalise=False)` against `complexity`: entropy (nats) of |map| / sum |map|. "
        "Quantus takes log(p + 1e-12); vfmxai 0·log 0 = 0 exactly.",
    )


def row_pointing_game(setup: Setup, repeat: int) -> Row:
    game = quantus.PointingGame(normalise=False, abs=False, disable_warnings=True)
    tied = sum(int(((m == m.amax()).sum() > 1).item()) for maps in setup.maps.values() for m in maps)
    return _map_row(
        setup, repeat, "pointing game",
        lambda method: game(setup.model, setup.x, setup.y, a_batch=setup.a(method), s_batch=setup.s),
        lambda method: metrics.pointing_game(setup.maps[method], setup.masks),
        "`PointingGame(normalise=False, abs=False)` against `pointing_game(tolerance=0)` (Quantus has no "
        "tolerance). Quantus counts a hit when any maximal pixel is inside, vfmxai when the first in raster "
        f"order is (a flat map is then not a hit on every image); {tied} map(s) here have tied maxima.",
    )


def row_relevance_mass(setup: Setup, repeat: int) -> Row:
    mass = quantus.RelevanceMassAccuracy(normalise=False, abs=False, disable_warnings=True)
    return _map_row(
        setup, repeat, "relevance mass",
        lambda method: mass(setup.model, setup.x, setup.y, a_batch=setup.a(method), s_batch=setup.s),
        lambda method: metrics.relevance_mass(setup.maps[method], setup.masks),
        "`RelevanceMassAccuracy(normalise=False, abs=False)` against `relevance_mass`: sum(map·mask) / sum(map). "
        "vfmxai counts positive relevance only (Arras et al.); Quantus sums signed values (the same on these "
        "non-negative maps).",
    )


def row_relevance_rank(setup: Setup, repeat: int) -> Row:
    rank = quantus.RelevanceRankAccuracy(normalise=False, abs=False, disable_warnings=True)
    ordered = {method: order_maps(setup.maps[method])[0] for method in METHODS}
    zeros = sum(int((m == 0).sum()) for m in setup.maps["gradcam"])
    return _map_row(
        setup, repeat, "relevance rank",
        lambda method: rank(setup.model, setup.x, setup.y, a_batch=ordered[method], s_batch=setup.s),
        lambda method: metrics.relevance_rank(setup.maps[method], setup.masks),
        "`RelevanceRankAccuracy(normalise=False, abs=False)` against `relevance_rank`: the share of the top-K "
        "pixels inside the mask, K its area. Quantus is given −rank of vfmxai's tie-broken order as the map: it "
        f"breaks ties by numpy's unstable argsort (Grad-CAM's maps here have {zeros} pixels at exactly 0).",
    )


def _map_row(
    setup: Setup,
    repeat: int,
    name: str,
    quantus_run: Callable[[str], object],
    vfmxai_run: Callable[[str], object],
    note: str,
) -> Row:
    """A metric of the maps alone: each library on each method's maps, best of `repeat` runs."""
    q_values, v_values, q_time, v_time = [], [], Cost(), Cost()
    for method in METHODS:
        value, t = timed(partial(quantus_run, method), setup, repeat)
        q_values.append(value)
        q_time += t
        value, t = timed(partial(vfmxai_run, method), setup, repeat)
        v_values.append(value)
        v_time += t
    return Row(name, agreement(q_values, v_values), q_time / len(METHODS), v_time / len(METHODS), note)


def markdown(rows: list[Row], n_images: int) -> str:
    lines = [
        f"| metric | agreement ({n_images} images x {' and '.join(METHODS)}) | backbone passes/img, Quantus / vfmxai "
        "| Quantus s/img | vfmxai s/img | Quantus / vfmxai |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, row in enumerate(rows, 1):
        ratio = row.quantus.seconds / row.vfmxai.seconds
        passes = f"{row.quantus.passes:.4g} / {row.vfmxai.passes:.4g}" if row.quantus.passes else "— (maps only)"
        lines.append(
            f"| {row.metric} [{i}] | {row.agreement} | {passes} | {row.quantus.seconds:.2e} | "
            f"{row.vfmxai.seconds:.2e} | {ratio:.2f}x |"
        )
    lines.append("")
    lines += [f"[{i}] {row.note}" for i, row in enumerate(rows, 1)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=16, help="test images (default 16)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each map-only metric, the best one timed")
    parser.add_argument(
        "--model-repeat", type=int, default=3, help="runs of each metric that runs the model, the best one timed"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images < 2 or args.repeat < 1 or args.model_repeat < 1:
        parser.error("--images must be at least 2, --repeat and --model-repeat at least 1")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # Quantus warns on every call about its parameterisation
    start = time.process_time()
    setup = fit_setup(args.images, args.seed, args.model_repeat)
    rows = [
        row_pixel_flipping(setup),
        row_region_perturbation(setup),
        row_road(setup),
        row_infidelity(setup),
        row_sensitivity(setup, "max", "gradcam"),
        row_sensitivity(setup, "avg", "gradcam"),
        row_mprt(setup, "gradcam"),
        row_sparseness(setup, args.repeat),
        row_complexity(setup, args.repeat),
        row_pointing_game(setup, args.repeat),
        row_relevance_mass(setup, args.repeat),
        row_relevance_rank(setup, args.repeat),
    ]
    print(
        f"Quantus {quantus.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread, "
        f"{time.process_time() - start:.0f} CPU s in all"
    )
    print(markdown(rows, args.images))


if __name__ == "__main__":
    main()
