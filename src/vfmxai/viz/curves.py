"""Insertion and deletion curves per method (mean over images), drawn with matplotlib's Agg canvas.

The figure is built on `matplotlib.figure.Figure` with an Agg canvas, never pyplot, so drawing neither
needs a display nor changes the caller's matplotlib backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write

FIGSIZE = (10.0, 4.0)
DPI = 100


def insdel_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], labels: Mapping[str, str] | None = None, source: str = ""
) -> Figure:
    """Two panels (insertion, deletion): per method its curve (K + 1,) against the fraction of pixels k / K.

    `curves`: {method: (insertion curve, deletion curve)}; the legend gives each curve's area (trapezoid);
    `source`: the model and data, as the figure's title.
    """
    if not curves:
        raise VfmxaiError("curves: no method to draw")
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    for panel, (ax, title) in enumerate(zip(axes, ("Insertion", "Deletion"), strict=True)):
        for method, pair in curves.items():
            y = np.asarray(pair[panel], dtype=np.float64)
            if y.ndim != 1 or y.size < 2:
                raise VfmxaiError(f"curves: {title.lower()} curve of '{method}' must be 1-D with >= 2 points")
            x = np.linspace(0.0, 1.0, y.size)
            area = float(np.sum((y[1:] + y[:-1]) / 2) / (y.size - 1))
            ax.plot(x, y, label=f"{(labels or {}).get(method, method)} ({area:.3f})")
        ax.set_title(f"{title} (AUC in legend)")
        ax.set_xlabel(f"fraction of pixels {'inserted' if panel == 0 else 'deleted'}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("probability of the target class")
    if source:
        figure.suptitle(source, fontsize=9)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.86 if source else 0.91, wspace=0.06)
    return figure


def save_insdel_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    labels: Mapping[str, str] | None = None,
    source: str = "",
) -> None:
    """PNG of `insdel_figure`, FIGSIZE * DPI pixels (1000 x 400)."""
    figure = insdel_figure(curves, labels, source)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
