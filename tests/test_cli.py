import json

import numpy as np
import pytest
from PIL import Image

from vfmxai.cli import main

TINY = ["--backbone", "tiny", "--set", "backbone.image_size=32", "--set", "data.synth_size=32",
        "--set", "data.n_train=8", "--set", "data.n_val=4", "--set", "train.epochs=1", "--no-progress"]


@pytest.fixture
def run_dir(trained_run):
    return trained_run


def assert_one_line_error(capsys, code, *words):
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("vfmxai: error:"), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


def test_missing_dataset_folder(tmp_path, capsys):
    code = main(["train", "--dataset", "folder", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    assert_one_line_error(capsys, code, str(tmp_path / "nowhere"))


def test_unknown_preset(tmp_path, capsys):
    code = main(["train", "--dataset", "synthetic", "--preset", "cubb", "--out", str(tmp_path / "r")])
    assert_one_line_error(capsys, code, "unknown preset 'cubb'")


def test_unknown_backbone(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    args = ["train", "--dataset", "synthetic", "--out", str(tmp_path / "r"), *TINY, "--backbone", "someone/vit-x"]
    assert_one_line_error(capsys, main(args), "someone/vit-x", "--backbone")


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "imagenet"])
    assert exit_info.value.code == 2


def test_explain_writes_maps_at_the_original_size(run_dir, tmp_path, capsys):
    picture = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(run_dir), "--method", "ala", "--out", str(out),
                 str(tmp_path / "photo.png")]) == 0
    raw = np.load(out / "photo.ala.npy")
    assert raw.shape == (40, 50) and raw.dtype == np.float32 and 0 <= raw.min() and raw.max() <= 1
    assert Image.open(out / "photo.ala.png").size == (50, 40)
    prediction = json.loads((out / "predictions.json").read_text())["photo"]
    assert prediction["class"] in range(6) and 0 < prediction["probability"] <= 1
    assert prediction["class_name"] == (run_dir / "classes.txt").read_text().splitlines()[prediction["class"]]


def test_explain_rejects_a_file_that_is_not_an_image(run_dir, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("this is text, not a picture")
    code = main(["explain", "--checkpoint", str(run_dir), "--method", "ala", "--out", str(tmp_path / "o"),
                 str(tmp_path / "notes.png")])
    assert_one_line_error(capsys, code, "notes.png")


def test_explain_rejects_an_unknown_method(run_dir, tmp_path, capsys):
    code = main(["explain", "--checkpoint", str(run_dir), "--method", "ala,gradcamm", "--out", str(tmp_path / "o"),
                 str(tmp_path)])
    assert_one_line_error(capsys, code, "gradcamm")


def test_explain_daam_per_block_figure(run_dir, tmp_path):
    from vfmxai.viz import grid_size

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "dark.png")
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(run_dir), "--method", "daam", "--per-block", "--out", str(out),
                 str(tmp_path / "dark.png")]) == 0
    height, width = grid_size(1, 1 + 4)
    assert Image.open(out / "dark.daam.blocks.png").size == (width, height)


def test_evaluate_takes_method_options_and_records_them(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run_dir), "--dataset", "synthetic", "--split", "test",
                 "--methods", "rise,ala", "--steps", "2", "--no-progress", "--out", str(out),
                 "--method-option", "rise.n_masks=8", "--method-option", "rise.p_keep=0.25"]) == 0
    recorded = json.loads((out / "metrics.json").read_text())["config"]["evaluation"]["method_options"]
    assert (recorded["rise"]["n_masks"], recorded["rise"]["p_keep"], recorded["rise"]["grid"]) == (8, 0.25, 7)


