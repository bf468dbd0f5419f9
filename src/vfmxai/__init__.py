"""vfmxai: visual explanations for Vision-Transformer foundation models."""

from vfmxai.errors import VfmxaiError

__all__ = ["VfmxaiError"]
__version__ = "0.1.0"
