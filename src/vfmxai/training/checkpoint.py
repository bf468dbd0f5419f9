"""Run folders and safe checkpoints.

A run folder (`vfmxai train --out RUN`) holds:
- `config.json`: the resolved `RunConfig` (num_classes filled in);
- `classes.txt`: one class name per line;
- `model.safetensors`: the best weights by validation loss, trainable parts only (ALA, perception
  branch, LoRA) — megabytes for CLIP ViT-B/16, never the frozen backbone again;
- `last.ckpt`: Lightning's resume state (trainable weights, optimiser, loop counters), loaded with
  `weights_only=True`;
- `log.csv`: loss and accuracy per epoch.
Weights are safetensors (no code can hide in them); the config is JSON.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vfmxai.ala import ALAModel, build_model
from vfmxai.config import RunConfig
from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write, atomic_write_text

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CLASSES = "classes.txt"
LAST = "last.ckpt"


def save_weights(model: ALAModel, path: str | Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def load_weights(model: ALAModel, path: str | Path) -> ALAModel:
    """Load trainable weights; every expected key must be present with the right shape."""
    path = Path(path)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise VfmxaiError(f"{path}: checkpoint weights not found") from None
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise VfmxaiError(f"{path}: not a readable safetensors file ({err})") from None
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise VfmxaiError(f"{path}: weights do not match the model built from its config ({detail})")
    model.load_state_dict(state, strict=False)
    return model


def write_run_files(run_dir: Path, config: RunConfig, class_names: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / CONFIG)
    atomic_write_text(run_dir / CLASSES, "\n".join(class_names) + "\n")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[ALAModel, RunConfig, list[str]]:
    """The trained model of a run folder, in eval mode, with its config and class names."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VfmxaiError(f"--checkpoint {run_dir}: no such run folder")
    if not (run_dir / WEIGHTS).is_file():
        raise VfmxaiError(f"--checkpoint {run_dir}: no {WEIGHTS} (was training finished or started?)")
    config = RunConfig.load(run_dir / CONFIG)
    model = load_weights(build_model(config), run_dir / WEIGHTS)
    classes_file = run_dir / CLASSES
    class_names = classes_file.read_text().splitlines() if classes_file.is_file() else []
    if len(class_names) != config.model.num_classes:
        class_names = [str(i) for i in range(config.model.num_classes)]
    return model.to(device).eval(), config, class_names