@pytest.mark.parametrize("bad", ["rise=8", "n_masks=8", ".n_masks=8", "rise.n_masks"])
def test_malformed_method_option_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--checkpoint", "x", "--dataset", "synthetic", "--out", "o", "--method-option", bad])
    assert stop.value.code == 2 and "METHOD.KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("option, words", [
    ("rise.n_masks=abc", ("rise", "n_masks='abc'", "must be of type int")),
    ("rise.nmasks=5", ("rise", "unknown option 'nmasks'", "n_masks")),
    ("ig.steps=true", ("ig", "steps=True", "must be of type int")),
])
def test_a_bad_method_option_is_one_line_before_any_output(run_dir, tmp_path, capsys, option, words):
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(run_dir), "--dataset", "synthetic", "--split", "test",
                 "--methods", "rise,ig", "--steps", "1", "--no-progress", "--out", str(out), "--method-option", option])
    assert_one_line_error(capsys, code, *words)
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--set", "backbone.lora=maybe"], "backbone.lora='maybe': expected true or false"),
        (["--set", "train.aea=perhaps"], "train.aea='perhaps'"),
        (["--set", "train.epochs=abc"], "train.epochs='abc': expected an integer"),
        (["--set", "train.epochs=0"], "train.epochs=0: must be >= 1"),
        (["--set", "train.lr=NaN"], "train.lr=nan"),
        (["--set", "train.batch_size=0"], "train.batch_size=0"),
        (["--set", "backbone.lora_rank=0"], "backbone.lora_rank=0"),
        (["--set", "model.heads=3"], "model.heads=3: must divide model.dim"),
        (["--set", "train.betas=[2,3]"], "train.betas"),
        (["--set", "train.precision=bf16-mixed"], "choose one of auto, bf16, fp32"),
        (["--devices", "banana"], "train.devices='banana'"),
        (["--num-nodes", "-1"], "train.num_nodes=-1"),
        (["--seed", "-5"], "train.seed=-5"),
        (["--set", "train=5"], "'train' is a section"),
    ],
)
def test_a_bad_training_value_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, extra, words):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "synthetic", "--out", str(out), *TINY, *extra])
    assert_one_line_error(capsys, code, words)
    assert not out.exists()


def test_a_bad_reproduce_override_is_refused_before_any_folder(tmp_path, capsys):
    out = tmp_path / "repro"
    code = main(["reproduce", "--preset", "toy", "--dataset", "synthetic", "--seeds", "1", "--out", str(out),
                 "--set", "train.lr=abc"])
    assert_one_line_error(capsys, code, "train.lr='abc': expected a finite number")
    assert not out.exists()


@pytest.mark.slow
def test_evaluate_with_devices_runs_worker_processes_and_matches_one_process(run_dir, tmp_path, capsys):
    """`evaluate --devices 2` through the command line (it once failed for every N)."""
    common = ["evaluate", "--checkpoint", str(run_dir), "--dataset", "synthetic", "--methods", "ala", "--steps", "2",
              "--batch-size", "4", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--devices", "2", "--out", str(tmp_path / "two")]) == 0
    assert (tmp_path / "two" / "metrics.json").read_bytes() == (tmp_path / "one" / "metrics.json").read_bytes()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--devices", "0"], "--devices must be a positive integer, got 0"),
        (["--shard", "0/2", "--devices", "2"], "--shard and --devices: choose one"),
        (["--shard", "2/2"], "--shard 2/2"),
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--threshold", "1.5"], "--threshold must be in [0, 1], got 1.5"),
        (["--method-option", "rise.n_masks=abc"], "option n_masks='abc' must be of type int"),
    ],
)
def test_a_bad_evaluation_flag_is_one_line_before_the_run_is_loaded(tmp_path, capsys, extra, words):
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(tmp_path / "no-run"), "--dataset", "synthetic", "--out", str(out),
                 *extra])
    assert_one_line_error(capsys, code, words)
    assert not out.exists()


def test_an_empty_backbone_name_is_refused_not_read_as_the_current_folder(tmp_path, capsys):
    code = main(["train", "--dataset", "synthetic", "--out", str(tmp_path / "run"), "--set", "backbone.name="])
    assert_one_line_error(capsys, code, "backbone.name='': must name a backbone")
    assert not (tmp_path / "run").exists()


def test_evaluate_on_devices_checks_the_run_folder_before_starting_workers(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(tmp_path / "no-run"), "--dataset", "synthetic", "--devices", "2",
                 "--out", str(out)])
    assert_one_line_error(capsys, code, "no-run: no such run folder")
    assert not out.exists()
