"""`evaluate --metrics` / `--metric-option` on the tiny trained run: only the chosen metrics are scored and
written, with the values the metric functions give; names and options are checked before any work; the
chosen metrics and their options key the stored results."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from run_fixtures import untrained_run
from torch.utils.data import Subset

import vfmxai.training
from vfmxai.cli import main
from vfmxai.errors import VfmxaiError
from vfmxai.evaluation import EvaluationSettings, evaluate, load_per_image, reproduce
from vfmxai.evaluation.metric_set import ALL_COLUMNS, columns_of
from vfmxai.explainers import base
from vfmxai.explainers.ala import ALAExplainer
from vfmxai.metrics import aopc, max_sensitivity, pointing_game, relevance_mass, road, sparseness
from vfmxai.run_folder import Recipe, dataset_split, load_run
from vfmxai.viz.report_html import read_report_data

CHOSEN = "pointing_game,aopc,road,sparseness,max_sensitivity,relevance_mass"
OPTIONS = {
    "aopc": {"steps": 4, "region_size": 4},
    "road": {"percentiles": [20, 60], "seed": 3},
    "max_sensitivity": {"n_samples": 2, "seed": 5},
    "pointing_game": {"tolerance": 3},
}


class Brightness(base.Explainer):
    """Map = the image's mean over channels (deterministic, differs per image), with a call counter."""

    calls = 0

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return images.mean(dim=1)


@pytest.fixture
def run(trained_run: Path, monkeypatch: pytest.MonkeyPatch):
    Brightness.name, Brightness.calls = "brightness", 0
    monkeypatch.setattr(base, "_REGISTRY", {"brightness": Brightness})
    model, config, _ = load_run(trained_run)
    return model, Subset(dataset_split(config, "test"), [0, 1, 2, 3, 4]), trained_run


def _evaluate(model, dataset, out: Path, **fields):
    settings = EvaluationSettings(**{"steps": 4, "batch_size": 3, "perturb_batch_size": 16, **fields})
    return evaluate(model, dataset, ["brightness"], out, settings, progress=False, dataset_name="synthetic")


