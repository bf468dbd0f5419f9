"""The one interface every explanation method fills in.

`Explainer(classifier, **options)(images, targets) -> maps (B, H, W)` in [0, 1] at the input size.
A method subclasses `Explainer` and fills in one hook, `attribute(images, targets) -> raw (B, h, w)`
at any resolution; the base validates the input, picks the predicted class when `targets` is None,
rejects non-finite maps (VfmxaiError naming the method and the image indices), upsamples bilinearly
and min-max normalises per image; a constant or all-zero map, which ranks no pixel above another,
becomes all zeros. Forward/backward hooks are registered through `self.hook(...)` and released by
`close()` / leaving the `with` block.

Also here, the mechanics several methods share: the target's score (`target_logits`,
`target_probabilities`), extra forward passes in chunks (`index_chunks`), and which modules are
element-wise activations (`ACTIVATIONS`, rewritten by Guided BP and LRP).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import activations as hf_activations

from vfmxai.classifier import Classifier
from vfmxai.errors import VfmxaiError
from vfmxai.maps import normalize_maps, resize_maps

_REGISTRY: dict[str, type[Explainer]] = {}


def register(name: str) -> Callable[[type[Explainer]], type[Explainer]]:
    def add(cls: type[Explainer]) -> type[Explainer]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def available() -> list[str]:
    return sorted(_REGISTRY)


def default_options(name: str) -> dict[str, Any]:
    """The keyword options of method `name` with their defaults (so a run can record what it used)."""
    if name not in _REGISTRY:
        raise VfmxaiError(f"unknown method '{name}' (available: {', '.join(available())})")
    parameters = list(inspect.signature(_REGISTRY[name].__init__).parameters.values())[2:]
    return {
        p.name: p.default
        for p in parameters
        if p.default is not inspect.Parameter.empty and isinstance(p.default, (bool, int, float, str, type(None)))
    }


def check_options(name: str, options: dict[str, Any]) -> None:
    """VfmxaiError (one line) for an option method `name` does not take, or a value whose type differs from its
    default's (an int where a float is expected is fine): checked before any work, so a typo never costs a run."""
    if name not in _REGISTRY:
        raise VfmxaiError(f"unknown method '{name}' (available: {', '.join(available())})")
    parameters = dict(list(inspect.signature(_REGISTRY[name].__init__).parameters.items())[2:])
    for option, value in options.items():
        if option not in parameters:
            raise VfmxaiError(f"method '{name}': unknown option '{option}' (options: {', '.join(parameters)})")
        default = parameters[option].default
        if default is None or default is inspect.Parameter.empty:
            continue
        if isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default)) and isinstance(value, bool) == isinstance(default, bool)
        if not ok:
            raise VfmxaiError(
                f"method '{name}': option {option}={value!r} must be of type {type(default).__name__}, "
                f"like its default {default!r}"
            )


def display_name(name: str) -> str:
    """Method `name` as tables and figures show it: its class's `display_name`, else the key itself."""
    cls = _REGISTRY.get(name)
    return (cls.display_name if cls is not None else "") or name


def unit_range(name: str) -> bool:
    """Whether method `name` declares raw maps on a fixed [0, 1] scale (`Explainer.unit_range`)."""
    return bool(_REGISTRY[name].unit_range) if name in _REGISTRY else False


def inapplicable(name: str, classifier: Classifier) -> str | None:
    """Why method `name` cannot explain `classifier` (`Explainer.inapplicable`), or None when it can."""
    if name not in _REGISTRY:
        raise VfmxaiError(f"unknown method '{name}' (available: {', '.join(available())})")
    return _REGISTRY[name].inapplicable(classifier)


def get(name: str, classifier: Classifier, **options: Any) -> Explainer:
    """The explainer registered as `name`, bound to `classifier`."""
    if name not in _REGISTRY:
        raise VfmxaiError(f"unknown method '{name}' (available: {', '.join(available())})")
    return _REGISTRY[name](classifier, **options)


