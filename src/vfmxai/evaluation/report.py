"""From per-image scores to the numbers of metrics.json, and those numbers as CSV and markdown tables.

Table layout: the ALA paper's Table 2 (methods as rows; mIoU, Insertion, Deletion, ID Score), followed by
the localisation scores the paper does not report (dataset-level mIoU, best-tau mIoU, pointing game, energy
pointing game; docs/design-notes.md, Metrics), then the columns of any other chosen metric (`--metrics`);
a table shows the columns its rows hold.
Values print with 3 decimals as the paper's, "mean ± std" where a spread over seeds exists; the best
value of each column (highest, lowest for Deletion, compared as printed) is bold, ties all bold.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfmxai.evaluation.metric_set import ALL_COLUMNS, DEFAULT_COLUMNS
from vfmxai.explainers import display_name
from vfmxai.metrics import best_tau_iou, dataset_iou
from vfmxai.vocabulary import DEFAULT_EVAL_METRICS

METRICS = DEFAULT_COLUMNS
"""The keys of each method's entry in metrics.json with the default metrics (the paper's set); other
`--metrics` give `metric_set.columns_of(...)`."""
TABLE_COLUMNS = ("miou", "insertion", "deletion", "id", "miou_dataset", "miou_best_tau", "pointing_game", "energy_pg")
"""The paper's columns in Table 2's order; the columns of other chosen metrics follow them (`table_columns`)."""
PAIRED_METRICS = ("miou", "insertion", "deletion", "id", "pointing_game", "energy_pg")
"""The paper's metrics with one score per image: the ones with a paired test between two methods."""
LOWER_IS_BETTER = frozenset(
    {"deletion", "aopc_lerf", "road_morf", "complexity", "max_sensitivity", "avg_sensitivity", "infidelity"}
)
HEADERS = {
    "miou": "mIoU ↑",
    "insertion": "Insertion ↑",
    "deletion": "Deletion ↓",
    "id": "ID Score ↑",
    "miou_dataset": "mIoU (dataset) ↑",
    "miou_best_tau": "mIoU (best τ) ↑",
    "pointing_game": "Pointing game ↑",
    "energy_pg": "Energy PG ↑",
    "aopc_morf": "AOPC MoRF ↑",
    "aopc_lerf": "AOPC LeRF ↓",
    "road_morf": "ROAD MoRF ↓",
    "road_lerf": "ROAD LeRF ↑",
    "sparseness": "Sparseness ↑",
    "complexity": "Complexity ↓",
    "max_sensitivity": "Max-sensitivity ↓",
    "avg_sensitivity": "Avg-sensitivity ↓",
    "infidelity": "Infidelity ↓",
    "relevance_mass": "Relevance mass ↑",
    "relevance_rank": "Relevance rank ↑",
}
DIGITS = 6
"""metrics.json rounds every score to 6 decimals: the same text on every run, whatever the summation order."""


def source_line(metrics: Mapping[str, Any]) -> str:
    """What a result was made from, for its figures: backbone folder + classifier, data folder (its last two
    parts; else the dataset) and split, images: e.g. 'dinov2-small + ala, assets/pets test: 34 images'."""
    run = (metrics.get("config") or {}).get("run") or {}
    backbone = Path(str(run.get("backbone", {}).get("name", ""))).name or "model"
    where = "/".join(Path(str(run.get("data", {}).get("root") or "")).parts[-2:]) or metrics.get("dataset", "")
    return (
        f"{backbone} + {run.get('classifier', 'model')}, {where} {metrics.get('split', '')}: "
        f"{metrics.get('n_images', '?')} images"
    )


def rounded(value: float) -> float:
    return round(float(value), DIGITS)


