"""Perturbation methods: RISE (`rise`), randomised input sampling (Petsiuk, Das, Saenko, BMVC 2018)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmxai.errors import VfmxaiError
from vfmxai.explainers.base import Explainer, index_chunks, register
from vfmxai.targets import ClassProbability, Target


def rise_masks(
    n_masks: int, grid: int, p_keep: float, size: tuple[int, int], generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """The random part of RISE's masks: binary cells (N, grid, grid) with P(1) = p_keep, and per-mask
    shifts (N,) in [0, cell) along y and x, with cell = ceil(size / grid). Drawn on the CPU from `generator`
    so the same seed gives the same masks on every device."""
    cell_h, cell_w = (math.ceil(s / grid) for s in size)
    cells = (torch.rand(n_masks, grid, grid, generator=generator) < p_keep).float()
    shift_y = torch.randint(0, cell_h, (n_masks,), generator=generator)
    shift_x = torch.randint(0, cell_w, (n_masks,), generator=generator)
    return cells, shift_y, shift_x


def upsample_masks(cells: Tensor, shift_y: Tensor, shift_x: Tensor, size: tuple[int, int]) -> Tensor:
    """(n, grid, grid) cells -> (n, H, W) soft masks: bilinear upsampling to (grid + 1) * cell, then the
    H x W window at each mask's shift (Petsiuk et al. 2018, §3.2)."""
    n, grid, _ = cells.shape
    h, w = size
    cell_h, cell_w = math.ceil(h / grid), math.ceil(w / grid)
    up = F.interpolate(
        cells.unsqueeze(1), size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear", align_corners=False
    ).squeeze(1)
    rows = shift_y.view(-1, 1) + torch.arange(h, device=cells.device)
    cols = shift_x.view(-1, 1) + torch.arange(w, device=cells.device)
    return up[torch.arange(n, device=cells.device).view(-1, 1, 1), rows.unsqueeze(2), cols.unsqueeze(1)]


@register("rise")
class RISE(Explainer):
    """RISE: S(x) = sum_m p_t(x * m) m / (N * p_keep), over N random soft masks m.

    p_t is the softmax probability of the target; masked pixels become black (x * m, the masks are on
    the image in [0, 1]). Masks: `grid` x `grid` binary cells kept with probability `p_keep`,
    upsampled bilinearly with a random shift (see `upsample_masks`); the paper's ImageNet setting is
    grid 7, N 4000, p_keep 0.5. The same `n_masks` masks serve every image of a call; they are drawn
    from a `torch.Generator` seeded by `seed` (never the global RNG), so the same seed gives the same
    map. The (image, mask) pairs go through the model `batch_size` at a time.
    """
    display_name = "RISE"
    default_target = ClassProbability()

    def __init__(
        self,
        classifier: nn.Module,
        n_masks: int = 1000,
        grid: int = 7,
        p_keep: float = 0.5,
        batch_size: int = 64,
        seed: int = 0,
        target: Target | None = None,
    ):
        super().__init__(classifier, target)
        for option, value in (("n_masks", n_masks), ("grid", grid), ("batch_size", batch_size)):
            if int(value) < 1:
                raise VfmxaiError(f"method 'rise': option {option}={value} must be a positive integer")
        if not 0 < p_keep < 1:
            raise VfmxaiError(f"method 'rise': option p_keep={p_keep} must lie strictly between 0 and 1")
        self.n_masks = int(n_masks)
        self.grid = int(grid)
        self.p_keep = float(p_keep)
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    @torch.no_grad()
    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        b, _, h, w = images.shape
        if self.grid > min(h, w):
            raise VfmxaiError(f"method 'rise': option grid={self.grid} exceeds the image size {h}x{w}")
        generator = torch.Generator().manual_seed(self.seed)
        cells, shift_y, shift_x = (
            t.to(images.device) for t in rise_masks(self.n_masks, self.grid, self.p_keep, (h, w), generator)
        )
        saliency = torch.zeros(b, h, w, device=images.device)
        for mask_idx, image_idx in index_chunks(self.n_masks, b, self.batch_size, images.device):
            first = int(mask_idx[0])
            masks = upsample_masks(*(t[first : int(mask_idx[-1]) + 1] for t in (cells, shift_y, shift_x)), (h, w))
            masks = masks[mask_idx - first]
            logits = self.classifier(images[image_idx] * masks.unsqueeze(1).to(images.dtype))
            probs = self.score(logits, targets[image_idx])
            saliency.index_add_(0, image_idx, probs.view(-1, 1, 1) * masks)
        return saliency / (self.n_masks * self.p_keep)
