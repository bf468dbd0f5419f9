"""Weight files read safely: a run's `model.safetensors` and Lightning's `last.ckpt`.

Weights are safetensors (no code can hide in them); `last.ckpt` is read with `torch.load(weights_only=True)`.
Both must hold exactly the trainable weights of the model built from the run's config, every value finite.
What a run folder holds and how it is loaded: `vfmxai.run_folder`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vfmxai.ala import ALAModel
from vfmxai.classifier import Classifier, LinearProbe
from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write


def save_weights(model: ALAModel | LinearProbe, path: str | Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def load_weights(model: Classifier, path: str | Path) -> Classifier:
    """Load trainable weights; every expected key must be present with the right shape, every value finite."""
    path = Path(path)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise VfmxaiError(f"{path}: checkpoint weights not found") from None
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise VfmxaiError(f"{path}: not a readable safetensors file ({_one_line(err)})") from None
    expected = {k: tuple(v.shape) for k, v in model.trainable_state_dict().items()}
    mismatch = _mismatch(expected, {k: tuple(v.shape) for k, v in state.items()})
    if mismatch:
        raise VfmxaiError(f"{path}: weights do not match the model built from its config ({mismatch})")
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise VfmxaiError(
            f"{path}: NaN or infinite values in {', '.join(sorted(broken)[:3])} (a damaged file or a diverged training)"
        )
    model.load_state_dict(state, strict=False)
    return model


def load_resume_state(path: str | Path, model: ALAModel) -> dict:
    """Read Lightning's `last.ckpt` safely and check it fits `model`; VfmxaiError otherwise.

    `torch.load(weights_only=True)` rebuilds tensors and plain containers only: a pickle that would import
    or call anything (a class with `__reduce__`, `os.system`) is refused before any of it runs. The
    module's `on_save_checkpoint` keeps only the trainable weights, under `model.<name>`; they must be
    exactly the trainable weights of the model built from the run's config (Lightning itself would load
    with `strict=False` and silently keep the fresh values of missing keys).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise VfmxaiError(
            f"{path}: refused: not a plain-tensor checkpoint, loading it could run code ({_unpickling_reason(err)})"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises several types for a damaged archive
        raise VfmxaiError(f"{path}: not a readable resume checkpoint ({_one_line(err)})") from None
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise VfmxaiError(f"{path}: not a Lightning checkpoint of this package (no state_dict of tensors)")
    expected = {f"model.{k}": tuple(v.shape) for k, v in model.trainable_state_dict().items()}
    mismatch = _mismatch(expected, {k: tuple(v.shape) for k, v in weights.items()})
    if mismatch:
        raise VfmxaiError(f"{path}: weights do not match the model built from the run's config ({mismatch})")
    return state


def _mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str:
    """'' when `found` has exactly the keys and shapes of `expected`, else what differs (a few keys each)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{k} {list(found[k])} vs {list(expected[k])} expected"
        for k in sorted(set(expected) & set(found))
        if expected[k] != found[k]
    ]
    return "; ".join(
        f"{label}: {', '.join(keys[:3])}{f' and {len(keys) - 3} more' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    )


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _unpickling_reason(err: pickle.UnpicklingError) -> str:
    """The line of torch's several-paragraph weights-only message that says what was refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return line.rstrip(".")
    return lines[-1].rstrip(".") if lines else type(err).__name__
