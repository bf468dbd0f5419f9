"""The files of an evaluation folder, written from every image's stored results.

metrics.json (no clock or path: with the same inputs on CPU, the same bytes on every run), timing.json,
metrics.csv, table.md, per_image.csv (one row per image and method), curves.png, grid.png and report.html
(`evaluation.html_report`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vfmxai import explainers
from vfmxai.evaluation.html_report import write_evaluation_report
from vfmxai.evaluation.report import (
    per_image_scores,
    render_csv,
    render_markdown,
    rounded,
    source_line,
    summarise,
)
from vfmxai.evaluation.settings import jsonable
from vfmxai.evaluation.store import PerImage
from vfmxai.explainers import display_name
from vfmxai.io import atomic_write_json, atomic_write_text
from vfmxai.viz.curves import save_insdel_curves
from vfmxai.viz.grid import save_grid


def metrics_json(
    results: PerImage,
    names: list[str],
    missing: Mapping[str, str],
    recorded: Mapping[str, Any],
    options: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any] | None,
) -> dict[str, Any]:
    share = results.pictures.get("mask_share")
    has_object = None if share is None else share.numpy() > 0
    methods, best_tau = {}, {}
    for name in names:
        methods[name], best_tau[name] = summarise(results.methods[name], has_object)
    evaluation = {k: v for k, v in recorded.items() if k not in ("run_config", "dataset", "split", "n_images")}
    evaluation["methods"] = list(names) + list(missing)
    evaluation["method_options"] = {m: {**explainers.default_options(m), **options.get(m, {})} for m in names}
    return {
        "dataset": recorded["dataset"],
        "split": recorded["split"],
        "n_images": recorded["n_images"],
        "config": {"evaluation": evaluation, "run": jsonable(config, "config")},
        "methods": methods,
        "best_tau": best_tau,
        "accuracy": rounded(float(np.mean(results.labels == results.predicted))),
        "missing": list(missing),
        "missing_reasons": dict(missing),
        "empty_masks": [] if has_object is None else [i for i, h in zip(results.ids, has_object, strict=True) if not h],
    }


def write_outputs(
    out: Path,
    metrics: Mapping[str, Any],
    results: PerImage,
    dataset: Dataset,
    names: Sequence[str],
    figures: bool = True,
) -> None:
    """metrics.json, timing.json, metrics.csv, table.md, per_image.csv, curves.png, grid.png and report.html.

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
    atomic_write_text(out / "per_image.csv", per_image_csv(results, names))
    drawn = ("curves.png", "grid.png") if _with_curves(results, names) else ("grid.png",)
    if names and (figures or not all((out / name).is_file() for name in drawn)):
        _draw_figures(out, results, dataset, names, source_line(metrics))
    write_evaluation_report(out, metrics, results, names, getattr(dataset, "class_names", None))


def _with_curves(results: PerImage, names: Sequence[str]) -> bool:
    """Whether insertion/deletion was scored (curves.png draws its curves)."""
    return all("insertion_curve" in results.methods[m] for m in names)


def _draw_figures(out: Path, results: PerImage, dataset: Dataset, names: Sequence[str], source: str) -> None:
    """curves.png and grid.png, each saying what it was made from (`source`)."""
    if _with_curves(results, names):
        curves = {
            m: (results.methods[m]["insertion_curve"].mean(axis=0), results.methods[m]["deletion_curve"].mean(axis=0))
            for m in names
        }
        save_insdel_curves(curves, out / "curves.png", labels={m: display_name(m) for m in names}, source=source)
    n_grid = min((len(v) for v in results.grid_maps.values()), default=0)
    if n_grid:
        images = torch.stack([dataset[i]["image"] for i in range(n_grid)])
        columns = [(display_name(m), results.grid_maps[m][:n_grid]) for m in names]
        save_grid(images, columns, out / "grid.png", caption=source)


PER_IMAGE_RENAMED = {"id": "id_score"}
"""per_image.csv names the ID score `id_score`, since `image_id` names the image (one `id` column for both would
let `csv.DictReader` return the score for the image); every other score column is named as in metrics.json."""


def per_image_csv(results: PerImage, names: Sequence[str]) -> str:
    """One row per image and method: its id, label and prediction, and every per-image score of the chosen
    metrics (`report.per_image_scores`; the dataset-level mIoU and best-τ mIoU have none)."""
    scores = {m: per_image_scores(results.methods[m]) for m in names}
    metrics = list(next(iter(scores.values()))) if scores else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image_id", "label", "predicted", "method", *(PER_IMAGE_RENAMED.get(m, m) for m in metrics)])
    for method in names:
        for i, image_id in enumerate(results.ids):
            row = [repr(rounded(scores[method][m][i])) for m in metrics]
            writer.writerow([image_id, int(results.labels[i]), int(results.predicted[i]), method, *row])
    return buffer.getvalue()


def _device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    return "cpu"
