"""report.html of an evaluation folder: what `vfmxai.viz.report_html` draws, gathered from the results.

`write_evaluation_report` runs at the end of every `evaluate` (`outputs.write_outputs`), from the per-image
results it already holds; `reproduce.write_reproduce_report` uses the pieces here for the aggregate over seeds.
Versions are those of the process that writes the page (the one that evaluated, unless a rerun computed
nothing new); the page records no clock time, so the same results give the same page but for the timings.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from vfmxai.evaluation.report import HEADERS, LOWER_IS_BETTER, per_image_scores, table_columns
from vfmxai.evaluation.store import PerImage
from vfmxai.explainers import display_name
from vfmxai.viz.report_html import DETAIL_ONLY, IMAGE_METRICS, ReportImages, SummaryTable, write_report_html

REPORT = "report.html"
FIGURES = {"grid.png": "Method grid: the first images, each method's map", "curves.png":
           "Insertion and deletion curves, mean over images"}
SHORT_HEADERS = {
    "aopc_morf": "AOPC MoRF", "aopc_lerf": "AOPC LeRF", "road_morf": "ROAD MoRF", "road_lerf": "ROAD LeRF",
    "sparseness": "Gini", "complexity": "Entropy", "max_sensitivity": "MaxSens", "avg_sensitivity": "AvgSens",
    "infidelity": "INFD", "relevance_mass": "RMA", "relevance_rank": "RRA",
}
"""The per-image table's headers of the metrics beyond the paper's (IMAGE_METRICS, DETAIL_ONLY)."""
VERSIONED = ("vfmxai", "torch", "transformers", "peft", "lightning", "numpy", "safetensors")


def metrics_table(metrics: Mapping[str, Any], title: str, p_metric: str = "miou") -> SummaryTable:
    """The Table 2 layout of a metrics.json (an evaluation's, or an aggregate's with `_std` and p-values); rows in
    the order the methods were asked for (metrics.json on disk holds them sorted by name)."""
    rows = {m: metrics["methods"][m] for m in method_order(metrics)}
    p_values = metrics.get("p_values") or {}
    reference = metrics.get("paired_test", {}).get("reference", "ala")
    p_column = None
    if p_values and reference in rows:
        header = f"p vs {display_name(reference)} ({HEADERS[p_metric][:-2]})"
        p_column = (header, {m: ps[p_metric] for m, ps in p_values.items() if p_metric in ps})
    return SummaryTable(
        title, rows, [(c, HEADERS[c]) for c in table_columns(rows)],
        labels={m: display_name(m) for m in rows}, lower_is_better=LOWER_IS_BETTER,
        p_values=p_column, note=summary_line(metrics),
    )


def method_order(metrics: Mapping[str, Any]) -> list[str]:
    """The evaluated methods of a metrics.json in the order they were asked for."""
    asked = metrics.get("config", {}).get("evaluation", {}).get("methods", [])
    return [m for m in asked if m in metrics["methods"]] + [m for m in metrics["methods"] if m not in asked]


def summary_line(metrics: Mapping[str, Any]) -> str:
    accuracy = f"{metrics['accuracy']:.3f}" if "accuracy" in metrics else "—"
    if "accuracy_std" in metrics:
        accuracy += f" ± {metrics['accuracy_std']:.3f}"
    missing = "; ".join(f"{m}: {why}" for m, why in metrics.get("missing_reasons", {}).items())
    return f"Accuracy of the explained model: {accuracy}." + (f" Missing — {missing}." if missing else "")


def report_images(results: PerImage, names: Sequence[str], class_names: Sequence[str] | None) -> ReportImages:
    """The per-image part of the page from `results`; the target's probability is the deletion curve's first
    point (the clean image), the same in every method's curve (none without insertion/deletion)."""
    curves = {
        m: (results.methods[m]["insertion_curve"], results.methods[m]["deletion_curve"])
        for m in names
        if "insertion_curve" in results.methods[m]
    }
    pictures = results.pictures
    scores = {m: per_image_scores(results.methods[m]) for m in names}
    present = set(next(iter(scores.values()), {}))
    table = [(k, h) for k, h in IMAGE_METRICS if k in present]
    table += [(k, h) for k, h in SHORT_HEADERS.items() if k in present]
    return ReportImages(
        ids=results.ids,
        labels=results.labels,
        predicted=results.predicted,
        scores=scores,
        curves=curves,
        class_names=list(class_names) if class_names else None,
        mask_share=pictures["mask_share"].numpy() if "mask_share" in pictures else None,
        target_prob=curves[names[0]][1][:, 0] if names and names[0] in curves else None,
        images=pictures.get("thumbnail"),
        masks=pictures.get("mask_thumbnail"),
        maps={m: results.map_thumbnails[m] for m in names if m in results.map_thumbnails},
        metrics=table,
        detail_metrics=[(k, h) for k, h in DETAIL_ONLY if k in present],
        lower=sorted(k for k in LOWER_IS_BETTER if k in present),
    )


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def title_of(metrics: Mapping[str, Any]) -> str:
    return f"{metrics['dataset'] or 'dataset'} / {metrics['split']} — {metrics['n_images']} images"


def write_evaluation_report(
    out: Path, metrics: Mapping[str, Any], results: PerImage, names: Sequence[str], class_names: Sequence[str] | None
) -> Path:
    """OUT/report.html of one evaluation; the figures and timing.json already written in `out` are embedded."""
    timing_path = out / "timing.json"
    figures = {caption: out / name for name, caption in FIGURES.items()}
    figures.update({f"DAAM per block: {p.name}": p for p in sorted(out.glob("*.daam.blocks.png"))})
    details = {
        "Evaluation settings": metrics["config"]["evaluation"],
        "Run config (seeds in train.seed, data.seed)": metrics["config"]["run"],
        "Timings (timing.json)": json.loads(timing_path.read_text()) if timing_path.is_file() else {},
        "Versions": versions(),
    }
    return write_report_html(
        out / REPORT, title_of(metrics), [metrics_table(metrics, "Methods (paper Table 2 layout)")],
        report_images(results, names, class_names), {m: display_name(m) for m in names}, figures, details,
    )
