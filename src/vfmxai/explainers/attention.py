"""Attention-based explainers: attention rollout and transformer attribution.

Also the machinery the attention-reading methods share (`record_attention`, `swap_attention`): every
Hugging Face ViT family (CLIP, SigLIP, ViT, DINOv2) computes attention through a function looked up by
`config._attn_implementation` and called as `fn(module, query, key, value, mask, scaling=, dropout=)`.
`swap_attention` registers a function of ours under a fresh name for the duration of a `with` block and
points every config of the backbone at it; on exit the configs and the registry are restored, so no
module, hook or function of the model is left changed. Our function computes the eager attention
(softmax(q·kᵀ·scale + mask)·v, in float32 for the softmax, as transformers does) and records the
probabilities, the values and the attention output (the out-projection's input) of every block.
Attention dropout is not applied: explainers explain the model as it predicts (eval mode).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from vfmxai.backbones import Backbone
from vfmxai.classifier import Classifier
from vfmxai.errors import VfmxaiError
from vfmxai.explainers.base import Explainer, register
from vfmxai.targets import Target

HEAD_FUSIONS = ("mean", "max", "min")
_KEYS = itertools.count()


@dataclass
class AttentionRecord:
    """One block's attention, as computed in the forward pass (tensors carry the autograd graph)."""

    weights: Tensor
    """(B, heads, T, T) softmax probabilities; row = query token, column = key token."""
    value: Tensor
    """(B, heads, T, head_dim) value vectors."""
    context: Tensor
    """(B, T, heads, head_dim) = weights·value, the out-projection's input (channel c = head·head_dim + d)."""


@contextlib.contextmanager
def swap_attention(backbone: Backbone, fn: Callable) -> Iterator[None]:
    """Run every attention layer of `backbone` through `fn` (transformers' attention-interface signature)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    key = f"vfmxai_{next(_KEYS)}"
    configs = [m.config for m in backbone.model.modules() if hasattr(m, "config")]
    previous = [c._attn_implementation for c in configs]
    ALL_ATTENTION_FUNCTIONS[key] = fn
    try:
        for c in configs:
            c._attn_implementation = key
        yield
    finally:
        for c, impl in zip(configs, previous, strict=True):
            c._attn_implementation = impl
        del ALL_ATTENTION_FUNCTIONS[key]


def eager_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scaling: float):
    """transformers' eager attention: (context (B, T, heads, head_dim), probabilities (B, heads, T, T))."""
    logits = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if mask is not None:
        logits = logits + mask
    weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


@contextlib.contextmanager
def record_attention(backbone: Backbone) -> Iterator[list[AttentionRecord]]:
    """Inside the block, every forward of `backbone` appends one `AttentionRecord` per block, in order."""
    records: list[AttentionRecord] = []

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        context, weights = eager_attention(query, key, value, attention_mask, scale)
        records.append(AttentionRecord(weights, value, context))
        return context, weights

    with swap_attention(backbone, attend):
        yield records


def forward_recorded(
    classifier: Classifier, images: Tensor, method: str
) -> tuple[Tensor, list[AttentionRecord]]:
    """Logits and the attention records of one forward; raises if the backbone did not run exactly once."""
    backbone = classifier.backbone
    with record_attention(backbone) as records:
        logits = classifier(images)
    if len(records) != backbone.num_blocks:
        raise VfmxaiError(
            f"method '{method}': expected one attention record per block ({backbone.num_blocks}),"
            f" got {len(records)}; the classifier must run its backbone exactly once per forward"
        )
    return logits, records


def check_start_block(method: str, start_block: int, backbone: Backbone) -> int:
    if not isinstance(start_block, int) or not 0 <= start_block < backbone.num_blocks:
        raise VfmxaiError(
            f"method '{method}': option start_block must be an integer in [0, {backbone.num_blocks - 1}],"
            f" got {start_block!r}"
        )
    return start_block


def fuse_heads(weights: Tensor, head_fusion: str) -> Tensor:
    """(B, heads, T, T) -> (B, T, T) by the mean, max or min over heads."""
    if head_fusion == "mean":
        return weights.mean(dim=1)
    if head_fusion == "max":
        return weights.amax(dim=1)
    if head_fusion == "min":
        return weights.amin(dim=1)
    raise VfmxaiError(f"option head_fusion must be one of {'|'.join(HEAD_FUSIONS)}, got {head_fusion!r}")


