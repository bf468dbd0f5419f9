"""The evaluation runner and `reproduce` on a tiny trained ALA run (synthetic set, 32 px, 8 test images).

The explainer registry is replaced by two known methods: `ala` (the real adapter map, with a call
counter) and `brightness` (map = the image's mean over channels: deterministic, differs per image),
so the expected numbers can be computed here directly with `vfmxai.metrics`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_fixtures import untrained_run
from torch.utils.data import Subset

import vfmxai.training
from vfmxai.classifier import LinearProbe
from vfmxai.data import FolderDataset, loader_workers, write_synthetic
from vfmxai.errors import VfmxaiError
from vfmxai.evaluation import (
    METHODS,
    METRICS,
    EvaluationSettings,
    Source,
    evaluate,
    evaluate_run,
    load_per_image,
    reproduce,
)
from vfmxai.explainers import base
from vfmxai.explainers.ala import ALAExplainer
from vfmxai.metrics import (
    best_tau_iou,
    dataset_iou,
    energy_pointing_game,
    insertion_deletion,
    iou_counts,
    iou_curve,
    mean_iou,
    pointing_game,
)
from vfmxai.run_folder import Recipe, check_classes, dataset_split, load_run
from vfmxai.viz import grid_size
from vfmxai.viz.grid import FOOTER

STEPS = 4
SIX_FILES = ("metrics.json", "timing.json", "metrics.csv", "table.md", "curves.png", "grid.png")



class Interrupted(Exception):
    """Stands for a kill in the middle of an evaluation."""


class CountingALA(ALAExplainer):
    calls = 0

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return super().attribute(images, targets)


class Brightness(base.Explainer):
    calls = 0
    fail_at: int | None = None

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        if self.fail_at is not None and type(self).calls >= self.fail_at:
            raise Interrupted
        return images.mean(dim=1)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    CountingALA.name, Brightness.name = "ala", "brightness"
    CountingALA.calls = Brightness.calls = 0
    Brightness.fail_at = None
    monkeypatch.setattr(base, "_REGISTRY", {"ala": CountingALA, "brightness": Brightness})


@pytest.fixture
def run(trained_run: Path):
    model, config, _ = load_run(trained_run)
    return model, config, dataset_split(config, "test"), trained_run


SETTING_FIELDS = {f.name for f in dataclasses.fields(EvaluationSettings)}


def _evaluate(model, dataset, out: Path, methods=("ala", "brightness"), **kw):
    """`evaluate` with the tests' settings; keywords that are `EvaluationSettings` fields go there."""
    fields = {"steps": STEPS, "batch_size": 3, **{k: kw.pop(k) for k in SETTING_FIELDS & set(kw)}}
    settings = EvaluationSettings(**fields)
    return evaluate(
        model, dataset, methods, out, settings, progress=False, dataset_name="synthetic", split="test", **kw
    )


def test_evaluate_writes_design_outputs_with_the_right_numbers(run, registry, tmp_path: Path) -> None:
    model, config, dataset, _ = run
    metrics = _evaluate(model, dataset, tmp_path, methods="all", config=config.to_dict())

    for name in SIX_FILES:
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert {"dataset", "split", "n_images", "config", "methods", "accuracy", "missing"} <= set(metrics)
    assert (metrics["dataset"], metrics["split"], metrics["n_images"]) == ("synthetic", "test", 8)
    assert list(metrics["methods"]) == ["ala", "brightness"]
    assert all(set(row) == set(METRICS) for row in metrics["methods"].values())
    assert metrics["missing"] == [m for m in METHODS if m != "ala"]
    assert metrics["config"]["run"] == json.loads(json.dumps(config.to_dict()))
    assert metrics["config"]["evaluation"]["steps"] == STEPS

    samples = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([s["image"] for s in samples])
    masks = torch.stack([s["mask"] for s in samples])
    labels = torch.tensor([s["label"] for s in samples])
    maps = Brightness(model)(images, labels)
    got = metrics["methods"]["brightness"]
    curves = iou_curve(maps, masks)
    insdel = insertion_deletion(model, images, maps, labels, steps=STEPS)
    expected = {
        "miou": mean_iou(maps, masks).double().mean(),
        "miou_dataset": dataset_iou(*iou_counts(maps, masks)),
        "miou_best_tau": best_tau_iou(curves)[0],
        "pointing_game": pointing_game(maps, masks).double().mean(),
        "energy_pg": energy_pointing_game(maps, masks).double().mean(),
        "insertion": insdel.insertion.double().mean(),
        "deletion": insdel.deletion.double().mean(),
        "id": insdel.id_score.double().mean(),
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(float(value), abs=2e-6), key
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).double().mean()
    assert metrics["accuracy"] == pytest.approx(float(accuracy), abs=1e-6)

    timing = json.loads((tmp_path / "timing.json").read_text())
    assert set(timing["seconds_per_image"]) == {"ala", "brightness"}
    assert all(v > 0 for v in timing["seconds_per_image"].values())
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == ["method", *METRICS]
    assert csv_lines[2].split(",")[1] == repr(got["miou"])
    table = (tmp_path / "table.md").read_text()
    assert "| brightness |" in table
    assert f"{got['insertion']:.3f}" in table.split("| brightness |")[1].splitlines()[0]
    assert "Missing: rise" in table
    assert len((tmp_path / "per_image.csv").read_text().splitlines()) == 1 + 2 * 8
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[::-1] == grid_size(rows=4, columns=3, footer=FOOTER)  # with its model-and-data caption
    per_image = load_per_image(tmp_path)
    assert per_image.ids == [s["id"] for s in samples]
    np.testing.assert_allclose(per_image.methods["brightness"]["insertion_curve"], insdel.insertion_curve, atol=1e-5)


