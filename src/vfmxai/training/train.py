"""`train(config, out)`: the training entry point behind `vfmxai train` and the Python API."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Dataset, Sampler

from vfmxai.ala import ALAModel, build_model
from vfmxai.ala.monitor import MapCheck, check_map
from vfmxai.checkpoint import load_resume_state
from vfmxai.config import CLASSIFIERS, RunConfig, check_config
from vfmxai.data import collate, loader_workers
from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write_json, check_out_folder, exclusive_folder
from vfmxai.run_folder import CONFIG, LAST, LOG, MAP_CHECK, dataset_split, load_run, write_run_files
from vfmxai.runtime import flush_denormals, resolve_precision
from vfmxai.training.callbacks import (
    SELECT_BY,
    AlternatingEpochArchitect,
    BestWeights,
    EpochLog,
    InterruptWatch,
    ResumeCheckpoint,
)
from vfmxai.training.module import ALALightning
from vfmxai.training.probe import fit_probe


class EpochShuffle(Sampler[int]):
    """A permutation drawn from (seed, epoch) alone, so a resumed run sees the same order as an unbroken one."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def _loader(dataset: Dataset, config: RunConfig, shuffle: bool) -> DataLoader:
    tc = config.train
    on_gpu = torch.cuda.is_available() and tc.accelerator in ("auto", "gpu", "cuda")
    workers = loader_workers(tc.num_workers, on_gpu, "train.num_workers")
    return DataLoader(
        dataset,
        batch_size=tc.batch_size,
        sampler=EpochShuffle(len(dataset), tc.seed) if shuffle else None,
        num_workers=workers,
        pin_memory=on_gpu,
        persistent_workers=workers > 0,
    )


LIGHTNING_PRECISION = {"bf16": "bf16-mixed", "fp32": "32-true"}


def _strategy(config: RunConfig) -> str:
    """Lightning's strategy: `auto` for one process; for several, DDP that tolerates parameters outside the
    loss, because AEA freezes the whole adapter in even epochs (its parameters then get no gradient: DDP
    leaves them untouched, and AdamW skips a parameter whose grad is None, so neither its moments nor weight
    decay move it)."""
    tc = config.train
    devices = str(tc.devices)
    if devices == "auto":
        several = torch.cuda.is_available() and torch.cuda.device_count() > 1 and tc.accelerator != "cpu"
    elif "," in devices or devices.startswith("["):  # a list of device indices
        several = len([d for d in devices.strip("[]").split(",") if d.strip()]) > 1
    else:
        several = devices.strip().lstrip("-").isdigit() and int(devices) != 1
    return "ddp_find_unused_parameters_true" if several or tc.num_nodes > 1 else "auto"


def _precision(config: RunConfig) -> str:
    """`train.precision` as Lightning names it; `auto` by the same rule as explaining and evaluating."""
    if config.train.precision != "auto":
        return LIGHTNING_PRECISION[config.train.precision]
    return LIGHTNING_PRECISION[resolve_precision("auto", "cuda" if torch.cuda.is_available() else "cpu")]


def datasets_for(config: RunConfig) -> dict[str, Dataset]:
    """The train and val splits; refused in one line, before anything is written, when one is empty (val
    drives early stopping, the kept weights and the map check, so a run without it would end in a traceback)."""
    splits = {split: dataset_split(config, split) for split in ("train", "val")}
    for split, data in splits.items():
        if len(data) == 0:
            raise VfmxaiError(
                f"dataset {config.data.dataset} {config.data.root or ''}: the {split} split has no images; "
                f"training needs train and val images (`vfmxai data check` lists every problem)"
            )
    return splits


RESUMABLE_FIELDS = ("train.epochs", "train.num_workers")
"""The only config fields a resumed run may change: anything else would make `config.json` describe a
run other than the one whose weights and optimiser state `last.ckpt` holds (the loader's worker count
changes where images are decoded, not which or in what order)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (`signal` = "SIGINT") or SIGTERM; `last.ckpt` holds the last finished epoch."""

    def __init__(self, signal_name: str, run_dir: Path):
        super().__init__(f"training interrupted by {signal_name}; resume with --resume --out {run_dir}")
        self.signal = signal_name


