"""Run folders: how a run's config is made, what `vfmxai train --out RUN` writes, and how a run is loaded.

A run folder holds:
- `config.json`: the resolved `RunConfig` (num_classes filled in);
- `classes.txt`: one class name per line;
- `model.safetensors`: the weights chosen by `train.select_by`, trainable parts only (ALA, perception
  branch, LoRA) — megabytes for CLIP ViT-B/16, never the frozen backbone again;
- `last.ckpt`: Lightning's resume state (trainable weights, optimiser, loop counters), written at the
  end of every epoch;
- `log.csv`: loss, accuracy and the map's statistics per epoch;
- `map_check.json`: the trained map's health on the validation split (`vfmxai.ala.monitor.check_map`).
A linear-probe run (`classifier = linear_probe`) holds config, classes, the head's weights and log.csv.
Reading weight files safely: `vfmxai.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vfmxai.ala import build_model
from vfmxai.backbones import load_backbone
from vfmxai.checkpoint import load_weights
from vfmxai.classifier import Classifier, LinearProbe
from vfmxai.config import CLASSIFIERS, RunConfig, apply_overrides, check_config, preset, set_field
from vfmxai.data import get_dataset
from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write_text

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CLASSES = "classes.txt"
LAST = "last.ckpt"
LOG = "log.csv"
MAP_CHECK = "map_check.json"


@dataclass(frozen=True)
class Recipe:
    """How a run's config is made, in this order: the preset; the dataset and its root; `fields` (typed
    values, e.g. from the command line's own flags `--backbone`, `--seed`, `--devices`); the `overrides`
    (`section.field=value` strings, `--set`), so that an explicit `--set` wins over a flag."""

    preset: str
    dataset: str
    root: str | None = None
    overrides: tuple[str, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", None if self.root is None else str(self.root))
        object.__setattr__(self, "overrides", tuple(self.overrides))
        object.__setattr__(self, "fields", dict(self.fields))

    def config(self, seed: int | None = None) -> RunConfig:
        """The run's config; `seed` (one trial of `reproduce`) then sets `train.seed` last, over everything,
        and leaves `data.seed` (the split) as the recipe made it."""
        config = preset(self.preset)
        config.data.dataset = self.dataset
        config.data.root = self.root
        for key, value in self.fields.items():
            set_field(config, key, value)
        apply_overrides(config, list(self.overrides))
        if seed is not None:
            config.train.seed = int(seed)
        return check_config(config)


def dataset_split(config: RunConfig, split: str) -> Dataset:
    """One split of the configured dataset at the backbone's image size (the synthetic set's sizes and
    generator seed, the split seed and Oxford-IIIT Pet's boundary band come from `DataConfig`)."""
    dc = config.data
    return get_dataset(
        dc.dataset, dc.root, split, config.backbone.image_size, seed=dc.seed,
        n_train=dc.n_train, n_val=dc.n_val, n_test=dc.n_test, size=dc.synth_size, boundary=dc.pet_boundary,
    )


def write_run_files(run_dir: Path, config: RunConfig, class_names: list[str]) -> None:
    """config.json and classes.txt (atomically); the folder is made if needed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / CONFIG)
    atomic_write_text(run_dir / CLASSES, "\n".join(class_names) + "\n")


def build_classifier(config: RunConfig) -> Classifier:
    """The untrained model a run's config describes: `ALAModel` or `LinearProbe` (`config.classifier`)."""
    if config.classifier not in CLASSIFIERS:
        raise VfmxaiError(f"classifier='{config.classifier}': choose one of {', '.join(CLASSIFIERS)}")
    if config.classifier == "linear_probe":
        backbone = load_backbone(config.backbone.name, config.backbone.image_size, seed=config.train.seed)
        return LinearProbe(backbone.requires_grad_(False), config.model.num_classes)
    return build_model(config)


def check_run_folder(run_dir: str | Path) -> Path:
    """`run_dir` as a Path, or a one-line error when it is no folder or holds no trained weights."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VfmxaiError(f"--checkpoint {run_dir}: no such run folder")
    if not (run_dir / WEIGHTS).is_file():
        raise VfmxaiError(f"--checkpoint {run_dir}: no {WEIGHTS} (was training finished or started?)")
    return run_dir


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, RunConfig, list[str]]:
    """The trained model of a run folder, in eval mode, with its config and class names."""
    run_dir = check_run_folder(run_dir)
    config = RunConfig.load(run_dir / CONFIG)
    model = load_weights(build_classifier(config), run_dir / WEIGHTS)
    classes_file = run_dir / CLASSES
    class_names = classes_file.read_text().splitlines() if classes_file.is_file() else []
    if len(class_names) != config.model.num_classes:
        class_names = [str(i) for i in range(config.model.num_classes)]
    return model.to(device).eval(), config, class_names


@dataclass(frozen=True)
class Source:
    """What an evaluation scores: the model of a run folder on one split of a dataset (`root`: its folder;
    None for `synthetic`, which is rebuilt from the run's generator settings)."""

    run_dir: Path
    dataset: str
    root: str | Path | None = None
    split: str = "test"

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))

    def load(self, device: str | torch.device = "cpu") -> tuple[Classifier, Dataset, RunConfig]:
        """The run's model and the split, built as the run was trained (image size; for `synthetic` the run's
        generator seed and sizes), its classes checked against the run's (`check_classes`)."""
        model, config, _ = load_run(self.run_dir, device)
        config.data.dataset = self.dataset
        config.data.root = None if self.root is None else str(self.root)
        data = dataset_split(config, self.split)
        check_classes(self.run_dir, config, data, f"dataset {self.dataset} split {self.split}")
        return model, data, config


def check_classes(run_dir: Path, config: RunConfig, data: Dataset, where: str) -> None:
    """The dataset's classes must be the run's, in the run's order (classes.txt, where it exists): a label is
    an index, so the same images with the classes in another order would be scored against the wrong class."""
    names = getattr(data, "class_names", None)
    if names is None:
        return
    if len(names) != config.model.num_classes:
        raise VfmxaiError(
            f"--checkpoint {run_dir}: trained on {config.model.num_classes} classes, {where} has {len(names)}"
        )
    classes_file = run_dir / CLASSES
    if not classes_file.is_file():
        return
    trained = classes_file.read_text().splitlines()
    for index, (ours, theirs) in enumerate(zip(trained, names, strict=False)):
        if ours != theirs:
            raise VfmxaiError(
                f"--checkpoint {run_dir}: class {index} is '{ours}' in {CLASSES} but '{theirs}' in {where}; "
                "evaluate on the classes the run was trained on, in the same order"
            )