def rollout_matrix(attentions: list[Tensor], head_fusion: str = "mean", start_block: int = 0) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): R = Â_k ··· Â_s, Â_l = rownorm(fuse_heads(A_l) + I).

    `attentions`: per block (B, heads, T, T), first block first. Returns (B, T, T), rows summing to 1.
    """
    fused = [fuse_heads(a.float(), head_fusion) for a in attentions[start_block:]]
    eye = torch.eye(fused[0].shape[-1], device=fused[0].device, dtype=fused[0].dtype)
    rollout = eye.expand_as(fused[0])
    for a in fused:
        a = a + eye
        rollout = torch.matmul(a / a.sum(dim=-1, keepdim=True), rollout)
    return rollout


def gradient_rollout(attentions: list[Tensor], gradients: list[Tensor], start_block: int = 0) -> Tensor:
    """Chefer, Gur & Wolf, ICCV 2021 ("Generic Attention-model Explainability"), Eqs. 5-6 for self-attention.

    Ā_l = E_h[(∇A_l ⊙ A_l)^+]; R starts as the identity and every block updates R ← R + Ā_l·R.
    `attentions`, `gradients`: per block (B, heads, T, T), first block first. Returns R (B, T, T).
    """
    relevance = None
    for a, g in zip(attentions[start_block:], gradients[start_block:], strict=True):
        bar = (g.float() * a.float()).clamp_min(0).mean(dim=1)
        if relevance is None:
            relevance = torch.eye(bar.shape[-1], device=bar.device, dtype=bar.dtype).expand_as(bar)
        relevance = relevance + torch.matmul(bar, relevance)
    return relevance


def class_row(matrix: Tensor, backbone: Backbone) -> Tensor:
    """The class token's row (B, T) of a token-mixing matrix (B, T, T) or (B, heads, T, T) -> (B, heads, T).

    With no class token (SigLIP), the mean of the patch tokens' rows: what the mean-pooled embedding that
    vfmxai's classifiers read from such a backbone (`Backbone.pooled`) mixes."""
    if backbone.has_class_token:
        return matrix[..., 0, :]
    return matrix[..., backbone.num_prefix_tokens :, :].mean(dim=-2)


@register("rollout")
class AttentionRollout(Explainer):
    """Attention rollout (Abnar & Zuidema, ACL 2020). Class-agnostic: `targets` are ignored.

    Options: `head_fusion` (mean|max|min, default mean: the paper's average over heads), `start_block`
    (first block multiplied in, 0-based, default 0). Map = the class token's rollout row over the patch
    tokens, on the patch grid.
    """
    display_name = "Rollout"
    uses_target = False

    def __init__(
        self, classifier: Classifier, head_fusion: str = "mean", start_block: int = 0, target: Target | None = None
    ):
        super().__init__(classifier, target)
        if head_fusion not in HEAD_FUSIONS:
            raise VfmxaiError(
                f"method 'rollout': option head_fusion must be one of {'|'.join(HEAD_FUSIONS)},"
                f" got {head_fusion!r}"
            )
        self.head_fusion = head_fusion
        self.start_block = check_start_block("rollout", start_block, self.classifier.backbone)

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            _, records = forward_recorded(self.classifier, images, self.name)
            rollout = rollout_matrix([r.weights for r in records], self.head_fusion, self.start_block)
        backbone = self.classifier.backbone
        return backbone.patch_grid(class_row(rollout, backbone), images.shape[-2:])


@register("transformer_attribution")
class TransformerAttribution(Explainer):
    """Transformer attribution, the gradient-weighted attention rollout of Chefer, Gur & Wolf.

    Implemented: the rule of "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers" (ICCV 2021, Eqs. 5-6), which the authors released as the successor
    of their CVPR 2021 "Transformer Interpretability Beyond Attention Visualization": the CVPR version
    weights each attention map by its LRP relevance, this one by its gradient —
    Ā = E_h[(∂y_t/∂A ⊙ A)^+], R = I, R ← R + Ā·R over the blocks. Map = the class token's row of R over
    the patch tokens (patch grid). The gradient is of the target's score (default: the target logit). Option
    `start_block` (0-based first block included, default 0: all blocks, as the paper). This is GAE
    (issue 15's "generic attention explainability") exactly, so it has no second key;
    tests/test_explainers_vit.py checks it against GAE's update rule written out on SigLIP (no class token: the
    patch rows' mean) and DINOv2 with registers.
    """
    display_name = "Transformer attribution"

    def __init__(self, classifier: Classifier, start_block: int = 0, target: Target | None = None):
        super().__init__(classifier, target)
        self.start_block = check_start_block("transformer_attribution", start_block, self.classifier.backbone)

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        with torch.enable_grad():
            images = images.detach().requires_grad_(True)
            logits, records = forward_recorded(self.classifier, images, self.name)
            weights = [r.weights for r in records]
            gradients = torch.autograd.grad(self.score(logits, targets).sum(), weights, allow_unused=True)
        gradients = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, gradients, strict=True)]
        relevance = gradient_rollout([w.detach() for w in weights], gradients, self.start_block)
        backbone = self.classifier.backbone
        return backbone.patch_grid(class_row(relevance, backbone), images.shape[-2:])
