"""Masking methods made for ViTs: ViT-ReciproCAM (`vit_reciprocam`), Transformer Input Sampling (`tis`) and ViT-CX
(`vit_cx`). Each scores masked copies of the input, batched (`base.index_chunks`, `batch_size` copies per pass), by
the target's softmax probability, as all three papers do.

Hidden states follow `Backbone`'s numbering (h^(0) the input to block 1, h^(i) the output of block i; option
`layer` = i, negative values counted from the end). Prefix tokens (class token, registers) are never masked;
`Backbone.patch_grid` lays the patch tokens on the input's grid, so a non-square input works.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from vfmxai.backbones import Backbone
from vfmxai.classifier import Classifier
from vfmxai.errors import VfmxaiError
from vfmxai.explainers.base import Explainer, check_positive, index_chunks, register
from vfmxai.explainers.cam import resolve_layer
from vfmxai.targets import ClassProbability, Target

GAUSSIAN_3X3 = ((1 / 16, 1 / 8, 1 / 16), (1 / 8, 1 / 4, 1 / 8), (1 / 16, 1 / 8, 1 / 16))
"""ViT-ReciproCAM's neighbourhood weights (Byun & Lee 2023): the token 1/4, its 4-neighbours 1/8, corners 1/16."""
TIS_SAMPLERS = ("activations", "random")
KMEANS_STEPS = 10
"""Lloyd iterations of `kmeans` after its deterministic farthest-point start."""


