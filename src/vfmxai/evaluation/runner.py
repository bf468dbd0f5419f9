"""`evaluate`: every method x every image x every metric, resumable; one model, one dataset split.

Per batch of images (decoded and resized once, whatever the number of methods):
  1. the model's prediction on the clean images (for the accuracy; stored once, not per method), with the
     mask's share of the image and 64 px image and mask thumbnails for report.html;
  2. per method: maps = explainer(images, targets), then every chosen metric per image (`settings.metrics`,
     `evaluation.scoring`; by default the paper's: IoU at tau, the IoU counts and the IoU curve over tau,
     pointing game, energy pointing game, insertion and deletion (curves and areas)), and a 32 px thumbnail
     of the map.
Targets: with `target_mode="given"` (the default, as the paper) the ground-truth class is both explained
and scored in insertion/deletion; with "predicted" the model's prediction is, for both. Explaining the
class the perturbation metrics score keeps the two consistent.
Each (method, batch) result is written as it finishes (see `store`); a rerun with the same arguments
skips every finished (method, batch) and never decodes a batch whose results all exist.
With a `Shard` only this rank's batches are computed; after the other ranks (`Shard.join`), rank 0 writes
the files a single process would and the other ranks return None (`evaluation.sharding`).
LoRA is folded into the backbone's weights while the model runs (`merged_lora`): the same function,
without the low-rank branch's extra cost on every pass.
The model runs in eval mode, in `settings.precision` (`vfmxai.runtime.autocast`: auto = bf16 autocast on a
GPU, fp32 on a CPU; recorded in metrics.json); maps, probabilities and every score are float32 whatever the
precision. The files written: `evaluation.outputs`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vfmxai import explainers
from vfmxai.backbones.lora import merged_lora
from vfmxai.classifier import Classifier
from vfmxai.data import collate, loader_workers
from vfmxai.data.base import dataset_fingerprint
from vfmxai.errors import VfmxaiError
from vfmxai.evaluation.metric_set import resolved_options
from vfmxai.evaluation.outputs import metrics_json, write_outputs
from vfmxai.evaluation.progress import Progress
from vfmxai.evaluation.scoring import BatchMaps, Scoring, score_metrics
from vfmxai.evaluation.settings import EvaluationSettings, jsonable
from vfmxai.evaluation.sharding import Shard
from vfmxai.evaluation.store import (
    IMAGE_THUMBNAIL,
    MAP_THUMBNAIL,
    PER_IMAGE_DIR,
    PREDICTIONS,
    BatchRecord,
    ResultStore,
    batch_starts,
    collect,
    model_fingerprint,
)
from vfmxai.io import check_out_folder
from vfmxai.maps import normalize_maps
from vfmxai.metrics import default_thresholds
from vfmxai.runtime import autocast, resolve_precision
from vfmxai.vocabulary import DEFAULT_EVAL_METRICS, METHODS


def resolve_methods(methods: str | Sequence[str], model: Classifier) -> tuple[list[str], dict[str, str]]:
    """(methods to run, {method: why it cannot run}) for `methods` = "paper", "all", "m1,m2" or a list.

    "paper" = the ten keys of `vocabulary.METHODS` (the ALA paper's Table 2, the commands' default); "all" = those
    plus any other registered method (the newer ViT methods). One of the ten that is not
    registered (not built, or not imported) and `ala` on a model without `explain` are reported missing, never
    replaced; a name that is neither one of the ten nor registered is a typo and an error.
    """
    registered = explainers.available()
    names = method_names(methods)
    missing: dict[str, str] = {}
    for name in names:
        if name not in registered:
            missing[name] = "not available in this installation (no explainer registered)"
        elif name == "ala" and not callable(getattr(model, "explain", None)):
            missing[name] = "inapplicable: the model is not an ALA model"
        elif reason := explainers.inapplicable(name, model):
            missing[name] = f"inapplicable: {reason}"
    return [n for n in names if n not in missing], missing


def chosen_methods(methods: str | Sequence[str], method_options: Mapping[str, Any]) -> list[str]:
    """`method_names(methods)`, and one line for a method option naming a method not among them (an option that
    would be silently ignored: most likely a typo in --methods or --method-option)."""
    chosen = method_names(methods)
    if unused := [m for m in method_options if m not in chosen]:
        raise VfmxaiError(
            f"--method-option {unused[0]}.*: method '{unused[0]}' is not among --methods ({', '.join(chosen)})"
        )
    return chosen


def method_names(methods: str | Sequence[str]) -> list[str]:
    """The method keys `methods` names ("paper", "all", "m1,m2" or a list; duplicates dropped), each one of the
    ten or registered; else one line naming the typos. Needs no model, so a command checks it before loading one."""
    registered = explainers.available()
    if isinstance(methods, str):
        names = (
            list(METHODS) if methods == "paper"
            else [*METHODS, *(m for m in registered if m not in METHODS)] if methods == "all"
            else methods.split(",")
        )
    else:
        names = list(methods)
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise VfmxaiError("--methods: no method given")
    if grouped := [n for n in ("paper", "all") if n in names]:
        raise VfmxaiError(f"--methods: '{grouped[0]}' names a whole set of methods; give it alone or list the methods")
    unknown = [n for n in names if n not in METHODS and n not in registered]
    if unknown:
        known = ", ".join(dict.fromkeys([*METHODS, *registered]))
        raise VfmxaiError(f"--methods: unknown method(s) {', '.join(unknown)} (known: {known})")
    return names


def evaluate(
    model: Classifier,
    dataset: Dataset,
    methods: str | Sequence[str],
    out: str | Path,
    settings: EvaluationSettings | None = None,
    *,
    dataset_name: str = "",
    split: str = "test",
    config: Any = None,
    progress: bool = True,
    shard: Shard | None = None,
) -> dict[str, Any] | None:
    """Evaluate `methods` on every image of `dataset` (samples as `vfmxai.data`), write `out`, return metrics.json.

    The model runs where its parameters are. `dataset_name`, `split` and `config` (the run's RunConfig, or
    any JSON-able dict) are recorded in metrics.json. With `shard`: this rank's batches, then rank 0 merges
    and returns metrics.json; the other ranks return None (module docstring).
    """
    settings = settings or EvaluationSettings()
    out = check_out_folder(out)
    config = jsonable(config.to_dict() if hasattr(config, "to_dict") else config, "config")
    n_images = len(dataset)
    if n_images == 0:
        raise VfmxaiError(f"dataset {dataset_name or ''} split {split}: no images to evaluate")
    names, missing = resolve_methods(methods, model)
    unbounded = [m for m in names if settings.threshold_on == "raw" and not explainers.unit_range(m)]
    if unbounded:
        raise VfmxaiError(
            f"--threshold-on raw: {', '.join(unbounded)} give maps on no fixed [0, 1] scale; raw thresholds "
            "suit ala's sigmoid map (evaluate those methods with the default --threshold-on normalised)"
        )
    model.eval()
    device = _device(model)
    recorded = _recorded_settings(settings, dataset, dataset_name, split, device, config)
    store = ResultStore(out / PER_IMAGE_DIR)
    store.check_manifest(
        recorded, model_fingerprint(model), dataset_fingerprint(dataset), {m: settings.options_for(m) for m in names},
        before_metrics=LEGACY_METRICS,
    )

    starts = batch_starts(n_images, settings.batch_size)
    mine = starts if shard is None else shard.mine(starts)
    records: dict[str, dict[int, BatchRecord]] = {m: {} for m in [PREDICTIONS, *names]}
    _load_records(store, records, mine)
    pending = [s for s in mine if any(s not in by_start for by_start in records.values())]
    if shard is not None and pending:
        for stale in ("curves.png", "grid.png"):  # drawn from older results: the merge redraws them
            (out / stale).unlink(missing_ok=True)
    n_mine = sum(min(s + settings.batch_size, n_images) - s for s in mine)
    shown = progress and (shard is None or shard.rank == 0)
    bars = Progress(names, n_mine, {m: _done(records[m]) for m in names}, enabled=shown)
    bars.refresh({m: records[m] for m in names})
    loader = DataLoader(
        dataset,
        batch_sampler=[list(range(s, min(s + settings.batch_size, n_images))) for s in pending],
        collate_fn=collate,
        num_workers=loader_workers(settings.num_workers, device.type == "cuda"),
        pin_memory=device.type == "cuda",  # workers decode the next batches while the GPU works on this one
    )
    with merged_lora(model), contextlib.closing(bars), autocast(settings.precision, device):
        for start, batch in zip(pending, loader, strict=True):
            images, masks, labels = _batch_tensors(batch, device, dataset_name, split)
            if start not in records[PREDICTIONS]:
                records[PREDICTIONS][start] = _predict(model, images, masks, labels, batch["id"], device)
                store.save(PREDICTIONS, start, records[PREDICTIONS][start])
            predicted = records[PREDICTIONS][start].tensors["predicted"].to(device)
            targets = labels if settings.target_mode == "given" else predicted
            for method in names:
                if start in records[method]:
                    continue
                record = _score_batch(model, method, images, masks, targets, batch["id"], start, settings, device)
                store.save(method, start, record)
                records[method][start] = record
                bars.update(method, len(batch["id"]), records[method])
    if shard is not None:
        shard.join([store.path(m, s) for m in records for s in starts])
        if shard.rank != 0:
            return None
        _load_records(store, records, starts)

    results = collect(records, starts)
    metrics = metrics_json(results, names, missing, recorded, settings.method_options, config)
    write_outputs(out, metrics, results, dataset, names, figures=bool(pending))
    return metrics


def _recorded_settings(
    settings: EvaluationSettings,
    dataset: Dataset,
    dataset_name: str,
    split: str,
    device: torch.device,
    config: Any,
) -> dict[str, Any]:
    """What metrics.json records of the evaluation and what keys its stored results (`store`)."""
    return {
        "dataset": dataset_name,
        "split": split,
        "n_images": len(dataset),
        "dataset_seed": getattr(dataset, "seed", None),
        "image_size": getattr(dataset, "image_size", None),
        "steps": settings.steps,
        "tie_order": f"permutation seed {settings.tie_seed}",
        "substrate": settings.substrate,
        "target_mode": settings.target_mode,
        "threshold": settings.threshold,
        "threshold_on": settings.threshold_on,
        "thresholds": [round(t, 6) for t in default_thresholds().tolist()],
        "batch_size": settings.batch_size,
        "perturb_batch_size": settings.perturb_batch_size,
        "n_grid": settings.n_grid,
        "precision": resolve_precision(settings.precision, device),
        "metrics": list(settings.metrics),
        "metric_options": settings.resolved_metric_options(),
        "run_config": config,
    }


LEGACY_METRICS = {
    "metrics": list(DEFAULT_EVAL_METRICS),
    "metric_options": resolved_options(DEFAULT_EVAL_METRICS, {}, {}),
}
"""What a manifest written before `--metrics` existed was scored with: the paper's set, default options."""


