"""Datasets (synthetic, folder, CUB-200-2011, ImageNet-S, Oxford-IIIT Pet) behind one sample format (see `base`).

`get_dataset` builds one split; `dataset_info` reports split sizes and classes; `check_dataset` lists
every problem of a dataset on disk in one pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from vfmxai.data.base import SPLITS, Sample, collate
from vfmxai.data.cub import CUBDataset, check_cub, cub_info
from vfmxai.data.folder import FolderDataset, check_folder, folder_info
from vfmxai.data.imagenet_s import ImageNetSDataset, check_imagenet_s, imagenet_s_info
from vfmxai.data.images import load_image, load_mask
from vfmxai.data.oxford_pet import OxfordPetDataset, check_oxford_pet, oxford_pet_info
from vfmxai.data.synthetic import SyntheticDataset, class_names, write_synthetic
from vfmxai.data.transforms import augment, resize_image, resize_mask
from vfmxai.errors import VfmxaiError
from vfmxai.vocabulary import DATASETS, SYNTHETIC_SIZE, SYNTHETIC_SPLITS

SYNTHETIC_DEFAULTS: dict[str, Any] = {**SYNTHETIC_SPLITS, "size": SYNTHETIC_SIZE, "task": "demo"}
"""Options of the synthetic dataset, with their defaults."""
PET_DEFAULTS: dict[str, Any] = {"boundary": "background"}
"""Options of Oxford-IIIT Pet: where the trimap's boundary band goes (`vocabulary.PET_BOUNDARIES`)."""


def loader_workers(requested: int | None, on_gpu: bool, option: str = "--num-workers") -> int:
    """Data-loading worker processes. None: none on a CPU (workers would take the cores the model runs on);
    on a GPU one per spare core up to 8, so decoding and resizing the next batches overlap the model's work."""
    if requested is None:
        return min(8, max(0, (os.cpu_count() or 1) - 1)) if on_gpu else 0
    if not isinstance(requested, int) or requested < 0:
        raise VfmxaiError(f"{option} must be an integer >= 0, got {requested}")
    return requested


@dataclass(frozen=True)
class DatasetFormat:
    """What every dataset name offers, each with one signature whatever the format needs.

    `root` is the checked folder (None where `on_disk` is False); `options` are this format's own (`defaults`
    completed by what the caller gave; options of other formats are ignored).
    """

    dataset: Callable[[Path | None, str, int, int, dict[str, Any]], Dataset]
    """(root, split, image_size, seed, options) -> one split, samples at `image_size` px."""
    info: Callable[[Path | None, int, dict[str, Any]], dict[str, Any]]
    """(root, seed, options) -> split sizes and classes."""
    check: Callable[[Path | None], list[str]]
    """root -> every problem found, one line each."""
    on_disk: bool = True
    """Whether the format reads a root folder (synthetic data is drawn in memory)."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """The format's options and their defaults."""


def _synthetic_dataset(root: Path | None, split: str, image_size: int, seed: int, o: dict[str, Any]) -> Dataset:
    return SyntheticDataset(split, o[f"n_{split}"], o["size"], seed, o["task"], image_size=image_size)


def _synthetic_info(root: Path | None, seed: int, o: dict[str, Any]) -> dict[str, Any]:
    names = class_names(o["task"])
    return {"dataset": "synthetic", "root": None, "task": o["task"], "size": o["size"], "seed": seed,
            "splits": {s: o[f"n_{s}"] for s in SPLITS}, "num_classes": len(names), "class_names": names}


