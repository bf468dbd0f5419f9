"""vfmxai: visual explanations for Vision-Transformer foundation models.

The public API. Names are imported on first use (PEP 562), so `import vfmxai` and the command line
start without loading torch, transformers and Lightning until they are needed.
"""

from importlib import import_module
from typing import Any

from vfmxai.errors import VfmxaiError

__version__ = "0.1.0"

_API = {
    "load_backbone": "vfmxai.backbones",
    "Backbone": "vfmxai.backbones",
    "ALAConfig": "vfmxai.config",
    "RunConfig": "vfmxai.config",
    "preset": "vfmxai.config",
    "ALAModel": "vfmxai.ala",
    "build_model": "vfmxai.ala",
    "Classifier": "vfmxai.classifier",
    "LinearProbe": "vfmxai.classifier",
    "train": "vfmxai.training",
    "load_run": "vfmxai.run_folder",
    "get_dataset": "vfmxai.data",
    "explain_files": "vfmxai.explain",
    "flush_denormals": "vfmxai.runtime",
}
_SUBMODULES = ("explainers", "targets", "metrics", "data", "evaluation", "viz")

__all__ = ["VfmxaiError", *_API, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    if name in _SUBMODULES:
        return import_module(f"vfmxai.{name}")
    raise AttributeError(f"module 'vfmxai' has no attribute {name!r}")
