"""The metrics an evaluation scores (`--metrics`, names in `vocabulary.EVAL_METRICS`) and their options
(`--metric-option METRIC.KEY=VALUE`): defaults, checks, and the columns each adds to metrics.json.

The settings the paper's metrics already had keep their flags (`--steps`, `--substrate`, `--threshold`,
`--threshold-on`, the tie seed); AOPC's `steps` and `substrate` default to those flags' values. Every
option is recorded with its resolved value in metrics.json (`config.evaluation.metric_options`, the seeds
of ROAD's noise, the sensitivity draws and infidelity's perturbations among them) and keys the stored
results, so a resumed evaluation never mixes scores made with other options.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vfmxai.errors import VfmxaiError
from vfmxai.metrics.road import PERCENTILES
from vfmxai.vocabulary import DEFAULT_EVAL_METRICS, EVAL_METRICS, EVAL_SUBSTRATES, SCORES


@dataclass(frozen=True)
class Option:
    """One metric option: its default (None: the evaluation flag named in `INHERITED`) and what it accepts."""

    default: Any
    expected: str
    valid: Callable[[Any], bool]


MAX_COUNT = 10_000
"""Upper bound of a count option (steps, draws, region side): a typo's 10**9 would exhaust memory, not finish."""


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seed(value: Any) -> bool:
    return _integer(value) and -(2**63) <= value < 2**63  # what torch.Generator.manual_seed takes


def _positive_int(value: Any) -> bool:
    return _integer(value) and 1 <= value <= MAX_COUNT


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def _non_negative(value: Any) -> bool:
    return _number(value) and value >= 0


def _percentiles(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(_number(v) and 0 < v < 100 for v in value)


def _one_of(choices: Sequence[str]) -> Option:
    return Option(choices[0], f"one of {', '.join(choices)}", lambda v: v in choices)


POSITIVE = f"an integer in [1, {MAX_COUNT}]"
SEED = Option(0, "an integer in [-2**63, 2**63)", _seed)
SENSITIVITY = {
    "radius": Option(0.02, "a number > 0 (L-infinity radius in [0, 1] pixel units)", _positive),
    "n_samples": Option(10, POSITIVE, _positive_int),
    "seed": SEED,
}
OPTIONS: dict[str, dict[str, Option]] = {
    "pointing_game": {"tolerance": Option(0, "a number >= 0 (pixels)", _non_negative)},
    "aopc": {
        "steps": Option(None, POSITIVE, _positive_int),
        "region_size": Option(1, f"{POSITIVE} (pixels)", _positive_int),
        "regions_per_step": Option(None, f"{POSITIVE} or null", lambda v: v is None or _positive_int(v)),
        "substrate": Option(None, f"one of {', '.join(EVAL_SUBSTRATES)}", lambda v: v in EVAL_SUBSTRATES),
        "score": _one_of(SCORES),
    },
    "road": {
        "percentiles": Option(list(PERCENTILES), "a non-empty list of numbers in (0, 100)", _percentiles),
        "noise": Option(0.01, "a number >= 0 (std in [0, 1] pixel units)", _non_negative),
        "seed": SEED,
        "score": _one_of(SCORES),
    },
    "max_sensitivity": SENSITIVITY,
    "avg_sensitivity": SENSITIVITY,
    "infidelity": {
        "sigma": Option(0.1, "a number > 0 (std in [0, 1] pixel units)", _positive),
        "n_samples": Option(32, POSITIVE, _positive_int),
        "seed": SEED,
        "score": Option("logit", f"one of {', '.join(SCORES)}", lambda v: v in SCORES),
        "optimal_scale": Option(False, "true or false", lambda v: isinstance(v, bool)),
    },
}
"""{metric: {option: Option}}; a metric not listed has no options of its own."""
INHERITED = {("aopc", "steps"): "steps", ("aopc", "substrate"): "substrate"}
"""Options whose default is an evaluation setting's value: {(metric, option): setting}."""

COLUMNS: dict[str, tuple[str, ...]] = {
    "miou": ("miou", "miou_dataset", "miou_best_tau"),
    "insertion_deletion": ("insertion", "deletion", "id"),
    "pointing_game": ("pointing_game",),
    "energy_pg": ("energy_pg",),
    "aopc": ("aopc_morf", "aopc_lerf"),
    "road": ("road_morf", "road_lerf"),
    "sparseness": ("sparseness",),
    "complexity": ("complexity",),
    "max_sensitivity": ("max_sensitivity",),
    "avg_sensitivity": ("avg_sensitivity",),
    "infidelity": ("infidelity",),
    "relevance_mass": ("relevance_mass",),
    "relevance_rank": ("relevance_rank",),
}
"""The keys each metric adds to a method's entry in metrics.json."""


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """The chosen metrics in vocabulary order from "all", "m1,m2" or a list; unknown names are an error."""
    names = list(EVAL_METRICS) if metrics == "all" else metrics.split(",") if isinstance(metrics, str) else metrics
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise VfmxaiError("--metrics: no metric given")
    if "all" in names:
        raise VfmxaiError(f"--metrics {','.join(names)}: 'all' already names every metric; give it alone")
    unknown = [n for n in names if n not in EVAL_METRICS]
    if unknown:
        raise VfmxaiError(f"--metrics: unknown metric(s) {', '.join(unknown)} (known: {', '.join(EVAL_METRICS)})")
    return tuple(m for m in EVAL_METRICS if m in names)


def check_metric_options(
    metrics: Sequence[str], options: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """`options` as plain dicts, or a one-line error for a metric not chosen, an option it lacks or a bad value."""
    checked: dict[str, dict[str, Any]] = {}
    for metric, given in (options or {}).items():
        if metric not in EVAL_METRICS:
            known_metrics = ", ".join(EVAL_METRICS)
            raise VfmxaiError(f"--metric-option {metric}.*: unknown metric '{metric}' (known: {known_metrics})")
        if metric not in metrics:
            chosen = ", ".join(metrics)
            raise VfmxaiError(f"--metric-option {metric}.*: metric '{metric}' is not among --metrics ({chosen})")
        known = OPTIONS.get(metric, {})
        for key, value in dict(given).items():
            if key not in known:
                choices = ", ".join(known) or "none"
                raise VfmxaiError(f"--metric-option {metric}.{key}: unknown option (options of {metric}: {choices})")
            if not known[key].valid(value):
                raise VfmxaiError(f"--metric-option {metric}.{key}={value!r}: must be {known[key].expected}")
        checked[str(metric)] = dict(given)
    return checked


def resolved_options(
    metrics: Sequence[str], options: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """{metric: every option's value} for the chosen metrics that have options: given, else inherited from
    `settings` (the evaluation's, by name), else the default."""
    resolved = {}
    for metric in metrics:
        if metric not in OPTIONS:
            continue
        values = {}
        for key, option in OPTIONS[metric].items():
            default = settings[INHERITED[metric, key]] if (metric, key) in INHERITED else option.default
            values[key] = options.get(metric, {}).get(key, default)
        resolved[metric] = values
    return resolved


def columns_of(metrics: Sequence[str]) -> tuple[str, ...]:
    """The metrics.json keys of `metrics`, in vocabulary order."""
    return tuple(c for m in EVAL_METRICS if m in metrics for c in COLUMNS[m])


ALL_COLUMNS = columns_of(EVAL_METRICS)
DEFAULT_COLUMNS = columns_of(DEFAULT_EVAL_METRICS)