def table_columns(rows: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    """The columns of a table of `rows`: the paper's in Table 2's order, then the other metrics' in vocabulary order."""
    present = {k for row in rows.values() for k in row}
    return tuple(c for c in (*TABLE_COLUMNS, *(c for c in ALL_COLUMNS if c not in TABLE_COLUMNS)) if c in present)


PER_IMAGE_SOURCES = {
    "miou": "iou", "insertion": "insertion", "deletion": "deletion", "pointing_game": "pointing_game",
    "energy_pg": "energy_pg", "aopc_morf": "aopc_morf", "aopc_lerf": "aopc_lerf", "sparseness": "sparseness",
    "complexity": "complexity", "max_sensitivity": "max_sensitivity", "avg_sensitivity": "avg_sensitivity",
    "infidelity": "infidelity", "relevance_mass": "relevance_mass", "relevance_rank": "relevance_rank",
}
"""{score: stored array} of the per-image scores stored as they are; `id` and ROAD's are derived."""


def per_image_scores(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{score: (N,) float64} of every per-image score one method's stored arrays hold, in column order: the
    stored ones, ID = insertion - deletion, and ROAD's MoRF / LeRF = the share of percentiles at which the
    prediction stayed the target."""
    scores = {k: np.asarray(arrays[v], dtype=np.float64) for k, v in PER_IMAGE_SOURCES.items() if v in arrays}
    if "insertion" in scores and "deletion" in scores:
        scores["id"] = scores["insertion"] - scores["deletion"]
    for order in ("morf", "lerf"):
        if f"road_{order}_correct" in arrays:
            scores[f"road_{order}"] = np.asarray(arrays[f"road_{order}_correct"], dtype=np.float64).mean(axis=1)
    return {k: scores[k] for k in ALL_COLUMNS if k in scores}


MASK_METRICS = (
    "miou", "miou_dataset", "miou_best_tau", "pointing_game", "energy_pg", "relevance_mass", "relevance_rank"
)
"""The scores that compare a map with the object mask: an image whose mask is empty has no object to find, so
these leave it out (`summarise`); the other scores use every image."""


def summarise(
    arrays: Mapping[str, np.ndarray], has_object: np.ndarray | None = None
) -> tuple[dict[str, float | None], float | None]:
    """(the scores of one method's metrics.json entry, rounded; the best tau) from its per-image arrays (see
    `store`): each score its arrays hold, in column order. `has_object` (N,) bool: the images whose mask is not
    empty; the MASK_METRICS average over those alone (None when there are none), so an empty mask neither
    scores IoU 0 nor IoU 1 (None: every image counts). Sensitivities undefined on an image (NaN: a zero map
    that moved) are left out of their mean (None if undefined on every image)."""
    scores = per_image_scores(arrays)
    n = len(next(iter(scores.values()))) if scores else 0
    keep = np.ones(n, dtype=bool) if has_object is None else np.asarray(has_object, dtype=bool)
    values: dict[str, float | None] = {}
    for key, score in scores.items():
        chosen = score[keep] if key in MASK_METRICS else score
        chosen = chosen[~np.isnan(chosen)]
        values[key] = float(chosen.mean()) if chosen.size else None
    tau: float | None = None
    if "iou_curve" in arrays:
        values["miou_dataset"] = values["miou_best_tau"] = None
        if keep.any():
            values["miou_best_tau"], tau = best_tau_iou(torch.from_numpy(np.asarray(arrays["iou_curve"])[keep]))
            values["miou_dataset"] = dataset_iou(
                torch.from_numpy(arrays["intersection"][keep]), torch.from_numpy(arrays["union"][keep])
            )
    ordered = [k for k in ALL_COLUMNS if k in values]
    return {k: None if values[k] is None else rounded(values[k]) for k in ordered}, tau if tau is None else rounded(tau)


def format_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _cell(row: Mapping[str, float], metric: str) -> str:
    value = row.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    std = row.get(f"{metric}_std")
    return f"{value:.3f}" if std is None else f"{value:.3f} ± {std:.3f}"


def render_table(
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[str] | None = None,
    p_values: Mapping[str, Mapping[str, float]] | None = None,
    p_metric: str = "miou",
    reference: str = "ala",
    leading: Sequence[tuple[str, Mapping[str, str]]] = (),
    names: Mapping[str, str] | None = None,
    first_header: str = "Method",
) -> str:
    """A markdown table: one row per key of `rows` (its metrics, and `<metric>_std` where present).

    `columns`: default `table_columns(rows)`. `p_values` ({method: {metric: p}}) adds a column
    "p vs <reference> (<metric>)"; `leading` adds text
    columns (header, {row: text}) after the first, e.g. the ablation table's AEA / LoRA / ALA marks.
    """
    columns = table_columns(rows) if columns is None else columns
    label = {k: (names or {}).get(k, display_name(k)) for k in rows}
    best: dict[str, float] = {}
    for metric in columns:
        shown = [round(r[metric], 3) for r in rows.values() if r.get(metric) is not None and not math.isnan(r[metric])]
        if shown:
            best[metric] = min(shown) if metric in LOWER_IS_BETTER else max(shown)
    headers = [first_header, *(h for h, _ in leading), *(HEADERS.get(c, c) for c in columns)]
    if p_values is not None:
        headers.append(f"p vs {label.get(reference, display_name(reference))} ({HEADERS.get(p_metric, p_metric)[:-2]})")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for key, row in rows.items():
        cells = [label[key], *(texts.get(key, "") for _, texts in leading)]
        for metric in columns:
            text = _cell(row, metric)
            bold = metric in best and row.get(metric) is not None and round(row[metric], 3) == best[metric]
            cells.append(f"**{text}**" if bold and len(rows) > 1 else text)
        if p_values is not None:
            p = p_values.get(key, {}).get(p_metric)
            cells.append("—" if p is None else format_p(p))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_p_table(p_values: Mapping[str, Mapping[str, float]], reference: str = "ala") -> str:
    """Every paired test: one row per method, one column per per-image metric."""
    tested = [m for m in PAIRED_METRICS if any(m in ps for ps in p_values.values())]
    headers = ["Comparison", *(HEADERS[m][:-2] for m in tested)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * len(tested)) + "|"]
    for method, ps in p_values.items():
        cells = [f"{display_name(method)} vs {display_name(reference)}"]
        cells += [format_p(ps[m]) if m in ps else "—" for m in tested]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_csv(
    rows: Mapping[str, Mapping[str, float]], p_values: Mapping[str, Mapping[str, float]] | None = None
) -> str:
    """CSV, one row per method: method, each metric (and `<metric>_std` where any row has it), then `p_<metric>`."""
    columns = []
    for metric in (c for c in ALL_COLUMNS if any(c in r for r in rows.values())):
        columns.append(metric)
        if any(f"{metric}_std" in r for r in rows.values()):
            columns.append(f"{metric}_std")
    p_columns = [m for m in PAIRED_METRICS if any(m in ps for ps in p_values.values())] if p_values is not None else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", *columns, *(f"p_{m}" for m in p_columns)])
    for method, row in rows.items():
        values = [repr(row[c]) if c in row else "" for c in columns]
        method_p = (p_values or {}).get(method, {})
        ps = [repr(method_p[m]) if m in method_p else "" for m in p_columns]
        writer.writerow([method, *values, *ps])
    return buffer.getvalue()


def render_markdown(metrics: Mapping[str, Any], p_values: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """table.md: the Table 2 layout, then the accuracy, the settings and the methods that could not run."""
    evaluation = metrics["config"]["evaluation"]
    title = f"# {metrics['dataset'] or 'dataset'} / {metrics['split']} — {metrics['n_images']} images"
    if "seeds" in metrics:
        title += f", {len(metrics['seeds'])} seed(s) (mean ± std over seeds)"
    lines = [title]
    if metrics["methods"]:
        lines.append(render_table(metrics["methods"], p_values=p_values).strip())
    accuracy = f"{metrics['accuracy']:.3f}"
    if "accuracy_std" in metrics:
        accuracy += f" ± {metrics['accuracy_std']:.3f}"
    lines.append(f"Accuracy of the explained model: {accuracy}.")
    lines.append(
        f"mIoU at τ = {evaluation['threshold']}{_threshold_words(evaluation)}; "
        f"insertion/deletion with {evaluation['steps']} steps, "
        f"{evaluation['substrate']} substrate; maps and curves for the {_target_words(evaluation['target_mode'])}."
    )
    if list(evaluation.get("metrics", DEFAULT_EVAL_METRICS)) != list(DEFAULT_EVAL_METRICS):
        options = evaluation.get("metric_options", {})
        chosen = [m + (f" ({_options_words(options[m])})" if options.get(m) else "") for m in evaluation["metrics"]]
        lines.append(f"Metrics: {'; '.join(chosen)}.")
    for method, reason in metrics.get("missing_reasons", {}).items():
        lines.append(f"Missing: {method} — {reason}.")
    if empty := metrics.get("empty_masks"):
        lines.append(
            f"{len(empty)} image(s) with an empty object mask, left out of mIoU and the pointing games: "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}."
        )
    return "\n\n".join(lines) + "\n"


def _options_words(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in options.items())


def _threshold_words(evaluation: Mapping[str, Any]) -> str:
    return " on the raw map" if evaluation.get("threshold_on") == "raw" else ""


def _target_words(mode: str) -> str:
    return "ground-truth class" if mode == "given" else "predicted class"
