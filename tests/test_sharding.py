"""Sharded evaluation: shards merge into exactly the files a single process writes (untrained tiny ALA model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from run_fixtures import tiny_run_config
from safetensors.torch import load_file

from vfmxai.ala import build_model
from vfmxai.errors import VfmxaiError
from vfmxai.evaluation import evaluate, evaluate_run
from vfmxai.evaluation.sharding import evaluate_run_parallel, evaluate_sharded, parse_shard
from vfmxai.training.checkpoint import WEIGHTS, save_weights, write_run_files
from vfmxai.training.train import dataset_split

METHODS = ["ala", "gradcam"]
OPTIONS = {"steps": 3, "batch_size": 2, "n_grid": 3, "progress": False, "dataset_name": "synthetic", "split": "test"}
FILES = ("metrics.json", "metrics.csv", "table.md", "per_image.csv")



@pytest.fixture(scope="module")
def tiny():
    config = tiny_run_config()
    config.model.num_classes = 6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(config).eval()
    return model, config, dataset_split(config, "test", config.backbone.image_size)


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
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(VfmxaiError, match="--shard"):
            parse_shard(bad)


def test_a_shard_computes_only_its_batches_and_rank_0_merges(tiny, tmp_path: Path) -> None:
    model, config, data = tiny  # 8 images in batches of 2: starts 0, 2, 4, 6
    single = evaluate(model, data, METHODS, tmp_path / "single", config=config.to_dict(), **OPTIONS)

    sharded = tmp_path / "sharded"
    assert evaluate(model, data, METHODS, sharded, config=config.to_dict(), shard=(1, 2), **OPTIONS) is None
    for method in ["_predictions", *METHODS]:
        assert sorted(p.name for p in (sharded / "per_image" / method).iterdir()) == [
            "b00000002.safetensors",
            "b00000006.safetensors",
        ]
    assert not (sharded / "metrics.json").exists()

    # no process group: rank 0 computes batches 0 and 4, finds rank 1's files, merges
    merged = evaluate_sharded(
        model, data, METHODS, sharded, rank=0, world_size=2, timeout_s=0, config=config.to_dict(), **OPTIONS
    )
    assert merged == single
    _assert_same_results(tmp_path / "single", sharded)
    assert (sharded / "curves.png").is_file() and (sharded / "grid.png").is_file()


def test_rank_0_reports_missing_shards(tiny, tmp_path: Path) -> None:
    model, config, data = tiny
    with pytest.raises(VfmxaiError, match="missing"):
        evaluate_sharded(model, data, ["ala"], tmp_path, rank=0, world_size=2, timeout_s=0, poll_s=0, **OPTIONS)
    assert not (tmp_path / "metrics.json").exists()


def test_two_processes_merge_to_the_single_process_result(tiny, tmp_path: Path) -> None:
    model, config, _ = tiny
    run_dir = tmp_path / "run"
    write_run_files(run_dir, config, [f"class{i}" for i in range(6)])
    save_weights(model, run_dir / WEIGHTS)
    options = {k: v for k, v in OPTIONS.items() if k not in ("dataset_name", "split")}

    single = evaluate_run(run_dir, "synthetic", None, "test", METHODS, tmp_path / "single", device="cpu", **options)
    parallel = evaluate_run_parallel(
        run_dir, "synthetic", None, "test", METHODS, tmp_path / "parallel",
        devices=2, threads=1, start_method="fork", **options,
    )
    assert parallel == single
    _assert_same_results(tmp_path / "single", tmp_path / "parallel")


def test_a_user_error_in_a_worker_is_a_user_error(tiny, tmp_path: Path) -> None:
    model, config, _ = tiny
    run_dir = tmp_path / "run"
    write_run_files(run_dir, config, [f"class{i}" for i in range(6)])
    save_weights(model, run_dir / WEIGHTS)
    with pytest.raises(VfmxaiError, match="--threshold"):
        evaluate_run_parallel(
            run_dir, "synthetic", None, "test", METHODS, tmp_path / "out",
            devices=2, threads=1, start_method="fork", threshold=2.0,
        )
