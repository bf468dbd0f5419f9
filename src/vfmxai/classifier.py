"""`Classifier`: what every explainer and metric takes — a backbone plus a head, pixels in, logits out.

Images are float tensors (B, 3, H, W) in [0, 1]; the backbone normalises them itself. The trained
ALA model is a `Classifier`; `LinearProbe` is the other one (a backbone with a linear head on its
pooled token), for explaining a foundation model without training an adapter.
"""

from __future__ import annotations

from torch import Tensor, nn

from vfmxai.backbones import Backbone


class Classifier(nn.Module):
    """Base of every model that vfmxai explains: `forward(images) -> logits (B, C)`."""

    backbone: Backbone
    num_classes: int

    def forward(self, images: Tensor) -> Tensor:
        raise NotImplementedError


class LinearProbe(Classifier):
    """logits = W · pooled(h^(k)) + b, `Backbone.pooled`: the normed class token (mean patch token without one)."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = nn.Linear(backbone.hidden_size, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone.embedding(images))

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What a probe's run folder holds: the head only (the backbone is frozen and loaded from its source)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("head.")}
