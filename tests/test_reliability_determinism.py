"""Same command, same seeds, CPU: `train` + `evaluate` give byte-identical outputs, and every seed that
decides a random part is written where the run and its scores are recorded."""

from __future__ import annotations

import json

import torch
from run_fixtures import tiny_run_config

from vfmxai import explainers
from vfmxai.ala import build_model
from vfmxai.config import RunConfig
from vfmxai.data import SyntheticDataset
from vfmxai.evaluation import EvaluationSettings, Source, evaluate, evaluate_run
from vfmxai.training import train

RISE = {"n_masks": 16, "seed": 11}


def _train_and_evaluate(config: RunConfig, folder):
    train(config, folder / "run", progress=False)
    settings = EvaluationSettings(steps=4, batch_size=4, method_options={"rise": RISE})
    evaluate_run(Source(folder / "run", "synthetic"), "ala,rise", folder / "eval", settings, progress=False)
    return folder / "run", folder / "eval"


def test_train_and_evaluate_twice_give_the_same_bytes_and_record_every_seed(tmp_path):
    config = tiny_run_config(epochs=2, seed=3)
    config.data.seed = 5
    run_a, eval_a = _train_and_evaluate(config, tmp_path / "a")
    again = RunConfig.load(run_a / "config.json")  # the recorded config alone reproduces the run
    run_b, eval_b = _train_and_evaluate(again, tmp_path / "b")

    for name in ("config.json", "classes.txt", "log.csv", "model.safetensors"):
        assert (run_a / name).read_bytes() == (run_b / name).read_bytes(), name
    metrics = (eval_a / "metrics.json").read_bytes()
    assert metrics == (eval_b / "metrics.json").read_bytes()

    recorded = json.loads((run_a / "config.json").read_text())
    assert recorded["train"]["seed"] == 3  # initialisation, shuffle order, augmentation
    assert recorded["data"]["seed"] == 5  # the synthetic generator and the project's train/val splits
    scores = json.loads(metrics)
    assert scores["config"]["run"]["train"]["seed"] == 3 and scores["config"]["run"]["data"]["seed"] == 5
    assert scores["config"]["evaluation"]["dataset_seed"] == 5
    assert scores["config"]["evaluation"]["method_options"]["rise"] == {**explainers.default_options("rise"), **RISE}
    assert set(scores["methods"]) == {"ala", "rise"} and 0 <= scores["methods"]["rise"]["insertion"] <= 1


def test_the_default_rise_seed_is_recorded_in_metrics_json(tmp_path):
    torch.manual_seed(0)
    config = tiny_run_config()
    config.model.num_classes = 6
    model = build_model(config).eval()
    settings = EvaluationSettings(steps=2, method_options={"rise": {"n_masks": 4}})
    metrics = evaluate(model, SyntheticDataset("test", 2, size=32), ["rise"], tmp_path, settings, progress=False)
    assert metrics["config"]["evaluation"]["method_options"]["rise"].get("seed") == 0