def _load_records(store: ResultStore, records: dict[str, dict[int, BatchRecord]], starts: Sequence[int]) -> None:
    """Add to `records` every stored (method, batch) result of `starts` not already there."""
    for method, by_start in records.items():
        for start in starts:
            if start not in by_start and (record := store.load(method, start)) is not None:
                by_start[start] = record


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


def _predict(
    model: Classifier, images: Tensor, masks: Tensor, labels: Tensor, ids: list[str], device: torch.device
) -> BatchRecord:
    """The predictions, and the pictures report.html shows (mask share, image and mask thumbnails; not timed)."""
    begin = time.perf_counter()
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    _sync(device)
    seconds = time.perf_counter() - begin
    tensors = {
        "label": labels.cpu(),
        "predicted": predicted.cpu(),
        "mask_share": masks.float().mean(dim=(1, 2)).cpu(),
        "thumbnail": _thumbnail(images.float(), IMAGE_THUMBNAIL),
        "mask_thumbnail": _thumbnail(masks[:, None].float(), IMAGE_THUMBNAIL)[:, 0],
    }
    return BatchRecord(tensors, list(ids), seconds)


def _thumbnail(x: Tensor, size: int) -> Tensor:
    """(B, C, H, W) in [0, 1] -> (B, C, size, size) uint8 on the CPU (area-averaged; a non-square image is
    squashed, as the report shows it in a square tile)."""
    return (F.interpolate(x, size=(size, size), mode="area") * 255).round().clamp(0, 255).to(torch.uint8).cpu()