def test_interrupted_evaluation_resumes_without_recomputing(run, registry, tmp_path: Path) -> None:
    model, _, dataset, _ = run  # 8 images in batches of 3: starts 0, 3, 6
    _evaluate(model, dataset, tmp_path / "a")
    assert (CountingALA.calls, Brightness.calls) == (3, 3)
    _evaluate(model, dataset, tmp_path / "c")
    reference = (tmp_path / "a" / "metrics.json").read_bytes()
    assert (tmp_path / "c" / "metrics.json").read_bytes() == reference  # same inputs, same bytes

    CountingALA.calls = Brightness.calls = 0
    Brightness.fail_at = 2  # killed while explaining the second batch with `brightness`
    with pytest.raises(Interrupted):
        _evaluate(model, dataset, tmp_path / "b")
    stored = tmp_path / "b" / "per_image"
    assert len(list((stored / "ala").glob("*.safetensors"))) == 2
    assert len(list((stored / "brightness").glob("*.safetensors"))) == 1
    assert not (tmp_path / "b" / "metrics.json").exists()

    CountingALA.calls = Brightness.calls = 0
    Brightness.fail_at = None
    _evaluate(model, dataset, tmp_path / "b")
    assert (CountingALA.calls, Brightness.calls) == (1, 2)  # only the unfinished (method, batch) pairs
    assert (tmp_path / "b" / "metrics.json").read_bytes() == reference

    CountingALA.calls = Brightness.calls = 0
    _evaluate(model, dataset, tmp_path / "b")
    assert (CountingALA.calls, Brightness.calls) == (0, 0)
    assert (tmp_path / "b" / "metrics.json").read_bytes() == reference


def test_other_settings_in_the_same_folder_are_refused(run, registry, tmp_path: Path) -> None:
    model, _, dataset, _ = run
    subset = Subset(dataset, [0, 1])
    _evaluate(model, subset, tmp_path, methods=["brightness"])
    with pytest.raises(VfmxaiError, match="steps=4"):
        _evaluate(model, subset, tmp_path, methods=["brightness"], steps=5)
    with pytest.raises(VfmxaiError, match="brightness"):
        _evaluate(model, subset, tmp_path, methods=["brightness"], method_options={"brightness": {"x": 1}})


