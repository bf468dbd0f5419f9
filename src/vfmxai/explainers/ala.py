"""`ala`: the trained adapter's own map, alpha, through the common interface (one forward, no gradient)."""

from __future__ import annotations

import torch
from torch import Tensor

from vfmxai.errors import VfmxaiError
from vfmxai.explainers.base import Explainer, register


@register("ala")
class ALAExplainer(Explainer):
    """The map is class-agnostic by construction (the adapter draws one map per image); targets are ignored."""
    display_name = "ALA (ours)"

    unit_range = True
    uses_target = False

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        explain = getattr(self.classifier, "explain", None)
        if explain is None:
            raise VfmxaiError("method 'ala' needs a trained ALA model (--checkpoint RUN), not a bare classifier")
        with torch.no_grad():
            return explain(images)[0]
