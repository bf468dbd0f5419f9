"""`evaluate`: every method x every image x every metric of DESIGN §4, resumable, then the result files.

Per batch of images (decoded and resized once, whatever the number of methods):
  1. the model's prediction on the clean images (for the accuracy; stored once, not per method);
  2. per method: maps = explainer(images, targets), then per image IoU at tau, the IoU counts and the
     IoU curve over tau, pointing game, energy pointing game, insertion and deletion (curves and areas).
Targets: with `target_mode="given"` (the default, as the paper) the ground-truth class is both explained
and scored in insertion/deletion; with "predicted" the model's prediction is, for both. Explaining the
class the perturbation metrics score keeps the two consistent.
Each (method, batch) result is written as it finishes (see `store`); a rerun with the same arguments
skips every finished (method, batch) and never decodes a batch whose results all exist.
With `shard=(rank, world)` only the batches whose index i has i % world == rank are computed and nothing
is collected or written beyond their per-image files; a later call without `shard` (the merge, see
`evaluation.sharding`) finds every batch done and writes the same files a single process would.
LoRA is folded into the backbone's weights while the model runs (`merged_lora`): the same function,
without the low-rank branch's extra cost on every pass.

Output folder (DESIGN §6): metrics.json, timing.json, metrics.csv, table.md, curves.png, grid.png, plus
per_image.csv (one row per image and method) and per_image/ (the resumable raw results).
metrics.json holds no clock or path: with the same inputs on CPU it is the same bytes on every run.
The model runs in eval mode, in `precision` (`vfmxai.runtime.autocast`: auto = bf16 autocast on a GPU, fp32 on
a CPU; recorded in metrics.json); maps, probabilities and every score are float32 whatever the precision.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vfmxai import explainers
from vfmxai.backbones.lora import merged_lora
from vfmxai.classifier import Classifier
from vfmxai.data import collate, loader_workers
from vfmxai.errors import VfmxaiError
from vfmxai.evaluation.report import (
    TABLE_COLUMNS,
    display_name,
    per_image_scores,
    render_csv,
    render_table,
    rounded,
    summarise,
)
from vfmxai.evaluation.store import (
    PER_IMAGE_DIR,
    PREDICTIONS,
    BatchRecord,
    PerImage,
    ResultStore,
    batch_starts,
    collect,
    model_fingerprint,
)
from vfmxai.io import atomic_write_json, atomic_write_text
from vfmxai.maps import normalize_maps
from vfmxai.metrics import (
    default_thresholds,
    energy_pointing_game,
    insertion_deletion,
    iou_counts,
    iou_curve,
    mean_iou,
    pointing_game,
)
from vfmxai.runtime import autocast, resolve_precision
from vfmxai.viz.curves import save_insdel_curves
from vfmxai.viz.grid import save_grid
from vfmxai.vocabulary import EVAL_SUBSTRATES, METHODS, TARGET_MODES, THRESHOLD_ON

TIE_SEED = 0
"""Seed of the pixel permutation that orders equal map values in insertion/deletion (recorded in the
settings, so results stored under another tie rule are never reused)."""


def resolve_methods(methods: str | Sequence[str], model: Classifier) -> tuple[list[str], dict[str, str]]:
    """(methods to run, {method: why it cannot run}) for `methods` = "all", "m1,m2" or a list.

    "all" = the DESIGN's ten keys plus any other registered method. A DESIGN key that is not registered
    (not built, or not imported) and `ala` on a model without `explain` are reported missing, never
    replaced; a name that is neither a DESIGN key nor registered is a typo and an error.
    """
    registered = explainers.available()
    if isinstance(methods, str):
        names = [*METHODS, *(m for m in registered if m not in METHODS)] if methods == "all" else methods.split(",")
    else:
        names = list(methods)
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise VfmxaiError("--methods: no method given")
    unknown = [n for n in names if n not in METHODS and n not in registered]
    if unknown:
        raise VfmxaiError(f"--methods: unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")
    missing: dict[str, str] = {}
    for name in names:
        if name not in registered:
            missing[name] = "not available in this installation (no explainer registered)"
        elif name == "ala" and not callable(getattr(model, "explain", None)):
            missing[name] = "inapplicable: the model is not an ALA model"
    return [n for n in names if n not in missing], missing


def evaluate(
    model: Classifier,
    dataset: Dataset,
    methods: str | Sequence[str],
    out: str | Path,
    *,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    steps: int = 100,
    substrate: str = "black",
    target_mode: str = "given",
    threshold: float = 0.5,
    threshold_on: str = "normalised",
    batch_size: int = 16,
    perturb_batch_size: int = 64,
    n_grid: int = 4,
    num_workers: int | None = None,
    precision: str = "auto",
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
    dataset_name: str = "",
    split: str = "test",
    shard: tuple[int, int] | None = None,
) -> dict[str, Any] | None:
    """Evaluate `methods` on every image of `dataset` (samples as `vfmxai.data`), write `out`, return metrics.json.

    The model runs where its parameters are; `config` (the run's RunConfig, or any JSON-able dict) is recorded in
    metrics.json. `method_options` ({method: {option: value}}, JSON-serialisable) go to the explainers
    and are recorded too. `perturb_batch_size`: perturbed images per model call in insertion/deletion.
    `shard=(rank, world)`: compute this shard's batches only and return None (module docstring).
    """
    options = _check_args(
        methods, method_options, steps, substrate, target_mode, threshold, threshold_on, batch_size, n_grid
    )
    if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise VfmxaiError(f"--shard {shard}: expected RANK/WORLD with 0 <= RANK < WORLD")
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    n_images = len(dataset)
    if n_images == 0:
        raise VfmxaiError(f"dataset {dataset_name or ''} split {split}: no images to evaluate")
    names, missing = resolve_methods(methods, model)
    unbounded = [m for m in names if threshold_on == "raw" and not explainers.unit_range(m)]
    if unbounded:
        raise VfmxaiError(
            f"--threshold-on raw: {', '.join(unbounded)} give maps on no fixed [0, 1] scale; raw thresholds "
            "suit ala's sigmoid map (evaluate those methods with the default --threshold-on normalised)"
        )
    model.eval()
    device = _device(model)
    out = Path(out)
    settings = {
        "dataset": dataset_name,
        "split": split,
        "n_images": n_images,
        "dataset_seed": getattr(dataset, "seed", None),
        "image_size": getattr(dataset, "image_size", None),
        "steps": steps,
        "tie_order": f"permutation seed {TIE_SEED}",
        "substrate": substrate,
        "target_mode": target_mode,
        "threshold": threshold,
        "threshold_on": threshold_on,
        "thresholds": [round(t, 6) for t in default_thresholds().tolist()],
        "batch_size": batch_size,
        "perturb_batch_size": perturb_batch_size,
        "n_grid": n_grid,
        "precision": resolve_precision(precision, device),
        "run_config": _jsonable(config, "config"),
    }
    store = ResultStore(out / PER_IMAGE_DIR)
    store.check_manifest(settings, model_fingerprint(model), {m: options.get(m, {}) for m in names})

    starts = batch_starts(n_images, batch_size)
    mine = starts if shard is None else starts[shard[0] :: shard[1]]
    records: dict[str, dict[int, BatchRecord]] = {m: {} for m in [PREDICTIONS, *names]}
    for method, by_start in records.items():
        for start in mine:
            record = store.load(method, start)
            if record is not None:
                by_start[start] = record
    pending = [s for s in mine if any(s not in by_start for by_start in records.values())]
    if shard is not None and pending:
        for stale in ("curves.png", "grid.png"):  # drawn from older results: the merge redraws them
            (out / stale).unlink(missing_ok=True)
    n_mine = sum(min(s + batch_size, n_images) - s for s in mine)
    bars = _Progress(names, n_mine, {m: _done(records[m]) for m in names}, enabled=progress)
    bars.refresh({m: records[m] for m in names})
    loader = DataLoader(
        dataset,
        batch_sampler=[list(range(s, min(s + batch_size, n_images))) for s in pending],
        collate_fn=collate,
        num_workers=loader_workers(num_workers, device.type == "cuda"),
        pin_memory=device.type == "cuda",  # workers decode the next batches while the GPU works on this one
    )
    with merged_lora(model), contextlib.closing(bars), autocast(precision, device):
        for start, batch in zip(pending, loader, strict=True):
            images, masks, labels = _batch_tensors(batch, device, dataset_name, split)
            if start not in records[PREDICTIONS]:
                records[PREDICTIONS][start] = _predict(model, images, labels, batch["id"], device)
                store.save(PREDICTIONS, start, records[PREDICTIONS][start])
            predicted = records[PREDICTIONS][start].tensors["predicted"].to(device)
            targets = labels if target_mode == "given" else predicted
            for method in names:
                if start in records[method]:
                    continue
                record = _score_batch(
                    model, method, options.get(method, {}), images, masks, targets, batch["id"], start,
                    steps=steps, substrate=substrate, threshold=threshold, threshold_on=threshold_on, n_grid=n_grid,
                    perturb_batch_size=perturb_batch_size, device=device,
                )
                store.save(method, start, record)
                records[method][start] = record
                bars.update(method, len(batch["id"]), records[method])
    if shard is not None:
        return None

    results = collect(records, starts)
    metrics = _metrics_json(results, names, missing, settings, options, config)
    write_outputs(out, metrics, results, dataset, names, figures=bool(pending))
    return metrics


def evaluate_run(
    run_dir: str | Path,
    dataset: str,
    root: str | Path | None,
    split: str,
    methods: str | Sequence[str],
    out: str | Path,
    *,
    device: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """`vfmxai evaluate`: load the run folder's model, build `split` of `dataset` as the run was trained
    (image size; for `synthetic` the run's generator seed and sizes), and `evaluate` it. `options` are
    `evaluate`'s keyword arguments."""
    model, data, run_config = load_run_split(run_dir, dataset, root, split, device)
    return evaluate(
        model, data, methods, out, config=run_config.to_dict(), dataset_name=dataset, split=split, **options
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_args(
    methods: str | Sequence[str],
    method_options: Mapping[str, Mapping[str, Any]] | None,
    steps: int,
    substrate: str,
    target_mode: str,
    threshold: float,
    threshold_on: str,
    batch_size: int,
    n_grid: int,
) -> dict[str, dict[str, Any]]:
    if not isinstance(steps, int) or steps < 1:
        raise VfmxaiError(f"--steps must be a positive integer, got {steps}")
    if substrate not in EVAL_SUBSTRATES:
        raise VfmxaiError(f"--substrate must be one of {', '.join(EVAL_SUBSTRATES)}, got '{substrate}'")
    if threshold_on not in THRESHOLD_ON:
        raise VfmxaiError(f"--threshold-on must be one of {', '.join(THRESHOLD_ON)}, got '{threshold_on}'")
    if target_mode not in TARGET_MODES:
        raise VfmxaiError(f"--target must be one of {', '.join(TARGET_MODES)}, got '{target_mode}'")
    if not 0.0 <= float(threshold) <= 1.0:
        raise VfmxaiError(f"--threshold must be in [0, 1], got {threshold}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise VfmxaiError(f"--batch-size must be a positive integer, got {batch_size}")
    if not isinstance(n_grid, int) or n_grid < 0:
        raise VfmxaiError(f"n_grid must be a non-negative integer, got {n_grid}")
    options = {str(k): dict(v) for k, v in (method_options or {}).items()}
    registered = explainers.available()
    for name, opts in options.items():
        if name not in METHODS and name not in registered:
            raise VfmxaiError(f"method_options: unknown method '{name}' (known: {', '.join(METHODS)})")
        _jsonable(opts, f"method_options['{name}']")
        if name in registered:
            explainers.check_options(name, opts)
    return options


def _jsonable(value: Any, name: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise VfmxaiError(f"{name}: must be JSON-serialisable to be recorded in metrics.json ({err})") from None


def _device(model: Classifier) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _batch_tensors(batch: dict[str, Any], device: torch.device, dataset_name: str, split: str) -> tuple[Tensor, ...]:
    if not bool(batch["has_mask"].all()):
        first = batch["id"][int((~batch["has_mask"]).nonzero()[0])]
        raise VfmxaiError(
            f"dataset {dataset_name} split {split}: image {first!r} has no object mask; every evaluated image needs one"
        )
    pinned = device.type == "cuda"  # the loader pins on CUDA, so the copies can overlap the host's work
    return tuple(batch[key].to(device, non_blocking=pinned) for key in ("image", "mask", "label"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _predict(model: Classifier, images: Tensor, labels: Tensor, ids: list[str], device: torch.device) -> BatchRecord:
    begin = time.perf_counter()
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    _sync(device)
    tensors = {"label": labels.cpu(), "predicted": predicted.cpu()}
    return BatchRecord(tensors, list(ids), time.perf_counter() - begin)


def _score_batch(
    model: Classifier,
    method: str,
    options: Mapping[str, Any],
    images: Tensor,
    masks: Tensor,
    targets: Tensor,
    ids: list[str],
    start: int,
    *,
    steps: int,
    substrate: str,
    threshold: float,
    threshold_on: str,
    n_grid: int,
    perturb_batch_size: int,
    device: torch.device,
) -> BatchRecord:
    """One method on one batch: maps, then every per-image score (stored as float32 / int64 on CPU)."""
    begin = time.perf_counter()
    try:
        explainer = explainers.get(method, model, **options)
    except TypeError as err:
        raise VfmxaiError(f"method_options for '{method}': {err}") from None
    raw_threshold = threshold_on == "raw"
    with explainer:
        resized = explainer(images, targets, normalize=False).detach()
    _sync(device)
    explained = time.perf_counter()
    if raw_threshold and not bool(((resized >= 0) & (resized <= 1)).all()):
        raise VfmxaiError(
            f"--threshold-on raw: method '{method}' returns maps outside [0, 1] "
            f"({float(resized.min()):.3g}..{float(resized.max()):.3g}); raw thresholds suit maps on a fixed [0, 1] "
            "scale such as ala's"
        )
    maps = normalize_maps(resized)
    thresholded = resized if raw_threshold else maps
    inter, union = iou_counts(thresholded, masks, threshold, not raw_threshold)
    model_mean = substrate == "model-mean"
    insdel = insertion_deletion(
        model, images, maps, targets, steps=steps, substrate="mean" if model_mean else substrate,
        substrate_value=model.backbone.mean.flatten() if model_mean else None, batch_size=perturb_batch_size,
        tie_seed=TIE_SEED,
    )
    tensors = {
        "iou": mean_iou(thresholded, masks, threshold, not raw_threshold),
        "intersection": inter,
        "union": union,
        "iou_curve": iou_curve(maps, masks),
        "pointing_game": pointing_game(maps, masks),
        "energy_pg": energy_pointing_game(maps, masks),
        "insertion": insdel.insertion,
        "deletion": insdel.deletion,
        "insertion_curve": insdel.insertion_curve,
        "deletion_curve": insdel.deletion_curve,
    }
    tensors = {k: v.cpu() if v.dtype == torch.int64 else v.float().cpu() for k, v in tensors.items()}
    in_grid = max(0, min(n_grid - start, len(ids)))
    if in_grid:
        tensors["grid_maps"] = maps[:in_grid].float().cpu()
    _sync(device)
    return BatchRecord(tensors, list(ids), explained - begin, time.perf_counter() - explained)


def _done(by_start: Mapping[int, BatchRecord]) -> int:
    return sum(len(r.ids) for r in by_start.values())


def _metrics_json(
    results: PerImage,
    names: list[str],
    missing: Mapping[str, str],
    settings: Mapping[str, Any],
    options: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any] | None,
) -> dict[str, Any]:
    methods, best_tau = {}, {}
    for name in names:
        methods[name], best_tau[name] = summarise(results.methods[name])
    evaluation = {k: v for k, v in settings.items() if k not in ("run_config", "dataset", "split", "n_images")}
    evaluation["methods"] = list(names) + list(missing)
    evaluation["method_options"] = {m: {**explainers.default_options(m), **options.get(m, {})} for m in names}
    return {
        "dataset": settings["dataset"],
        "split": settings["split"],
        "n_images": settings["n_images"],
        "config": {"evaluation": evaluation, "run": _jsonable(config, "config")},
        "methods": methods,
        "best_tau": best_tau,
        "accuracy": rounded(float(np.mean(results.labels == results.predicted))),
        "missing": list(missing),
        "missing_reasons": dict(missing),
    }


def write_outputs(
    out: Path,
    metrics: Mapping[str, Any],
    results: PerImage,
    dataset: Dataset,
    names: Sequence[str],
    figures: bool = True,
) -> None:
    """metrics.json, timing.json, metrics.csv, table.md, per_image.csv, curves.png and grid.png.

    With `figures=False` (a rerun that computed nothing new) existing PNGs are kept: they were drawn from
    the same per-image files.
    """
    atomic_write_json(out / "metrics.json", metrics)
    n = len(results.ids)
    atomic_write_json(
        out / "timing.json",
        {
            "device": str(_device_name()),
            "n_images": n,
            "seconds_per_image": {m: results.seconds[m] / n for m in names},
            "metric_seconds_per_image": {m: results.metric_seconds[m] / n for m in names},
            "prediction_seconds_per_image": results.prediction_seconds / n,
        },
    )
    atomic_write_text(out / "metrics.csv", render_csv(metrics["methods"]))
    atomic_write_text(out / "table.md", render_markdown(metrics))
    atomic_write_text(out / "per_image.csv", _per_image_csv(results, names))
    if not names or (not figures and (out / "curves.png").is_file() and (out / "grid.png").is_file()):
        return
    curves = {
        m: (results.methods[m]["insertion_curve"].mean(axis=0), results.methods[m]["deletion_curve"].mean(axis=0))
        for m in names
    }
    save_insdel_curves(curves, out / "curves.png", labels={m: display_name(m) for m in names})
    n_grid = min((len(v) for v in results.grid_maps.values()), default=0)
    if n_grid:
        images = torch.stack([dataset[i]["image"] for i in range(n_grid)])
        save_grid(images, [(display_name(m), results.grid_maps[m][:n_grid]) for m in names], out / "grid.png")


def render_markdown(metrics: Mapping[str, Any], p_values: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """table.md: the Table 2 layout, then the accuracy, the settings and the methods that could not run."""
    evaluation = metrics["config"]["evaluation"]
    title = f"# {metrics['dataset'] or 'dataset'} / {metrics['split']} — {metrics['n_images']} images"
    if "seeds" in metrics:
        title += f", {len(metrics['seeds'])} seed(s) (mean ± std over seeds)"
    lines = [title]
    if metrics["methods"]:
        lines.append(render_table(metrics["methods"], TABLE_COLUMNS, p_values).strip())
    accuracy = f"{metrics['accuracy']:.3f}"
    if "accuracy_std" in metrics:
        accuracy += f" ± {metrics['accuracy_std']:.3f}"
    lines.append(f"Accuracy of the explained model: {accuracy}.")
    lines.append(
        f"mIoU at τ = {evaluation['threshold']}{_threshold_words(evaluation)}; "
        f"insertion/deletion with {evaluation['steps']} steps, "
        f"{evaluation['substrate']} substrate; maps and curves for the {_target_words(evaluation['target_mode'])}."
    )
    for method, reason in metrics.get("missing_reasons", {}).items():
        lines.append(f"Missing: {method} — {reason}.")
    return "\n\n".join(lines) + "\n"


def _threshold_words(evaluation: Mapping[str, Any]) -> str:
    return " on the raw map" if evaluation.get("threshold_on") == "raw" else ""


def _target_words(mode: str) -> str:
    return "ground-truth class" if mode == "given" else "predicted class"


def _per_image_csv(results: PerImage, names: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    metrics = ("miou", "insertion", "deletion", "id", "pointing_game", "energy_pg")
    writer.writerow(["id", "label", "predicted", "method", *metrics])
    for method in names:
        scores = per_image_scores(results.methods[method])
        for i, image_id in enumerate(results.ids):
            row = [repr(rounded(scores[m][i])) for m in metrics]
            writer.writerow([image_id, int(results.labels[i]), int(results.predicted[i]), method, *row])
    return buffer.getvalue()


def _device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    return "cpu"


class _Progress:
    """One bar per method (tqdm on stderr) with the running mean of each per-image metric."""

    def __init__(self, names: Sequence[str], total: int, done: Mapping[str, int], enabled: bool):
        self.bars: dict[str, Any] = {}
        self.enabled = enabled and bool(names)
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        width = max(len(n) for n in names)
        for position, name in enumerate(names):
            if tqdm is None:
                self.bars[name] = _Line(name, total, done[name])
            else:
                self.bars[name] = tqdm(
                    total=total, initial=done[name], desc=name.ljust(width), unit="img", position=position,
                    leave=True, file=sys.stderr, dynamic_ncols=True,
                )

    def refresh(self, records: Mapping[str, Mapping[int, BatchRecord]]) -> None:
        for name, by_start in records.items():
            if by_start and self.enabled:
                self.bars[name].set_postfix_str(_running_means(by_start), refresh=True)

    def update(self, name: str, n: int, by_start: Mapping[int, BatchRecord]) -> None:
        if self.enabled:
            self.bars[name].set_postfix_str(_running_means(by_start), refresh=False)
            self.bars[name].update(n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class _Line:
    """The fallback without tqdm: one line on stderr per finished batch."""

    def __init__(self, name: str, total: int, done: int):
        self.name, self.total, self.done, self.postfix = name, total, done, ""

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def update(self, n: int) -> None:
        self.done += n
        print(f"{self.name}: {self.done}/{self.total} images  {self.postfix}", file=sys.stderr, flush=True)

    def close(self) -> None:
        return None


def _running_means(by_start: Mapping[int, BatchRecord]) -> str:
    def mean(key: str) -> float:
        return float(torch.cat([r.tensors[key] for r in by_start.values()]).double().mean())

    ins, dele = mean("insertion"), mean("deletion")
    values = {"mIoU": mean("iou"), "ins": ins, "del": dele, "ID": ins - dele, "PG": mean("pointing_game")}
    return " ".join(f"{k} {v:.3f}" for k, v in values.items() if not math.isnan(v))



def load_run_split(
    run_dir: str | Path, dataset: str, root: str | Path | None, split: str, device: str | None = None
) -> tuple[Classifier, Dataset, Any]:
    """The run folder's model and `split` of `dataset`, built as the run was trained (image size; for
    `synthetic` the run's generator seed and sizes): what `vfmxai evaluate` scores."""
    from vfmxai.training import load_run
    from vfmxai.training.train import dataset_split

    model, run_config, _ = load_run(run_dir, device or default_device())
    run_config.data.dataset = dataset
    run_config.data.root = None if root is None else str(root)
    return model, dataset_split(run_config, split, run_config.backbone.image_size), run_config
