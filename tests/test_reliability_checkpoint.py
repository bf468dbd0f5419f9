"""Safe loading: a resume checkpoint that would run code is refused before it runs; damaged or mismatched
weights files are one-line errors naming the file and what is wrong."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from run_fixtures import tiny_run_config

from vfmxai.errors import VfmxaiError
from vfmxai.run_folder import load_run
from vfmxai.training import train


class PlantsMarker:
    """Unpickling this calls os.system: a stand-in for any code hidden in a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def _one_line(info: pytest.ExceptionInfo, *words: str) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_a_resume_checkpoint_that_would_run_code_is_refused_unrun(run, tmp_path, container):
    marker = tmp_path / "code-ran"
    state = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    state["callbacks"] = {"payload": PlantsMarker(marker)}
    if container == "torch.save":
        torch.save(state, run / "last.ckpt")
    else:
        (run / "last.ckpt").write_bytes(pickle.dumps(PlantsMarker(marker), protocol=2))
    with pytest.raises(VfmxaiError) as info:
        train(tiny_run_config(epochs=2), run, resume=True, progress=False)
    _one_line(info, str(run / "last.ckpt"), "refused", "could run code")
    assert not marker.exists(), "the pickle's code ran"
    assert "system" in str(info.value)


def test_damaged_or_foreign_resume_checkpoints_are_named(run):
    last = run / "last.ckpt"
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 2])
    with pytest.raises(VfmxaiError) as info:
        train(tiny_run_config(epochs=2), run, resume=True, progress=False)
    _one_line(info, str(last), "not a readable resume checkpoint")

    state = torch.load(io.BytesIO(good), weights_only=True)
    dropped = sorted(state["state_dict"])[0]
    del state["state_dict"][dropped]
    torch.save(state, last)
    with pytest.raises(VfmxaiError) as info:
        train(tiny_run_config(epochs=2), run, resume=True, progress=False)
    _one_line(info, str(last), "do not match", f"missing: {dropped}")

    torch.save({"weights": [1, 2, 3]}, last)
    with pytest.raises(VfmxaiError) as info:
        train(tiny_run_config(epochs=2), run, resume=True, progress=False)
    _one_line(info, str(last), "no state_dict")


def _data_offset(path: Path) -> int:
    """Where the tensor bytes of a safetensors file begin: 8-byte header length + JSON header."""
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "NaN data"])
def test_a_damaged_weights_file_is_a_one_line_error_naming_it(run, damage):
    weights = run / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) - 100])
    elif damage == "garbage":
        weights.write_bytes(b"\x00" * 64 + data[64:])
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        start = _data_offset(weights)
        weights.write_bytes(data[:start] + b"\xff" * 64 + data[start + 64 :])
    with pytest.raises(VfmxaiError) as info:
        load_run(run)
    message = _one_line(info, str(weights))
    expected = "NaN or infinite values" if damage == "NaN data" else "not a readable safetensors file"
    assert expected in message


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("model.dim", 32, ["wrong shape", "[16", "[32", "expected"]),
        ("backbone.lora_rank", 8, ["wrong shape", "lora_A", "[4, 32] vs [8, 32] expected"]),
        ("backbone.lora", False, ["unexpected: backbone.", "lora_", "more"]),
        ("model.n_inject", 1, ["(unexpected: former.inject.1.bias, former.inject.1.weight)"]),
    ],
)
def test_weights_that_do_not_fit_the_config_name_what_differs(run, field, value, words):
    config = json.loads((run / "config.json").read_text())
    section, name = field.split(".")
    config[section][name] = value
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(VfmxaiError) as info:
        load_run(run)
    _one_line(info, str(run / "model.safetensors"), "do not match the model built from its config", *words)
