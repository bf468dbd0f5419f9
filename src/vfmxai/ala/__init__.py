"""The Attention Lattice Adapter model, its perception branch and loss."""

from vfmxai.ala.build import build_model
from vfmxai.ala.model import ALAModel, ALAOutput, inject_indices

__all__ = ["ALAModel", "ALAOutput", "build_model", "inject_indices"]
