"""Tiny models shared by the explainer tests (gradient/CAM/RISE and the attention-based methods).

- `tiny_probe()`: a `LinearProbe` on the random `tiny` CLIP backbone (4 blocks, width 32, 32 px, 4x4 patches).
- `planted_images(n, seed)`: images whose class is decided by ONE region only. A 16x16 square (2x2 patches,
  aligned to the 8-px patch grid, at one of 9 positions) is reddish for class 0, bluish for class 1
  (random brightness); the rest is a dark grey field with grey noise that carries no class signal. The
  square's mask is returned, so a method's map can be scored against the evidence.
- `planted_classifier()`: a `LinearProbe` on the tiny backbone, trained end to end on `planted_images`
  (about a second on CPU, cached per process, deterministic, parameters frozen) to 100 % accuracy.
  Two choices make "the evidence is the square" true of the model and not only of the data:
  a quarter of the training images have no square and the soft target (1/2, 1/2), so that neither class
  is the default (otherwise the model learns "red -> 0, anything else -> 1" and class 1 rests on
  nothing); and the head is antisymmetric (logit_1 = -logit_0, kept so by training since the two
  classes' gradients are opposite), so the target logit has no class-common part (a 2-class softmax
  leaves logit_0 + logit_1 untrained, at its random init, and a method that explains the raw logit
  would explain that random part).
- `evidence_auc(maps, masks)`: per image, the probability that a pixel inside the evidence outranks one
  outside (ROC AUC; 0.5 = chance, 1 = every evidence pixel above every other pixel).
- `mass_inside(maps, masks)`: each map's share of its mass inside the mask (chance = the mask's area, 1/4).
- `hook_snapshot(model)`: every hook on every module, to show an explainer leaves none behind.
- `randomization_check(method, classifier, images)`: the model-randomisation sanity check (Adebayo et al.
  2018): mean Spearman rank correlation between a method's maps before and after re-initialising the head
  and the last blocks. A method that explains the model gives a low number; one that only reflects the
  image (an edge detector) stays near 1.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr
from torch import Tensor, nn

from vfmxai.backbones import load_backbone
from vfmxai.classifier import Classifier, LinearProbe
from vfmxai.explainers import get

IMAGE_SIZE = 32
OBJECT_SIZE = 16
POSITIONS = (0, 8, 16)
PATCH = 8
CLASS_COLOURS = ((0.3, 0.0, -0.3), (-0.3, 0.0, 0.3))
DISTRACTOR_COLOUR = (-0.15, 0.3, -0.15)


def tiny_probe(num_classes: int = 3, seed: int = 0) -> LinearProbe:
    """A LinearProbe on the random tiny CLIP backbone, head initialised from `seed`; eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(load_backbone("tiny", seed=seed), num_classes)
    return probe.eval()


