"""Aggregates over images or seeds, and the paired test between two methods.

The tables report mean and sample standard deviation (ddof = 1; a single value has std 0, since there
is no spread to estimate), and p-values from the two-sided Wilcoxon signed-rank test over paired scores
(the default; no normality assumption on per-image scores, which are bounded and often skewed). The
paired t-test is the option `test="t"`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from vfmxai.errors import VfmxaiError

TESTS = ("wilcoxon", "t")


def mean_std(values: Tensor | Sequence[float]) -> tuple[float, float]:
    """(mean, sample std with ddof = 1) of a 1-D set of scores; std = 0.0 for a single value."""
    x = _values(values, "values")
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return float(x.mean()), std


def paired_test(a: Tensor | Sequence[float], b: Tensor | Sequence[float], test: str = "wilcoxon") -> float:
    """Two-sided p-value that paired scores `a` and `b` (same images or seeds, same order) differ.

    "wilcoxon": signed-rank test, zero differences dropped (zero_method="wilcox"); "t": paired t-test.
    All differences zero -> 1.0 (no evidence of a difference). With "t", a constant non-zero difference
    has zero variance and infinite t -> 0.0.
    """
    if test not in TESTS:
        raise VfmxaiError(f"paired test must be one of {', '.join(TESTS)}, got '{test}'")
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise VfmxaiError(f"paired test: a has {x.size} scores but b has {y.size}; they must be paired")
    diff = x - y
    if not diff.any():
        return 1.0
    if test == "wilcoxon":
        return float(stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided").pvalue)
    if x.size < 2:
        raise VfmxaiError("paired t-test needs at least 2 pairs")
    if np.all(diff == diff[0]):
        return 0.0
    p = float(stats.ttest_rel(x, y, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


def _values(values: Tensor | Sequence[float], name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().to("cpu", torch.float64)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise VfmxaiError(f"{name} must be a non-empty 1-D list of scores, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise VfmxaiError(f"{name} contains NaN or infinite scores")
    return x
