"""How an evaluation scores: `EvaluationSettings` (what it scores is a `vfmxai.run_folder.Source`).

Frozen and checked when made, so a wrong value is refused in one line before a model is loaded
or a file is written, and the same object travels unchanged to every worker process.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vfmxai import explainers
from vfmxai.errors import VfmxaiError
from vfmxai.evaluation.metric_set import MAX_COUNT, check_metric_options, parse_metrics, resolved_options
from vfmxai.vocabulary import DEFAULT_EVAL_METRICS, EVAL_SUBSTRATES, METHODS, TARGET_MODES, THRESHOLD_ON


@dataclass(frozen=True)
class EvaluationSettings:
    """How every method is scored (the command line's evaluation flags).

    `steps`: insertion/deletion steps; `substrate`, `target_mode`, `threshold_on`: see `vfmxai.vocabulary`;
    `threshold`: τ of mIoU; `batch_size`: images per batch (the unit of resuming and sharding);
    `perturb_batch_size`: perturbed images per model call in insertion/deletion; `n_grid`: images drawn in
    grid.png; `num_workers`: data-loading processes (None: 0 on a CPU, up to 8 on a GPU); `precision`:
    `vfmxai.runtime.autocast`; `tie_seed`: seed of the pixel permutation that orders equal map values in
    insertion/deletion, AOPC, ROAD and relevance rank; `method_options`: {method: {option: value}} for the
    explainers (JSON-serialisable); `metrics`: what is scored ("all", "m1,m2" or names of
    `vocabulary.EVAL_METRICS`; default the paper's set); `metric_options`: {metric: {option: value}}
    (`evaluation.metric_set.OPTIONS`). Everything but `num_workers` is recorded in metrics.json and keys the
    stored results.
    """

    steps: int = 100
    substrate: str = "black"
    target_mode: str = "given"
    threshold: float = 0.5
    threshold_on: str = "normalised"
    batch_size: int = 16
    perturb_batch_size: int = 64
    n_grid: int = 4
    num_workers: int | None = None
    precision: str = "auto"
    tie_seed: int = 0
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    metrics: str | Sequence[str] = DEFAULT_EVAL_METRICS
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _positive_int(self.steps):
            raise VfmxaiError(f"--steps must be a positive integer, got {self.steps}")
        if self.steps > MAX_COUNT:
            raise VfmxaiError(f"--steps must be <= {MAX_COUNT}, got {self.steps}")
        if self.substrate not in EVAL_SUBSTRATES:
            raise VfmxaiError(f"--substrate must be one of {', '.join(EVAL_SUBSTRATES)}, got '{self.substrate}'")
        if self.threshold_on not in THRESHOLD_ON:
            raise VfmxaiError(f"--threshold-on must be one of {', '.join(THRESHOLD_ON)}, got '{self.threshold_on}'")
        if self.target_mode not in TARGET_MODES:
            raise VfmxaiError(f"--target must be one of {', '.join(TARGET_MODES)}, got '{self.target_mode}'")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise VfmxaiError(f"--threshold must be in [0, 1], got {self.threshold}")
        if not _positive_int(self.batch_size):
            raise VfmxaiError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if not _positive_int(self.perturb_batch_size):
            raise VfmxaiError(f"perturb_batch_size must be a positive integer, got {self.perturb_batch_size}")
        if not isinstance(self.n_grid, int) or self.n_grid < 0:
            raise VfmxaiError(f"n_grid must be a non-negative integer, got {self.n_grid}")
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise VfmxaiError(f"--num-workers must be an integer >= 0, got {self.num_workers}")
        if not isinstance(self.tie_seed, int):
            raise VfmxaiError(f"tie_seed must be an integer, got {self.tie_seed!r}")
        object.__setattr__(self, "method_options", checked_method_options(self.method_options))
        metrics = parse_metrics(self.metrics)
        object.__setattr__(self, "metrics", metrics)
        metric_options = jsonable(check_metric_options(metrics, self.metric_options), "metric_options")
        object.__setattr__(self, "metric_options", metric_options)

    def resolved_metric_options(self) -> dict[str, dict[str, Any]]:
        """{metric: every option's value} of the chosen metrics that have options (`metric_set.resolved_options`)."""
        return resolved_options(self.metrics, self.metric_options, {"steps": self.steps, "substrate": self.substrate})

    def options_for(self, method: str) -> dict[str, Any]:
        """The options given for `method` ({} for none)."""
        return dict(self.method_options.get(method, {}))


def checked_method_options(method_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """{method: {option: value}} as plain dicts, each method known and each option one it takes with a value of
    its default's type (`explainers.check_options`) that JSON can record; else one line naming the first wrong."""
    options = {str(k): dict(v) for k, v in (method_options or {}).items()}
    registered = explainers.available()
    for name, opts in options.items():
        if name not in METHODS and name not in registered:
            known = ", ".join(dict.fromkeys([*METHODS, *registered]))
            raise VfmxaiError(f"method_options: unknown method '{name}' (known: {known})")
        jsonable(opts, f"method_options['{name}']")
        if name in registered:
            explainers.check_options(name, opts)
    return options


def jsonable(value: Any, name: str) -> Any:
    """`value` as JSON would give it back (None stays None); an error naming `name` when it cannot be
    recorded in metrics.json."""
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise VfmxaiError(f"{name}: must be JSON-serialisable to be recorded in metrics.json ({err})") from None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