def train(
    config: RunConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
) -> ALAModel:
    """Train ALA + AEA + LoRA as `config` says; write the run folder `out`; return the best model (eval mode).

    `callbacks` are added after AEA (so they see each epoch's phase) and before the resume checkpoint.
    Interruption: every file in `out` is written atomically, so a process killed at any moment leaves
    complete files (at most a hidden `.*.tmp`, removed when training starts again there) and `last.ckpt`
    holds the state after the last finished epoch. `resume=True` continues from it on the path of an
    unbroken run (shuffle and augmentation are functions of seed, epoch and batch), or starts afresh when
    the run died in its first epoch; `config` must equal the saved one except `RESUMABLE_FIELDS`.
    Ctrl-C stops at once, SIGTERM after the current batch; both raise `TrainingInterrupted`.
    One writer per run folder: `out` is checked first (`vfmxai.io.check_out_folder`), then the process of rank
    0 holds the folder's lock (`vfmxai.io.exclusive_folder`) until training ends, so a second `train` into the
    same `out` is refused in one line while the first runs (the other DDP ranks are the first run's own).
    """
    run_dir = check_out_folder(out)
    check_config(config)
    lock = exclusive_folder(run_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext(run_dir)
    with lock:
        return _train(config, run_dir, resume, progress, callbacks)


def _train(
    config: RunConfig, run_dir: Path, resume: bool, progress: bool, callbacks: list[L.Callback] | None
) -> ALAModel:
    """`train`'s work, under the run folder's lock."""
    last = run_dir / LAST
    if config.classifier == "linear_probe":
        if resume:
            raise VfmxaiError("--resume: a linear probe fits in seconds and keeps no resume state; fit it again")
        return fit_probe(config, run_dir, datasets_for(config))
    if config.classifier not in CLASSIFIERS:
        raise VfmxaiError(f"classifier='{config.classifier}': choose one of {', '.join(CLASSIFIERS)}")
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise VfmxaiError(f"--resume: {run_dir} holds no run to resume (no {CONFIG})")
        config = _resume_config(config, run_dir)
    elif last.is_file():
        raise VfmxaiError(
            f"--out {run_dir}: already holds a run; pass --resume to continue it, or choose another folder"
        )
    resume_from = last if resume and last.is_file() else None
    if config.train.select_by not in SELECT_BY:
        raise VfmxaiError(f"train.select_by='{config.train.select_by}': choose one of {', '.join(SELECT_BY)}")
    flush_denormals()
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    splits = datasets_for(config)
    num_classes = splits["train"].num_classes
    if resume and num_classes != config.model.num_classes:
        raise VfmxaiError(
            f"--resume: the {config.data.dataset} dataset now has {num_classes} classes; the run in {run_dir} "
            f"was trained with {config.model.num_classes}"
        )
    config.model.num_classes = num_classes
    model = build_model(config)
    if resume_from is not None:
        load_resume_state(resume_from, model)
    _remove_stale_temporaries(run_dir)
    write_run_files(run_dir, config, splits["train"].class_names)

    watch = InterruptWatch()
    with _quiet_lightning():
        trainer = _trainer(config, run_dir, [*(callbacks or []), EpochLog(run_dir / LOG)], watch, progress)
        module = ALALightning(model, config)
        sigint = signal.getsignal(signal.SIGINT)
        try:
            trainer.fit(
                module,
                train_dataloaders=_loader(splits["train"], config, shuffle=True),
                val_dataloaders=_loader(splits["val"], config, shuffle=False),
                ckpt_path=str(resume_from) if resume_from else None,
                weights_only=True if resume_from else None,
            )
        except SystemExit:
            if not isinstance(watch.exception, (KeyboardInterrupt, SIGTERMException)):
                raise
            if sigint is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, sigint)
            name = "SIGINT" if isinstance(watch.exception, KeyboardInterrupt) else "SIGTERM"
            raise TrainingInterrupted(name, run_dir) from None
    best, _, _ = load_run(run_dir)
    if trainer.is_global_zero:
        verdict = check_trained_map(best, splits["val"], config)
        atomic_write_json(run_dir / MAP_CHECK, verdict.to_dict())
    return best


