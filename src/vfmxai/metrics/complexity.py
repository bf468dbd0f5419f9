"""How concentrated a map is: sparseness (Gini index) and complexity (entropy), one value per map.

Both read |map| flattened over its h x w pixels as it is given (the evaluation passes the map resized to
the image and min-max normalised, as every other score), and are invariant to its scale.
- Sparseness (Chalasani et al., ICML 2020, "Concise explanations of neural networks using adversarial
  training"; Quantus's Sparseness): with a_(1) <= ... <= a_(n) sorted ascending,
      G = sum_{i=1}^{n} (2i - n - 1) a_(i) / (n * sum_i a_i),
  0 for a constant map, (n - 1) / n (the maximum) for a one-hot map; an all-zero map scores 0.
- Complexity (Bhatt et al., IJCAI 2020, "Evaluating and aggregating feature-based model explanations"):
  the entropy -sum_i p_i ln p_i of p = |a| / sum |a| (natural log, 0 ln 0 = 0): 0 for a one-hot map,
  ln n (the maximum) for a uniform one; an all-zero map concentrates on nothing and counts as uniform.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vfmxai.errors import VfmxaiError


def sparseness(maps: Tensor) -> Tensor:
    """Gini index (B,) of each map (B, h, w) (module docstring); higher = more concentrated."""
    values = _flat(maps, "sparseness").sort(dim=1).values
    n = values.shape[1]
    weights = 2 * torch.arange(1, n + 1, device=values.device, dtype=values.dtype) - n - 1
    total = values.sum(1)
    gini = (values * weights).sum(1) / (n * total.clamp_min(torch.finfo(values.dtype).tiny))
    return torch.where(total > 0, gini, torch.zeros_like(total)).float()


def complexity(maps: Tensor) -> Tensor:
    """Entropy (B,) in nats of each map (B, h, w) as a distribution over its pixels; lower = more concentrated."""
    values = _flat(maps, "complexity")
    total = values.sum(1, keepdim=True)
    p = values / total.clamp_min(torch.finfo(values.dtype).tiny)
    entropy = -torch.special.xlogy(p, p).sum(1)
    return torch.where(total.squeeze(1) > 0, entropy, torch.full_like(entropy, math.log(values.shape[1]))).float()


def _flat(maps: Tensor, name: str) -> Tensor:
    if not isinstance(maps, Tensor) or maps.dim() != 3 or maps.shape[0] == 0 or maps[0].numel() == 0:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise VfmxaiError(f"{name}: maps must be a non-empty (B, h, w) tensor, got {shape}")
    values = maps.detach().flatten(1).double().abs()
    if not torch.isfinite(values).all():
        raise VfmxaiError(f"{name}: maps contain NaN or infinite values")
    return values
