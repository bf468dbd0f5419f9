"""Tensor transforms: resizing samples to the model's input size, and batched training augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vfmxai.errors import VfmxaiError


def resize_image(image: Tensor, size: int) -> Tensor:
    """(3, H, W) or (B, 3, H, W) -> side `size`, bilinear with antialiasing, kept in [0, 1].

    Non-square images are resized to a square (aspect not kept) so that the whole object stays in view
    and image and mask stay aligned without cropping.
    """
    if tuple(image.shape[-2:]) == (size, size):
        return image
    batch = image if image.dim() == 4 else image.unsqueeze(0)
    out = F.interpolate(batch.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    out = out.clamp_(0.0, 1.0)
    return out if image.dim() == 4 else out.squeeze(0)


def resize_mask(mask: Tensor, size: int) -> Tensor:
    """Bool (H, W) or (B, H, W) -> side `size`, nearest neighbour at pixel centres."""
    if tuple(mask.shape[-2:]) == (size, size):
        return mask
    batch = mask if mask.dim() == 3 else mask.unsqueeze(0)
    out = F.interpolate(batch.unsqueeze(1).float(), size=(size, size), mode="nearest-exact").squeeze(1) > 0.5
    return out if mask.dim() == 3 else out.squeeze(0)


def augment(
    images: Tensor,
    generator: torch.Generator | None = None,
    flip: bool = True,
    crop_scale: float = 0.85,
) -> Tensor:
    """Random horizontal flip and random crop resized back, independently per image, in one pass.

    The crop keeps `crop_scale` of each side at a uniformly random position (1.0 = no crop); it and the
    flip are one affine map per image, applied with `grid_sample` (bilinear), so there is no loop over
    images. Random numbers come from `generator` on the CPU, so results do not depend on the device.
    """
    if not 0.0 < crop_scale <= 1.0:
        raise VfmxaiError(f"crop_scale must be in (0, 1], got {crop_scale}")
    if images.dim() != 4:
        raise VfmxaiError(f"augment expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
    b = images.shape[0]
    if not flip and crop_scale == 1.0:
        return images
    sign = torch.ones(b)
    if flip:
        sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (1 - crop_scale)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = crop_scale * sign
    theta[:, 1, 1] = crop_scale
    theta[:, :, 2] = shift
    theta = theta.to(device=images.device, dtype=images.dtype if images.is_floating_point() else torch.float32)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.to(theta.dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out
