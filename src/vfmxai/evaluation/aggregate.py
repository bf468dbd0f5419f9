"""Results over training seeds: mean ± std per method and metric, and paired tests against ALA.

- Spread: each seed's metrics.json value (a mean over images) is one sample; `<metric>_std` is the sample
  standard deviation over seeds (ddof = 1, 0 for one seed), as the paper's "± over 5 trials".
- Paired test (`vfmxai.metrics.paired_test`, Wilcoxon signed-rank by default): over IMAGES, pairing the
  reference method's and the other method's scores on the same image, each image's score first averaged
  over seeds. Over seeds instead, five pairs cannot reach p < 0.05 with the signed-rank test (its
  smallest two-sided p with n = 5 is 2/32 = 0.0625), and pooling image x seed pairs would count one image
  five times as if independent. Averaging over seeds keeps one pair per image and the seed noise out of
  the pairs. Only the paper's per-image metrics (mIoU, insertion, deletion, ID, pointing game, energy PG)
  have a test, where they were chosen; the dataset-level IoU and the best-tau oracle are one number per run,
  and the other `--metrics` get mean ± std over seeds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vfmxai.errors import VfmxaiError
from vfmxai.evaluation.report import (
    PAIRED_METRICS,
    per_image_scores,
    render_csv,
    render_markdown,
    render_p_table,
    rounded,
)
from vfmxai.evaluation.store import load_per_image
from vfmxai.explainers import display_name
from vfmxai.io import atomic_write_json, atomic_write_text
from vfmxai.metrics import mean_std, paired_test


def aggregate_results(
    runs: Sequence[Mapping[str, Any]],
    per_image: Sequence[Mapping[str, Mapping[str, np.ndarray]]],
    reference: str = "ala",
    test: str = "wilcoxon",
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Aggregate per-seed results into one metrics.json-shaped dict with `_std` keys and p-values.

    `runs[i]`: seed i's metrics.json content; `per_image[i]`: {method: {metric: (N,) scores}} for the
    PAIRED_METRICS, images in the same order in every seed. A method missing from any seed is reported
    missing. `p_values` = {method: {metric: p}} for every method other than `reference` (when it ran).
    """
    if not runs or len(runs) != len(per_image):
        raise VfmxaiError(f"aggregate: need one per-image set per run, got {len(runs)} runs, {len(per_image)} sets")
    first = runs[0]
    for key in ("dataset", "split", "n_images"):
        values = {json.dumps(r[key]) for r in runs}
        if len(values) > 1:
            raise VfmxaiError(f"aggregate: the runs differ in {key} ({', '.join(sorted(values))}); they must not")
    evaluations = [r.get("config", {}).get("evaluation") for r in runs]
    if any(e != evaluations[0] for e in evaluations):
        raise VfmxaiError("aggregate: the runs were evaluated with different settings (config.evaluation differs)")
    names = [m for m in first["methods"] if all(m in r["methods"] for r in runs)]
    missing_reasons: dict[str, str] = {}
    for run in runs:
        for method, reason in run.get("missing_reasons", {}).items():
            missing_reasons.setdefault(method, reason)
        for method in run["methods"]:
            if method not in names:
                missing_reasons.setdefault(method, "not evaluated in every seed")

    methods: dict[str, dict[str, float]] = {}
    for method in names:
        row: dict[str, float | None] = {}
        for metric in (k for k in first["methods"][method] if not k.endswith("_std")):
            values = [r["methods"][method].get(metric) for r in runs]
            if any(v is None for v in values):  # no image to score in some seed: no mean either
                row[metric] = row[f"{metric}_std"] = None
                continue
            mean, std = mean_std(values)
            row[metric], row[f"{metric}_std"] = rounded(mean), rounded(std)
        methods[method] = row
    accuracy, accuracy_std = mean_std([r["accuracy"] for r in runs])

    p_values: dict[str, dict[str, float]] = {}
    if reference in names:
        ref = _seed_mean(per_image, reference)
        for method in names:
            if method != reference:
                other = _seed_mean(per_image, method)
                p_values[method] = {m: paired_test(ref[m], other[m], test) for m in ref if m in other}
    return {
        "dataset": first["dataset"],
        "split": first["split"],
        "n_images": first["n_images"],
        "seeds": list(seeds) if seeds is not None else list(range(len(runs))),
        "config": {"evaluation": evaluations[0], "runs": [r.get("config", {}).get("run") for r in runs]},
        "methods": methods,
        "accuracy": rounded(accuracy),
        "accuracy_std": rounded(accuracy_std),
        "missing": list(missing_reasons),
        "missing_reasons": missing_reasons,
        "p_values": p_values,
        "paired_test": {
            "test": test,
            "reference": reference,
            "over": "images; each image's score averaged over seeds first",
        },
    }


def _seed_mean(per_image: Sequence[Mapping[str, Mapping[str, np.ndarray]]], method: str) -> dict[str, np.ndarray]:
    out = {}
    for metric in (m for m in PAIRED_METRICS if all(m in seed[method] for seed in per_image)):
        rows = [np.asarray(seed[method][metric], dtype=np.float64) for seed in per_image]
        if any(r.shape != rows[0].shape or r.ndim != 1 for r in rows):
            raise VfmxaiError(f"aggregate: per-image '{metric}' of '{method}' has different lengths across seeds")
        out[metric] = np.mean(rows, axis=0)
    return out


def aggregate(
    eval_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    reference: str = "ala",
    test: str = "wilcoxon",
    seeds: Sequence[int] | None = None,
    table_name: str = "table2.md",
) -> dict[str, Any]:
    """Aggregate evaluation folders (one per seed, same test images); write into `out` when given."""
    runs, per_image, ids = [], [], None
    for directory in map(Path, eval_dirs):
        path = directory / "metrics.json"
        if not path.is_file():
            raise VfmxaiError(f"{directory}: no metrics.json; evaluate that seed first")
        runs.append(json.loads(path.read_text()))
        results = load_per_image(directory)
        if ids is not None and results.ids != ids:
            raise VfmxaiError(f"{directory}: evaluated on other images than {Path(eval_dirs[0])}; cannot pair them")
        ids = results.ids
        per_image.append({m: per_image_scores(a) for m, a in results.methods.items()})
    result = aggregate_results(runs, per_image, reference, test, seeds)
    if out is not None:
        write_aggregate(Path(out), result, table_name)
    return result


def write_aggregate(out: Path, result: Mapping[str, Any], table_name: str = "table2.md") -> None:
    """metrics.json, metrics.csv (with p-value columns) and the markdown table."""
    atomic_write_json(out / "metrics.json", result)
    p_values = result["p_values"]
    reference = result["paired_test"]["reference"]
    atomic_write_text(out / "metrics.csv", render_csv(result["methods"], p_values))
    text = render_markdown(result, p_values if reference in result["methods"] else None)
    if p_values:
        text += (
            f"\n## Paired tests vs {display_name(reference)}\n\n"
            f"Two-sided {result['paired_test']['test']} test over the {result['n_images']} images, "
            "each image's score averaged over seeds first.\n\n" + render_p_table(p_values, reference)
        )
    atomic_write_text(out / table_name, text)
