"""Training interrupted at any point (SIGKILL, SIGTERM, Ctrl-C, a kill while writing) and resumed ends
bit-identical to an unbroken run; a resume with other settings is refused with the fields that differ."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from run_fixtures import tiny_run_config
from safetensors.torch import load_file

from vfmxai.cli import main
from vfmxai.errors import VfmxaiError
from vfmxai.io import LOCK
from vfmxai.training import train
from vfmxai.training.train import TrainingInterrupted

TESTS = Path(__file__).parent
EPOCHS = 3
"""24 train images in batches of 8: three batches per epoch, so batch 1 is mid-epoch."""


class PhaseLog(L.Callback):
    """The AEA phase of every epoch this process trains."""

    def __init__(self) -> None:
        self.map_on: dict[int, bool] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.map_on[trainer.current_epoch + 1] = pl_module.model.use_map


class AtBatch(L.Callback):
    """Calls `action` after batch `batch` of epoch `epoch` (0-based) and counts the batches trained after it."""

    def __init__(self, epoch: int, batch: int, action) -> None:
        self.at, self.action, self.fired, self.after = (epoch, batch), action, False, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.fired:
            self.after += 1
        elif (trainer.current_epoch, batch_idx) == self.at:
            self.fired = True
            self.action()


@pytest.fixture(scope="module")
def _unbroken_runs() -> dict[int, Path]:
    return {}


@pytest.fixture
def unbroken(_unbroken_runs, tmp_path_factory) -> Path:
    """The uninterrupted run, trained once per torch thread count: CPU kernels split their sums by thread,
    so bit-identity holds at a fixed thread count (a module-scoped fixture would run before conftest's
    function-scoped thread setting)."""
    threads = torch.get_num_threads()
    if threads not in _unbroken_runs:
        run = tmp_path_factory.mktemp("unbroken") / "run"
        train(tiny_run_config(epochs=EPOCHS), run, progress=False)
        _unbroken_runs[threads] = run
    return _unbroken_runs[threads]


def _final(run: Path) -> tuple[dict, dict, int]:
    state = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    return state["state_dict"], state["optimizer_states"][0]["state"], state["epoch"]


def _assert_same_run(expected: Path, got: Path) -> None:
    """Same final weights and optimiser moments, same best weights file, same per-epoch log, bit for bit."""
    weights, moments, epoch = _final(expected)
    weights_got, moments_got, epoch_got = _final(got)
    assert epoch_got == epoch == EPOCHS - 1
    assert weights.keys() == weights_got.keys()
    for name in weights:
        assert torch.equal(weights[name], weights_got[name]), name
    for index in moments:
        for key in moments[index]:
            assert torch.equal(moments[index][key], moments_got[index][key]), (index, key)
    assert (got / "model.safetensors").read_bytes() == (expected / "model.safetensors").read_bytes()
    assert (got / "log.csv").read_bytes() == (expected / "log.csv").read_bytes()
    assert [row["phase"] for row in csv.DictReader((got / "log.csv").open())] == ["map", "ones", "map"]


def _assert_complete_files(run: Path, epochs_done: int, killed: bool = False) -> None:
    """No temporary left behind; every file parses; the resume state is the last finished epoch's. A SIGKILL
    runs no clean-up, so the run folder's lock file stays, but its flock died with the process: it must not
    block the next writer."""
    left = sorted(p.name for p in run.iterdir() if p.name.startswith("."))
    assert left == ([LOCK] if killed else []), left
    if killed:
        with (run / LOCK).open() as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if still held
            fcntl.flock(lock, fcntl.LOCK_UN)
    json.loads((run / "config.json").read_text())
    load_file(str(run / "model.safetensors"))
    assert _final(run)[2] == epochs_done - 1
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert len(rows) >= epochs_done and all(row["val_loss"] for row in rows)


def _resume_and_compare(run: Path, unbroken: Path, phases: dict[int, bool]) -> None:
    recorder = PhaseLog()
    train(tiny_run_config(epochs=EPOCHS), run, resume=True, progress=False, callbacks=[recorder])
    assert recorder.map_on == phases
    _assert_same_run(unbroken, run)


CHILD = """
import sys, time
import torch
sys.path.insert(0, {tests!r})
torch.set_num_threads({threads})
import lightning as L
from run_fixtures import tiny_run_config
from vfmxai.training import train

