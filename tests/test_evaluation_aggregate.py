"""Aggregation over seeds and the tables, on hand-made per-seed numbers (scores are rounded to 6 decimals)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vfmxai.errors import VfmxaiError
from vfmxai.evaluation import METRICS, aggregate_results, render_table, write_aggregate

CONFIG = {"evaluation": {"steps": 100, "threshold": 0.5, "substrate": "black", "target_mode": "given"}, "run": None}


def _run(seed: int, ala_miou: float, gradcam_miou: float, accuracy: float) -> dict:
    row = {m: 0.5 for m in METRICS}
    return {
        "dataset": "cub", "split": "test", "n_images": 6, "config": CONFIG, "accuracy": accuracy,
        "methods": {"ala": {**row, "miou": ala_miou}, "gradcam": {**row, "miou": gradcam_miou, "deletion": 0.1 * seed}},
        "missing": [], "missing_reasons": {},
    }


def _scores(shift: np.ndarray, deletion: np.ndarray) -> dict:
    """Per-image scores of ala and gradcam for one seed."""
    base = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    ala = {"miou": base, "insertion": base, "deletion": base, "id": base, "pointing_game": base, "energy_pg": base}
    gradcam = {**ala, "miou": base - shift, "deletion": base - deletion}
    return {"ala": ala, "gradcam": gradcam}


def _three_seeds() -> dict:
    runs = [_run(0, 0.70, 0.20, 0.80), _run(1, 0.68, 0.16, 0.90), _run(2, 0.72, 0.15, 0.85)]
    shift = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    signed = np.array([0.01, 0.02, 0.03, 0.04, 0.05, -0.06])
    noise = np.array([0.003, -0.002, 0.001, 0.0, 0.004, -0.001])
    # The noise cancels over the three seeds: the seed means of the differences are exactly shift / signed.
    per_image = [_scores(shift + noise, signed), _scores(shift - 2 * noise, signed), _scores(shift + noise, signed)]
    return aggregate_results(runs, per_image, seeds=[0, 1, 2])


def test_mean_std_over_seeds_and_paired_tests_by_hand() -> None:
    result = _three_seeds()
    ala, gradcam = result["methods"]["ala"], result["methods"]["gradcam"]
    assert ala["miou"] == pytest.approx(0.70) and ala["miou_std"] == pytest.approx(0.02)
    assert gradcam["miou"] == pytest.approx(0.17) and gradcam["miou_std"] == pytest.approx(np.sqrt(0.0007), abs=1e-6)
    assert gradcam["deletion"] == pytest.approx(0.1) and gradcam["deletion_std"] == pytest.approx(0.1)
    assert ala["insertion_std"] == 0.0
    assert all(f"{m}_std" in ala for m in METRICS)
    assert result["accuracy"] == pytest.approx(0.85) and result["accuracy_std"] == pytest.approx(0.05)
    p = result["p_values"]["gradcam"]
    assert p["miou"] == pytest.approx(2 / 64)  # all six differences favour ALA: exact two-sided 2 * (1/2)^6
    assert p["deletion"] == pytest.approx(28 / 64)  # W- = 6: 14 of the 64 sign patterns have W <= 6
    assert p["insertion"] == 1.0  # identical scores: no evidence of a difference
    assert set(result["p_values"]) == {"gradcam"}


def test_a_method_absent_from_one_seed_is_reported_missing() -> None:
    runs = [_run(0, 0.7, 0.2, 0.8), _run(1, 0.7, 0.2, 0.8)]
    del runs[1]["methods"]["gradcam"]
    per_image = [_scores(np.full(6, 0.1), np.zeros(6)), _scores(np.full(6, 0.1), np.zeros(6))]
    del per_image[1]["gradcam"]
    result = aggregate_results(runs, per_image)
    assert list(result["methods"]) == ["ala"] and result["missing"] == ["gradcam"]
    assert result["p_values"] == {}


def test_runs_with_different_settings_are_refused() -> None:
    runs = [_run(0, 0.7, 0.2, 0.8), _run(1, 0.7, 0.2, 0.8)]
    runs[1] = {**runs[1], "config": {"evaluation": {**CONFIG["evaluation"], "steps": 50}, "run": None}}
    per_image = [_scores(np.full(6, 0.1), np.zeros(6))] * 2
    with pytest.raises(VfmxaiError, match="different settings"):
        aggregate_results(runs, per_image)
    with pytest.raises(VfmxaiError, match="n_images"):
        aggregate_results([_run(0, 0.7, 0.2, 0.8), {**_run(1, 0.7, 0.2, 0.8), "n_images": 7}], per_image)


def test_tables_show_the_numbers(tmp_path: Path) -> None:
    result = _three_seeds()
    write_aggregate(tmp_path, result)
    table = (tmp_path / "table2.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines() if line.startswith("| ")}
    header = [c.strip() for c in rows["Method"]]
    assert header[:4] == ["mIoU ↑", "Insertion ↑", "Deletion ↓", "ID Score ↑"]
    assert header[-1] == "p vs ALA (ours) (mIoU)"
    assert rows["ALA (ours)"][0].strip() == "**0.700 ± 0.020**"  # the best mIoU is bold
    assert rows["Grad-CAM"][0].strip() == "0.170 ± 0.026"
    assert rows["Grad-CAM"][2].strip() == "**0.100 ± 0.100**"  # the lowest deletion is bold
    assert rows["ALA (ours)"][-1].strip() == "—" and rows["Grad-CAM"][-1].strip() == "0.031"
    assert rows["Grad-CAM vs ALA (ours)"][2].strip() == "0.438"  # the full paired-test table: deletion
    assert "0.850 ± 0.050" in table
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["methods"]["ala"]["miou_std"] == pytest.approx(0.02)
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    assert header[:3] == ["method", "miou", "miou_std"] and "p_miou" in header
    gradcam = dict(zip(header, csv_lines[2].split(","), strict=True))
    assert float(gradcam["p_miou"]) == pytest.approx(2 / 64) and float(gradcam["miou"]) == pytest.approx(0.17)


def test_render_table_single_run_marks_lowest_deletion() -> None:
    rows = {"ala": {"miou": 0.6931, "deletion": 0.2}, "lrp": {"miou": 0.0004, "deletion": 0.0101}}
    lines = render_table(rows, ("miou", "deletion")).splitlines()
    assert lines[2] == "| ALA (ours) | **0.693** | 0.200 |"
    assert lines[3] == "| LRP | 0.000 | **0.010** |"
