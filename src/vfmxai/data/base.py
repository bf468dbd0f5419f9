"""The sample format every dataset returns, the file-backed dataset base, and problem collection.

A sample is a dict:
  image     FloatTensor (3, S, S) in [0, 1]  (resized bilinear with antialiasing)
  mask      BoolTensor (S, S), object = True (resized nearest); all False where `has_mask` is False
  label     int, 0-based
  id        str, unique within the dataset (the file stem)
  has_mask  bool: False for images without a mask (allowed for train splits only)
S is the dataset's `image_size`. Datasets carry `class_names`, `num_classes`, `split`.
`torch.utils.data.default_collate` batches samples; `collate` does the same with fixed dtypes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import Tensor

from vfmxai.data.images import open_image, to_rgb_array
from vfmxai.data.transforms import resize_image, resize_mask
from vfmxai.errors import VfmxaiError

SPLITS = ("train", "val", "test")


class Sample(TypedDict):
    image: Tensor
    mask: Tensor
    label: int
    id: str
    has_mask: bool


def make_sample(image: Tensor, mask: Tensor, label: int, sid: str, has_mask: bool, size: int) -> Sample:
    return {
        "image": resize_image(image, size),
        "mask": resize_mask(mask, size),
        "label": int(label),
        "id": sid,
        "has_mask": bool(has_mask),
    }


def collate(samples: Sequence[Sample]) -> dict[str, Any]:
    """Batch samples: image (B, 3, S, S), mask (B, S, S) bool, label (B,) long, id list, has_mask (B,) bool."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "id": [s["id"] for s in samples],
        "has_mask": torch.tensor([s["has_mask"] for s in samples], dtype=torch.bool),
    }


class Problems:
    """Where parsing reports a problem: strict mode raises the first as VfmxaiError, collect mode lists all."""

    def __init__(self, collect: bool = False) -> None:
        self.collect = collect
        self.lines: list[str] = []

    def add(self, message: str) -> None:
        if not self.collect:
            raise VfmxaiError(message)
        self.lines.append(message)


MaskReader = Callable[[str | Path, int], np.ndarray]
"""(mask file, label) -> bool (H, W) object mask at the file's resolution."""


@dataclass(frozen=True)
class Record:
    """One image of a split. Paths are plain strings: ImageNet-S train holds 1.2 M records."""

    id: str
    image: str
    label: int
    mask: str | None


def read_record(record: Record, read_mask: MaskReader) -> tuple[Tensor, Tensor]:
    """Decode one record at full resolution: image (3, H, W) float, mask (H, W) bool (all False if none).

    VfmxaiError when a file is unreadable or the mask's size differs from the image's.
    """
    rgb = to_rgb_array(open_image(record.image))
    h, w = rgb.shape[:2]
    if record.mask is None:
        mask = np.zeros((h, w), dtype=bool)
    else:
        mask = read_mask(record.mask, record.label)
        if mask.shape != (h, w):
            raise VfmxaiError(
                f"{record.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {record.image} "
                f"is {w}x{h} (width x height)"
            )
    image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    return image, torch.from_numpy(np.ascontiguousarray(mask))


class FileDataset(torch.utils.data.Dataset):
    """A dataset backed by image/mask files: a list of records decoded and resized on access."""

    def __init__(
        self,
        records: list[Record],
        class_names: list[str],
        split: str,
        image_size: int,
        read_mask: MaskReader,
    ) -> None:
        if image_size < 1:
            raise VfmxaiError(f"image_size must be a positive number of pixels, got {image_size}")
        self.records = records
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.split = split
        self.image_size = int(image_size)
        self._read_mask = read_mask

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        rec = self.records[index]
        image, mask = read_record(rec, self._read_mask)
        return make_sample(image, mask, rec.label, rec.id, rec.mask is not None, self.image_size)

    def fingerprint(self) -> str:
        """sha256 over how masks are read and every record's id, label, image bytes and mask bytes, in order:
        a replaced image or mask, an edited label, an added, dropped or reordered image changes it."""
        digest = hashlib.sha256(getattr(self._read_mask, "rule", self._read_mask.__qualname__).encode())
        for rec in self.records:
            digest.update(json.dumps([rec.id, rec.label]).encode())
            for path in (rec.image, rec.mask):
                digest.update(b"-" if path is None else _file_digest(path))
        return digest.hexdigest()


def _file_digest(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").digest()
    except OSError as err:
        raise VfmxaiError(f"{path}: cannot be read ({err.strerror})") from None


def dataset_fingerprint(dataset: torch.utils.data.Dataset) -> str:
    """What identifies a dataset's samples: its own `fingerprint()` where it has one (files: their bytes;
    the synthetic set: the parameters it is drawn from), else sha256 over every sample's id, label, image and
    mask as returned (one decoding pass)."""
    if hasattr(dataset, "fingerprint"):
        return dataset.fingerprint()
    digest = hashlib.sha256()
    for index in range(len(dataset)):
        sample = dataset[index]
        digest.update(json.dumps([sample["id"], int(sample["label"]), bool(sample["has_mask"])]).encode())
        for key in ("image", "mask"):
            digest.update(sample[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_records(
    records: Sequence[Record],
    read_mask: MaskReader,
    problems: Problems,
    require_mask: bool,
    where: str = "",
) -> None:
    """Decode every record; report unreadable files, size mismatches, missing or empty masks."""
    for rec in records:
        if rec.mask is None:
            if require_mask:
                problems.add(f"{rec.image}: {where}image {rec.id!r} has no mask")
            try:
                open_image(rec.image)
            except VfmxaiError as err:
                problems.add(str(err))
            continue
        try:
            _, mask = read_record(rec, read_mask)
        except VfmxaiError as err:
            problems.add(str(err))
            continue
        if not bool(mask.any()):
            problems.add(f"{rec.mask}: {where}mask of {rec.id!r} has no object pixel")


def split_off_validation(records: Sequence[Record], share: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, val): round(share · n) records drawn uniformly for val with numpy's default_rng(seed), both in
    their listed order (the CUB and Oxford-IIIT Pet splits)."""
    n_val = round(share * len(records))
    val_idx = set(np.random.default_rng(seed).permutation(len(records))[:n_val].tolist())
    return ([r for i, r in enumerate(records) if i not in val_idx], [r for i, r in enumerate(records) if i in val_idx])


def split_sizes(records_by_split: dict[str, Sequence[Record]]) -> dict[str, int]:
    return {s: len(records_by_split.get(s, ())) for s in SPLITS}
