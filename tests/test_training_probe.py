"""`vfmxai train --preset probe`: a linear probe on the frozen backbone, explained by the post-hoc methods."""

import csv
import json

import pytest
import torch

from vfmxai.classifier import LinearProbe
from vfmxai.cli import main
from vfmxai.config import apply_overrides, preset
from vfmxai.errors import VfmxaiError
from vfmxai.run_folder import dataset_split, load_run
from vfmxai.training import train

TINY = ["backbone.name=tiny", "backbone.image_size=32", "data.synth_size=32", "data.n_train=24", "data.n_val=8",
        "data.n_test=6", "train.epochs=40"]


def _config():
    return apply_overrides(preset("probe"), TINY)


def test_probe_run_folder_round_trip_and_the_fit_lowers_the_loss(tmp_path):
    run = tmp_path / "probe"
    model = train(_config(), run, progress=False)
    assert isinstance(model, LinearProbe)
    reloaded, config, classes = load_run(run)
    assert isinstance(reloaded, LinearProbe) and config.classifier == "linear_probe" and len(classes) == 6
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), model(images), rtol=0, atol=0)
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 41))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # the backbone stays as loaded: the probe's backbone equals a freshly loaded one
    fresh = load_run(run)[0]
    for (name, a), b in zip(reloaded.backbone.state_dict().items(), fresh.backbone.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with pytest.raises(VfmxaiError, match="already holds a run"):
        train(_config(), run, progress=False)
    with pytest.raises(VfmxaiError, match="linear probe.*fit it again"):
        train(_config(), run, resume=True, progress=False)


def test_probe_is_explained_and_evaluated_by_post_hoc_methods_from_the_cli(tmp_path, capsys):
    run, out = tmp_path / "probe", tmp_path / "eval"
    sets = [x for item in TINY for x in ("--set", item)]
    args = ["train", "--preset", "probe", "--dataset", "synthetic", "--out", str(run), "--no-progress", *sets]
    assert main(args) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(run), "--dataset", "synthetic", "--split", "test", "--methods",
                 "ala,gradcam,rollout", "--steps", "2", "--no-progress", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"gradcam", "rollout"} and "ala" in metrics["missing"]
    model, config, _ = load_run(run)
    test = dataset_split(config, "test")
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    labels = torch.tensor([test[i]["label"] for i in range(len(test))])
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).double().mean()
    assert metrics["accuracy"] == pytest.approx(float(accuracy), abs=1e-6)


def test_unknown_classifier_is_one_line(tmp_path):
    config = _config()
    config.classifier = "svm"
    with pytest.raises(VfmxaiError, match="classifier='svm'"):
        train(config, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
