"""Training: the Lightning module, the AEA callback, the `train` entry point."""

from vfmxai.training.callbacks import AlternatingEpochArchitect, aea_map_on
from vfmxai.training.train import train

__all__ = ["AlternatingEpochArchitect", "aea_map_on", "train"]