def _score_batch(
    model: Classifier,
    method: str,
    images: Tensor,
    masks: Tensor,
    targets: Tensor,
    ids: list[str],
    start: int,
    settings: EvaluationSettings,
    device: torch.device,
) -> BatchRecord:
    """One method on one batch: maps, then every per-image score (stored as float32 / int64 on CPU)."""
    begin = time.perf_counter()
    try:
        explainer = explainers.get(method, model, **settings.options_for(method))
    except TypeError as err:
        raise VfmxaiError(f"method_options for '{method}': {err}") from None
    raw_threshold = settings.threshold_on == "raw"
    with explainer:  # open while the metrics run: the sensitivities explain perturbed images
        resized = explainer(images, targets, normalize=False).detach()
        _sync(device)
        explained = time.perf_counter()
        if raw_threshold and not bool(((resized >= 0) & (resized <= 1)).all()):
            raise VfmxaiError(
                f"--threshold-on raw: method '{method}' returns maps outside [0, 1] "
                f"({float(resized.min()):.3g}..{float(resized.max()):.3g}); raw thresholds suit maps on a fixed "
                "[0, 1] scale such as ala's"
            )
        maps = normalize_maps(resized)
        batch = BatchMaps(
            model, images, masks, targets, resized, maps, resized if raw_threshold else maps,
            lambda x, t: explainer(x, t).detach(),
        )
        scoring = Scoring(
            settings.threshold, not raw_threshold, settings.steps, settings.substrate, settings.tie_seed,
            settings.batch_size, settings.perturb_batch_size, settings.resolved_metric_options(),
        )
        tensors = score_metrics(settings.metrics, batch, scoring)
    tensors = {k: v.cpu() if v.dtype == torch.int64 else v.float().cpu() for k, v in tensors.items()}
    tensors["thumbnail"] = _thumbnail(maps[:, None].float(), MAP_THUMBNAIL)[:, 0]
    in_grid = max(0, min(settings.n_grid - start, len(ids)))
    if in_grid:
        tensors["grid_maps"] = maps[:in_grid].float().cpu()
    _sync(device)
    return BatchRecord(tensors, list(ids), explained - begin, time.perf_counter() - explained)


def _done(by_start: Mapping[int, BatchRecord]) -> int:
    return sum(len(r.ids) for r in by_start.values())
