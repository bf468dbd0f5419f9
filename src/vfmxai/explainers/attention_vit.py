"""Attention-reading methods of the ViT-explanation literature since 2021: raw attention (`raw_attention`), LeGrad
(`legrad`) and Beyond Intuition (`beyond_intuition`).

They read the attention probabilities through `attention.forward_recorded`; raw attention and Beyond Intuition
read the class token's row through `attention.class_row` (with no class token, SigLIP, the mean of the patch
tokens' rows), LeGrad averages over every query row; `Backbone.patch_grid`
drops the prefix tokens (class token, registers) and lays the patch tokens on the input's grid.

GAE, the generic attention explainability of Chefer, Gur & Wolf (ICCV 2021: R = I, R ← R + E_h[(∇A ⊙ A)^+]·R,
class-token row), is `transformer_attribution` (explainers/attention.py) exactly; it has no second key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from vfmxai.backbones import Backbone
from vfmxai.classifier import Classifier
from vfmxai.errors import VfmxaiError
from vfmxai.explainers.attention import check_start_block, class_row, forward_recorded
from vfmxai.explainers.base import Explainer, check_positive, index_chunks, register
from vfmxai.targets import Target

BI_VARIANTS = ("head", "token")


@register("raw_attention")
class RawAttention(Explainer):
    """The last block's attention: E_h[A^(k)], the class token's row over the patch tokens (the mean of the patch
    tokens' rows with no class token); prefix tokens (registers) dropped. Class-agnostic: `targets` are ignored."""

    display_name = "Raw attention"
    uses_target = False

    @torch.no_grad()
    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        _, records = forward_recorded(self.classifier, images, self.name)
        backbone = self.classifier.backbone
        return backbone.patch_grid(class_row(records[-1].weights.float().mean(dim=1), backbone), images.shape[-2:])


@contextlib.contextmanager
def exit_after_block(backbone: Backbone, block: int) -> Iterator[None]:
    """Inside the `with`, every block after `block` (0-based) passes its input through unchanged: the model's
    output is then its head read on h^(block + 1), the intermediate prediction LeGrad explains."""
    handles = [
        backbone.blocks[j].register_forward_hook(lambda module, args, output: args[0], prepend=True)
        for j in range(block + 1, backbone.num_blocks)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@register("legrad")
class LeGrad(Explainer):
    """LeGrad (Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, ICCV 2025, arXiv 2404.03214).

    For each block l of the last `n_layers` (None = every block, the paper's aggregation "over all layers"; the
    authors' CLIP wrapper defaults to the last two): s^l = the target logit of the classifier read on h^(l) (the
    blocks after l pass their input through, `exit_after_block`: the paper's intermediate prediction, its head
    applied to layer l's tokens), and
        E^l = 1/(h·T) Σ_heads Σ_queries ReLU(∂s^l/∂A^l)
    over the h heads and all T query rows (class token, registers and patches, as the authors' code averages).
    Map = Σ_l E^l over the patch keys; the base class's min-max is the one normalisation at the end.
    Cost: one forward and backward per layer.
    """

    display_name = "LeGrad"

    def __init__(self, classifier: Classifier, n_layers: int | None = None, target: Target | None = None):
        super().__init__(classifier, target)
        k = self.classifier.backbone.num_blocks
        integer = isinstance(n_layers, int) and not isinstance(n_layers, bool)
        valid = n_layers is None or (integer and 1 <= n_layers <= k)
        if not valid:
            raise VfmxaiError(
                f"method 'legrad': option n_layers must be an integer in [1, {k}] or None, got {n_layers!r}"
            )
        self.n_layers = k if n_layers is None else n_layers

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        backbone = self.classifier.backbone
        k = backbone.num_blocks
        total = None
        images = images.detach().requires_grad_(True)  # a frozen model still builds the graph to the attention
        for layer in range(k - self.n_layers, k):
            with torch.enable_grad(), exit_after_block(backbone, layer):
                logits, records = forward_recorded(self.classifier, images, self.name)
                weights = records[layer].weights
                (grad,) = torch.autograd.grad(self.score(logits, targets).sum(), [weights], allow_unused=True)
            grad = torch.zeros_like(weights) if grad is None else grad
            e = grad.float().clamp_min(0).mean(dim=(1, 2))  # (B, T): mean over heads and queries
            total = e if total is None else total + e
        return backbone.patch_grid(total, images.shape[-2:])


def value_projections(backbone: Backbone, block: int) -> tuple[nn.Module, nn.Module]:
    """(value projection W_v, output projection W_o) of one block's attention: `v_proj` and `out_proj` (CLIP,
    SigLIP) or `o_proj` (ViT, DINOv2)."""
    attention = backbone.attention(block)
    out = getattr(attention, "out_proj", None) or getattr(attention, "o_proj", None)
    if out is None or not hasattr(attention, "v_proj"):
        raise VfmxaiError(f"method 'beyond_intuition': no v_proj/out_proj in {type(attention).__name__}")
    return attention.v_proj, out


@register("beyond_intuition")
class BeyondIntuition(Explainer):
    """Beyond Intuition (Chen, Li, Yu, Dou & Xiong, "Beyond Intuition: Rethinking Token Attributions inside
    Transformers", TMLR 2023): T = F ⊙ P, the class token's row over the patch tokens.

    Attention perception P: R = I, then for every block l >= `start_block`, R ← R + Ā^(l)·R with
    - `variant="head"`: Ā = Σ_h I_h A_h, I_h = mean_{ij} |(A_hᵀ ∇A_h)_ij| normalised to Σ_h I_h = 1 (∇A_h: the
      target logit's gradient, one backward at x);
    - `variant="token"` (default): Ā = E_h[A] · diag(a), a_j = ‖z_j W_v W_o‖ / ‖z_j‖, z_j the attention's input
      token j (the layer-normed state), W_v, W_o the value and output projections with their biases (how much the
      block's value path scales token j, the paper's approximation of each token's transformation by a scalar).
    Reasoning feedback F = E_h[(1/m Σ_{α ∈ linspace(0, 1, m)} ∇_{A^(k)} y_t(α x))^+], the last block's attention
    gradient integrated along the straight path, m = `steps` (20, the authors' code); the authors scale the
    normalised input (baseline: the mean colour), vfmxai scales the pixels (baseline: black, as `ig`'s default).
    T = F ⊙ P (head-wise), F ⊙ |P| (token-wise), as the authors' code; map = T's class-token row, or, where the
    class token's feedback row is all zero (a head that does not read the class token, e.g. ALA's, which reads the
    patch grid) or there is none, the patch tokens' mean row (the authors' reading for MAE). `start_block`
    (0-based) defaults to 0, every block (the paper's product; the authors' scripts start at block 4 or 6 of 12).
    The m path images go through the model `batch_size` at a time.
    """

    display_name = "Beyond Intuition"

    def __init__(
        self,
        classifier: Classifier,
        variant: str = "token",
        steps: int = 20,
        start_block: int = 0,
        batch_size: int = 64,
        target: Target | None = None,
    ):
        super().__init__(classifier, target)
        if variant not in BI_VARIANTS:
            raise VfmxaiError(
                f"method 'beyond_intuition': option variant must be one of {'|'.join(BI_VARIANTS)}, got {variant!r}"
            )
        check_positive("beyond_intuition", steps=steps, batch_size=batch_size)
        self.variant = variant
        self.steps = steps
        self.batch_size = batch_size
        self.start_block = check_start_block("beyond_intuition", start_block, self.classifier.backbone)

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        backbone = self.classifier.backbone
        perception = self.head_perception(images, targets) if self.variant == "head" else self.token_perception(images)
        if self.variant == "token":
            perception = perception.abs()
        feedback = self.feedback(images, targets)
        attribution = feedback * perception
        row = class_row(attribution, backbone)
        if backbone.has_class_token:  # a head that does not read the class token: the patch rows' mean
            unread = feedback[:, 0].abs().amax(dim=1, keepdim=True) == 0
            row = torch.where(unread, attribution[:, backbone.num_prefix_tokens :].mean(dim=1), row)
        return backbone.patch_grid(row, images.shape[-2:])

    def head_perception(self, images: Tensor, targets: Tensor) -> Tensor:
        with torch.enable_grad():
            logits, records = forward_recorded(self.classifier, images.detach().requires_grad_(True), self.name)
            weights = [r.weights for r in records]
            grads = torch.autograd.grad(self.score(logits, targets).sum(), weights, allow_unused=True)
        mixes = []
        for a, g in zip(weights[self.start_block :], grads[self.start_block :], strict=True):
            a = a.detach().float()
            g = torch.zeros_like(a) if g is None else g.float()
            importance = (a.transpose(-1, -2) @ g).abs().mean(dim=(-1, -2))  # (B, heads)
            importance = importance / importance.sum(dim=1, keepdim=True).clamp_min(1e-12)
            mixes.append((importance[:, :, None, None] * a).sum(dim=1))
        return perception_product(mixes)

    def token_perception(self, images: Tensor) -> Tensor:
        backbone = self.classifier.backbone
        values: dict[int, tuple[Tensor, Tensor]] = {}
        projections = [value_projections(backbone, b) for b in range(backbone.num_blocks)]
        handles = [
            v.register_forward_hook(lambda m, args, out, b=b: values.__setitem__(b, (args[0], out)))
            for b, (v, _) in enumerate(projections)
        ]
        try:
            with torch.no_grad():
                _, records = forward_recorded(self.classifier, images, self.name)
                mixes = []
                for b in range(self.start_block, backbone.num_blocks):
                    z, v = values[b]
                    ratio = projections[b][1](v).float().norm(dim=-1) / z.float().norm(dim=-1).clamp_min(1e-12)
                    mixes.append(records[b].weights.float().mean(dim=1) * ratio[:, None, :])
        finally:
            for handle in handles:
                handle.remove()
        return perception_product(mixes)

    def feedback(self, images: Tensor, targets: Tensor) -> Tensor:
        b = images.shape[0]
        alphas = torch.linspace(0, 1, self.steps, device=images.device)
        total = None
        for step, image in index_chunks(self.steps, b, self.batch_size, images.device):
            path = (alphas[step].view(-1, 1, 1, 1) * images[image]).detach().requires_grad_(True)
            with torch.enable_grad():
                logits, records = forward_recorded(self.classifier, path, self.name)
                last = records[-1].weights
                (grad,) = torch.autograd.grad(self.score(logits, targets[image]).sum(), [last], allow_unused=True)
            grad = torch.zeros_like(last) if grad is None else grad
            if total is None:
                total = torch.zeros(b, *grad.shape[1:], device=images.device)
            total.index_add_(0, image, grad.float())
        return (total / self.steps).clamp_min(0).mean(dim=1)


def perception_product(mixes: list[Tensor]) -> Tensor:
    """R = I, R ← R + M_l·R over the per-block token-mixing matrices M_l (B, T, T), first block first."""
    relevance = torch.eye(mixes[0].shape[-1], device=mixes[0].device).expand_as(mixes[0])
    for mix in mixes:
        relevance = relevance + mix @ relevance
    return relevance
