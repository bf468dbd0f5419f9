"""Cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018, §3.1): a classifier's parts in the
order they are re-initialised, from the head down, and the re-initialisation itself.

The cascade (`randomisation_steps`):
  1. `head`: every part of the classifier above the backbone (a probe's linear head; ALA's former, f1, f2 and
     perception branch);
  2. `final_norm`: the norm the pooled token goes through after the last block (CLIP's post_layernorm,
     DINOv2's layernorm), where the family has one;
  3. `block k` ... `block 1`: the backbone's blocks, top down, one per step;
  4. `embeddings`: everything of the backbone below block 1 — patch embedding, CLIP's pre-norm, and the raw
     parameters Quantus's MPRT skips because they belong to no layer with weights: position embeddings,
     class token, register tokens, mask token.
Each step adds to the ones before (cascading), on a deep copy: the caller's model is never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vfmxai.classifier import Classifier

RAW_STD = 0.02
"""The spread a raw parameter with none of its own (a zero-initialised mask token) is redrawn with: ViT's
truncated-normal init of its tokens."""


@dataclass(frozen=True)
class RandomisationStep:
    """One step of the cascade: its name, and the modules it re-initialises (names in `classifier.named_modules()`)."""

    name: str
    modules: tuple[str, ...]


def randomisation_steps(classifier: Classifier) -> list[RandomisationStep]:
    """The cascade of `classifier`, from the head down (module docstring)."""
    backbone = classifier.backbone
    steps = []
    head = tuple(name for name, _ in classifier.named_children() if name != "backbone")
    if head:
        steps.append(RandomisationStep("head", head))
    root = "backbone.model"
    norm_path = backbone.spec.final_norm_path
    if norm_path is not None:
        steps.append(RandomisationStep("final_norm", (f"{root}.{norm_path}",)))
    for index in reversed(range(backbone.num_blocks)):
        steps.append(RandomisationStep(f"block {index + 1}", (f"{root}.{backbone.blocks_path}.{index}",)))
    kept = {backbone.blocks_path, *([norm_path] if norm_path else [])}
    steps.append(RandomisationStep("embeddings", tuple(f"{root}.{p}" for p in _rest(backbone.model, kept))))
    return steps


def _rest(module: nn.Module, kept: set[str], prefix: str = "") -> list[str]:
    """Paths of the submodules of `module` that are neither a path in `kept` nor inside one nor an ancestor of one
    (whose other children are searched in turn): what remains of a backbone without its blocks and final norm."""
    found = []
    for name, _ in module.named_children():
        path = f"{prefix}{name}"
        if path in kept:
            continue
        if any(k.startswith(path + ".") for k in kept):
            found += _rest(getattr(module, name), kept, path + ".")
        else:
            found.append(path)
    return found


def reinitialise_(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every parameter of `module` in place, seeded by `generator` (CPU).

    A submodule with `reset_parameters` (linear, convolution, norms) draws its own init again; every other
    parameter — embedding tables, position embeddings, class, register and mask tokens, layer scales,
    attention's packed in-projection — is redrawn from a normal with that parameter's own mean and std
    (`RAW_STD` where it has no spread), so it keeps its scale and loses what it learnt.
    """
    seed = int(torch.randint(2**62, (1,), generator=generator))
    cuda = sorted({p.get_device() for p in module.parameters() if p.is_cuda})
    with torch.no_grad(), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for sub in module.modules():
            if callable(getattr(sub, "reset_parameters", None)) and not isinstance(sub, nn.Embedding):
                sub.reset_parameters()
                continue
            for parameter in sub.parameters(recurse=False):
                parameter.copy_(_redrawn(parameter, generator))


def _redrawn(parameter: Tensor, generator: torch.Generator) -> Tensor:
    values = parameter.detach().float()
    mean = values.mean()
    std = values.std() if values.numel() > 1 else values.new_zeros(())
    std = torch.where(std > 0, std, RAW_STD)
    noise = torch.randn(parameter.shape, generator=generator).to(values.device)
    return mean + std * noise


def cascade(classifier: Classifier, seed: int) -> Iterator[tuple[RandomisationStep, Classifier]]:
    """(step, a deep copy of `classifier` with this and every earlier step re-initialised), step by step; one
    copy for the whole cascade, seeded by `seed`, in eval mode."""
    model = copy.deepcopy(classifier).eval()
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    for step in randomisation_steps(model):
        for name in step.modules:
            reinitialise_(modules[name], generator)
        yield step, model
