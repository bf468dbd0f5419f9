"""Layer-wise relevance propagation for ViTs with the AttnLRP rules (Achtibat et al., ICML 2024).

LRP is run as a modified gradient (the approach of the authors' LXT library, re-implemented here):
the forward values are unchanged, only the backward pass is altered so that gradient × input at every
layer equals the relevance the rule assigns. Relevance at the input is then (x − μ) ⊙ ∂̃y_t/∂x, i.e.
gradient × input on the backbone's normalised pixels (x − μ)/σ, where ∂̃ is the modified gradient.

Rules (applied while `rules()` is active):
- linear layers, convolutions, additions: ε-rule with ε → 0, which is exactly gradient × input;
- LayerNorm (every `nn.LayerNorm` of the classifier): the standard deviation is a constant (detached),
  the centring is linear (AttnLRP Prop. 3.4 / identity rule on the normalisation);
- element-wise activations (`ACTIVATIONS`: GELU family, QuickGELU, SiLU, ReLU, ...): identity rule, y = x · (f(x)/x)
  with the gain detached, so relevance passes through unchanged (AttnLRP §3.3.1);
- the bilinear products q·kᵀ and A·V: uniform rule, half the relevance to each factor (AttnLRP
  Prop. 3.3), done by halving the gradient that reaches each factor;
- softmax: `softmax_rule="attnlrp"` (default) — AttnLRP Prop. 3.1, R_in = x ⊙ (R_out − s·ΣR_out), which
  is gradient × input through the softmax; the shift-invariance of the softmax leaves part of the
  relevance in an implicit bias term, so the total at the input is not exactly the logit.
  `softmax_rule="cp"` — the attention probabilities are constants (conservative propagation, Ali et al.,
  ICML 2022): no relevance flows into q and k, A·V is linear in V, and the whole propagation conserves.

Conservation: with `softmax_rule="cp"` the modified network is linear in (input, biases), so the input
relevance plus the relevance of every bias-like constant (linear/LayerNorm biases, class and position
embeddings) equals the target logit to float precision; with those constants zeroed, the input
relevance alone equals the logit (tested to 1e-4 relative). With the AttnLRP softmax rule the softmax
absorbs a share (measured on the tiny test model, see tests). Rules not listed (e.g. a head's max-pooling
or sigmoid) fall back to the plain gradient.

The map (option `level`): "patch" (default) — the pixel relevance summed over each patch, i.e. the
relevance of each patch token's pixel content, on the patch grid; "pixel" — relevance summed over the
colour channels at each pixel. Patch is the default because per-pixel gradient × input through a ViT's
linear patch embedding changes sign with each pixel's deviation from the mean colour, so fine texture
inside the evidence (stripes) comes out as a checkerboard of ± relevance whose min-max display hides
where the evidence is (tiny planted-evidence model: 79 % of positive relevance inside the evidence per
patch, 43 % per pixel, chance 25 %); the patch sums keep conservation. Signed: negative relevance is
evidence against the target (the display min-max keeps the sign order).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmxai.classifier import Classifier
from vfmxai.errors import VfmxaiError
from vfmxai.explainers.attention import swap_attention
from vfmxai.explainers.base import ACTIVATIONS, Explainer, register
from vfmxai.targets import Target

SOFTMAX_RULES = ("attnlrp", "cp")
LEVELS = ("patch", "pixel")


class _HalfGradient(torch.autograd.Function):
    """Identity forward; halves the gradient (the uniform rule for one factor of a bilinear product)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return 0.5 * grad


def _half(x: Tensor) -> Tensor:
    return _HalfGradient.apply(x)


def lrp_attention(softmax_rule: str):
    """The attention function (transformers' interface) that carries the AttnLRP / CP-LRP rules."""

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        logits = torch.matmul(_half(query), _half(key).transpose(-1, -2)) * scale
        if attention_mask is not None:
            logits = logits + attention_mask
        weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
        if softmax_rule == "cp":
            context = torch.matmul(weights.detach(), value)
        else:
            context = torch.matmul(_half(weights), _half(value))
        return context.transpose(1, 2).contiguous(), weights

    return attend


def _keep_value(y: Tensor, linearised: Tensor) -> Tensor:
    """`linearised`'s gradient with `y`'s exact value (the detached difference is rounding only)."""
    return linearised + (y - linearised).detach()


def _layer_norm_rule(module: nn.LayerNorm, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    x = inputs[0]
    dims = tuple(range(-len(module.normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    std = (centred.pow(2).mean(dim=dims, keepdim=True) + module.eps).sqrt().detach()
    y = centred / std
    if module.weight is not None:
        y = y * module.weight
    if module.bias is not None:
        y = y + module.bias
    return _keep_value(output, y)


def _identity_rule(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    """The gain f(x)/x, detached. Near x = 0 it takes its limit f'(0), 0.5 for GELU, QuickGELU and SiLU
    (f(x) = x·g(x) with g(0) = 1/2), measured on the module itself rather than listed per activation."""
    x = inputs[0]
    small = x.abs() < 1e-6
    probe = torch.full((1,), 1e-6, dtype=torch.float64, device=x.device)
    limit = (module.forward(probe) / probe).to(x.dtype).detach()  # forward(): not through this hook again
    gain = torch.where(small, limit.expand_as(x), output / torch.where(small, torch.ones_like(x), x))
    return _keep_value(output, x * gain.detach())


@register("lrp")
class AttnLRP(Explainer):
    """LRP for transformers, AttnLRP rules, as a modified gradient (module docstring: rules, tolerance).

    Options: `softmax_rule` (attnlrp|cp, default attnlrp), `level` (patch|pixel, default patch).
    """
    display_name = "LRP"

    def __init__(
        self, classifier: Classifier, softmax_rule: str = "attnlrp", level: str = "patch", target: Target | None = None
    ):
        super().__init__(classifier, target)
        if softmax_rule not in SOFTMAX_RULES:
            raise VfmxaiError(
                f"method 'lrp': option softmax_rule must be one of {'|'.join(SOFTMAX_RULES)},"
                f" got {softmax_rule!r}"
            )
        if level not in LEVELS:
            raise VfmxaiError(f"method 'lrp': option level must be one of {'|'.join(LEVELS)}, got {level!r}")
        self.softmax_rule = softmax_rule
        self.level = level

    @contextlib.contextmanager
    def rules(self) -> Iterator[None]:
        """While active, the classifier's backward pass propagates relevance (forward values unchanged)."""
        handles = []
        for module in self.classifier.modules():
            if isinstance(module, nn.LayerNorm):
                handles.append(self.hook(module, "forward", _layer_norm_rule))
            elif isinstance(module, ACTIVATIONS):
                handles.append(self.hook(module, "forward", _identity_rule))
        try:
            with swap_attention(self.classifier.backbone, lrp_attention(self.softmax_rule)):
                yield
        finally:
            for handle in handles:
                handle.remove()
                self._handles.remove(handle)

    def relevance(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(input relevance (B, 3, H, W), target scores (B,)): relevance of each normalised pixel value."""
        backbone = self.classifier.backbone
        with torch.enable_grad(), self.rules():
            images = images.detach().requires_grad_(True)
            logits = self.classifier(images)
            (grad,) = torch.autograd.grad(self.score(logits, targets).sum(), images)
        return (images.detach() - backbone.mean) * grad, self.score(logits.detach(), targets)

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        pixels = self.relevance(images, targets)[0].sum(dim=1)
        if self.level == "pixel":
            return pixels
        p = self.classifier.backbone.patch_size
        return F.avg_pool2d(pixels.unsqueeze(1), p, p, divisor_override=1).squeeze(1)
