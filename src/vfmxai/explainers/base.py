"""The one interface every explanation method fills in.

`Explainer(classifier, **options)(images, targets) -> maps (B, H, W)` in [0, 1] at the input size.
A method subclasses `Explainer` and fills in one hook, `attribute(images, targets) -> raw (B, h, w)`
at any resolution; the base validates the input, picks the predicted class when `targets` is None,
rejects non-finite maps (VfmxaiError naming the method and the image indices), upsamples bilinearly
and min-max normalises per image; a constant or all-zero map, which ranks no pixel above another,
becomes all zeros. Forward/backward hooks are registered through `self.hook(...)` and released by
`close()` / leaving the `with` block.

What a method explains is a `vfmxai.targets.Target` (option `target`, default the method's own
`default_target`: the class logit, or the class probability for the methods whose papers score that):
`self.target.scored_model(classifier)` is the model the method runs (`self.classifier`), and
`self.score(output, index)` its score per row, the one call every method makes; `targets` are then each
image's class for a class target, and its position in the batch for any other (`_targets`). A method whose
definition ignores the target (`uses_target = False`) refuses a target in one line.

Also here, the mechanics several methods share: extra forward passes in chunks (`index_chunks`), and which
modules are element-wise activations (`ACTIVATIONS`, rewritten by Guided BP and LRP); `target_logits` and
`target_probabilities` (the class targets' scores) live in `vfmxai.targets`.
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
from vfmxai.targets import ClassLogit, Target, check_target
from vfmxai.targets import target_logits as target_logits  # re-exported: where methods have always found it
from vfmxai.targets import target_probabilities as target_probabilities

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
    parameters = _option_parameters(name).values()
    return {
        p.name: p.default
        for p in parameters
        if p.default is not inspect.Parameter.empty and isinstance(p.default, (bool, int, float, str, type(None)))
    }


def _option_parameters(name: str) -> dict[str, inspect.Parameter]:
    """Method `name`'s options: its constructor's keyword parameters after the classifier, less `target` (an
    object, not a setting)."""
    parameters = list(inspect.signature(_REGISTRY[name].__init__).parameters.items())[2:]
    return {key: p for key, p in parameters if key != "target"}


def check_positive(method: str, **options: int) -> None:
    """A one-line VfmxaiError naming method and option unless every value of `options` is a positive int."""
    for option, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise VfmxaiError(f"method '{method}': option {option}={value!r} must be a positive integer")


def check_options(name: str, options: dict[str, Any]) -> None:
    """VfmxaiError (one line) for an option method `name` does not take, or a value whose type differs from its
    default's (an int where a float is expected is fine): checked before any work, so a typo never costs a run."""
    if name not in _REGISTRY:
        raise VfmxaiError(f"unknown method '{name}' (available: {', '.join(available())})")
    parameters = _option_parameters(name)
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
    """The explainer registered as `name`, bound to `classifier` (`target=` a `Target` among the options)."""
    if name not in _REGISTRY:
        raise VfmxaiError(f"unknown method '{name}' (available: {', '.join(available())})")
    return _REGISTRY[name](classifier, **options)


def uses_target(name: str) -> bool:
    """Whether method `name`'s definition has a target (`Explainer.uses_target`)."""
    return bool(_REGISTRY[name].uses_target) if name in _REGISTRY else False


class Explainer:
    name: str = "base"
    display_name: str = ""
    """The method's name in tables and figures ("" = its registry key)."""
    unit_range: bool = False
    """True when `attribute` returns values on a fixed [0, 1] scale (ALA's sigmoid map), so a raw threshold
    means the same on every image."""

    default_target: Target = ClassLogit()
    """What the method explains when no `target` is given: the score its paper uses."""
    uses_target: bool = True
    """False for a method whose map does not depend on a target (it then refuses one)."""

    def __init__(self, classifier: Classifier, target: Target | None = None):
        if target is not None and not self.uses_target:
            raise VfmxaiError(f"method '{self.name}' takes no target: its map does not depend on what is explained")
        self.target = self.default_target if target is None else check_target(target, self.name)
        self.classifier = self.target.scored_model(classifier)
        self._handles: list[RemovableHandle] = []

    def score(self, output: Tensor, index: Tensor) -> Tensor:
        """The target's score (n,) of the rows of the model's `output`; `index` (n,): each row's entry of `targets`."""
        return self.target.score(output, index)

    @classmethod
    def inapplicable(cls, classifier: Classifier) -> str | None:
        """Why this method cannot explain `classifier` (one line), or None when it can (every method but those
        whose definition needs something of the model, e.g. TIS a head that reads any number of tokens)."""
        return None

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        """Raw relevance (B, h, w) of each image for its target; larger = more important."""
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
        if not self.target.per_class:
            if targets is not None:
                raise VfmxaiError(
                    f"method '{self.name}': targets are class indices, for a class target; target "
                    f"{self.target.describe()} takes none"
                )
            return torch.arange(images.shape[0], device=images.device)
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


def index_chunks(outer: int, inner: int, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """The index pairs (i, j) of an outer x inner grid in row-major order, `batch_size` pairs at a time: how a
    method's extra forward passes (one per image and step, mask or channel) go through the model."""
    for flat in torch.arange(outer * inner, device=device).split(batch_size):
        yield flat // inner, flat % inner
