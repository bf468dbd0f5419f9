"""A map drawn over its image: colour-mapped heat blended with the picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from vfmxai.io import atomic_write
from vfmxai.maps import resize_maps


def overlay(image: torch.Tensor, heat: torch.Tensor, strength: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """image (3, H, W) in [0, 1], heat (h, w) in [0, 1] -> uint8 RGB (H, W, 3); heat resized bilinearly."""
    heat = resize_maps(heat.detach().float().cpu()[None], tuple(image.shape[-2:]))[0].clamp(0, 1)
    colour = colormaps[cmap](heat.numpy())[..., :3]
    picture = image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    blended = (1 - strength) * picture + strength * colour
    return (blended * 255).round().astype(np.uint8)


def save_png(array: np.ndarray, path: str | Path) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def save_overlay(image: torch.Tensor, heat: torch.Tensor, path: str | Path) -> None:
    save_png(overlay(image, heat), path)
