"""Tiny run configurations that train in seconds on a 2-core CPU."""

from __future__ import annotations

from vfmxai.config import RunConfig, preset


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
