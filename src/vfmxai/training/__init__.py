"""Training: the Lightning module, the AEA callback, checkpoints and the `train` entry point."""

from vfmxai.training.callbacks import AlternatingEpochArchitect, aea_map_on
from vfmxai.training.checkpoint import load_run, load_weights, save_weights
from vfmxai.training.train import train

__all__ = ["AlternatingEpochArchitect", "aea_map_on", "load_run", "load_weights", "save_weights", "train"]