def planted_images(n: int, seed: int = 0, with_object: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """(images (n, 3, 32, 32) in [0, 1], labels (n,) in {0, 1}, masks (n, 32, 32) bool of the evidence).

    Each image also holds a greenish 8x8 distractor on one patch outside the square (no class signal).
    `with_object=False` leaves the square out (labels and masks are still drawn)."""
    gen = torch.Generator().manual_seed(seed)
    grey = (0.1 + 0.03 * torch.randn(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen)).clamp(0, 1)
    labels = torch.randint(0, 2, (n,), generator=gen)
    pos = torch.tensor(POSITIONS)
    rows = pos[torch.randint(0, len(POSITIONS), (n,), generator=gen)]
    cols = pos[torch.randint(0, len(POSITIONS), (n,), generator=gen)]
    brightness = 0.5 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
    masks = _squares(rows, cols, OBJECT_SIZE)
    grid = IMAGE_SIZE // PATCH
    free = ~masks[:, ::PATCH, ::PATCH].flatten(1)
    spot = torch.where(free, torch.rand(n, grid * grid, generator=gen), -1.0).argmax(dim=1)
    distractor = _squares(spot // grid * PATCH, spot % grid * PATCH, PATCH)
    colour = (brightness + torch.tensor(CLASS_COLOURS)[labels].view(n, 3, 1, 1)).clamp(0, 1)
    green = (brightness + torch.tensor(DISTRACTOR_COLOUR).view(1, 3, 1, 1)).clamp(0, 1)
    images = grey.expand(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    images = torch.where(distractor.unsqueeze(1), green.expand_as(images), images)
    if with_object:
        images = torch.where(masks.unsqueeze(1), colour.expand_as(images), images)
    return images.contiguous(), labels, masks


def _squares(rows: Tensor, cols: Tensor, size: int) -> Tensor:
    """(n, 32, 32) bool: a size x size square at each (row, col)."""
    ys = torch.arange(IMAGE_SIZE)
    in_rows = (ys.view(1, -1) >= rows.view(-1, 1)) & (ys.view(1, -1) < rows.view(-1, 1) + size)
    in_cols = (ys.view(1, -1) >= cols.view(-1, 1)) & (ys.view(1, -1) < cols.view(-1, 1) + size)
    return in_rows.unsqueeze(2) & in_cols.unsqueeze(1)


class PatchMeanProbe(Classifier):
    """logits = W LayerNorm(mean of h^(k)'s patch tokens) + b: a head that reads the patch-token grid, as the
    ALA perception branch does (Grad-CAM's setting: CAM for a global-average-pooled linear head)."""

    def __init__(self, backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(backbone.hidden_size)
        self.head = nn.Linear(backbone.hidden_size, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        last = self.backbone(images).hidden_states[-1]
        return self.head(self.norm(last[:, self.backbone.num_prefix_tokens :].mean(dim=1)))


def planted_classifier(seed: int = 0, steps: int = 60, head: str = "class_token") -> Classifier:
    """A classifier (tiny backbone, all weights trained) of `planted_images` by the coloured square.

    `head="class_token"`: a `LinearProbe`; `head="patch_mean"`: a `PatchMeanProbe`.
    Cached: every test in the process shares one trained model. Do not modify it in place; deep-copy first.
    """
    return _train_planted(seed, steps, head)


@functools.cache
def _train_planted(seed: int, steps: int, head: str) -> Classifier:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a loaded 2-core machine, 2 intra-op threads make this 30x slower
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = load_backbone("tiny", seed=seed)
            model = LinearProbe(backbone, 2) if head == "class_token" else PatchMeanProbe(backbone, 2)
        with torch.no_grad():
            model.head.weight[1] = -model.head.weight[0]
            model.head.bias[1] = -model.head.bias[0]
        model.train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
        for step in range(steps):
            batch_seed = 10_000 * (seed + 1) + step
            images, labels, _ = planted_images(64, seed=batch_seed)
            empty_images, _, _ = planted_images(16, seed=batch_seed, with_object=False)
            images = torch.cat([images, empty_images])
            targets = torch.cat([nn.functional.one_hot(labels, 2).float(), torch.full((16, 2), 0.5)])
            loss = nn.functional.cross_entropy(model(images), targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval().requires_grad_(False)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(dim=1) == labels).float().mean().item()


def evidence_auc(maps: Tensor, masks: Tensor) -> Tensor:
    """(B, H, W) maps, (B, H, W) bool masks -> (B,) ROC AUC of the map as a detector of the mask (ties: 1/2)."""
    out = []
    for values, inside in zip(maps.flatten(1).numpy(), masks.flatten(1).numpy(), strict=True):
        ranks = rankdata(values)
        n_in, n_out = inside.sum(), inside.size - inside.sum()
        out.append((ranks[inside].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))
    return torch.tensor(out)


def mass_inside(maps: Tensor, masks: Tensor) -> Tensor:
    """(B, H, W) non-negative maps, (B, H, W) bool masks -> (B,) share of each map's mass inside its mask."""
    maps = maps.clamp_min(0).flatten(1)
    return (maps * masks.flatten(1)).sum(1) / maps.sum(1).clamp_min(1e-12)


def randomized_copy(classifier: Classifier, n_blocks: int = 2, seed: int = 0) -> Classifier:
    """A deep copy with the head and last `n_blocks` blocks re-initialised (cascading randomisation)."""
    model = copy.deepcopy(classifier)
    blocks = list(model.backbone.blocks)[-n_blocks:] if n_blocks else []
    heads = [m for name, m in model.named_children() if name != "backbone"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part in heads + blocks:
            for module in part.modules():
                if isinstance(module, nn.Linear | nn.LayerNorm | nn.Conv2d):
                    module.reset_parameters()
    return model.eval()


def randomization_check(method: str, classifier: Classifier, images: Tensor, n_blocks: int = 2, **options) -> float:
    """Mean over images of the Spearman rank correlation between `method`'s maps on `classifier` and on
    its `randomized_copy` (same targets: the original model's predictions). A constant map has no ranks:
    its correlation counts as 0."""
    with torch.no_grad():
        targets = classifier(images).argmax(dim=1)
    with get(method, classifier, **options) as explainer:
        before = explainer(images, targets)
    with get(method, randomized_copy(classifier, n_blocks), **options) as explainer:
        after = explainer(images, targets)
    pairs = zip(before.flatten(1).numpy(), after.flatten(1).numpy(), strict=True)
    rhos = [spearmanr(a, b).statistic for a, b in pairs]
    return float(np.nan_to_num(np.asarray(rhos, dtype=float), nan=0.0).mean())


def hook_snapshot(model: nn.Module) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The ids of every forward, forward-pre, backward and backward-pre hook on every module of `model`.

    transformers installs its own output-recording forward hooks on a model's first forward and keeps
    them, so "no hooks left" means: the same hooks as before the explainer, taken after one forward."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return {name: tuple(tuple(getattr(m, k)) for k in kinds) for name, m in model.named_modules()}
