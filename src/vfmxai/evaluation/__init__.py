"""The evaluation protocol: methods x images x metrics (resumable), aggregation over seeds, the paper's tables.

- `evaluate(model, dataset, methods, out)`: one model, one split -> metrics.json, timing.json, metrics.csv,
  table.md, curves.png, grid.png (DESIGN §6); `evaluate_run` does the same from a run folder.
- `aggregate(eval_dirs, out)`: several seeds -> mean ± std and paired tests against ALA.
- `reproduce(preset, dataset, root, seeds, out)`: train + evaluate + aggregate, optionally the ablations.
"""

from vfmxai.evaluation.aggregate import aggregate, aggregate_results, write_aggregate
from vfmxai.evaluation.report import METRICS, render_table
from vfmxai.evaluation.reproduce import ABLATIONS, reproduce, run_config
from vfmxai.evaluation.runner import evaluate, evaluate_run, resolve_methods
from vfmxai.evaluation.store import PerImage, load_per_image
from vfmxai.vocabulary import METHODS

__all__ = [
    "ABLATIONS",
    "METHODS",
    "METRICS",
    "PerImage",
    "aggregate",
    "aggregate_results",
    "evaluate",
    "evaluate_run",
    "load_per_image",
    "render_table",
    "reproduce",
    "resolve_methods",
    "run_config",
    "write_aggregate",
]
