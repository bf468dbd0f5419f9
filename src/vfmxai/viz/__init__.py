"""Pictures: overlays of maps on images, method grids, curves, per-block figures."""

from vfmxai.viz.overlay import overlay, save_overlay

__all__ = ["overlay", "save_overlay"]