class Explainer:
    name: str = "base"
    display_name: str = ""
    """The method's name in tables and figures ("" = its registry key)."""
    unit_range: bool = False
    """True when `attribute` returns values on a fixed [0, 1] scale (ALA's sigmoid map), so a raw threshold
    means the same on every image."""

    def __init__(self, classifier: Classifier):
        self.classifier = classifier
        self._handles: list[RemovableHandle] = []

    @classmethod
    def inapplicable(cls, classifier: Classifier) -> str | None:
        """Why this method cannot explain `classifier` (one line), or None when it can (every method but those
        whose definition needs something of the model, e.g. TIS a head that reads any number of tokens)."""
        return None

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        """Raw relevance (B, h, w) of each image for its target class; larger = more important."""
        raise NotImplementedError

    def __call__(self, images: Tensor, targets: Tensor | None = None, normalize: bool = True) -> Tensor:
        """Maps (B, H, W) at the input size, min-max normalised per image; `normalize=False` keeps the
        method's own scale (for a raw threshold on a map with a fixed range, such as ALA's alpha)."""
        images = self._check_images(images)
        targets = self._targets(images, targets)
        raw = self.attribute(images, targets).detach().float()
        bad = ~torch.isfinite(raw.flatten(1)).all(dim=1)
        if bad.any():
            raise VfmxaiError(
                f"method '{self.name}' produced a NaN or infinite map for image(s) {bad.nonzero().flatten().tolist()}"
            )
        resized = resize_maps(raw, tuple(images.shape[-2:]))
        return normalize_maps(resized) if normalize else resized

    def _check_images(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise VfmxaiError(f"method '{self.name}': images must be a (B, 3, H, W) tensor, got {shape}")
        return images.float()

    def _targets(self, images: Tensor, targets: Tensor | None) -> Tensor:
        if targets is None:
            with torch.no_grad():
                return self.classifier(images).argmax(dim=1)
        targets = torch.as_tensor(targets, device=images.device).long().flatten()
        n = self.classifier.num_classes
        if targets.numel() != images.shape[0]:
            raise VfmxaiError(f"method '{self.name}': {targets.numel()} targets for {images.shape[0]} images")
        if ((targets < 0) | (targets >= n)).any():
            raise VfmxaiError(f"method '{self.name}': target out of range for {n} classes: {targets.tolist()}")
        return targets

    def hook(self, module: nn.Module, kind: str, fn: Callable) -> RemovableHandle:
        """Register a `forward`, `forward_pre` or `full_backward` hook that `close()` removes."""
        register_fn = {
            "forward": module.register_forward_hook,
            "forward_pre": module.register_forward_pre_hook,
            "full_backward": module.register_full_backward_hook,
        }[kind]
        handle = register_fn(fn)
        self._handles.append(handle)
        return handle

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _activation_types() -> tuple[type[nn.Module], ...]:
    types: list[type[nn.Module]] = [nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish]
    names = (
        "QuickGELUActivation", "GELUActivation", "NewGELUActivation", "FastGELUActivation",
        "AccurateGELUActivation", "ClippedGELUActivation", "GELUTanh", "PytorchGELUTanh",
        "SiLUActivation", "MishActivation", "ReLUSquaredActivation",
    )  # fmt: skip
    types += [getattr(hf_activations, n) for n in names if isinstance(getattr(hf_activations, n, None), type)]
    return tuple(types)


ACTIVATIONS = _activation_types()
"""Element-wise rectifier-like activation modules, f(0) = 0, f(x) ~ x for x >> 0 and ~ 0 for x << 0 (torch's and
transformers' ReLU, GELU, QuickGELU, SiLU, Mish families): where Guided BP gates and LRP's identity rule applies."""


def target_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Each image's target logit (B,) of logits (B, C); its sum over the batch is the score the gradient
    methods differentiate (images do not interact, so gradients stay per image)."""
    return logits.gather(1, targets.view(-1, 1)).squeeze(1)


def target_probabilities(logits: Tensor, targets: Tensor) -> Tensor:
    """Each image's softmax probability (B,) of its target, computed in float32."""
    return logits.float().softmax(dim=1).gather(1, targets.view(-1, 1)).squeeze(1)


def index_chunks(outer: int, inner: int, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """The index pairs (i, j) of an outer x inner grid in row-major order, `batch_size` pairs at a time: how a
    method's extra forward passes (one per image and step, mask or channel) go through the model."""
    for flat in torch.arange(outer * inner, device=device).split(batch_size):
        yield flat // inner, flat % inner
