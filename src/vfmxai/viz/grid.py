"""Method-comparison grids (the ALA paper's Fig. 4 and Fig. 5): one row per image, the image in the first
column, then one column per method with that method's map overlaid on the image.

Layout in pixels, with R rows and C = 1 + number of methods columns of square `tile` tiles:
    width  = C * tile + (C + 1) * pad
    height = header + R * tile + (R + 1) * pad + footer
The header band on top holds the column titles (Pillow's default font, cut to fit the tile); the footer band
(FOOTER px, only with a `caption`) says what the grid was made from: the model and the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from vfmxai.errors import VfmxaiError
from vfmxai.viz.overlay import overlay, save_png

FOOTER = 14
"""Height in pixels of the caption band."""


def grid_size(
    rows: int, columns: int, tile: int = 128, pad: int = 4, header: int = 18, footer: int = 0
) -> tuple[int, int]:
    """(height, width) in pixels of a grid of `rows` x `columns` tiles (the first column included)."""
    return header + rows * tile + (rows + 1) * pad + footer, columns * tile + (columns + 1) * pad


def method_grid(
    images: Tensor,
    columns: Sequence[tuple[str, Tensor]],
    tile: int = 128,
    pad: int = 4,
    header: int = 18,
    image_title: str = "image",
    caption: str = "",
) -> np.ndarray:
    """uint8 RGB (H, W, 3): `images` (R, 3, h, w) in [0, 1], then one column per (title, maps (R, h', w')),
    `caption` (cut to the width) in a footer band under them."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise VfmxaiError(f"grid: images must be a non-empty (R, 3, H, W) tensor, got {_shape(images)}")
    rows = images.shape[0]
    for title, maps in columns:
        if not isinstance(maps, Tensor) or maps.dim() != 3 or maps.shape[0] != rows:
            raise VfmxaiError(f"grid: maps of column '{title}' must be (R, H, W) with R = {rows}, got {_shape(maps)}")
    if tile < 1 or pad < 0 or header < 0:
        raise VfmxaiError(f"grid: tile must be positive and pad, header non-negative, got {tile}, {pad}, {header}")
    tiles = F.interpolate(images.detach().float().cpu(), size=(tile, tile), mode="bilinear", antialias=True)
    tiles = tiles.clamp(0, 1)
    height, width = grid_size(rows, 1 + len(columns), tile, pad, header, FOOTER if caption else 0)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    cells = [(image_title, None)] + [(title, maps) for title, maps in columns]
    for c, (_, maps) in enumerate(cells):
        x = pad + c * (tile + pad)
        for r in range(rows):
            y = header + pad + r * (tile + pad)
            if maps is None:
                picture = (tiles[r].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            else:
                picture = overlay(tiles[r], maps[r].detach().float().cpu().clamp(0, 1))
            canvas[y : y + tile, x : x + tile] = picture
    if header > 0:
        _titles(canvas, [title for title, _ in cells], tile, pad, header)
    if caption:
        _caption(canvas, caption, pad)
    return canvas


def save_grid(
    images: Tensor, columns: Sequence[tuple[str, Tensor]], path: str | Path, caption: str = "", **layout: int
) -> None:
    save_png(method_grid(images, columns, caption=caption, **layout), path)


def _titles(canvas: np.ndarray, titles: list[str], tile: int, pad: int, header: int) -> None:
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for c, title in enumerate(titles):
        text = title
        while text and draw.textlength(text, font=font) > tile:
            text = text[:-1]
        x = pad + c * (tile + pad) + (tile - draw.textlength(text, font=font)) / 2
        draw.text((x, max(0, header - 14)), text, fill=(0, 0, 0), font=font)
    canvas[...] = np.asarray(picture)


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _caption(canvas: np.ndarray, caption: str, pad: int) -> None:
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    text = caption
    while text and draw.textlength(text, font=font) > canvas.shape[1] - 2 * pad:
        text = text[:-1]
    draw.text((pad, canvas.shape[0] - FOOTER), text, fill=(80, 80, 80), font=font)
    canvas[...] = np.asarray(picture)