def test_a_resume_on_changed_data_is_refused_and_on_the_same_data_reuses_everything(
    run, registry, tmp_path: Path
) -> None:
    """What a resume reuses is keyed by the data: a replaced image, an edited label or an image list in
    another order is refused in one line before anything is computed; the same files resume with no work."""
    model, config, _, _ = run
    root = write_synthetic(tmp_path / "data", n_train=0, n_val=0, n_test=4, size=config.data.synth_size, seed=5)
    size = config.backbone.image_size

    def folder_evaluate(out: Path) -> dict:
        return _evaluate(model, FolderDataset(root, "test", size), out, methods=["brightness"])

    reference = folder_evaluate(tmp_path / "ref")
    out = tmp_path / "eval"
    folder_evaluate(out)
    Brightness.calls = 0
    folder_evaluate(out)
    assert Brightness.calls == 0
    labels = root / "labels.csv"
    original = labels.read_text()
    rows = original.splitlines()
    first = rows[1].split(",")
    changes = {
        "label": lambda: labels.write_text(original.replace(rows[1], ",".join([first[0], "5", first[2]]))),
        "order": lambda: labels.write_text("\n".join([rows[0], *rows[:0:-1]]) + "\n"),
        "image": lambda: shutil.copyfile(root / "images" / "test-00001.png", root / "images" / "test-00000.png"),
    }
    image_bytes = (root / "images" / "test-00000.png").read_bytes()
    for name, change in changes.items():
        change()
        with pytest.raises(VfmxaiError, match="on other data") as err:
            folder_evaluate(out)
        assert "\n" not in str(err.value) and Brightness.calls == 0, name
        labels.write_text(original)
        (root / "images" / "test-00000.png").write_bytes(image_bytes)
    assert folder_evaluate(out) == reference and Brightness.calls == 0
    subset = Subset(FolderDataset(root, "test", size), [0, 1])  # no fingerprint of its own: its samples hashed
    _evaluate(model, subset, tmp_path / "subset", methods=["brightness"])
    with pytest.raises(VfmxaiError, match="on other data"):
        _evaluate(model, Subset(FolderDataset(root, "test", size), [1, 0]), tmp_path / "subset", methods=["brightness"])


def test_bf16_evaluation_records_its_precision_and_keeps_float32_scores(run, registry, tmp_path: Path) -> None:
    model, _, dataset, _ = run
    subset = Subset(dataset, [0, 1, 2])
    fp32 = _evaluate(model, subset, tmp_path / "fp32", methods=["ala"])
    bf16 = _evaluate(model, subset, tmp_path / "bf16", methods=["ala"], precision="bf16")
    precisions = [metrics["config"]["evaluation"]["precision"] for metrics in (fp32, bf16)]
    assert precisions == ["fp32", "bf16"]
    scores = load_per_image(tmp_path / "bf16").methods["ala"]
    assert {v.dtype for v in scores.values()} <= {np.dtype(np.float32), np.dtype(np.int64)}
    for metric in ("miou", "insertion", "deletion"):
        assert bf16["methods"]["ala"][metric] == pytest.approx(fp32["methods"]["ala"][metric], abs=0.05), metric
    with pytest.raises(VfmxaiError, match="precision"):  # a resumed evaluation keeps its precision
        _evaluate(model, subset, tmp_path / "bf16", methods=["ala"], precision="fp32")


def test_linear_probe_reports_ala_inapplicable(run, registry, tmp_path: Path) -> None:
    model, _, dataset, _ = run
    probe = LinearProbe(model.backbone, dataset.num_classes).eval()
    metrics = _evaluate(probe, Subset(dataset, [0, 1, 2]), tmp_path)
    assert list(metrics["methods"]) == ["brightness"]
    assert metrics["missing"] == ["ala"]
    assert "not an ALA model" in metrics["missing_reasons"]["ala"]
    assert CountingALA.calls == 0


def test_evaluate_run_loads_the_run_folder(run, registry, tmp_path: Path) -> None:
    model, config, dataset, run_dir = run
    metrics = evaluate_run(Source(run_dir, "synthetic"), "brightness", tmp_path, EvaluationSettings(steps=STEPS),
                           progress=False)
    direct = _evaluate(model, dataset, tmp_path / "direct", methods=["brightness"], config=config)
    assert metrics["methods"] == direct["methods"] and metrics["accuracy"] == direct["accuracy"]
    assert metrics["config"]["run"]["data"]["n_test"] == 8


def test_loader_workers_give_the_same_metrics_and_bad_counts_are_refused(run, registry, tmp_path: Path) -> None:
    model, config, dataset, _ = run
    in_process = _evaluate(model, dataset, tmp_path / "in_process", methods=["brightness"])
    with_workers = _evaluate(model, dataset, tmp_path / "workers", methods=["brightness"], num_workers=2)
    assert with_workers["methods"] == in_process["methods"] and with_workers["accuracy"] == in_process["accuracy"]
    with pytest.raises(VfmxaiError, match="^--num-workers must be an integer >= 0, got -1$"):
        _evaluate(model, dataset, tmp_path / "bad", methods=["brightness"], num_workers=-1)
    spare = min(8, max(0, (os.cpu_count() or 1) - 1))
    assert (loader_workers(None, on_gpu=False), loader_workers(None, on_gpu=True), loader_workers(3, False)) == (
        0, spare, 3
    )
    with pytest.raises(VfmxaiError, match="^train.num_workers must be an integer >= 0, got two$"):
        loader_workers("two", False, "train.num_workers")


