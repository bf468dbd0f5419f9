"""Tiny run configurations that train in seconds on a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

import torch

from vfmxai.ala import ALAModel, build_model
from vfmxai.checkpoint import save_weights
from vfmxai.config import RunConfig, preset
from vfmxai.run_folder import WEIGHTS, dataset_split, write_run_files


def tiny_run_config(**train: object) -> RunConfig:
    """The toy preset shrunk to the random `tiny` backbone (32 px) and a few dozen synthetic images."""
    config = preset("toy")
    config.backbone.name = "tiny"
    config.backbone.image_size = 32
    config.backbone.lora_rank = 4
    m = config.model
    m.patch_size, m.dim, m.depth, m.heads, m.n_inject, m.map_channels, m.pb_channels = 8, 16, 2, 2, 2, 8, 16
    d = config.data
    d.n_train, d.n_val, d.n_test, d.synth_size = 24, 8, 8, 32
    t = config.train
    t.epochs, t.batch_size, t.lr, t.patience = 2, 8, 1e-2, 0
    for key, value in train.items():
        setattr(t, key, value)
    return config


def untrained_run(config: RunConfig, out: str | Path) -> ALAModel:
    """The untrained model `config` describes, written as a real run folder (config, classes, weights): a
    stand-in for `train` where only what comes after training is under test."""
    split = dataset_split(config, "train")
    config.model.num_classes = split.num_classes
    torch.manual_seed(config.train.seed)
    model = build_model(config).eval()
    write_run_files(Path(out), config, split.class_names)
    save_weights(model, Path(out) / WEIGHTS)
    return model
