"""`train(config, out)`: the training entry point behind `vfmxai train` and the Python API."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, Dataset, Sampler

from vfmxai.ala import ALAModel, build_model
from vfmxai.config import RunConfig
from vfmxai.data import get_dataset
from vfmxai.errors import VfmxaiError
from vfmxai.training.callbacks import AlternatingEpochArchitect, BestWeights, EpochLog, ResumeCheckpoint
from vfmxai.training.checkpoint import CONFIG, LAST, load_run, write_run_files
from vfmxai.training.module import ALALightning


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
    return DataLoader(
        dataset,
        batch_size=tc.batch_size,
        sampler=EpochShuffle(len(dataset), tc.seed) if shuffle else None,
        num_workers=tc.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=tc.num_workers > 0,
    )


def _precision(config: RunConfig) -> str:
    if config.train.precision != "auto":
        return config.train.precision
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def datasets_for(config: RunConfig, image_size: int) -> dict[str, Dataset]:
    return {split: dataset_split(config, split, image_size) for split in ("train", "val")}


def dataset_split(config: RunConfig, split: str, image_size: int) -> Dataset:
    """One split of the configured dataset (the synthetic set's sizes come from `DataConfig`)."""
    dc = config.data
    return get_dataset(
        dc.dataset, dc.root, split, image_size, seed=dc.seed,
        n_train=dc.n_train, n_val=dc.n_val, n_test=dc.n_test, size=dc.synth_size,
    )


def train(
    config: RunConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
) -> ALAModel:
    """Train ALA + AEA + LoRA as `config` says; write the run folder `out`; return the best model (eval mode).

    `callbacks` are added after AEA (so they see each epoch's phase) and before the resume checkpoint.
    """
    run_dir = Path(out)
    last = run_dir / LAST
    if resume:
        if not last.is_file():
            raise VfmxaiError(f"--resume: no {LAST} in {run_dir} to resume from")
        saved = RunConfig.load(run_dir / CONFIG)
        saved.train.epochs = config.train.epochs
        config = saved
    elif last.is_file():
        raise VfmxaiError(
            f"--out {run_dir}: already holds a run; pass --resume to continue it, or choose another folder"
        )

    L.seed_everything(config.train.seed, workers=True, verbose=False)
    splits = datasets_for(config, config.backbone.image_size)
    config.model.num_classes = splits["train"].num_classes
    model = build_model(config)
    write_run_files(run_dir, config, splits["train"].class_names)

    schedule: list[L.Callback] = [
        AlternatingEpochArchitect(config.train.aea),
        *(callbacks or []),
        EpochLog(run_dir / "log.csv"),
        BestWeights(run_dir),
    ]
    if config.train.patience > 0:
        schedule.append(EarlyStopping("val_loss", patience=config.train.patience, mode="min"))
    schedule.append(ResumeCheckpoint(run_dir))
    trainer = L.Trainer(
        max_epochs=config.train.epochs,
        accelerator=config.train.accelerator,
        devices=config.train.devices,
        num_nodes=config.train.num_nodes,
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
    module = ALALightning(model, config)
    with _quiet_lightning():
        trainer.fit(
            module,
            train_dataloaders=_loader(splits["train"], config, shuffle=True),
            val_dataloaders=_loader(splits["val"], config, shuffle=False),
            ckpt_path=str(last) if resume else None,
            weights_only=True if resume else None,
        )
    best, _, _ = load_run(run_dir)
    return best


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
