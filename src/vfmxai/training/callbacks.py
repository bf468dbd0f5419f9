"""Lightning callbacks: the AEA schedule, the per-epoch CSV log, best weights and the resume checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L

from vfmxai.checkpoint import save_weights
from vfmxai.io import atomic_write, atomic_write_text
from vfmxai.run_folder import LAST, WEIGHTS


def aea_map_on(epoch: int, enabled: bool = True) -> bool:
    """Alternating Epoch Architect (paper Eq. 3), epochs counted from 1: odd -> h_ALA = alpha, even -> ones."""
    return not enabled or epoch % 2 == 1


class AlternatingEpochArchitect(L.Callback):
    """Odd epochs: map on, everything trainable learns. Even epochs: map replaced by all-ones and every
    ALA parameter (former, f1, f2) frozen, so the perception branch and LoRA learn on unmasked features.
    The phase is a function of the epoch number alone, so a resumed run continues in the same phase."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        map_on = aea_map_on(trainer.current_epoch + 1, self.enabled)
        model = pl_module.model
        model.use_map = map_on
        for module in model.adapter_modules():
            module.requires_grad_(map_on)


class EpochLog(L.Callback):
    """Rewrites `log.csv` (one row per finished epoch) atomically after every epoch."""

    columns = (
        "epoch", "phase", "train_loss", "train_acc", "val_loss", "val_pb_loss", "val_acc",
        *(f"val_map_{name}" for name in ("area", "mean", "spread", "entropy", "border", "pg", "iou", "mask_share")),
    )
    """`val_pb_loss`: CE(p_PB) alone. `val_map_*`: the map's epoch means on the validation split
    (`vfmxai.ala.monitor`); pg, iou and mask_share are nan without masks."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[str] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        epoch = trainer.current_epoch + 1
        values = [str(epoch), "map" if pl_module.model.use_map else "ones"]
        values += [f"{float(metrics.get(k, math.nan)):.6f}" for k in self.columns[2:]]
        self.rows = [r for r in self.rows if int(r.split(",")[0]) < epoch] + [",".join(values)]
        if trainer.is_global_zero:
            atomic_write_text(self.path, ",".join(self.columns) + "\n" + "\n".join(self.rows) + "\n")

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict.get("rows", []))


SELECT_BY = {"loss": "val_loss", "pb_loss": "val_pb_loss", "last": None}
"""`train.select_by` -> the logged metric whose minimum picks the kept weights (None: every epoch replaces them)."""


class BestWeights(L.Callback):
    """After each epoch: `model.safetensors` <- trainable weights if `monitor` improved (every epoch when
    `monitor` is None).

    The best value travels in the Lightning checkpoint, so a resumed run keeps comparing against it.
    """

    def __init__(self, run_dir: Path, monitor: str | None = "val_loss"):
        self.run_dir = run_dir
        self.monitor = monitor
        self.best = math.inf

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor is not None:
            value = float(trainer.callback_metrics.get(self.monitor, math.nan))
            if not value < self.best and (self.run_dir / WEIGHTS).exists():
                return
            self.best = min(self.best, value) if not math.isnan(value) else self.best
        if trainer.is_global_zero:
            save_weights(pl_module.model, self.run_dir / WEIGHTS)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = float(state_dict.get("best", math.inf))


class ResumeCheckpoint(L.Callback):
    """Writes `last.ckpt` atomically at the end of every epoch; listed last so every other callback's
    state (early stopping counter, best loss, log rows) is already updated when it is saved.

    Under DDP every rank must call `save_checkpoint` (it ends in a barrier) but only rank 0 writes, so only
    rank 0 goes through a temporary file and the rename: another rank's empty temporary must not replace it.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / LAST

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            atomic_write(self.path, lambda tmp: trainer.save_checkpoint(tmp))
        else:
            trainer.save_checkpoint(self.path)


class InterruptWatch(L.Callback):
    """Remembers the exception that stopped `fit`. Lightning turns Ctrl-C into `sys.exit(1)` (leaving
    SIGINT ignored) and SIGTERM into a `SystemExit` with status 0; `train` looks here to raise both as
    `TrainingInterrupted` instead."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.exception = exception