FORMATS: dict[str, DatasetFormat] = {
    "synthetic": DatasetFormat(
        _synthetic_dataset, _synthetic_info, lambda root: [], on_disk=False, defaults=SYNTHETIC_DEFAULTS
    ),
    "folder": DatasetFormat(
        lambda root, split, image_size, seed, o: FolderDataset(root, split, image_size),
        lambda root, seed, o: folder_info(root),
        check_folder,
    ),
    "cub": DatasetFormat(
        lambda root, split, image_size, seed, o: CUBDataset(root, split, image_size, seed=seed),
        lambda root, seed, o: cub_info(root, seed=seed),
        check_cub,
    ),
    "imagenet-s": DatasetFormat(
        lambda root, split, image_size, seed, o: ImageNetSDataset(root, split, image_size),
        lambda root, seed, o: imagenet_s_info(root),
        check_imagenet_s,
    ),
    "oxford-pet": DatasetFormat(
        lambda root, split, image_size, seed, o: OxfordPetDataset(root, split, image_size, seed, o["boundary"]),
        lambda root, seed, o: oxford_pet_info(root, seed=seed),
        check_oxford_pet,
        defaults=PET_DEFAULTS,
    ),
}
"""Every dataset name (the keys are `DATASETS`) and how it is read."""


def _format(name: str) -> DatasetFormat:
    if name not in FORMATS:
        raise VfmxaiError(f"dataset {name!r} unknown; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def _root(name: str, dataset_format: DatasetFormat, root: str | Path | None) -> Path | None:
    if not dataset_format.on_disk:
        return None
    if root is None:
        raise VfmxaiError(f"dataset {name!r} needs a root folder (--root)")
    path = Path(root)
    if not path.is_dir():
        raise VfmxaiError(f"{path}: dataset folder not found")
    return path


def _options(name: str, dataset_format: DatasetFormat, opts: dict[str, Any]) -> dict[str, Any]:
    """The format's defaults with the caller's values of its own options; a name no format knows is refused."""
    unknown = sorted(set(opts) - {key for f in FORMATS.values() for key in f.defaults})
    if unknown:
        known = ", ".join(dataset_format.defaults) or "none"
        raise VfmxaiError(f"{name} dataset: unknown option(s) {', '.join(unknown)}; known: {known}")
    return {**dataset_format.defaults, **{k: v for k, v in opts.items() if k in dataset_format.defaults}}


def get_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    image_size: int,
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """One split of a dataset, samples at `image_size` px.

    `seed`: the synthetic generator's seed, and the seed of the train/val splits vfmxai makes (CUB, Pet).
    `options`: each format's own (`synthetic`: n_train, n_val, n_test, size, task; `oxford-pet`: boundary),
    the others' ignored, so a caller can pass its configuration unchanged. `root` is not used by `synthetic`.
    """
    dataset_format = _format(name)
    if split not in SPLITS:
        raise VfmxaiError(f"split {split!r} unknown; choose one of {', '.join(SPLITS)}")
    options = _options(name, dataset_format, options)
    return dataset_format.dataset(_root(name, dataset_format, root), split, image_size, seed, options)


def dataset_info(name: str, root: str | Path | None = None, seed: int = 0, **options: Any) -> dict[str, Any]:
    """{"dataset", "root", "splits": {train, val, test: count}, "num_classes", "class_names"}."""
    dataset_format = _format(name)
    options = _options(name, dataset_format, options)
    return dataset_format.info(_root(name, dataset_format, root), seed, options)


def check_dataset(name: str, root: str | Path | None = None) -> list[str]:
    """Every problem found in one pass, one line each naming the file (and row) and what is wrong.

    Decodes every image and mask (ImageNet-S: every masked image; its 1.2 M train images are only listed).
    A split with no images is a problem (training needs train and val, evaluation test). The synthetic
    dataset has nothing on disk to check: [].
    """
    dataset_format = _format(name)
    where = _root(name, dataset_format, root)
    problems = dataset_format.check(where)
    try:
        counts = dataset_format.info(where, 0, _options(name, dataset_format, {}))["splits"]
    except VfmxaiError:
        return problems  # the check above says why the splits cannot be counted
    return problems + [f"{where}: the {split} split has no images" for split, n in counts.items() if n == 0]


__all__ = [
    "DATASETS",
    "FORMATS",
    "SPLITS",
    "CUBDataset",
    "DatasetFormat",
    "FolderDataset",
    "ImageNetSDataset",
    "OxfordPetDataset",
    "Sample",
    "SyntheticDataset",
    "augment",
    "check_dataset",
    "collate",
    "dataset_info",
    "get_dataset",
    "load_image",
    "load_mask",
    "resize_image",
    "resize_mask",
    "write_synthetic",
]
