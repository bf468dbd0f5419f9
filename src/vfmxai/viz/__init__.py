"""Pictures: overlays of maps on images, method grids, curves, per-block figures."""

from vfmxai.viz.curves import insdel_figure, save_insdel_curves
from vfmxai.viz.grid import grid_size, method_grid, save_grid
from vfmxai.viz.overlay import overlay, save_overlay

__all__ = ["grid_size", "insdel_figure", "method_grid", "overlay", "save_grid", "save_insdel_curves", "save_overlay"]
