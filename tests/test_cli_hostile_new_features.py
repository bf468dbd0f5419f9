"""A hostile user of the newer features (`vfmxai sanity`, `explain --target`/`--backbone`, `evaluate --metrics`
/`--metric-option`): bad invocations through the real command line, each answered with exit status 1, one line
on stderr naming the option or file, no traceback and no output folder; then an interrupted sanity run (nothing
written, the same command reruns without --force) and a resumed evaluation with other metrics (refused)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vfmxai.cli import main
from vfmxai.config import apply_overrides, preset
from vfmxai.training import train

PROBE = ["backbone.name=tiny", "backbone.image_size=32", "data.synth_size=32", "data.n_train=8", "data.n_val=4",
         "data.n_test=4", "train.epochs=1"]
SANITY = ["sanity", "--checkpoint", "{RUN}", "--dataset", "synthetic", "--no-progress", "--draws", "1",
          "--n-images", "2", "--methods", "gradcam", "--out", "{OUT}"]
EXPLAIN = ["explain", "--checkpoint", "{RUN}", "--method", "gradcam", "--out", "{OUT}", "{IMG}"]
BARE = ["explain", "--backbone", "tiny", "--method", "gradcam", "--target", "reference:{IMG}", "--out", "{OUT}",
        "{IMG}"]
EVALUATE = ["evaluate", "--checkpoint", "{RUN}", "--dataset", "synthetic", "--no-progress", "--steps", "2",
            "--methods", "gradcam", "--out", "{OUT}"]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """An image, a text file, a file that claims to be a PNG, a folder of images, and a linear-probe run."""
    root = tmp_path_factory.mktemp("hostile_new")
    images = root / "images"
    images.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(images / "grey.png")
    (root / "notes.txt").write_text("not an image")
    (root / "fake.png").write_text("not a PNG either")
    afile = root / "afile"
    afile.write_text("a file, not a folder")
    probe = root / "probe"
    train(apply_overrides(preset("probe"), PROBE), probe, progress=False)
    return {"IMAGES": images, "IMG": images / "grey.png", "TXT": root / "notes.txt", "FAKE": root / "fake.png",
            "FILE": afile, "UNDER": afile / "sub", "PROBE": probe, "MISSING": root / "missing.png"}


CASES = [
    # vfmxai sanity
    ("sanity-n-images-0", [*SANITY, "--n-images", "0"], "--n-images must be a positive integer, got 0"),
    ("sanity-n-images-negative", [*SANITY, "--n-images", "-3"], "--n-images must be a positive integer, got -3"),
    ("sanity-draws-0", [*SANITY, "--draws", "0"], "--draws must be a positive integer, got 0"),
    ("sanity-draws-huge", [*SANITY, "--draws", "1000000000"], "--draws must be <= 1000"),
    ("sanity-batch-0", [*SANITY, "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    ("sanity-seed-negative", [*SANITY, "--seed", "-1"], "--seed must be an integer in [0, 2**32 - 1], got -1"),
    ("sanity-seed-huge", [*SANITY, "--seed", str(10**23)], "--seed must be an integer in [0, 2**32 - 1]"),
    ("sanity-fail-at-above", [*SANITY, "--fail-at", "2"], "--fail-at must be a rank correlation in [-1, 1], got 2.0"),
    ("sanity-fail-at-below", [*SANITY, "--fail-at", "-1.5"], "--fail-at must be a rank correlation in [-1, 1]"),
    ("sanity-fail-at-nan", [*SANITY, "--fail-at", "nan"], "--fail-at must be a rank correlation in [-1, 1], got nan"),
    ("sanity-fail-at-inf", [*SANITY, "--fail-at", "inf"], "--fail-at must be a rank correlation in [-1, 1], got inf"),
    ("sanity-method-typo", [*SANITY, "--methods", "gradcm"], "--methods: unknown method(s) gradcm"),
    ("sanity-methods-empty", [*SANITY, "--methods", ""], "--methods: no method given"),
    ("sanity-methods-commas", [*SANITY, "--methods", ",,"], "--methods: no method given"),
    ("sanity-tis-on-ala", [*SANITY, "--methods", "tis"], "--methods: none can run (tis: inapplicable: TIS removes"),
    ("sanity-ala-on-probe", [*SANITY, "--checkpoint", "{PROBE}", "--methods", "ala"],
     "--methods: none can run (ala: inapplicable: the model is not an ALA model)"),
    ("sanity-split-typo", [*SANITY, "--split", "tst"], "split 'tst' unknown; choose one of train, val, test"),
    ("sanity-precision-typo", [*SANITY, "--precision", "fp8"], "--precision fp8: choose from auto, bf16, fp32"),
    ("sanity-device-typo", [*SANITY, "--device", "gpu0"], "--device gpu0: not a device"),
    ("sanity-option-method-typo", [*SANITY, "--method-option", "rse.n_masks=4"], "unknown method 'rse'"),
    ("sanity-option-method-typo-lists-vit", [*SANITY, "--method-option", "rse.n_masks=4"], "vit_reciprocam"),
    ("sanity-option-key-typo", [*SANITY, "--methods", "rise", "--method-option", "rise.n_mask=4"],
     "method 'rise': unknown option 'n_mask'"),
    ("sanity-option-bad-value", [*SANITY, "--methods", "rise", "--method-option", "rise.n_masks=-4"],
     "option n_masks=-4 must be a positive integer"),
    ("sanity-option-method-not-chosen", [*SANITY, "--method-option", "rise.n_masks=4"],
     "--method-option rise.*: method 'rise' is not among --methods (gradcam)"),
    ("sanity-no-run", [*SANITY, "--checkpoint", "{MISSING}"], "no such run folder"),
    ("sanity-out-file", [*SANITY, "--out", "{FILE}"], "exists and is not a folder"),
    ("sanity-out-under-file", [*SANITY, "--out", "{UNDER}"], "is a file, so no folder can be made under it"),
    ("sanity-out-run-folder", [*SANITY, "--out", "{RUN}"], "folder is not empty; pass --force"),
    # vfmxai explain --target, --backbone, --image-size
    ("explain-prompt-empty", [*EXPLAIN, "--target", "prompt:"], "--target 'prompt:': give the text after 'prompt:'"),
    ("explain-prompt-blank", [*EXPLAIN, "--target", "prompt:  "], "give the text after 'prompt:'"),
    ("explain-prompt-no-clip", [*EXPLAIN, "--target", "prompt:a cat"],
     "--target prompt: needs the text tower of a whole CLIP directory"),
    ("explain-bare-prompt-no-clip", [*BARE, "--target", "prompt:a cat"],
     "--backbone tiny: prompt targets need a CLIP model directory"),
    ("explain-reference-folder", [*EXPLAIN, "--target", "reference:{IMAGES}"], "is a folder; give one image file"),
    ("explain-reference-text", [*EXPLAIN, "--target", "reference:{TXT}"], "--target reference:{TXT}: not a readable"),
    ("explain-reference-fake", [*EXPLAIN, "--target", "reference:{FAKE}"], "--target reference:{FAKE}: not a readable"),
    ("explain-reference-missing", [*EXPLAIN, "--target", "reference:{MISSING}"], "no such image file"),
    ("explain-reference-empty", [*EXPLAIN, "--target", "reference:"], "give the image file after 'reference:'"),
    ("explain-target-typo", [*EXPLAIN, "--target", "probs"], "--target 'probs': must be class, logit, prob"),
    ("explain-against-alone", [*EXPLAIN, "--against", "a dog"], "--against: contrasts prompts, so it needs"),
    ("explain-against-empty", [*EXPLAIN, "--target", "prompt:a cat", "--against", " "],
     "--against: every prompt must be non-empty text"),
    ("explain-prob-rollout", [*EXPLAIN, "--method", "rollout", "--target", "prob"],
     "--target prob: method(s) rollout take no target"),
    ("explain-reference-ala", [*EXPLAIN, "--method", "ala", "--target", "reference:{IMG}"], "method(s) ala take no"),
    ("explain-image-size-without-backbone", [*EXPLAIN, "--image-size", "32"], "--image-size: applies to --backbone"),
    ("explain-both-models", [*BARE, "--checkpoint", "{RUN}"], "--checkpoint or --backbone: give one"),
    ("explain-bare-class", [*BARE, "--target", "class"], "a bare --backbone has no class logits"),
    ("explain-bare-missing", [*BARE[:2], "{MISSING}", *BARE[3:]], "not a directory holding a transformers config"),
    ("explain-image-size-0", [*BARE, "--image-size", "0"], "--image-size must be in [8, 4096], got 0"),
    ("explain-image-size-negative", [*BARE, "--image-size", "-16"], "--image-size must be in [8, 4096], got -16"),
    ("explain-image-size-huge", [*BARE, "--image-size", "100000"], "--image-size must be in [8, 4096], got 100000"),
    ("explain-image-size-not-patches", [*BARE, "--image-size", "33"], "has patches of 8 px, which do not divide it"),
    # vfmxai evaluate --metrics, --metric-option
    ("evaluate-methods-paper-and-more", [*EVALUATE, "--methods", "paper,legrad"],
     "--methods: 'paper' names a whole set of methods; give it alone or list the methods"),
    ("evaluate-option-method-not-chosen", [*EVALUATE, "--method-option", "rise.n_masks=4"],
     "--method-option rise.*: method 'rise' is not among --methods (gradcam)"),
    ("evaluate-option-new-method-default-methods",
     [*[a for a in EVALUATE if a not in ("--methods", "gradcam")], "--method-option", "legrad.n_layers=2"],
     "--method-option legrad.*: method 'legrad' is not among --methods (ala, gradcam"),
    ("reproduce-method-typo", ["reproduce", "--preset", "toy", "--dataset", "synthetic", "--seeds", "1",
                               "--methods", "gradcma", "--out", "{OUT}"], "--methods: unknown method(s) gradcma"),
    ("reproduce-option-method-not-chosen", ["reproduce", "--preset", "toy", "--dataset", "synthetic", "--seeds", "1",
                                            "--methods", "ala,gradcam", "--method-option", "rise.n_masks=4",
                                            "--out", "{OUT}"], "method 'rise' is not among --methods (ala, gradcam)"),
    ("evaluate-metric-typo", [*EVALUATE, "--metrics", "miou,aopx"], "--metrics: unknown metric(s) aopx"),
    ("evaluate-metrics-empty", [*EVALUATE, "--metrics", ""], "--metrics: no metric given"),
    ("evaluate-metrics-commas", [*EVALUATE, "--metrics", ","], "--metrics: no metric given"),
    ("evaluate-metrics-all-and-more", [*EVALUATE, "--metrics", "all,aopc"], "'all' already names every metric"),
    ("evaluate-option-metric-typo", [*EVALUATE, "--metrics", "aopc", "--metric-option", "aopx.region_size=4"],
     "--metric-option aopx.*: unknown metric 'aopx'"),
    ("evaluate-option-key-typo", [*EVALUATE, "--metrics", "aopc", "--metric-option", "aopc.region=4"],
     "--metric-option aopc.region: unknown option (options of aopc:"),
    ("evaluate-option-metric-not-chosen", [*EVALUATE, "--metrics", "aopc", "--metric-option", "road.noise=0.02"],
     "metric 'road' is not among --metrics (aopc)"),
    ("evaluate-option-not-in-default-set", [*EVALUATE, "--metric-option", "road.noise=0.02"],
     "metric 'road' is not among --metrics (miou, insertion_deletion, pointing_game, energy_pg)"),
    ("evaluate-option-string-steps", [*EVALUATE, "--metrics", "aopc", "--metric-option", "aopc.steps=abc"],
     "--metric-option aopc.steps='abc': must be an integer in [1, 10000]"),
    ("evaluate-option-float-count", [*EVALUATE, "--metrics", "infidelity", "--metric-option",
                                     "infidelity.n_samples=2.5"], "infidelity.n_samples=2.5: must be"),
    ("evaluate-option-bool-count", [*EVALUATE, "--metrics", "infidelity", "--metric-option",
                                    "infidelity.n_samples=true"], "infidelity.n_samples=True: must be"),
    ("evaluate-option-huge-samples", [*EVALUATE, "--metrics", "infidelity", "--metric-option",
                                      "infidelity.n_samples=1000000000"], "must be an integer in [1, 10000]"),
    ("evaluate-option-huge-sensitivity", [*EVALUATE, "--metrics", "max_sensitivity", "--metric-option",
                                          "max_sensitivity.n_samples=1000000000"], "must be an integer in [1, 10000]"),
    ("evaluate-option-huge-aopc-steps", [*EVALUATE, "--metrics", "aopc", "--metric-option",
                                         "aopc.steps=1000000000"], "aopc.steps=1000000000: must be an integer in"),
    ("evaluate-option-huge-region", [*EVALUATE, "--metrics", "aopc", "--metric-option", "aopc.region_size=100000"],
     "aopc.region_size=100000: must be an integer in [1, 10000] (pixels)"),
    ("evaluate-option-negative-radius", [*EVALUATE, "--metrics", "max_sensitivity", "--metric-option",
                                         "max_sensitivity.radius=-1"], "max_sensitivity.radius=-1: must be a number"),
    ("evaluate-option-nan", [*EVALUATE, "--metrics", "road", "--metric-option", "road.noise=NaN"],
     "road.noise=nan: must be a number >= 0"),
    ("evaluate-option-infinite", [*EVALUATE, "--metrics", "road", "--metric-option", "road.noise=Infinity"],
     "road.noise=inf: must be a number >= 0"),
    ("evaluate-option-infinite-tolerance", [*EVALUATE, "--metrics", "pointing_game", "--metric-option",
                                            "pointing_game.tolerance=Infinity"], "pointing_game.tolerance=inf"),
    ("evaluate-option-huge-seed", [*EVALUATE, "--metrics", "road", "--metric-option", f"road.seed={10**23}"],
     "must be an integer in [-2**63, 2**63)"),
    ("evaluate-option-null-count", [*EVALUATE, "--metrics", "infidelity", "--metric-option",
                                    "infidelity.n_samples=null"], "infidelity.n_samples=None: must be"),
    ("evaluate-option-percentile-scalar", [*EVALUATE, "--metrics", "road", "--metric-option", "road.percentiles=50"],
     "road.percentiles=50: must be a non-empty list of numbers in (0, 100)"),
    ("evaluate-option-percentile-infinite", [*EVALUATE, "--metrics", "road", "--metric-option",
                                             "road.percentiles=[50,Infinity]"], "road.percentiles=[50, inf]"),
    ("evaluate-option-unknown-for-optionless", [*EVALUATE, "--metrics", "sparseness", "--metric-option",
                                                "sparseness.x=1"], "unknown option (options of sparseness: none)"),
    ("evaluate-steps-huge", [*EVALUATE, "--steps", "1000000000"], "--steps must be <= 10000, got 1000000000"),
]


def _fill(argv: list[str], names: dict[str, str]) -> list[str]:
    return [arg.format(**names) for arg in argv]


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_invocation_is_one_line_and_leaves_no_folder(trained_run, places, tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    names = {**{k: str(v) for k, v in places.items()}, "RUN": str(trained_run), "OUT": str(out)}
    run_before = sorted(p.name for p in trained_run.iterdir())
    assert main(_fill(argv, names)) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    words = words.format(**names)
    assert len(lines) == 1 and lines[0].startswith("vfmxai: error:") and words in lines[0], err
    assert not out.exists()
    assert sorted(p.name for p in trained_run.iterdir()) == run_before
    assert places["FILE"].read_text() == "a file, not a folder" and not places["UNDER"].exists()


def test_an_interrupted_sanity_run_writes_nothing_and_the_same_command_reruns(trained_run, tmp_path, capsys,
                                                                              monkeypatch):
    """Sanity keeps everything in memory and writes --out at the end: Ctrl-C leaves no folder to block a rerun
    (no --force needed) and says so instead of "finished work is saved"; an --n-images over the split's size
    takes the whole split."""
    from vfmxai.evaluation import sanity

    out = tmp_path / "sanity"
    argv = _fill(SANITY, {"RUN": str(trained_run), "OUT": str(out)})
    real = sanity._model_randomisation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sanity, "_model_randomisation", interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"vfmxai: interrupted; nothing was written to {out} (rerun the same command to start again)"
    assert not out.exists()
    monkeypatch.setattr(sanity, "_model_randomisation", real)
    assert main([*argv, "--n-images", "100"]) == 0
    result = json.loads((out / "sanity.json").read_text())
    assert result["n_images"] == 8 and len(set(result["image_ids"])) == 8  # tiny_run_config's 8 test images
    assert sorted(p.name for p in out.iterdir()) == ["sanity.json", "sanity.md", "sanity.png"]


def test_resuming_an_evaluation_with_other_metrics_is_refused_and_keeps_the_results(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = _fill(EVALUATE, {"RUN": str(trained_run), "OUT": str(out)})
    assert main([*argv, "--metrics", "sparseness"]) == 0
    before = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert main([*argv, "--metrics", "complexity"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vfmxai: error: {out}: holds per-image results made with metrics=[\"sparseness\"], "
                          "not [\"complexity\"]"), err
    assert (out / "metrics.json").read_text() == before
    assert main([*argv, "--metrics", "sparseness,sparseness"]) == 0  # a name given twice is the same set
    assert set(json.loads((out / "metrics.json").read_text())["methods"]["gradcam"]) >= {"sparseness"}
