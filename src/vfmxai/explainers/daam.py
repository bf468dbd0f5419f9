"""DAAM, the Dynamic Accumulated Attention Map (Liao et al., arXiv 2503.14640).

Decomposition, per block b: the class token's attention output is a sum over tokens j of per-token
contributions, o_cls[c] = Σ_j A_h(c)[cls, j] · V[j, c] (h(c) = the head that owns channel c), so
F_b[j, c] = A_h(c)[cls, j] · V[j, c] is a spatial feature map per channel. Channel importance w_b[c] is
the gradient of a score at the class token's out-projection input (the authors' `attn.proj` input).
Per-block map M_b[j] = ReLU(Σ_c w_b[c] · F_b[j, c]) over the patch tokens; the accumulated map at
block b is Σ_{i ≤ b} M_i (the authors' default, without per-block normalisation).

Modes (option `mode`):
- "supervised" (default): score = the target's (default: the target logit); w = ReLU(∂y_t/∂o_cls), as the
  authors' code.
- "self_supervised": for a backbone with no classifier head. Score = Σ_d ω_d f_d, f = the backbone's
  pooled embedding (`Backbone.pooled` of the last state; CLIP: the normed class token), with the
  dimension-wise importance weights ω (paper §3.3) held constant: ω = minmax(f̂ ⊙ p / |Σ_d f̂_d p_d|),
  f̂ = f/‖f‖. The authors take p as the mean of the normalised embeddings of the image's k nearest
  training neighbours of its predicted class (a kNN memory bank): option `memory_bank` = (embeddings
  (N, D), labels (N,)) of the training images (`embed` computes them) does that per image (`knn_prototypes`);
  option `prototype` (D,) or (B, D) supplies a p directly; without either p = f̂ (the image's own
  embedding: ω ∝ f̂², the dimensions that carry its self-similarity). w = ∂score/∂o_cls, not rectified
  (as the authors' self-supervised code).
  Targets are ignored. `get("daam", backbone, mode="self_supervised")` accepts a bare `Backbone`: it is
  wrapped in `EmbeddingScore`, a one-output `Classifier` whose logit is the score above.

With no class token (SigLIP), the decomposed token is the mean-pooled one that vfmxai's classifiers read
(`Backbone.pooled`): its attention row is the mean of the patch tokens' rows (`attention.class_row`) and w is
the gradient of the score for one shift added to every patch token's attention output (the sum of their
gradients). Registers are never decomposed into the map. Extra public method `explain_blocks` returns
every block's map and the accumulation, raw, for the per-block figure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vfmxai.backbones import Backbone
from vfmxai.classifier import Classifier
from vfmxai.errors import VfmxaiError
from vfmxai.explainers.attention import class_row, forward_recorded
from vfmxai.explainers.base import Explainer, register
from vfmxai.targets import Target

MODES = ("supervised", "self_supervised")


def embed(backbone: Backbone, images: Tensor, batch_size: int = 32) -> Tensor:
    """Normalised pooled embeddings f̂ (N, D) of `images` (N, 3, H, W): a DAAM memory bank's keys."""
    with torch.no_grad():
        pooled = [backbone.embedding(chunk) for chunk in images.split(batch_size)]
    return F.normalize(torch.cat(pooled).float(), dim=-1)


def knn_prototypes(queries: Tensor, bank: Tensor, bank_labels: Tensor, k: int = 20) -> Tensor:
    """DAAM's prototype p (B, D) per query embedding (B, D), from a memory bank (N, D) with labels (N,).

    Cosine similarity throughout. The query's class is the majority label among its k nearest bank entries
    (ties: the smallest label); p is the mean of the normalised embeddings of the k nearest entries of that
    class (all of them when the class has fewer than k)."""
    queries, bank = F.normalize(queries.float(), dim=-1), F.normalize(bank.float().to(queries.device), dim=-1)
    bank_labels = bank_labels.to(queries.device).long()
    k = min(k, bank.shape[0])
    similarity = queries @ bank.T  # (B, N)
    nearest = similarity.topk(k, dim=1).indices
    votes = F.one_hot(bank_labels[nearest], int(bank_labels.max()) + 1).sum(1)  # (B, classes)
    predicted = votes.argmax(dim=1)  # first maximum: the smallest label among tied ones
    same = bank_labels.unsqueeze(0) == predicted.unsqueeze(1)  # (B, N)
    order = torch.where(same, similarity, float("-inf")).topk(k, dim=1).indices  # that class's k nearest first
    keep = same.gather(1, order)  # False where the class has fewer than k entries
    chosen = bank[order] * keep.unsqueeze(-1)
    return chosen.sum(1) / keep.sum(1, keepdim=True)


