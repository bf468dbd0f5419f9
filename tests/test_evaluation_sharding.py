"""Sharded evaluation: shards merge into exactly the files a single process writes (untrained tiny ALA model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from run_fixtures import tiny_run_config
from safetensors.torch import load_file

from vfmxai.ala import build_model
from vfmxai.checkpoint import save_weights
from vfmxai.data import class_names
from vfmxai.errors import VfmxaiError
from vfmxai.evaluation import EvaluationSettings, Processes, Shard, Source, evaluate, evaluate_run
from vfmxai.evaluation.sharding import parse_shard
from vfmxai.run_folder import WEIGHTS, dataset_split, write_run_files

METHODS = ["ala", "gradcam"]
SETTINGS = EvaluationSettings(steps=3, batch_size=2, n_grid=3)
OPTIONS = {"progress": False, "dataset_name": "synthetic", "split": "test"}
FILES = ("metrics.json", "metrics.csv", "table.md", "per_image.csv")



@pytest.fixture(scope="module")
def tiny():
    config = tiny_run_config()
    config.model.num_classes = 6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(config).eval()
    return model, config, dataset_split(config, "test")


def _per_image(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        str(p.relative_to(out)): load_file(str(p)) for p in sorted((out / "per_image").glob("*/b*.safetensors"))
    }


def _assert_same_results(a: Path, b: Path) -> None:
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    left, right = _per_image(a), _per_image(b)
    assert sorted(left) == sorted(right)
    for key, tensors in left.items():
        assert tensors.keys() == right[key].keys(), key
        for name, value in tensors.items():
            assert torch.equal(value, right[key][name]), (key, name)


def test_parse_shard() -> None:
    assert parse_shard("1/4") == Shard(1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(VfmxaiError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(VfmxaiError, match="--shard 2/2"):
        Shard(2, 2)
    assert Shard(1, 3).mine([0, 2, 4, 6, 8, 10, 12]) == [2, 8]


def test_a_shard_computes_only_its_batches_and_rank_0_merges(tiny, tmp_path: Path) -> None:
    model, config, data = tiny  # 8 images in batches of 2: starts 0, 2, 4, 6
    single = evaluate(model, data, METHODS, tmp_path / "single", SETTINGS, config=config.to_dict(), **OPTIONS)

    sharded = tmp_path / "sharded"
    rank_1 = evaluate(model, data, METHODS, sharded, SETTINGS, config=config.to_dict(), shard=Shard(1, 2), **OPTIONS)
    assert rank_1 is None
    for method in ["_predictions", *METHODS]:
        assert sorted(p.name for p in (sharded / "per_image" / method).iterdir()) == [
            "b00000002.safetensors",
            "b00000006.safetensors",
        ]
    assert not (sharded / "metrics.json").exists()

    # no process group: rank 0 computes batches 0 and 4, finds rank 1's files, merges
    merged = evaluate(
        model, data, METHODS, sharded, SETTINGS, shard=Shard(0, 2, timeout_s=0), config=config.to_dict(), **OPTIONS
    )
    assert merged == single
    _assert_same_results(tmp_path / "single", sharded)
    assert (sharded / "curves.png").is_file() and (sharded / "grid.png").is_file()


def test_rank_0_reports_missing_shards(tiny, tmp_path: Path) -> None:
    model, config, data = tiny
    with pytest.raises(VfmxaiError, match="missing"):
        evaluate(model, data, ["ala"], tmp_path, SETTINGS, shard=Shard(0, 2, timeout_s=0, poll_s=0), **OPTIONS)
    assert not (tmp_path / "metrics.json").exists()


def test_two_processes_merge_to_the_single_process_result(tiny, tmp_path: Path) -> None:
    model, config, _ = tiny
    run_dir = tmp_path / "run"
    write_run_files(run_dir, config, class_names("demo"))
    save_weights(model, run_dir / WEIGHTS)
    source = Source(run_dir, "synthetic")

    single = evaluate_run(source, METHODS, tmp_path / "single", SETTINGS, device="cpu", progress=False)
    processes = Processes(2, threads=1, start_method="fork")
    parallel = evaluate_run(source, METHODS, tmp_path / "parallel", SETTINGS, parallel=processes, progress=False)
    assert parallel == single
    _assert_same_results(tmp_path / "single", tmp_path / "parallel")


def test_a_user_error_in_a_worker_is_a_user_error(tiny, tmp_path: Path) -> None:
    model, config, _ = tiny
    run_dir = tmp_path / "run"
    write_run_files(run_dir, config, class_names("demo"))
    save_weights(model, run_dir / WEIGHTS)
    with pytest.raises(VfmxaiError, match="no-such-folder: dataset folder not found"):
        evaluate_run(
            Source(run_dir, "folder", tmp_path / "no-such-folder"), METHODS, tmp_path / "out", SETTINGS,
            parallel=Processes(2, threads=1, start_method="fork"), progress=False,
        )
    assert not (tmp_path / "out").exists()