class Stall(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (1, 1):
            open({marker!r}, "w").close()
            time.sleep(600)

train(tiny_run_config(epochs={epochs}), {out!r}, progress=False, callbacks=[Stall()])
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_unbroken_weights(unbroken, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "in-epoch-2"
    code = CHILD.format(tests=str(TESTS), threads=torch.get_num_threads(), marker=str(marker), epochs=EPOCHS,
                        out=str(run))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the training process never reached epoch 2"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    _assert_complete_files(run, epochs_done=1, killed=True)
    _resume_and_compare(run, unbroken, {2: False, 3: True})
    assert not (run / LOCK).exists()


def test_sigterm_stops_after_the_batch_and_resumes_to_the_unbroken_weights(unbroken, tmp_path):
    def terminate() -> None:
        handler = signal.getsignal(signal.SIGTERM)
        assert handler not in (signal.SIG_DFL, None), "Lightning's SIGTERM handler is not installed"
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop = AtBatch(1, 1, terminate)
    with pytest.raises(TrainingInterrupted, match="SIGTERM") as info:
        train(tiny_run_config(epochs=EPOCHS), tmp_path / "run", progress=False, callbacks=[stop])
    assert info.value.signal == "SIGTERM" and isinstance(info.value, KeyboardInterrupt)
    assert stop.after == 0, "training went on after SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    _assert_complete_files(tmp_path / "run", epochs_done=1)
    _resume_and_compare(tmp_path / "run", unbroken, {2: False, 3: True})


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler for the test's duration: a process started in the background by a shell
    without job control inherits SIGINT ignored, and the test checks that training leaves the handler it found."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def test_ctrl_c_while_writing_the_checkpoint_keeps_the_previous_one(
    unbroken, tmp_path, monkeypatch, python_sigint_handler
):
    """KeyboardInterrupt half-way through writing epoch 2's last.ckpt: epoch 1's stays, whole."""
    real_save = L.Trainer.save_checkpoint
    calls = []

    def save_then_interrupt(trainer, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"PK\x03\x04 half a zip archive")
            raise KeyboardInterrupt
        return real_save(trainer, path, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", save_then_interrupt)
    with pytest.raises(TrainingInterrupted, match="SIGINT"):
        train(tiny_run_config(epochs=EPOCHS), tmp_path / "run", progress=False)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "SIGINT left ignored"
    _assert_complete_files(tmp_path / "run", epochs_done=1)
    _resume_and_compare(tmp_path / "run", unbroken, {2: False, 3: True})


def test_a_run_killed_in_its_first_epoch_resumes_from_scratch(unbroken, tmp_path):
    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(tiny_run_config(epochs=EPOCHS), tmp_path / "run", progress=False, callbacks=[AtBatch(0, 1, interrupt)])
    assert (tmp_path / "run" / "config.json").is_file() and not (tmp_path / "run" / "last.ckpt").exists()
    (tmp_path / "run" / ".last.ckpt.x1y2.tmp").write_bytes(b"left by a killed write")
    _resume_and_compare(tmp_path / "run", unbroken, {1: True, 2: False, 3: True})
    with pytest.raises(VfmxaiError, match="holds no run to resume"):
        train(tiny_run_config(epochs=EPOCHS), tmp_path / "empty", resume=True, progress=False)


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        (lambda c: setattr(c.backbone, "name", "clip-vit-b16"), ["backbone.name"]),
        (lambda c: (setattr(c.model, "dim", 32), setattr(c.model, "heads", 4)), ["model.dim", "model.heads"]),
        (lambda c: (setattr(c.data, "dataset", "folder"), setattr(c.data, "root", "/data/x")),
         ["data.dataset", "data.root"]),
        (lambda c: setattr(c.train, "seed", 1), ["train.seed"]),
    ],
)
def test_resume_with_another_config_is_refused_naming_the_fields(unbroken, change, fields):
    saved = (unbroken / "config.json").read_bytes()
    config = tiny_run_config(epochs=EPOCHS + 2)
    change(config)
    with pytest.raises(VfmxaiError) as info:
        train(config, unbroken, resume=True, progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("--resume:")
    assert "only train.epochs, train.num_workers may change" in message
    assert f"in {len(fields)} field(s)" in message
    for field in fields:
        assert field in message
    listed = message.split("field(s) (")[1].split("); only")[0]
    assert "train.epochs" not in listed
    assert (unbroken / "config.json").read_bytes() == saved


def test_cli_resume_with_other_flags_is_a_one_line_error(unbroken, capsys):
    code = main(["train", "--dataset", "synthetic", "--out", str(unbroken), "--resume", "--backbone", "tiny",
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("vfmxai: error: --resume:"), err
    assert "backbone.image_size: 32 saved, 64 requested" in err and "more); only train.epochs, train.num_workers" in err
