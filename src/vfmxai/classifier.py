"""`Classifier`: what every explainer and metric takes — a backbone plus a head, pixels in, logits out.

Images are float tensors (B, 3, H, W) in [0, 1]; the backbone normalises them itself. The trained
ALA model is a `Classifier`; `LinearProbe` is the other one (a backbone with a linear head on its
pooled token), for explaining a foundation model without training an adapter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vfmxai.backbones import Backbone
from vfmxai.errors import VfmxaiError


class Classifier(nn.Module):
    """Base of every model that vfmxai explains: `forward(images) -> logits (B, C)`."""

    backbone: Backbone
    num_classes: int
    any_token_count: bool = False
    """True when `forward` is defined for a token sequence of any length (the head reads only the pooled token):
    what a method that removes tokens (TIS) needs. A head that reads the patch grid (ALA) is not."""

    def forward(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def check_input(self, images: Tensor, where: str) -> Tensor:
        """`images` when they are a non-empty (B, 3, S, S) float batch at the backbone's input size S with every
        value finite; else one line naming `where` (a NaN pixel would give a NaN map and an arbitrary class)."""
        size = self.backbone.image_size
        expected = f"(B >= 1, 3, {size}, {size})"
        if not isinstance(images, Tensor) or not images.is_floating_point():
            got = f"{images.dtype} tensor" if isinstance(images, Tensor) else type(images).__name__
            raise VfmxaiError(f"{where}: images must be a float tensor {expected}, got a {got}")
        if images.dim() != 4 or images.shape[0] < 1 or tuple(images.shape[1:]) != (3, size, size):
            raise VfmxaiError(f"{where}: images must be {expected}, got {tuple(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise VfmxaiError(f"{where}: images hold NaN or infinite values")
        return images


class LinearProbe(Classifier):
    """logits = W · pooled(h^(k)) + b, `Backbone.pooled`: the normed class token (mean patch token without one)."""

    any_token_count = True

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise VfmxaiError(f"LinearProbe: num_classes={num_classes!r}: need at least 2 classes")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = nn.Linear(backbone.hidden_size, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone.embedding(images))

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What a probe's run folder holds: the head only (the backbone is frozen and loaded from its source)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("head.")}