class EmbeddingScore(Classifier):
    """A bare backbone as a one-output `Classifier`: logit = Σ_d ω_d f_d (ω constant; module docstring)."""

    def __init__(
        self,
        backbone: Backbone,
        prototype: Tensor | None = None,
        memory_bank: tuple[Tensor, Tensor] | None = None,
        k: int = 20,
    ):
        super().__init__()
        self.backbone = backbone
        self.num_classes = 1
        self.prototype = prototype
        self.memory_bank = memory_bank
        self.k = k

    def importance(self, embedding: Tensor) -> Tensor:
        """Dimension-wise importance weights ω (B, D) of embeddings f (B, D), min-max normalised per image."""
        unit = F.normalize(embedding.detach().float(), dim=-1)
        if self.memory_bank is not None:
            proto = knn_prototypes(unit, *self.memory_bank, k=self.k)
        else:
            proto = unit if self.prototype is None else self.prototype.to(unit).expand_as(unit)
        product = unit * proto
        weights = product / product.sum(dim=-1, keepdim=True).abs().clamp_min(1e-12)
        low = weights.amin(dim=-1, keepdim=True)
        span = weights.amax(dim=-1, keepdim=True) - low
        return torch.where(span > 0, (weights - low) / span.clamp_min(1e-12), torch.ones_like(weights))

    def forward(self, images: Tensor) -> Tensor:
        embedding = self.backbone.embedding(images)
        return (self.importance(embedding).to(embedding.dtype) * embedding).sum(dim=-1, keepdim=True)


@register("daam")
class DAAM(Explainer):
    """Dynamic Accumulated Attention Map. Options: `mode` (supervised|self_supervised), `prototype`,
    `memory_bank` and its `k` (self-supervised weights; module docstring).

    `attribute` returns the map accumulated over all blocks (patch grid).
    """
    display_name = "DAAM"

    def __init__(
        self,
        classifier: Classifier | Backbone,
        mode: str = "supervised",
        prototype: Tensor | None = None,
        memory_bank: tuple[Tensor, Tensor] | None = None,
        k: int = 20,
        target: Target | None = None,
    ):
        if mode not in MODES:
            raise VfmxaiError(f"method 'daam': option mode must be one of {'|'.join(MODES)}, got {mode!r}")
        if mode == "self_supervised" and target is not None:
            raise VfmxaiError(
                "method 'daam': mode='self_supervised' scores the embedding by its own weights (paper §3.3) and "
                "takes no target; use mode='supervised' to explain a target"
            )
        if isinstance(classifier, Backbone) and mode != "self_supervised" and target is None:
            raise VfmxaiError(
                "method 'daam': a bare backbone (no classifier head) needs mode='self_supervised' or an embedding "
                "target (reference, prompt)"
            )
        if (prototype is not None or memory_bank is not None) and mode != "self_supervised":
            raise VfmxaiError("method 'daam': options prototype and memory_bank apply to mode='self_supervised' only")
        if prototype is not None and memory_bank is not None:
            raise VfmxaiError("method 'daam': give option prototype or memory_bank, not both")
        if memory_bank is not None and not (
            len(memory_bank) == 2 and memory_bank[0].dim() == 2 and memory_bank[1].shape == memory_bank[0].shape[:1]
        ):
            raise VfmxaiError("method 'daam': option memory_bank must be (embeddings (N, D), labels (N,))")
        if not isinstance(k, int) or k < 1:
            raise VfmxaiError(f"method 'daam': option k must be a positive integer, got {k!r}")
        backbone = classifier if isinstance(classifier, Backbone) else classifier.backbone
        if prototype is not None and (
            not isinstance(prototype, Tensor) or prototype.shape[-1] != backbone.hidden_size
        ):
            raise VfmxaiError(
                "method 'daam': option prototype must be a tensor (D,) or (B, D)"
                f" with D = {backbone.hidden_size}"
            )
        if mode == "self_supervised":
            classifier = EmbeddingScore(backbone, prototype, memory_bank, k)
        super().__init__(classifier, target)
        self.mode = mode

    def _targets(self, images: Tensor, targets: Tensor | None) -> Tensor:
        """Self-supervised mode ignores targets: the one output of `EmbeddingScore`."""
        if self.mode == "self_supervised":
            return torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        return super()._targets(images, targets)

    def explain_blocks(self, images: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(per_block (B, k, h, w), accumulated (B, k, h, w)) on the patch grid, raw (before display scaling);
        accumulated[:, b] = Σ_{i ≤ b} per_block[:, i]."""
        images = self._check_images(images)
        return self._blocks(images, self._targets(images, targets))

    def _blocks(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        backbone = self.classifier.backbone
        with torch.enable_grad():
            images = images.detach().requires_grad_(True)
            logits, records = forward_recorded(self.classifier, images, self.name)
            contexts = [r.context for r in records]
            grads = torch.autograd.grad(self.score(logits, targets).sum(), contexts, allow_unused=True)
        maps = []
        for record, grad in zip(records, grads, strict=True):
            pooled_attention = class_row(record.weights.detach(), backbone).float()  # (B, heads, T)
            features = pooled_attention.unsqueeze(-1) * record.value.detach().float()  # (B, heads, T, head_dim)
            features = features.transpose(1, 2).flatten(2)  # (B, T, D), channel = head * head_dim + d
            weight = torch.zeros_like(features[:, 0]) if grad is None else self._pooled_gradient(grad, backbone)
            if self.mode == "supervised":
                weight = weight.clamp_min(0)
            maps.append(backbone.patch_grid((features * weight.unsqueeze(1)).sum(-1).clamp_min(0), images.shape[-2:]))
        per_block = torch.stack(maps, dim=1)
        return per_block, per_block.cumsum(dim=1)

    @staticmethod
    def _pooled_gradient(grad: Tensor, backbone: Backbone) -> Tensor:
        """∂score/∂o of the decomposed token (B, D) from the gradient at every token's attention output."""
        if backbone.has_class_token:
            return grad[:, 0].flatten(1).float()
        return grad[:, backbone.num_prefix_tokens :].sum(dim=1).flatten(1).float()

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        return self._blocks(images, targets)[1][:, -1]