@contextlib.contextmanager
def replaced_state(backbone: Backbone, layer: int, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Inside the `with`, h^(layer) becomes fn(h^(layer)) in every forward (h^(0): block 1's input; else block
    `layer`'s output), so the blocks after it and the head read the replacement."""
    blocks = backbone.blocks
    if layer == 0:
        handle = blocks[0].register_forward_pre_hook(lambda module, args: (fn(args[0]), *args[1:]), prepend=True)
    else:
        handle = blocks[layer - 1].register_forward_hook(lambda module, args, output: fn(output), prepend=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def blocks_on_rows(backbone: Backbone, layer: int, rows: Tensor, inverse: Tensor) -> Iterator[None]:
    """Inside the `with`, blocks 1..`layer` compute on their input's rows `rows` alone, and row i of each one's
    output is row inverse[i] of that result: for a batch whose rows share h^(0..layer-1) by groups (masked copies
    of one image), the blocks before a replaced h^(layer) then cost one row per group, and every hidden state
    the head reads is the one a full pass gives. The blocks' `forward` is wrapped rather than hooked: a forward
    hook runs after the block's computation, and transformers records h^(0) as block 1's input, which a
    pre-hook cutting the rows would cut too."""
    blocks = [backbone.blocks[j] for j in range(layer)]

    def on_rows(forward: Callable[..., Tensor]) -> Callable[..., Tensor]:
        return lambda hidden, *args, **kwargs: forward(hidden[rows], *args, **kwargs)[inverse]

    try:
        for block in blocks:
            block.forward = on_rows(block.forward)
        yield
    finally:
        for block in blocks:
            vars(block).pop("forward", None)


def recorded_states(
    classifier: Classifier, images: Tensor, layers: list[int], full_precision: bool = False
) -> list[Tensor]:
    """h^(i) (B, T, D) for each i of `layers`, from one forward of `classifier`; `full_precision`: in float32
    even under bf16 autocast (what TIS and ViT-CX cluster: a discrete clustering would flip with the precision)."""
    kept: dict[int, Tensor] = {}
    with contextlib.ExitStack() as stack:
        if full_precision:
            stack.enter_context(torch.autocast(images.device.type, enabled=False))
        for i in layers:
            stack.enter_context(replaced_state(classifier.backbone, i, lambda s, i=i: kept.setdefault(i, s)))
        classifier(images)
    return [kept[i] for i in layers]


def gaussian_token_masks(rows: int, cols: int, device: torch.device) -> Tensor:
    """(N, N) weights, N = rows·cols: row j = the 3x3 `GAUSSIAN_3X3` neighbourhood centred on patch j, cut at the
    grid's border (a 3x3 convolution of one-hot maps, zero padding)."""
    n = rows * cols
    one_hot = torch.eye(n, device=device).view(n, 1, rows, cols)
    kernel = torch.tensor(GAUSSIAN_3X3, device=device).view(1, 1, 3, 3)
    return F.conv2d(one_hot, kernel, padding=1).view(n, n)


@register("vit_reciprocam")
class ViTReciproCAM(Explainer):
    """ViT-ReciproCAM (Byun & Lee, arXiv 2310.02588, 2023): gradient- and attention-free.

    For every patch token j, a copy of h^(layer) keeps the prefix tokens and, of the patch tokens, only the 3x3
    Gaussian neighbourhood of j (`GAUSSIAN_3X3`, weights 1/4 on j; the others zero); the copies go through the
    rest of the network, and map(j) = p_t(copy j), the softmax probability of the target. `layer` defaults to -3,
    h^(k-2), the input of the second-to-last block (the authors' default `block_index=-2`); the authors mask the
    layer-normed input of that block's attention, vfmxai the block's input itself (the residual stream), so
    masked tokens are absent from every later computation. `gaussian=False` keeps token j alone, at weight 1.
    Cost: N passes per image (N patch tokens), `batch_size` copies per pass; the blocks before h^(layer) run
    once per image of a pass (`blocks_on_rows`), not once per copy.
    """

    display_name = "ViT-ReciproCAM"
    default_target = ClassProbability()

    def __init__(
        self, classifier: Classifier, layer: int = -3, gaussian: bool = True, batch_size: int = 64,
        target: Target | None = None,
    ):
        super().__init__(classifier, target)
        check_positive("vit_reciprocam", batch_size=batch_size)
        self.layer = resolve_layer("vit_reciprocam", layer, self.classifier.backbone.num_blocks)
        self.gaussian = bool(gaussian)
        self.batch_size = batch_size

    @torch.no_grad()
    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        backbone = self.classifier.backbone
        b, _, h, w = images.shape
        rows, cols = backbone.grid_shape((h, w))
        n, prefix = rows * cols, backbone.num_prefix_tokens
        (state,) = recorded_states(self.classifier, images, [self.layer])
        eye = torch.eye(n, device=images.device)
        weights = gaussian_token_masks(rows, cols, images.device) if self.gaussian else eye
        weights = torch.cat([torch.ones(n, prefix, device=images.device), weights], dim=1).to(state.dtype)
        scores = torch.zeros(b, n, device=images.device)
        for image, token in index_chunks(b, n, self.batch_size, images.device):
            masked = state[image] * weights[token].unsqueeze(-1)
            _, inverse, counts = image.unique_consecutive(return_inverse=True, return_counts=True)
            first = counts.cumsum(0) - counts  # the first copy of each image: the row blocks 1..layer compute
            with (blocks_on_rows(backbone, self.layer, first, inverse),
                  replaced_state(backbone, self.layer, lambda _, masked=masked: masked)):
                logits = self.classifier(images[image])
            scores[image, token] = self.score(logits, targets[image])
        return scores.view(b, rows, cols)


def kmeans(points: Tensor, k: int, cosine: bool) -> tuple[Tensor, Tensor]:
    """Batched k-means: points (B, P, F) -> (centres (B, k, F), labels (B, P)), k <= P.

    Start: farthest-point (the point farthest from the mean, then repeatedly the point farthest from every chosen
    centre), deterministic, so an image's clusters do not depend on its batch. Then `KMEANS_STEPS` Lloyd steps; an
    empty cluster keeps its centre. `cosine=True`: spherical k-means on the unit-normalised points, distance
    1 - cos, centres renormalised."""
    if cosine:
        points = F.normalize(points, dim=-1)
    b, p, _ = points.shape

    def distances(centres: Tensor) -> Tensor:  # (B, P, k)
        if cosine:
            return 1 - points @ centres.transpose(1, 2)
        return torch.cdist(points, centres)

    batch = torch.arange(b, device=points.device)
    first = distances(points.mean(dim=1, keepdim=True)).squeeze(-1).argmax(dim=1)
    chosen = [first]
    nearest = distances(points[batch, first].unsqueeze(1)).squeeze(-1)
    for _ in range(k - 1):
        nxt = nearest.argmax(dim=1)
        chosen.append(nxt)
        nearest = torch.minimum(nearest, distances(points[batch, nxt].unsqueeze(1)).squeeze(-1))
    centres = points[batch.unsqueeze(1), torch.stack(chosen, dim=1)]
    for _ in range(KMEANS_STEPS):
        labels = distances(centres).argmin(dim=2)
        members = F.one_hot(labels, k).to(points.dtype).transpose(1, 2)  # (B, k, P)
        counts = members.sum(dim=2, keepdim=True)
        means = (members @ points) / counts.clamp_min(1)
        if cosine:
            means = F.normalize(means, dim=-1)
        centres = torch.where(counts > 0, means, centres)
    return centres, distances(centres).argmin(dim=2)


@register("tis")
class TIS(Explainer):
    """Transformer Input Sampling (Englebert, Stassin, Nanfack, Mahmoudi, Siebert, Cornu & De Vleeschouwer,
    ICCV 2023 workshops): token masks from the model's own activations, applied by removing tokens.

    Masks: the activation channels of every block's output h^(1..k), each a vector over the N patch tokens
    (k·D points per image), clustered by k-means into `n_masks` clusters (euclidean, as the authors; at most k·D;
    `kmeans`, deterministic); each centroid keeps its `keep_ratio`·N highest tokens (a binary mask M_m). Each
    masked copy drops the other patch tokens from the sequence entering block 1 (after the position embeddings;
    prefix tokens kept), so no pixel is changed. S = Σ_m p_t(x; M_m) M_m / Σ_m M_m, the softmax probabilities
    weighted by the masks over each token's coverage (a token no mask keeps scores 0). The authors' code
    defaults: 1024 masks, keep ratio 0.5 (their ImageNet benchmark: 2048, 0.25). `sampler="random"` replaces the
    activation clustering by `n_masks` uniform random subsets of `keep_ratio`·N tokens, drawn from `seed` and the
    same for every image of a call (a model-independent sampler, RISE's idea with token removal; not the paper's).
    Only for a classifier whose output is defined for any number of tokens (`Classifier.any_token_count`: a
    linear probe on the pooled token); a head that reads the patch grid (ALA) has no reading of a shorter
    sequence.
    """

    display_name = "TIS"
    default_target = ClassProbability()

    def __init__(
        self,
        classifier: Classifier,
        n_masks: int = 1024,
        keep_ratio: float = 0.5,
        sampler: str = "activations",
        batch_size: int = 64,
        seed: int = 0,
        target: Target | None = None,
    ):
        super().__init__(classifier, target)
        check_positive("tis", n_masks=n_masks, batch_size=batch_size)
        if not 0 < keep_ratio <= 1:
            raise VfmxaiError(f"method 'tis': option keep_ratio={keep_ratio} must lie in (0, 1]")
        if sampler not in TIS_SAMPLERS:
            raise VfmxaiError(f"method 'tis': option sampler must be one of {'|'.join(TIS_SAMPLERS)}, got {sampler!r}")
        self.n_masks = n_masks
        self.keep_ratio = float(keep_ratio)
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = int(seed)

    @classmethod
    def inapplicable(cls, classifier: Classifier) -> str | None:
        if getattr(classifier, "any_token_count", False):
            return None
        return (
            f"TIS removes tokens, and {type(classifier).__name__} reads the full patch grid"
            " (needs a classifier with any_token_count, e.g. a LinearProbe)"
        )

    @torch.no_grad()
    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        reason = self.inapplicable(self.classifier)
        if reason:
            raise VfmxaiError(f"method 'tis': {reason}")
        backbone = self.classifier.backbone
        b, _, h, w = images.shape
        rows, cols = backbone.grid_shape((h, w))
        n, prefix = rows * cols, backbone.num_prefix_tokens
        n_keep = max(1, int(self.keep_ratio * n))
        kept = self.random_masks(b, n, n_keep, images.device) if self.sampler == "random" else None
        if kept is None:
            layers = list(range(1, backbone.num_blocks + 1))
            states = recorded_states(self.classifier, images, layers, full_precision=True)
            channels = torch.cat([s[:, prefix:].float() for s in states], dim=2).transpose(1, 2)  # (B, k·D, N)
            centres, _ = kmeans(channels, min(self.n_masks, channels.shape[1]), cosine=False)
            kept = centres.topk(n_keep, dim=2).indices  # (B, M, n_keep)
        m = kept.shape[1]
        masks = torch.zeros(b, m, n, device=images.device).scatter_(2, kept, 1.0)
        saliency = torch.zeros(b, n, device=images.device)
        for image, mask in index_chunks(b, m, self.batch_size, images.device):
            tokens = torch.cat([torch.arange(prefix, device=images.device).expand(len(image), -1),
                                prefix + kept[image, mask]], dim=1)

            def drop(state: Tensor, tokens: Tensor = tokens) -> Tensor:
                return state.gather(1, tokens.unsqueeze(-1).expand(-1, -1, state.shape[-1]))

            with replaced_state(backbone, 0, drop):
                probs = self.score(self.classifier(images[image]), targets[image])
            saliency.index_add_(0, image, probs.unsqueeze(1) * masks[image, mask])
        coverage = masks.sum(dim=1)
        return (saliency / coverage.clamp_min(1)).view(b, rows, cols)

    def random_masks(self, b: int, n: int, n_keep: int, device: torch.device) -> Tensor:
        """(B, n_masks, n_keep) token indices: uniform subsets drawn on the CPU from `seed`, shared by the images."""
        generator = torch.Generator().manual_seed(self.seed)
        kept = torch.rand(self.n_masks, n, generator=generator).argsort(dim=1)[:, :n_keep]
        return kept.to(device).expand(b, -1, -1)


@register("vit_cx")
class ViTCX(Explainer):
    """ViT-CX (Xie, Li, Cao & Zhang, IJCAI 2023): causal impact of masks made from the patch embeddings.

    Masks: the D channel maps of h^(layer)'s patch tokens (default -2: h^(k-1), the last block's input; the authors
    read its layer-normed version, `blocks[-1].norm1`), each min-max normalised, are clustered by cosine
    similarity (the authors: agglomerative clustering at distance 0.1, a number of masks that varies per image;
    here spherical `kmeans` into a fixed `n_masks`, at most D, so the cost is known); a mask is the sum of its
    cluster's maps, upsampled bilinearly to the image and min-max normalised (M in [0, 1]). Causal impact score,
    with the authors' noise correction:
        s_m = p_t(x ⊙ M_m + (1 - M_m) ⊙ ε_m) - p_t(x + (1 - M_m) ⊙ ε_m) + p_t(x),
    ε_m ~ N(0, `noise`²) per pixel and channel (0.1, the authors'; they add it to the normalised image, so removed
    pixels become the mean colour plus noise; here pixels in [0, 1], removed pixels become black plus noise, as
    RISE's; drawn from `seed`, the same for every image of a call): the second term takes out what the noise
    alone does. Density (pixel coverage) correction: S = Σ_m s_m M_m / Σ_m M_m (the authors' further 1/N is a
    constant). Cost: 2·n_masks + 1 passes per image; `batch_size` images per pass. The masks come from a float32
    forward (under bf16 autocast too), as do TIS's.
    """

    display_name = "ViT-CX"
    default_target = ClassProbability()

    def __init__(
        self, classifier: Classifier, layer: int = -2, n_masks: int = 64, noise: float = 0.1, batch_size: int = 64,
        seed: int = 0, target: Target | None = None,
    ):
        super().__init__(classifier, target)
        check_positive("vit_cx", n_masks=n_masks, batch_size=batch_size)
        if not noise >= 0:
            raise VfmxaiError(f"method 'vit_cx': option noise={noise} must be >= 0")
        self.layer = resolve_layer("vit_cx", layer, self.classifier.backbone.num_blocks)
        self.n_masks = n_masks
        self.noise = float(noise)
        self.batch_size = batch_size
        self.seed = int(seed)

    @torch.no_grad()
    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        backbone = self.classifier.backbone
        b, _, h, w = images.shape
        (state,) = recorded_states(self.classifier, images, [self.layer], full_precision=True)
        grid = backbone.patch_grid(state, (h, w)).float()
        maps = min_max(grid.flatten(2))  # (B, D, N)
        k = min(self.n_masks, maps.shape[1])
        _, labels = kmeans(maps, k, cosine=True)
        clusters = F.one_hot(labels, k).float().transpose(1, 2) @ maps  # (B, k, N): each cluster's maps summed
        upsampled = F.interpolate(clusters.view(b, k, *grid.shape[-2:]), size=(h, w), mode="bilinear",
                                  align_corners=False)
        masks = min_max(upsampled.flatten(2)).view(b, k, h, w)
        generator = torch.Generator().manual_seed(self.seed)
        noise = (self.noise * torch.randn(k, 3, h, w, generator=generator)).to(images.device)
        clean = self.score(self.classifier(images), targets)
        saliency = torch.zeros(b, h, w, device=images.device)
        for image, mask in index_chunks(b, k, max(1, self.batch_size // 2), images.device):
            m = masks[image, mask].unsqueeze(1)
            removed = (1 - m) * noise[mask]
            pairs = torch.cat([images[image] * m + removed, images[image] + removed]).to(images.dtype)
            masked, noisy = self.score(self.classifier(pairs), targets[image].repeat(2)).chunk(2)
            score = masked - noisy + clean[image]
            saliency.index_add_(0, image, score.view(-1, 1, 1) * m.squeeze(1))
        return saliency / masks.sum(dim=1).clamp_min(1e-6)


def min_max(values: Tensor) -> Tensor:
    """Each row of (..., F) scaled to [0, 1]; a constant row becomes 0."""
    low = values.amin(dim=-1, keepdim=True)
    span = values.amax(dim=-1, keepdim=True) - low
    return torch.where(span > 0, (values - low) / span.clamp_min(1e-12), torch.zeros_like(values))
