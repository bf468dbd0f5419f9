"""Decoding image and mask files into tensors, with one clear error for anything unreadable.

Choices: EXIF orientation is applied to images and masks alike (a mask without EXIF is unchanged).
Images with transparency are composited over white. 16-bit grayscale is scaled by 1/65535, 32-bit
float images are clipped to [0, 1] after NaN -> 0, +inf -> 1, -inf -> 0 (a float TIFF may hold them).
Masks are read as one value per pixel: palette PNGs by their palette index, grayscale by value, colour
masks by the largest of R, G, B; object = value >= threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from vfmxai.errors import VfmxaiError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Image files the folder and ImageNet-S formats list."""
DECODABLE_SUFFIXES = (*IMAGE_SUFFIXES, ".bmp", ".webp", ".tif", ".tiff")
"""Every file `vfmxai explain` picks up from a folder: the formats `load_image` decodes."""

_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, EXIF orientation applied; VfmxaiError if unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise VfmxaiError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise VfmxaiError(f"{path}: not a readable image ({reason})") from None


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """PIL image of any mode -> float32 (H, W, 3) in [0, 1]."""
    if im.mode in _WIDE_MODES:
        gray = np.asarray(im, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)
    if im.mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.repeat(np.clip(values, 0.0, 1.0)[..., None], 3, axis=2)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + (1.0 - alpha)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: str | Path) -> Tensor:
    """Image file -> FloatTensor (3, H, W) in [0, 1], RGB, EXIF orientation applied."""
    return torch.from_numpy(np.ascontiguousarray(to_rgb_array(open_image(path)).transpose(2, 0, 1)))


def mask_values(im: Image.Image) -> np.ndarray:
    """One number per pixel of a mask image (H, W): palette index, gray value, or max(R, G, B)."""
    if im.mode in ("P", "L", "1", "F") or im.mode in _WIDE_MODES:
        return np.asarray(im)
    if im.mode in ("LA", "La"):
        return np.asarray(im.getchannel(0))
    if im.mode == "PA":
        return np.asarray(im.getchannel(0))
    return np.asarray(im.convert("RGB")).max(axis=2)


def load_mask(path: str | Path, threshold: float = 1) -> Tensor:
    """Mask file -> BoolTensor (H, W), object where the pixel value >= threshold (1 = nonzero)."""
    return torch.from_numpy(np.ascontiguousarray(mask_values(open_image(path)) >= threshold))


def index_images(folder: Path) -> dict[str, list[Path]]:
    """Files of `folder` with an image suffix (any letter case), by stem: {stem: [paths]}."""
    found: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
            found.setdefault(entry.stem, []).append(entry)
    return found
