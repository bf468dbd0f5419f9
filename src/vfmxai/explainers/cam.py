"""Class-activation maps on a ViT's patch tokens: Grad-CAM (`gradcam`) and Score-CAM (`scorecam`).

The activations are one hidden state h^(i) of the backbone (`Backbone`'s numbering: h^(0) the input to
block 1, h^(i) the output of block i), its patch tokens read as D channel maps on the g_h x g_w patch grid;
prefix tokens (class token) are left out. Option `layer` = i, with negative values counted from the
end (-1 = h^(k)). Both need a classifier with a ViT `backbone`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vfmxai.classifier import Classifier
from vfmxai.errors import VfmxaiError
from vfmxai.explainers.base import Explainer, index_chunks, register
from vfmxai.maps import normalize_maps
from vfmxai.targets import ClassProbability, Target


class _HiddenStateTaps:
    """Records hidden states h^(i) during a forward: h^(0) as block 1's input, h^(i >= 1) as block i's output."""

    def __init__(self, explainer: Explainer, indices: list[int]):
        blocks = explainer.classifier.backbone.blocks
        self.records: dict[int, Tensor] | None = None
        for i in indices:
            if i == 0:
                explainer.hook(blocks[0], "forward_pre", lambda m, args, i=i: self._keep(i, args))
            else:
                explainer.hook(blocks[i - 1], "forward", lambda m, args, out, i=i: self._keep(i, out))

    def _keep(self, i: int, value) -> None:
        if self.records is not None:
            self.records[i] = value[0] if isinstance(value, tuple) else value

    def run(self, classifier: Classifier, images: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """(logits, {i: h^(i)}) of one forward."""
        self.records = {}
        try:
            logits = classifier(images)
            records = self.records
        finally:
            self.records = None
        return logits, records


def _check_classifier(method: str, classifier: Classifier) -> int:
    backbone = getattr(classifier, "backbone", None)
    if backbone is None or not hasattr(backbone, "blocks"):
        raise VfmxaiError(f"method '{method}' needs a classifier with a ViT backbone (a vfmxai Classifier)")
    return backbone.num_blocks


def resolve_layer(method: str, layer: int, num_blocks: int) -> int:
    if not -(num_blocks + 1) <= int(layer) <= num_blocks:
        raise VfmxaiError(
            f"method '{method}': option layer={layer} is out of range for hidden states h^(0)..h^({num_blocks})"
        )
    return int(layer) % (num_blocks + 1)


@register("gradcam")
class GradCAM(Explainer):
    """Grad-CAM (Selvaraju et al. 2017) on the patch tokens of h^(layer).

    S = the target class's logit (Selvaraju et al.'s y^c before the softmax; its probability would couple
    the classes). Per image, w_c = mean over patch tokens of dS/dA_c, CAM = ReLU(sum_c w_c A_c) on the
    patch grid. With few classes, note that the logit's class-common part (which the softmax ignores)
    is explained too.

    `layer=None` (default): h^(k) when its patch tokens reach the score (the ALA perception branch
    reads them), else h^(k-1). A class-token head (`LinearProbe`) reads h^(k)'s class token only, so
    h^(k)'s patch tokens get exactly zero gradient; the class token of h^(k) is computed from h^(k-1)'s
    patch tokens by the last block's attention, so h^(k-1) (the last block's input itself; pytorch-grad-cam's
    ViT recipe hooks `blocks[-1].norm1`, i.e. LN(h^(k-1)), which differs by the LayerNorm's per-token scale)
    is the deepest state that carries the evidence. The choice is
    made per call from the gradient and is recorded in `self.last_layer`.
    """
    display_name = "Grad-CAM"

    def __init__(self, classifier: Classifier, layer: int | None = None, target: Target | None = None):
        super().__init__(classifier, target)
        k = _check_classifier("gradcam", self.classifier)
        self.explicit_layer = layer is not None
        self.layers = [k, k - 1] if layer is None else [resolve_layer("gradcam", layer, k)]
        self.last_layer: int | None = None
        self._taps = _HiddenStateTaps(self, self.layers)

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        pixels = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits, states = self._taps.run(self.classifier, pixels)
            score = self.score(logits, targets).sum()
            acts = [states[i] for i in self.layers]
            grads = torch.autograd.grad(score, acts, allow_unused=True)
        prefix = self.classifier.backbone.num_prefix_tokens
        reaching = [g is not None and bool(g[:, prefix:].abs().amax() > 0) for g in grads]
        if self.explicit_layer and not reaching[0]:
            raise VfmxaiError(
                f"method 'gradcam': option layer={self.layers[0]}: the patch tokens of h^({self.layers[0]}) "
                "get no gradient from the score (a class-token head reads only h^(k)'s class token); "
                "choose an earlier layer or leave the option unset"
            )
        chosen = reaching.index(True) if any(reaching) else len(self.layers) - 1
        self.last_layer = self.layers[chosen]
        grad = grads[chosen] if grads[chosen] is not None else torch.zeros_like(acts[chosen])
        backbone = self.classifier.backbone
        a = backbone.patch_grid(acts[chosen].detach(), images.shape[-2:])
        g = backbone.patch_grid(grad, images.shape[-2:])
        weights = g.mean(dim=(2, 3), keepdim=True)
        return F.relu((weights * a).sum(dim=1))


@register("scorecam")
class ScoreCAM(Explainer):
    """Score-CAM (Wang et al. 2020) on the patch tokens of h^(layer) (default -1: h^(k)).

    Each channel map A_c (patch grid) is upsampled bilinearly to the image, min-max normalised to
    M_c in [0, 1] (a constant channel gives M_c = 0) and multiplied into the image. Its weight is the
    paper's Channel-wise Increase of Confidence w_c = p_t(x * M_c) - p_t(x_b) (softmax probability of
    the target; x_b the black image, i.e. x * 0: the baseline the paper's Eq. 4 subtracts and its code
    omits), and CAM = ReLU(sum_c w_c A_c) on the patch grid.

    Cost: one forward per (image, channel). `max_channels=K` keeps, per image, the K channels with the
    largest spatial variance of A_c (Faster Score-CAM's selection: a flat channel makes a flat, useless
    mask); None = all D channels. The masked images go through the model `batch_size` at a time.
    """
    display_name = "Score-CAM"

    default_target = ClassProbability()

    def __init__(
        self,
        classifier: Classifier,
        layer: int = -1,
        batch_size: int = 64,
        max_channels: int | None = None,
        target: Target | None = None,
    ):
        super().__init__(classifier, target)
        k = _check_classifier("scorecam", self.classifier)
        if int(batch_size) < 1:
            raise VfmxaiError(f"method 'scorecam': option batch_size={batch_size} must be positive")
        if max_channels is not None and int(max_channels) < 1:
            raise VfmxaiError(f"method 'scorecam': option max_channels={max_channels} must be positive or None")
        self.layer = resolve_layer("scorecam", layer, k)
        self.batch_size = int(batch_size)
        self.max_channels = None if max_channels is None else int(max_channels)
        self._taps = _HiddenStateTaps(self, [self.layer])

    @torch.no_grad()
    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        b, _, h, w = images.shape
        _, states = self._taps.run(self.classifier, images)
        acts = self.classifier.backbone.patch_grid(states[self.layer], (h, w)).float()
        d = acts.shape[1]
        k = d if self.max_channels is None else min(self.max_channels, d)
        channels = acts.flatten(2).var(dim=2).topk(k, dim=1).indices  # (B, K)
        selected = acts.gather(1, channels.view(b, k, 1, 1).expand(-1, -1, *acts.shape[2:]))  # (B, K, gh, gw)
        base_prob = self.score(self.classifier(torch.zeros_like(images)), targets)
        scores = torch.empty(b, k, device=images.device)
        for image_idx, channel_idx in index_chunks(b, k, self.batch_size, images.device):
            masks = F.interpolate(
                selected[image_idx, channel_idx].unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False
            )
            masks = normalize_maps(masks.squeeze(1)).unsqueeze(1)
            logits = self.classifier(images[image_idx] * masks)
            scores[image_idx, channel_idx] = self.score(logits, targets[image_idx])
        weights = scores - base_prob.view(b, 1)
        return F.relu((weights.view(b, k, 1, 1) * selected).sum(dim=1))