def _trainer(
    config: RunConfig, run_dir: Path, callbacks: list[L.Callback], watch: InterruptWatch, progress: bool
) -> L.Trainer:
    """Lightning's trainer with the schedule in order: AEA first (every later callback sees the epoch's
    phase), `callbacks`, the weight selection, early stopping, the resume checkpoint, the interrupt watch."""
    schedule: list[L.Callback] = [
        AlternatingEpochArchitect(config.train.aea),
        *callbacks,
        BestWeights(run_dir, SELECT_BY[config.train.select_by]),
    ]
    if config.train.patience > 0:
        schedule.append(EarlyStopping("val_loss", patience=config.train.patience, mode="min"))
    schedule += [ResumeCheckpoint(run_dir), watch]
    return L.Trainer(
        max_epochs=config.train.epochs,
        accelerator=config.train.accelerator,
        devices=config.train.devices,
        num_nodes=config.train.num_nodes,
        strategy=_strategy(config),
        precision=_precision(config),
        callbacks=schedule,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        default_root_dir=str(run_dir),
    )

def check_trained_map(model: ALAModel, dataset: Dataset, config: RunConfig) -> MapCheck:
    """`check_map` on the best model's maps over the validation split (one forward pass per batch)."""
    loader = DataLoader(dataset, batch_size=config.train.batch_size, collate_fn=collate)
    alphas, masks, has_mask = [], [], []
    with torch.no_grad():
        for batch in loader:
            alphas.append(model.forward_all(batch["image"], ala_logits=False).alpha)
            masks.append(batch["mask"])
            has_mask.append(batch["has_mask"])
    if not alphas:
        return MapCheck(0, 0, math.nan, math.nan, None, None, ("no validation images: the map was not checked",))
    return check_map(torch.cat(alphas), torch.cat(masks), torch.cat(has_mask))


def _flat(data: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _resume_config(requested: RunConfig, run_dir: Path) -> RunConfig:
    """The saved config with the requested `RESUMABLE_FIELDS`; VfmxaiError naming every other field that differs.

    `model.num_classes` = 0 (not yet filled from the dataset) matches any saved value; `data.root` is
    compared as a resolved path.
    """
    saved = RunConfig.load(run_dir / CONFIG)
    have, want = _flat(json.loads(saved.to_json())), _flat(json.loads(requested.to_json()))
    if want.get("model.num_classes") == 0:
        want["model.num_classes"] = have.get("model.num_classes")
    for flat in (have, want):
        if flat.get("data.root") is not None:
            flat["data.root"] = str(Path(str(flat["data.root"])).expanduser().resolve())
    differ = [k for k in sorted(set(have) | set(want)) if k not in RESUMABLE_FIELDS and have.get(k) != want.get(k)]
    if differ:
        shown = "; ".join(
            f"{k}: {json.dumps(have.get(k))} saved, {json.dumps(want.get(k))} requested" for k in differ[:6]
        )
        more = f"; and {len(differ) - 6} more" if len(differ) > 6 else ""
        raise VfmxaiError(
            f"--resume: the requested config differs from {run_dir / CONFIG} in {len(differ)} field(s) "
            f"({shown}{more}); only {', '.join(RESUMABLE_FIELDS)} may change when resuming"
        )
    for key in RESUMABLE_FIELDS:
        section, name = key.split(".")
        setattr(getattr(saved, section), name, getattr(getattr(requested, section), name))
    return saved


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete `.<name>.<random>.tmp` files that an atomic write of a killed process left in `run_dir`."""
    if run_dir.is_dir():
        for stale in run_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banner lines and its worker-count advice on a small CPU machine."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*The number of training batches.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
