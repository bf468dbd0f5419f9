"""Training under DDP (Lightning, 2 CPU processes, gloo): two ranks with batch 8 each take the same steps as one
process with batch 16, the run folder is complete (a loadable `last.ckpt`, one log), and it resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_fixtures import tiny_run_config
from safetensors.torch import load_file

from vfmxai.config import RunConfig
from vfmxai.run_folder import LAST, WEIGHTS, load_run
from vfmxai.training import train

CLI = Path(sys.executable).with_name("vfmxai")


def _overrides(config: RunConfig) -> list[str]:
    """`--set key=value` for every field of `config`."""
    flags = []
    for section, fields in config.to_dict().items():
        if isinstance(fields, dict):
            flags += ["--set", *[f"{section}.{key}={json.dumps(value)}" for key, value in fields.items()]]
    return [part for flag in flags for part in (["--set", flag] if flag != "--set" else [])]


def _config(batch_size: int, epochs: int) -> RunConfig:
    """16 train images, no augmentation: one step per epoch over the whole set, however it is split."""
    config = tiny_run_config(batch_size=batch_size, epochs=epochs, flip=False, crop_scale=1.0, accelerator="cpu")
    config.data.n_train = 16
    return config


def _train_ddp(config: RunConfig, out: Path, *extra: str) -> subprocess.CompletedProcess:
    config.train.devices = "2"
    command = [str(CLI), "train", "--dataset", "synthetic", "--out", str(out), "--devices", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(  # a timeout: a rank that dies can leave the other waiting in a collective
        [*command, *_overrides(config), *extra], capture_output=True, text=True, env=env, timeout=600
    )


def _log(run: Path) -> list[list[str]]:
    return [line.split(",") for line in (run / "log.csv").read_text().splitlines()[1:]]


@pytest.mark.slow
def test_two_ranks_step_like_one_process_with_their_joint_batch_and_resume(tmp_path: Path) -> None:
    single = tmp_path / "single"
    train(_config(batch_size=16, epochs=1), single, progress=False)
    ddp = tmp_path / "ddp"
    result = _train_ddp(_config(batch_size=8, epochs=1), ddp)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("trained; run folder") == 1

    # epoch 1's train loss is the loss before the first step: the ranks' mean equals the joint batch's
    (single_row,), (ddp_row,) = _log(single), _log(ddp)
    assert abs(float(ddp_row[2]) - float(single_row[2])) < 1e-5
    # one AdamW step on the all-reduced gradient: the same function (weights agree only up to AdamW's first
    # step amplifying rounding noise in gradients that are zero in exact arithmetic, e.g. attention key biases)
    assert load_file(single / WEIGHTS).keys() == load_file(ddp / WEIGHTS).keys()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (maps_one, logits_one), (maps_two, logits_two) = (load_run(run)[0].explain(images) for run in (single, ddp))
    torch.testing.assert_close(logits_two, logits_one, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps_two, maps_one, rtol=1e-4, atol=1e-5)
    assert torch.load(ddp / LAST, weights_only=True)["epoch"] == 0

    result = _train_ddp(_config(batch_size=8, epochs=2), ddp, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [row[:2] for row in _log(ddp)] == [["1", "map"], ["2", "ones"]]
    assert _log(ddp)[0] == ddp_row  # the resumed run kept epoch 1's row


SNAPSHOT_SCRIPT = '''
import sys
import lightning as L
import torch
sys.path.insert(0, {tests!r})
from run_fixtures import tiny_run_config
from vfmxai.training import train


class Snapshot(L.Callback):
    """Every rank saves the adapter's and the perception branch's weights after each epoch."""

    def on_train_epoch_end(self, trainer, pl_module):
        model = pl_module.model
        adapter = {{f"{{i}}.{{k}}": v.detach().clone() for i, m in enumerate(model.adapter_modules())
                    for k, v in m.state_dict().items()}}
        perception = {{k: v.detach().clone() for k, v in model.perception.state_dict().items()}}
        torch.save({{"adapter": adapter, "perception": perception}},
                   f"{{sys.argv[1]}}/snap-{{trainer.global_rank}}-{{trainer.current_epoch + 1}}.pt")


config = tiny_run_config(batch_size=int(sys.argv[3]), epochs=3, flip=False, crop_scale=1.0, accelerator="cpu")
config.data.n_train = 16
config.train.devices = sys.argv[2]
train(config, sys.argv[1] + "/run", progress=False, callbacks=[Snapshot()])
'''


def _snapshots(tmp_path: Path, name: str, devices: str, batch_size: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    script = tmp_path / "snapshot_train.py"
    script.write_text(SNAPSHOT_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), devices, str(batch_size)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.mark.slow
def test_aea_under_ddp_freezes_the_adapter_bit_for_bit_in_even_epochs(tmp_path: Path) -> None:
    """Three epochs in one DDP process group (AEA freezes the adapter from epoch 2 on, unfreezes it in epoch 3):
    no crash, the adapter's weights after the even epoch equal those after epoch 1 bit for bit on both ranks
    (no AdamW moment or weight-decay step touched them), and the run matches one process with the joint batch."""
    ddp = _snapshots(tmp_path, "ddp", "2", 8)
    single = _snapshots(tmp_path, "single", "1", 16)
    for rank in (0, 1):
        one, two, three = (torch.load(ddp / f"snap-{rank}-{e}.pt", weights_only=True) for e in (1, 2, 3))
        for key, value in one["adapter"].items():
            assert torch.equal(two["adapter"][key], value), key
        assert any(not torch.equal(three["adapter"][k], v) for k, v in two["adapter"].items())
        assert any(not torch.equal(two["perception"][k], v) for k, v in one["perception"].items())
    reference = torch.load(single / "snap-0-3.pt", weights_only=True)
    final = torch.load(ddp / "snap-0-3.pt", weights_only=True)
    for part in ("adapter", "perception"):
        for key, value in reference[part].items():
            torch.testing.assert_close(final[part][key], value, rtol=1e-3, atol=1e-4, msg=key)
