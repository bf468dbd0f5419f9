"""The evaluation protocol: methods x images x metrics (resumable), aggregation over seeds, the paper's tables.

- `evaluate(model, dataset, methods, out, settings)`: one model, one split -> metrics.json, timing.json,
  metrics.csv, table.md, per_image.csv, curves.png, grid.png, report.html; `evaluate_run(source, methods, out, settings,
  parallel=...)` does the same from a run folder, in one process, one shard or N worker processes.
- `aggregate(eval_dirs, out)`: several seeds -> mean ± std and paired tests against ALA.
- `reproduce(recipe, seeds, out, settings)`: train + evaluate + aggregate, optionally the ablations.
- `sanity_run(source, methods, out, settings)` / `sanity_check(model, dataset, ...)`: cascading model-parameter
  randomisation (MPRT) and random-logit tests -> sanity.json, sanity.md, sanity.png.

Modules, one job each: `settings` (how an evaluation scores), `metric_set` (the metrics it can score, their
options and columns), `runner` (the resumable loop), `scoring` (the chosen metrics on one batch), `sharding`
(how batches are split over processes), `launch` (a run folder, scheduled), `store` (per-image results on
disk), `outputs` (the result files), `report` (numbers and tables), `html_report` (report.html's content,
drawn by `vfmxai.viz.report_html`), `progress` (bars), `aggregate` (over seeds), `reproduce` (the paper's
experiment), `randomisation` (the cascade MPRT re-initialises a model along), `sanity` (the sanity checks
and their files).
"""

from vfmxai.evaluation.aggregate import aggregate, aggregate_results, write_aggregate
from vfmxai.evaluation.launch import evaluate_run
from vfmxai.evaluation.report import METRICS, render_table
from vfmxai.evaluation.reproduce import ABLATIONS, Ablation, reproduce
from vfmxai.evaluation.runner import evaluate, resolve_methods
from vfmxai.evaluation.sanity import SanitySettings, sanity_check, sanity_run
from vfmxai.evaluation.settings import EvaluationSettings
from vfmxai.evaluation.sharding import Processes, Shard
from vfmxai.evaluation.store import PerImage, load_per_image
from vfmxai.run_folder import Source
from vfmxai.vocabulary import METHODS

__all__ = [
    "ABLATIONS",
    "METHODS",
    "METRICS",
    "Ablation",
    "EvaluationSettings",
    "PerImage",
    "Processes",
    "SanitySettings",
    "Shard",
    "Source",
    "aggregate",
    "aggregate_results",
    "evaluate",
    "evaluate_run",
    "load_per_image",
    "render_table",
    "reproduce",
    "resolve_methods",
    "sanity_check",
    "sanity_run",
    "write_aggregate",
]