def test_bad_methods_and_missing_masks_are_user_errors(run, registry, tmp_path: Path) -> None:
    model, _, dataset, _ = run
    with pytest.raises(VfmxaiError, match="unknown method.*gradkam"):
        _evaluate(model, dataset, tmp_path, methods="ala,gradkam")

    class NoMask(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> dict:
            return {**dataset[i], "has_mask": i == 0}

    with pytest.raises(VfmxaiError, match="test-00001.*no object mask"):
        _evaluate(model, NoMask(), tmp_path / "nomask", methods=["brightness"])


def test_model_mean_substrate_and_raw_threshold(run, registry, tmp_path: Path) -> None:
    """`model-mean` fills removed pixels with the backbone's normalisation mean; `raw` thresholds ALA's alpha
    as it is, and refuses a map outside [0, 1] in one line naming the method."""
    model, _, dataset, _ = run
    metrics = _evaluate(model, dataset, tmp_path / "a", methods=["ala"], substrate="model-mean", threshold_on="raw")
    samples = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([s["image"] for s in samples])
    masks = torch.stack([s["mask"] for s in samples])
    labels = torch.tensor([s["label"] for s in samples])
    maps = CountingALA(model)(images, labels)
    raw_maps = CountingALA(model)(images, labels, normalize=False)
    assert not torch.equal(model.backbone.mean.flatten(), torch.zeros(3))
    insdel = insertion_deletion(
        model, images, maps, labels, steps=STEPS, substrate="mean", substrate_value=model.backbone.mean.flatten()
    )
    got = metrics["methods"]["ala"]
    # float32 scores from evaluation's batches against one batch here: agreement to 1e-5, not bit for bit
    assert got["insertion"] == pytest.approx(float(insdel.insertion.double().mean()), abs=1e-5)
    raw = mean_iou(raw_maps, masks, 0.5, normalize=False).double().mean()
    assert got["miou"] == pytest.approx(float(raw), abs=2e-6)
    assert float(raw) != pytest.approx(float(mean_iou(maps, masks).double().mean()), abs=1e-3)
    assert metrics["config"]["evaluation"]["threshold_on"] == "raw"

    with pytest.raises(VfmxaiError, match="threshold-on raw: brightness give maps on no fixed"):
        _evaluate(model, dataset, tmp_path / "b", methods=["ala", "brightness"], threshold_on="raw")
    assert not (tmp_path / "b").exists()

    class Shifted(Brightness):
        unit_range = True  # declared, but broken: the check on every batch still catches it

        def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return images.mean(dim=1) + 1.0

    base._REGISTRY["brightness"] = Shifted
    with pytest.raises(VfmxaiError, match="threshold-on raw: method 'brightness' returns maps outside"):
        _evaluate(model, dataset, tmp_path / "d", methods=["brightness"], threshold_on="raw")
    with pytest.raises(VfmxaiError, match="--threshold-on must be one of normalised, raw"):
        _evaluate(model, dataset, tmp_path / "c", methods=["ala"], threshold_on="minmax")


TINY = [
    "backbone.name=tiny", "backbone.image_size=32", "backbone.lora_rank=4", "model.patch_size=8", "model.dim=16",
    "model.depth=2", "model.heads=2", "model.n_inject=2", "model.map_channels=8", "model.pb_channels=16",
    "data.n_train=16", "data.n_val=8", "data.n_test=6", "data.synth_size=32", "data.seed=3",
    "train.epochs=1", "train.batch_size=8", "train.lr=0.01", "train.patience=0",
]
FOUR = EvaluationSettings(steps=STEPS, batch_size=4)


def test_reproduce_trains_each_seed_and_variant_once_and_aggregates(
    registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []

    def fake_train(config, out, resume=False, progress=True, callbacks=None):
        """An untrained model in a real run folder: `reproduce` only orchestrates training."""
        calls.append((config.train.seed, config.data.seed, config.model.lattice, config.backbone.lora,
                      config.train.aea))
        return untrained_run(config, out)

    monkeypatch.setattr(vfmxai.training, "train", fake_train)
    result = reproduce(Recipe("toy", "synthetic", overrides=TINY), 2, tmp_path, FOUR, ablations=True,
                       methods=["brightness", "ala"], progress=False)

    assert sorted(calls) == sorted(
        (seed, 3, lattice, lora, aea)
        for seed in (0, 1)
        for lattice, lora, aea in ((True, True, True), (False, True, True), (True, False, True), (True, True, False))
    )
    for name in ("metrics.json", "metrics.csv", "table2.md", "ablations.json", "table4.md", "aea_maps.png"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["seeds"] == [0, 1] and result["seeds"] == [0, 1]
    per_seed = [json.loads((tmp_path / f"seed{k}" / "eval" / "metrics.json").read_text()) for k in (0, 1)]
    for method in ("ala", "brightness"):
        values = [m["methods"][method]["miou"] for m in per_seed]
        assert saved["methods"][method]["miou"] == pytest.approx(np.mean(values), abs=1e-6)
        assert saved["methods"][method]["miou_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    assert set(saved["p_values"]) == {"brightness"}
    assert "p vs ALA (ours) (mIoU)" in (tmp_path / "table2.md").read_text()
    table4 = (tmp_path / "table4.md").read_text()
    assert [line.split("|")[1].strip() for line in table4.splitlines() if line.startswith("| (")] == [
        "(i)", "(ii)", "(iii)", "(iv)"
    ]
    full = result["ablations"]["methods"]["full"]
    assert full["miou"] == saved["methods"]["ala"]["miou"]
    with Image.open(tmp_path / "aea_maps.png") as figure:
        assert figure.size[::-1] == grid_size(rows=4, columns=3, footer=FOOTER)

    calls.clear()
    CountingALA.calls = Brightness.calls = 0
    again = reproduce(Recipe("toy", "synthetic", overrides=TINY), 2, tmp_path, FOUR, ablations=True,
                      methods=["brightness", "ala"], progress=False)
    assert calls == [] and (CountingALA.calls, Brightness.calls) == (0, 0)
    assert again == result
    with pytest.raises(VfmxaiError, match="train.lr"):
        reproduce(Recipe("toy", "synthetic", overrides=(*TINY, "train.lr=0.5")), 1, tmp_path, FOUR, methods=["ala"],
                  progress=False)


def test_reproduce_with_real_training(registry, tmp_path: Path) -> None:
    result = reproduce(Recipe("toy", "synthetic", overrides=TINY), [5], tmp_path,
                       EvaluationSettings(steps=STEPS, batch_size=6), methods=["ala"], progress=False)
    config = json.loads((tmp_path / "seed5" / "run" / "config.json").read_text())
    assert (config["train"]["seed"], config["data"]["seed"]) == (5, 3)
    assert (tmp_path / "seed5" / "trained.json").is_file()
    assert result["n_images"] == 6 and result["methods"]["ala"]["miou_std"] == 0.0


def test_per_image_csv_names_the_image_and_the_id_score_apart(run, registry, tmp_path: Path) -> None:
    model, config, dataset, _ = run
    metrics = _evaluate(model, dataset, tmp_path, methods=["brightness"])
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    header = (tmp_path / "per_image.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header)) and header[0] == "image_id"
    assert [r["image_id"] for r in rows] == [dataset[i]["id"] for i in range(len(dataset))]
    scores = np.array([float(r["id_score"]) for r in rows])
    ins, dele = (np.array([float(r[k]) for r in rows]) for k in ("insertion", "deletion"))
    np.testing.assert_allclose(scores, ins - dele, atol=2e-6)
    assert scores.mean() == pytest.approx(metrics["methods"]["brightness"]["id"], abs=1e-5)


def test_a_dataset_whose_classes_differ_from_the_run_is_refused(trained_run: Path, tmp_path: Path) -> None:
    """The same images with classes.txt in another order used to evaluate "fine" with the accuracy halved."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    names = (run_dir / "classes.txt").read_text().splitlines()
    (run_dir / "classes.txt").write_text("\n".join([names[1], names[0], *names[2:]]) + "\n")
    with pytest.raises(VfmxaiError, match=f"class 0 is '{names[1]}' in classes.txt but '{names[0]}'"):
        evaluate_run(Source(run_dir, "synthetic"), "ala", tmp_path / "out", EvaluationSettings(steps=2))
    assert not (tmp_path / "out").exists()
    _, config, _ = load_run(run_dir)
    fewer = Subset(dataset_split(config, "test"), [0])
    fewer.class_names = names[:-1]
    with pytest.raises(VfmxaiError, match=f"trained on {len(names)} classes, the split has {len(names) - 1}"):
        check_classes(run_dir, config, fewer, "the split")