def test_only_the_chosen_metrics_are_written_with_the_functions_values(run, tmp_path: Path) -> None:
    model, dataset, _ = run
    metrics = _evaluate(model, dataset, tmp_path, metrics=CHOSEN, metric_options=OPTIONS)
    row = metrics["methods"]["brightness"]
    assert list(row) == list(columns_of(CHOSEN.split(",")))
    assert list(row) == ["pointing_game", "aopc_morf", "aopc_lerf", "road_morf", "road_lerf", "sparseness",
                         "max_sensitivity", "relevance_mass"]
    evaluation = metrics["config"]["evaluation"]
    assert evaluation["metrics"] == ["pointing_game", "aopc", "road", "sparseness", "max_sensitivity",
                                     "relevance_mass"]
    options = evaluation["metric_options"]
    assert options["aopc"] == {"steps": 4, "region_size": 4, "regions_per_step": None, "substrate": "black",
                               "score": "probability"}
    assert options["road"]["seed"] == 3 and options["max_sensitivity"]["seed"] == 5  # every seed recorded
    assert options["pointing_game"] == {"tolerance": 3}

    samples = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([s["image"] for s in samples])
    masks = torch.stack([s["mask"] for s in samples])
    labels = torch.tensor([s["label"] for s in samples])
    explainer = Brightness(model)
    maps = explainer(images, labels)
    raw = explainer(images, labels, normalize=False)
    faith = aopc(model, images, maps, labels, steps=4, region_size=4)
    removed = road(model, images, maps, labels, percentiles=[20, 60], seed=3)
    expected = {
        "pointing_game": pointing_game(maps, masks, tolerance=3).mean(),
        "aopc_morf": faith.morf.mean(),
        "aopc_lerf": faith.lerf.mean(),
        "road_morf": removed.morf_correct.mean(),
        "road_lerf": removed.lerf_correct.mean(),
        "sparseness": sparseness(maps).mean(),
        "max_sensitivity": max_sensitivity(explainer, images, labels, maps, n_samples=2, seed=5).mean(),
        "relevance_mass": relevance_mass(raw, masks).mean(),
    }
    for key, value in expected.items():
        assert row[key] == pytest.approx(float(value), abs=2e-5), key

    with (tmp_path / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[4:] == list(row) and len(rows) == 5
    np.testing.assert_allclose([float(r["sparseness"]) for r in rows], sparseness(maps).numpy(), atol=1e-6)
    table = (tmp_path / "table.md").read_text()
    assert "AOPC MoRF ↑" in table and "ROAD MoRF ↓" in table and "mIoU" not in table.split("\n\n")[1]
    assert "Metrics: pointing_game (tolerance=3); aopc (steps=4" in table
    assert not (tmp_path / "curves.png").exists() and (tmp_path / "grid.png").is_file()  # no insertion/deletion
    page = read_report_data((tmp_path / "report.html").read_text(encoding="utf-8"))["images"]
    assert [k for k, _ in page["metrics"]] == ["aopc_morf", "aopc_lerf", "road_morf", "road_lerf", "sparseness",
                                              "max_sensitivity", "relevance_mass"]
    assert page["lower"] == ["aopc_lerf", "max_sensitivity", "road_morf"] and page["target_prob"] is None
    np.testing.assert_allclose(page["scores"]["brightness"]["sparseness"], sparseness(maps).numpy(), atol=5.1e-5)


def test_the_default_is_the_papers_set_and_all_scores_every_metric(run, tmp_path: Path) -> None:
    model, dataset, _ = run
    default = _evaluate(model, Subset(dataset, [0, 1]), tmp_path / "default")
    assert default["config"]["evaluation"]["metrics"] == ["miou", "insertion_deletion", "pointing_game", "energy_pg"]
    assert list(default["methods"]["brightness"]) == list(columns_of(["miou", "insertion_deletion",
                                                                       "pointing_game", "energy_pg"]))
    options = {"aopc": {"steps": 2}, "road": {"percentiles": [50]}, "max_sensitivity": {"n_samples": 1},
               "avg_sensitivity": {"n_samples": 1}, "infidelity": {"n_samples": 2}}
    every = _evaluate(model, Subset(dataset, [0, 1]), tmp_path / "all", metrics="all", metric_options=options)
    row = every["methods"]["brightness"]
    assert list(row) == list(ALL_COLUMNS) and all(v is not None and np.isfinite(v) for v in row.values())


def test_the_seeded_draws_do_not_depend_on_batching(run, tmp_path: Path) -> None:
    """ROAD's noise, the sensitivity draws and infidelity's perturbations are the same for every image, so
    batches of 2 and of 5 give every image the same scores."""
    model, dataset, _ = run
    options = {"road": {"percentiles": [30, 70], "seed": 1}, "avg_sensitivity": {"n_samples": 2},
               "infidelity": {"n_samples": 3}}
    fields = {"metrics": "road,avg_sensitivity,infidelity", "metric_options": options}
    _evaluate(model, dataset, tmp_path / "two", **fields, batch_size=2, perturb_batch_size=3)
    _evaluate(model, dataset, tmp_path / "five", **fields, batch_size=5)
    two, five = (load_per_image(tmp_path / n).methods["brightness"] for n in ("two", "five"))
    for key in ("road_morf_curve", "road_lerf_curve", "avg_sensitivity", "infidelity"):
        np.testing.assert_allclose(two[key], five[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_changing_a_metric_option_never_reuses_stored_results(run, tmp_path: Path) -> None:
    model, dataset, _ = run
    fields = {"metrics": "road", "metric_options": {"road": {"percentiles": [50], "noise": 0.01}}}
    first = _evaluate(model, dataset, tmp_path, **fields)
    Brightness.calls = 0
    assert _evaluate(model, dataset, tmp_path, **fields) == first and Brightness.calls == 0  # same: all reused
    with pytest.raises(VfmxaiError, match=r"metric_options=.*\"noise\": 0.01.*choose another --out") as err:
        _evaluate(model, dataset, tmp_path, metrics="road", metric_options={"road": {"percentiles": [50],
                                                                                     "noise": 0.02}})
    assert "\n" not in str(err.value)
    with pytest.raises(VfmxaiError, match=r"metrics=\[\"road\"\], not \[\"road\", \"sparseness\"\]"):
        _evaluate(model, dataset, tmp_path, metrics="road,sparseness", metric_options=fields["metric_options"])
    assert Brightness.calls == 0


def test_a_folder_from_before_metrics_could_be_chosen_resumes_as_the_papers_set(run, tmp_path: Path) -> None:
    model, dataset, _ = run
    subset = Subset(dataset, [0, 1])
    reference = _evaluate(model, subset, tmp_path)
    manifest = tmp_path / "per_image" / "manifest.json"
    old = json.loads(manifest.read_text())
    for key in ("metrics", "metric_options"):
        del old["settings"][key]
    manifest.write_text(json.dumps(old))
    Brightness.calls = 0
    assert _evaluate(model, subset, tmp_path) == reference and Brightness.calls == 0
    manifest.write_text(json.dumps(old))
    with pytest.raises(VfmxaiError, match="made with metric_options="):
        _evaluate(model, subset, tmp_path, metrics="sparseness")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--metrics", "aopc,roaad"], "--metrics: unknown metric(s) roaad (known: miou, "),
        (["--metrics", "road", "--metric-option", "road.nosie=0.1"],
         "--metric-option road.nosie: unknown option (options of road: percentiles, noise, seed, score)"),
        (["--metrics", "road", "--metric-option", "road.noise=-1"],
         "--metric-option road.noise=-1: must be a number >= 0"),
        (["--metric-option", "aopc.steps=4"], "--metric-option aopc.*: metric 'aopc' is not among --metrics"),
        (["--metrics", "aopc", "--metric-option", "aopc.steps=two"], "--metric-option aopc.steps='two': must be"),
        (["--metrics", "sparseness", "--metric-option", "sparseness.k=1"],
         "--metric-option sparseness.k: unknown option (options of sparseness: none)"),
    ],
)
def test_bad_metric_names_and_options_are_refused_in_one_line_before_any_work(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(trained_run), "--dataset", "synthetic", "--out", str(out),
                 "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"vfmxai: error: {message}") and len(err.splitlines()) == 1, err
    assert not out.exists()


TINY = [
    "backbone.name=tiny", "backbone.image_size=32", "backbone.lora_rank=4", "model.patch_size=8", "model.dim=16",
    "model.depth=2", "model.heads=2", "model.n_inject=2", "model.map_channels=8", "model.pb_channels=16",
    "data.n_train=16", "data.n_val=8", "data.n_test=4", "data.synth_size=32", "data.seed=3",
    "train.epochs=1", "train.batch_size=8", "train.lr=0.01", "train.patience=0",
]


def test_reproduce_carries_the_chosen_metrics_into_both_tables(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(base._REGISTRY, "ala", type("ALA", (ALAExplainer,), {"name": "ala"}))
    monkeypatch.setattr(vfmxai.training, "train", lambda config, out, **kw: untrained_run(config, out))
    settings = EvaluationSettings(batch_size=4, metrics="miou,sparseness")
    result = reproduce(Recipe("toy", "synthetic", overrides=TINY), 2, tmp_path, settings, ablations=True,
                       methods=["brightness", "ala"], progress=False)
    per_seed = [json.loads((tmp_path / f"seed{k}" / "eval" / "metrics.json").read_text()) for k in (0, 1)]
    for method in ("ala", "brightness"):
        assert set(result["methods"][method]) == {
            "miou", "miou_std", "miou_dataset", "miou_dataset_std", "miou_best_tau", "miou_best_tau_std",
            "sparseness", "sparseness_std",
        }
        values = [m["methods"][method]["sparseness"] for m in per_seed]
        assert result["methods"][method]["sparseness"] == pytest.approx(np.mean(values), abs=1e-6)
    assert set(result["p_values"]["brightness"]) == {"miou"}  # the paper's per-image metrics that were chosen
    header = next(line for line in (tmp_path / "table2.md").read_text().splitlines() if line.startswith("| Method"))
    assert "Sparseness ↑" in header and "Insertion" not in header
    header = next(line for line in (tmp_path / "table4.md").read_text().splitlines() if line.startswith("| Model"))
    assert header.split(" | ")[4:] == ["mIoU ↑", "Sparseness ↑", "p vs (iv) (mIoU) |"]
