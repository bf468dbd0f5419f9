"""MPRT's figure: each method's rank correlation with its original map against how much of the model is
randomised (Adebayo et al. 2018, Fig. 2's reading), on matplotlib's Agg canvas as `viz.curves`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write

FIGSIZE = (9.0, 4.5)
DPI = 100


def randomisation_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    steps: Sequence[str],
    fail_at: float,
    labels: Mapping[str, str] | None = None,
    source: str = "",
) -> Figure:
    """One line per method: rho mean (band: ± std) after each cumulative step `steps`, the threshold `fail_at`
    dashed. `curves`: {method: (mean (S,), std (S,))}; `source`: the model and data, under the title."""
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    x = np.arange(1, len(steps) + 1)
    for method, (mean, std) in curves.items():
        if mean.shape != (len(steps),) or std.shape != (len(steps),):
            raise VfmxaiError(f"randomisation curves: '{method}' needs {len(steps)} values per curve")
        line = ax.plot(x, mean, marker="o", markersize=3, label=(labels or {}).get(method, method))[0]
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.12, linewidth=0)
    ax.axhline(fail_at, color="grey", linestyle="--", linewidth=1, label=f"fails at ρ ≥ {fail_at:g}")
    ax.set_xticks(x, list(steps), rotation=45, ha="right", fontsize=8)
    ax.set_xlim(0.5, len(steps) + 0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("randomised down to (cumulative, from the head)")
    ax.set_ylabel("Spearman ρ with the original map")
    ax.set_title("Cascading model-parameter randomisation" + (f"\n{source}" if source else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    return figure


def save_randomisation_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    steps: Sequence[str],
    path: str | Path,
    fail_at: float,
    labels: Mapping[str, str] | None = None,
    source: str = "",
) -> None:
    """PNG of `randomisation_figure`, FIGSIZE * DPI pixels (900 x 450)."""
    figure = randomisation_figure(curves, steps, fail_at, labels, source)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
