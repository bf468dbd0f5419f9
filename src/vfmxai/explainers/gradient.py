"""Pixel-gradient methods: Integrated Gradients (`ig`) and Guided Backpropagation (`guided_bp`).

Both differentiate the target's score (default: the target class's logit, not its softmax probability) with
respect to the pixels in [0, 1] the person sees (the backbone normalises internally). Both work on any
`nn.Module` that maps (B, 3, H, W) to logits and has `num_classes`: no backbone is needed. `attribute_pixels`
returns the raw per-pixel-per-channel attributions (B, 3, H, W); the map is reduced from them over colour channels:
`sign="absolute"` (default) gives |sum_c a_c| (captum's visualisation convention: evidence for and
against the target both count as "important"), `sign="positive"` gives max(sum_c a_c, 0) (evidence for
the target only).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from vfmxai.errors import VfmxaiError
from vfmxai.explainers.base import ACTIVATIONS, Explainer, index_chunks, register
from vfmxai.metrics.perturbation import gaussian_blur
from vfmxai.targets import Target

SIGNS = ("absolute", "positive")


def reduce_channels(attributions: Tensor, sign: str) -> Tensor:
    """(B, 3, H, W) -> (B, H, W): the channel sum, then its absolute value or its positive part."""
    total = attributions.sum(dim=1)
    return total.abs() if sign == "absolute" else total.clamp_min(0)


def _check_sign(method: str, sign: str) -> str:
    if sign not in SIGNS:
        raise VfmxaiError(f"method '{method}': option sign='{sign}' is not one of {', '.join(SIGNS)}")
    return sign


@register("ig")
class IntegratedGradients(Explainer):
    """Integrated Gradients (Sundararajan et al. 2017): a_i = (x_i - x'_i) * integral_0^1 dF(x' + t(x - x'))/dx_i dt.

    F is the target's score (default: the target logit), so completeness reads sum_i a_i ~= F(x) - F(x'). The
    integral is taken by `method="gausslegendre"` (default; `steps` Gauss-Legendre nodes on [0, 1], exact for
    polynomials of degree 2*steps - 1, captum's default) or `"riemann_trapezoid"` (`steps` equally spaced points, end
    points halved, weights summing to 1: a true trapezoid rule. captum's `riemann_trapezoid` uses the same
    nodes but weights that sum to (steps - 1) / steps, so its attributions are smaller by that factor).
    Baselines x': `"black"` (zeros, default),
    `"blur"` (the image blurred by a Gaussian of `blur_sigma` pixels, default max(H, W) / 16), `"mean"`
    (a flat image of the image's own mean colour). The B x steps interpolated images go through the
    model `internal_batch_size` at a time.
    """
    display_name = "IG"

    BASELINES = ("black", "blur", "mean")
    METHODS = ("gausslegendre", "riemann_trapezoid")

    def __init__(
        self,
        classifier: nn.Module,
        steps: int = 32,
        baseline: str = "black",
        method: str = "gausslegendre",
        internal_batch_size: int = 64,
        blur_sigma: float | None = None,
        sign: str = "absolute",
        target: Target | None = None,
    ):
        super().__init__(classifier, target)
        if int(steps) < 2:
            raise VfmxaiError(f"method 'ig': option steps={steps} must be at least 2")
        if baseline not in self.BASELINES:
            raise VfmxaiError(f"method 'ig': option baseline='{baseline}' is not one of {', '.join(self.BASELINES)}")
        if method not in self.METHODS:
            raise VfmxaiError(f"method 'ig': option method='{method}' is not one of {', '.join(self.METHODS)}")
        if int(internal_batch_size) < 1:
            raise VfmxaiError(f"method 'ig': option internal_batch_size={internal_batch_size} must be positive")
        if blur_sigma is not None and not blur_sigma > 0:
            raise VfmxaiError(f"method 'ig': option blur_sigma={blur_sigma} must be positive")
        self.steps = int(steps)
        self.baseline = baseline
        self.method = method
        self.internal_batch_size = int(internal_batch_size)
        self.blur_sigma = blur_sigma
        self.sign = _check_sign("ig", sign)

    def nodes(self) -> tuple[Tensor, Tensor]:
        """Quadrature nodes t_s in [0, 1] and weights w_s (float64) with sum_s w_s g(t_s) ~= integral_0^1 g."""
        n = self.steps
        if self.method == "gausslegendre":
            x, w = np.polynomial.legendre.leggauss(n)
            return torch.from_numpy(0.5 * (x + 1)), torch.from_numpy(0.5 * w)
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, n, dtype=torch.float64), weights

    def baseline_images(self, images: Tensor) -> Tensor:
        if self.baseline == "black":
            return torch.zeros_like(images)
        if self.baseline == "mean":
            return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
        sigma = self.blur_sigma if self.blur_sigma is not None else max(images.shape[-2:]) / 16
        return gaussian_blur(images, sigma, border="reflect")

    def attribute_pixels(self, images: Tensor, targets: Tensor | None = None) -> Tensor:
        """Raw attributions (B, 3, H, W); their sum per image approximates F(x) - F(baseline)."""
        images = self._check_images(images).detach()
        return self._pixels(images, self._targets(images, targets))

    def _pixels(self, images: Tensor, targets: Tensor) -> Tensor:
        base = self.baseline_images(images)
        alphas, weights = (t.to(images.device, images.dtype) for t in self.nodes())
        total = torch.zeros_like(images)
        for step_idx, image_idx in index_chunks(self.steps, images.shape[0], self.internal_batch_size, images.device):
            alpha = alphas[step_idx].view(-1, 1, 1, 1)
            path = (base[image_idx] + alpha * (images[image_idx] - base[image_idx])).requires_grad_(True)
            with torch.enable_grad():
                score = self.score(self.classifier(path), targets[image_idx]).sum()
                (grad,) = torch.autograd.grad(score, path)
            total.index_add_(0, image_idx, grad * weights[step_idx].view(-1, 1, 1, 1))
        return (images - base) * total

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        return reduce_channels(self._pixels(images.detach(), targets), self.sign)


class _GuidedGate(torch.autograd.Function):
    """Forward: pass the activation's output y = f(x) through. Backward: f'(x) * max(g, 0) * [x > 0]."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, module: nn.Module) -> Tensor:
        ctx.save_for_backward(x)
        ctx.module = module
        return y.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            # `.forward` bypasses this explainer's hook; the clone keeps an in-place activation off the leaf.
            (slope_grad,) = torch.autograd.grad(ctx.module.forward(leaf.clone()), leaf, grad.clamp_min(0))
        return slope_grad * (x > 0).to(slope_grad.dtype), None, None


@register("guided_bp")
class GuidedBackprop(Explainer):
    """Guided Backpropagation (Springenberg et al. 2015) that is guided for GELU and QuickGELU too.

    Rule at every element-wise rectifier-like activation y = f(x) (ReLU, GELU, QuickGELU
    x * sigmoid(1.702 x), SiLU, ...; see `ACTIVATIONS`):
        grad_x = f'(x) * max(grad_y, 0) * [x > 0].
    For ReLU, f'(x) = [x > 0] and this is exactly classic guided BP ([x > 0] * max(grad_y, 0): the forward
    gate of the plain gradient and the backward gate of the deconvnet). For the smooth rectifiers the
    same two gates are kept (only units active in the forward pass, only positive signals from above);
    the local slope f'(x), positive for x > 0, keeps the plain gradient's magnitude where the unit is on.
    Without the gate on x, GELU's negative slope for x in (-0.75, 0) would flip signals (captum and
    pytorch-grad-cam only modify nn.ReLU and so return the plain gradient on a ViT).

    The rule is installed by forward hooks on those activation modules (through `self.hook`, active
    only inside `attribute`): the output is routed through a function whose backward applies the rule.
    The modules themselves are never replaced.
    """
    display_name = "Guided BP"

    def __init__(self, classifier: nn.Module, sign: str = "absolute", target: Target | None = None):
        super().__init__(classifier, target)
        self.sign = _check_sign("guided_bp", sign)
        self._active = False
        self.gated = [m for m in self.classifier.modules() if isinstance(m, ACTIVATIONS)]
        for module in self.gated:
            self.hook(module, "forward", self._gate)

    def _gate(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        if not self._active or not torch.is_grad_enabled() or not output.requires_grad:
            return None
        return _GuidedGate.apply(inputs[0], output, module)

    def attribute_pixels(self, images: Tensor, targets: Tensor | None = None) -> Tensor:
        """Guided gradients of the target's scores with respect to the pixels, (B, 3, H, W)."""
        images = self._check_images(images).detach()
        return self._pixels(images, self._targets(images, targets))

    def _pixels(self, images: Tensor, targets: Tensor) -> Tensor:
        pixels = images.clone().requires_grad_(True)
        self._active = True
        try:
            with torch.enable_grad():
                score = self.score(self.classifier(pixels), targets).sum()
                (grad,) = torch.autograd.grad(score, pixels)
        finally:
            self._active = False
        return grad

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        return reduce_channels(self._pixels(images.detach(), targets), self.sign)
