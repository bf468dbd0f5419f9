"""A hostile user's afternoon (issue 13, items 9-12): bad invocations through the real command line, each
answered with exit status 1, one line on stderr, no traceback and no output folder;
then the files a user made that must survive, the run folder's lock, empty masks, and the library API."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfmxai.cli import main
from vfmxai.errors import VfmxaiError
from vfmxai.io import LOCK, exclusive_folder

TINY = ["--backbone", "tiny", "--set", "backbone.image_size=32", "--set", "data.synth_size=32",
        "--set", "data.n_train=8", "--set", "data.n_val=4", "--set", "train.epochs=1", "--no-progress"]
BENCH = ["bench", "--backbone", "tiny", "--repeats", "1", "--warmup", "0", "--batch-size", "2", "--train", "none"]


class Evil:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """Shared inputs: an image folder, a file where a folder is expected, and a backbone folder whose only
    weights are a pickle that runs a command."""
    root = tmp_path_factory.mktemp("hostile")
    images = root / "images"
    images.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(images / "dark.png")
    afile = root / "afile"
    afile.write_text("a file, not a folder")
    from vfmxai.backbones import load_backbone

    evil = root / "evil_backbone"
    load_backbone("tiny", 32).model.save_pretrained(evil)
    (evil / "model.safetensors").unlink()
    with open(evil / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weights": Evil(root / "PWNED")}, handle)
    return {"IMAGES": images, "IMG": images / "dark.png", "FILE": afile, "UNDER": afile / "sub", "EVIL": evil}


CASES = [
    # item 9: --out an existing file, or under a file, for every command that writes a folder
    ("train-out-file", ["train", "--dataset", "synthetic", "--out", "{FILE}", *TINY], "exists and is not a folder"),
    ("train-out-under-file", ["train", "--dataset", "synthetic", "--out", "{UNDER}", *TINY], "is a file"),
    ("explain-out-file", ["explain", "--checkpoint", "{RUN}", "--method", "ala", "--out", "{FILE}", "{IMG}"],
     "exists and is not a folder"),
    ("explain-out-under-file", ["explain", "--checkpoint", "{RUN}", "--method", "ala", "--out", "{UNDER}", "{IMG}"],
     "is a file"),
    ("evaluate-out-file", ["evaluate", "--checkpoint", "{RUN}", "--dataset", "synthetic", "--out", "{FILE}"],
     "exists and is not a folder"),
    ("evaluate-out-under-file", ["evaluate", "--checkpoint", "{RUN}", "--dataset", "synthetic", "--out", "{UNDER}"],
     "is a file"),
    ("synth-out-under-file", ["data", "synth", "--out", "{UNDER}"], "is a file"),
    ("bench-out-file", [*BENCH, "--out", "{FILE}"], "exists and is not a folder"),
    ("bench-out-under-file", [*BENCH, "--out", "{UNDER}"], "is a file"),
    # item 10
    ("explain-cuda", ["explain", "--checkpoint", "{RUN}", "--method", "ala", "--device", "cuda", "--out", "{OUT}",
                      "{IMG}"], "--device cuda: CUDA is not available"),
    ("explain-device-typo", ["explain", "--checkpoint", "{RUN}", "--method", "ala", "--device", "gpu0", "--out",
                             "{OUT}", "{IMG}"], "--device gpu0: not a device"),
    ("explain-batch-0", ["explain", "--checkpoint", "{RUN}", "--method", "ala", "--batch-size", "0", "--out",
                         "{OUT}", "{IMG}"], "--batch-size must be >= 1, got 0"),
    ("explain-batch-negative", ["explain", "--checkpoint", "{RUN}", "--method", "ala", "--batch-size", "-2", "--out",
                                "{OUT}", "{IMG}"], "--batch-size must be >= 1, got -2"),
    ("synth-size-huge", ["data", "synth", "--out", "{OUT}", "--size", "100000"], "size must be in [16, 4096]"),
    ("synth-size-tiny", ["data", "synth", "--out", "{OUT}", "--size", "8"], "size must be in [16, 4096]"),
    ("train-evil-backbone", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--backbone", "{EVIL}"],
     "refused its pickled weights"),
    ("bench-evil-backbone", [*BENCH, "--backbone", "{EVIL}", "--out", "{OUT}"], "refused its pickled weights"),
    ("train-dim-absurd", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set", "model.dim=1000000000"],
     "model.dim=1000000000: must be <= 4096"),
    ("train-depth-absurd", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set", "model.depth=100000"],
     "model.depth=100000: must be <= 64"),
    ("train-adapter-absurd", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set", "model.dim=4096",
                              "--set", "model.depth=64"], "the adapter would hold about"),
    ("train-grid-absurd", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set",
                           "backbone.image_size=4096", "--set", "model.patch_size=1"], "the ALA grid"),
    ("train-image-size-absurd", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set",
                                 "backbone.image_size=100000"], "backbone.image_size=100000: must be <= 4096"),
    ("train-classes-absurd", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set",
                              "model.num_classes=10000000"], "model.num_classes=10000000"),
    ("train-batch-absurd", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set",
                            "train.batch_size=10000000"], "train.batch_size=10000000"),
    # item 11: --out the input folder
    ("explain-out-is-input", ["explain", "--checkpoint", "{RUN}", "--method", "ala", "--out", "{IMAGES}",
                              "{IMAGES}"], "is the input folder"),
    # item 12: quiet acceptances that now speak
    ("explain-method-empty", ["explain", "--checkpoint", "{RUN}", "--method", "", "--out", "{OUT}", "{IMG}"],
     "--method: name at least one method"),
    ("explain-method-commas", ["explain", "--checkpoint", "{RUN}", "--method", ",", "--out", "{OUT}", "{IMG}"],
     "--method: name at least one method"),
    ("bench-methods-empty", [*BENCH, "--methods", "", "--out", "{OUT}"], "--methods: name at least one method"),
    ("bench-image-size-0", [*BENCH, "--image-size", "0", "--out", "{OUT}"], "--image-size must be in [8, 4096]"),
    ("bench-insdel-0", [*BENCH, "--insdel-steps", "0", "--out", "{OUT}"], "--insdel-steps must be an integer >= 1"),
    ("bench-cuda", [*BENCH, "--device", "cuda", "--out", "{OUT}"], "--device cuda: CUDA is not available"),
    ("train-num-nodes-0", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--num-nodes", "0"],
     "train.num_nodes=0: must be >= 1"),
    ("evaluate-cuda", ["evaluate", "--checkpoint", "{RUN}", "--dataset", "synthetic", "--device", "cuda", "--out",
                       "{OUT}"], "--device cuda: CUDA is not available"),
    ("explain-cuda-index", ["explain", "--checkpoint", "{RUN}", "--method", "ala", "--device", "cuda:1", "--out",
                            "{OUT}", "{IMG}"], "--device cuda:1: CUDA is not available"),
    ("evaluate-device-typo", ["evaluate", "--checkpoint", "{RUN}", "--dataset", "synthetic", "--device", "gpu0",
                              "--out", "{OUT}"], "--device gpu0: not a device"),
    ("bench-device-typo", [*BENCH, "--device", "gpu0", "--out", "{OUT}"], "--device gpu0: not a device"),
    ("explain-method-blank", ["explain", "--checkpoint", "{RUN}", "--method", " ", "--out", "{OUT}", "{IMG}"],
     "--method: name at least one method"),
    ("bench-methods-commas", [*BENCH, "--methods", ",,", "--out", "{OUT}"], "--methods: name at least one method"),
    ("bench-image-size-negative", [*BENCH, "--image-size", "-5", "--out", "{OUT}"],
     "--image-size must be in [8, 4096]"),
    ("bench-image-size-huge", [*BENCH, "--image-size", "100000", "--out", "{OUT}"],
     "--image-size must be in [8, 4096]"),
    ("synth-into-a-dataset", ["data", "synth", "--out", "{IMAGES}"], "folder is not empty; pass --force"),
    ("synth-force-out-file", ["data", "synth", "--force", "--out", "{FILE}"], "exists and is not a folder"),
    ("explain-force-out-file", ["explain", "--checkpoint", "{RUN}", "--method", "ala", "--force", "--out", "{FILE}",
                                "{IMG}"], "exists and is not a folder"),
    ("evaluate-devices-out-file", ["evaluate", "--checkpoint", "{RUN}", "--dataset", "synthetic", "--devices", "2",
                                   "--out", "{FILE}"], "exists and is not a folder"),
    ("train-epochs-absurd", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set",
                             "train.epochs=1000000000"], "train.epochs=1000000000: must be <= 100000"),
    ("train-mlp-absurd", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set",
                          "model.mlp_ratio=100000"], "model.mlp_ratio=100000.0: must be in (0, 16]"),
    ("train-lora-rank-absurd", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set",
                                "backbone.lora_rank=1000000"], "backbone.lora_rank=1000000: must be <= 1024"),
    ("train-pb-channels-absurd", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set",
                                  "model.pb_channels=1000000"], "model.pb_channels=1000000: must be <= 4096"),
    ("train-set-newline", ["train", "--dataset", "synthetic", "--out", "{OUT}", *TINY, "--set", "train.epo\nchs=1"],
     "unknown field"),
]


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_invocation_is_one_line_and_leaves_no_folder(trained_run, places, tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    names = {**{k: str(v) for k, v in places.items()}, "RUN": str(trained_run), "OUT": str(out)}
    argv = [arg.format(**names) for arg in argv]
    images_before = sorted(p.name for p in places["IMAGES"].iterdir())
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfmxai: error:") and words in lines[0], err
    assert "Traceback" not in err
    assert not out.exists() and not Path(f"{out}-run").exists()
    assert places["FILE"].is_file() and not places["UNDER"].exists()
    assert sorted(p.name for p in places["IMAGES"].iterdir()) == images_before
    assert not (places["EVIL"].parent / "PWNED").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder whatever its mode")
@pytest.mark.parametrize("command", ["train", "explain", "evaluate", "synth", "bench"])
def test_a_folder_the_user_cannot_write_is_refused_first(trained_run, places, tmp_path, capsys, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    out = locked / "out"
    argv = {
        "train": ["train", "--dataset", "synthetic", "--out", str(out), *TINY],
        "explain": ["explain", "--checkpoint", str(trained_run), "--method", "ala", "--out", str(out),
                    str(places["IMG"])],
        "evaluate": ["evaluate", "--checkpoint", str(trained_run), "--dataset", "synthetic", "--out", str(out)],
        "synth": ["data", "synth", "--out", str(out)],
        "bench": [*BENCH, "--out", str(out)],
    }[command]
    try:
        assert main(argv) == 1
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert err == f"vfmxai: error: --out {out}: folder not writable ({locked}, where it would be made)"
    assert not out.exists()


# item 11: nothing a user made is overwritten unless asked; one writer per run folder


def test_synth_into_a_dataset_is_refused_and_force_replaces_it_without_stale_images(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["data", "synth", "--out", str(out), "--n-train", "4", "--n-val", "2", "--n-test", "2",
                 "--size", "16"]) == 0
    (out / "labels.csv").write_text("id,label,split\nmine,0,train\n")
    capsys.readouterr()
    smaller = ["data", "synth", "--out", str(out), "--n-train", "2", "--n-val", "1", "--n-test", "1", "--size", "16"]
    assert main(smaller) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"vfmxai: error: --out {out}: folder is not empty; pass --force to replace what is there by the set"
    assert (out / "labels.csv").read_text() == "id,label,split\nmine,0,train\n"
    assert main([*smaller, "--force"]) == 0
    rows = (out / "labels.csv").read_text().splitlines()[1:]
    ids = sorted(row.split(",")[0] + ".png" for row in rows)
    assert len(rows) == 4
    for folder in ("images", "masks"):
        assert sorted(p.name for p in (out / folder).iterdir()) == ids


def test_a_second_explain_into_the_same_folder_is_refused_and_force_does_not_mix_runs(
    trained_run, tmp_path, capsys
):
    for name in ("one", "two"):
        Image.fromarray(np.full((16, 16, 3), 40, np.uint8)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    common = ["explain", "--checkpoint", str(trained_run), "--out", str(out)]
    assert main([*common, "--method", "ala", str(tmp_path / "one.png")]) == 0
    first = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main([*common, "--method", "rollout", str(tmp_path / "two.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vfmxai: error: --out {out}: already holds an earlier explain (predictions.json)")
    assert sorted(p.name for p in out.iterdir()) == first
    (out / "notes.txt").write_text("mine")
    assert main([*common, "--method", "rollout", "--force", str(tmp_path / "two.png")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "predictions.json", "two.rollout.npy",
                                                      "two.rollout.png"]
    assert list(json.loads((out / "predictions.json").read_text())) == ["two"]


def test_explain_refuses_to_overwrite_a_file_it_did_not_write(trained_run, tmp_path, capsys):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "cat.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat.ala.png").write_bytes(b"someone's picture")
    code = main(["explain", "--checkpoint", str(trained_run), "--method", "ala", "--out", str(out),
                 str(tmp_path / "cat.png")])
    assert code == 1 and "cat.ala.png exists; pass --force" in capsys.readouterr().err
    assert (out / "cat.ala.png").read_bytes() == b"someone's picture"


def test_explain_into_a_subfolder_of_the_input_folder_reads_only_the_inputs(trained_run, places, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(places["IMAGES"], images)
    for _ in range(2):
        assert main(["explain", "--checkpoint", str(trained_run), "--method", "ala", "--force", "--out",
                     str(images / "explained"), str(images)]) == 0
    assert list(json.loads((images / "explained" / "predictions.json").read_text())) == ["dark"]


def test_a_second_train_into_a_run_folder_being_written_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with exclusive_folder(out):  # the first writer, still at work
        code = main(["train", "--dataset", "synthetic", "--out", str(out), *TINY])
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith(f"vfmxai: error: --out {out}: another process is writing there")
    assert not out.exists()  # the first writer made it, wrote nothing and removed it


def test_the_lock_is_held_during_training_and_released_after(tmp_path):
    import lightning as L

    from vfmxai.run_folder import Recipe
    from vfmxai.training import train

    seen = []

    class Probe(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            seen.append((out / LOCK).is_file())
            with pytest.raises(VfmxaiError, match="another process is writing there"), exclusive_folder(out):
                pass

    out = tmp_path / "run"
    config = Recipe("toy", "synthetic", overrides=tuple(TINY[i + 1] for i, a in enumerate(TINY) if a == "--set"),
                    fields={"backbone.name": "tiny"}).config()
    train(config, out, progress=False, callbacks=[Probe()])
    assert seen == [True] and not (out / LOCK).exists() and (out / "model.safetensors").is_file()


# item 12: an all-zero mask is reported and left out of the mask scores


def test_images_with_an_empty_mask_are_reported_and_left_out_of_miou(trained_run, tmp_path, capsys):
    from vfmxai.data import write_synthetic

    root = write_synthetic(tmp_path / "data", n_train=0, n_val=0, n_test=4, size=32, seed=3)
    blank = root / "masks" / "test-00001.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(blank)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(trained_run), "--dataset", "folder", "--root", str(root),
                 "--methods", "ala", "--steps", "2", "--no-progress", "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("vfmxai: warning: 1 image(s) have an empty object mask") and len(err.splitlines()) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["empty_masks"] == ["test-00001"]
    rows = (out / "per_image.csv").read_text().splitlines()[1:]
    ious = {row.split(",")[0]: float(row.split(",")[4]) for row in rows}
    kept = [v for k, v in ious.items() if k != "test-00001"]
    assert metrics["methods"]["ala"]["miou"] == pytest.approx(sum(kept) / 3, abs=1e-5)
    assert "test-00001" in (out / "table.md").read_text()


def test_summarise_with_no_object_anywhere_reports_no_mask_score():
    from vfmxai.evaluation.report import MASK_METRICS, summarise

    n, t = 3, 19
    arrays = {"iou": np.ones(n), "insertion": np.full(n, 0.5), "deletion": np.full(n, 0.25),
              "pointing_game": np.zeros(n), "energy_pg": np.zeros(n), "iou_curve": np.ones((n, t), np.float32),
              "intersection": np.zeros(n, np.int64), "union": np.zeros(n, np.int64)}
    values, tau = summarise(arrays, np.zeros(n, bool))
    paper = {"miou", "miou_dataset", "miou_best_tau", "pointing_game", "energy_pg"}
    assert tau is None and paper <= set(MASK_METRICS) and {k for k, v in values.items() if v is None} == paper
    assert (values["insertion"], values["deletion"], values["id"]) == (0.5, 0.25, 0.25)


# the library API


@pytest.fixture(scope="module")
def model():
    from run_fixtures import tiny_run_config

    from vfmxai.ala import build_model

    config = tiny_run_config()
    config.model.num_classes = 3
    return build_model(config).eval()


@pytest.mark.parametrize(
    ("images", "words"),
    [
        (torch.rand(2, 3, 48, 48), "must be (B >= 1, 3, 32, 32), got (2, 3, 48, 48)"),
        (torch.rand(0, 3, 32, 32), "got (0, 3, 32, 32)"),
        (torch.rand(2, 1, 32, 32), "got (2, 1, 32, 32)"),
        (torch.rand(3, 32, 32), "got (3, 32, 32)"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN or infinite"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float tensor"),
    ],
)
def test_model_explain_refuses_a_bad_batch_in_one_line(model, images, words):
    with pytest.raises(VfmxaiError) as err:
        model.explain(images)
    assert str(err.value).startswith("ALAModel.explain: ") and words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("classes", [0, 1, -3])
def test_a_linear_probe_needs_two_classes(model, classes):
    from vfmxai.classifier import LinearProbe

    with pytest.raises(VfmxaiError, match=f"LinearProbe: num_classes={classes}: need at least 2 classes"):
        LinearProbe(model.backbone, classes)


def test_a_malicious_backbone_pickle_runs_nothing_and_is_one_line(places):
    from vfmxai.backbones import load_backbone

    with pytest.raises(VfmxaiError, match="refused its pickled weights") as err:
        load_backbone(str(places["EVIL"]))
    assert "\n" not in str(err.value) and not (places["EVIL"].parent / "PWNED").exists()


@pytest.mark.parametrize(
    ("section", "field", "value", "words"),
    [
        ("model", "dim", 10**9, "model.dim=1000000000: must be <= 4096"),
        ("model", "map_channels", 10**6, "model.map_channels=1000000: must be <= 4096"),
        ("backbone", "image_size", 10**6, "backbone.image_size=1000000: must be <= 4096"),
    ],
)
def test_a_run_config_edited_to_absurd_sizes_is_refused_before_anything_is_built(
    trained_run, places, tmp_path, capsys, section, field, value, words
):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data = json.loads((run / "config.json").read_text())
    data[section][field] = value
    (run / "config.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(run), "--method", "ala", "--out", str(out), str(places["IMG"])]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"vfmxai: error: {run / 'config.json'}: {words}" and not out.exists()
