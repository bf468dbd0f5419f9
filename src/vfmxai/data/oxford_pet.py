"""Oxford-IIIT Pet (Parkhi et al., CVPR 2012) in its official layout.

Accepted layout (ROOT may be the folder holding oxford-iiit-pet/, or oxford-iiit-pet/ itself):

    images/<Name>_<n>.jpg                 e.g. Abyssinian_1.jpg, american_bulldog_10.jpg
    annotations/trainval.txt              "<Image> <CLASS-ID> <SPECIES> <BREED-ID>", class ids 1..37
    annotations/test.txt                  the same; lines starting with "#" are comments
    annotations/trimaps/<Image>.png       1 = foreground (the pet), 2 = background, 3 = boundary band

`annotations/list.txt` (the two lists together) is not needed. Class names are the image names without
their trailing "_<n>" (cat breeds are capitalised, dog breeds not, as published), ordered by class id;
labels are class id - 1. The object mask is trimap value 1; with `boundary="object"` the boundary band
(value 3) counts as object too (`data.pet_boundary`). Split: the official test list intact; the official
trainval list split by `seed` into train and val, val taking round(994 / 5994 · n) images, the share of
the ALA paper's CUB split (610 of the 3,680 trainval images), drawn uniformly with numpy's
default_rng(seed) as the CUB split is. Every image needs its trimap.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from vfmxai.data.base import (
    SPLITS,
    FileDataset,
    MaskReader,
    Problems,
    Record,
    check_records,
    split_off_validation,
    split_sizes,
)
from vfmxai.data.cub import VAL_SHARE
from vfmxai.data.images import mask_values, open_image
from vfmxai.errors import VfmxaiError
from vfmxai.vocabulary import PET_BOUNDARIES

FOREGROUND, BACKGROUND, BOUNDARY = 1, 2, 3
_LISTS = {"trainval": "trainval.txt", "test": "test.txt"}
_NAME = re.compile(r"^(?P<breed>.+)_\d+$")


def trimap_reader(boundary: str = "background") -> MaskReader:
    """(trimap file, label) -> object mask: value 1, or 1 and 3 with `boundary="object"`."""
    if boundary not in PET_BOUNDARIES:
        raise VfmxaiError(f"data.pet_boundary={boundary!r}: choose one of {', '.join(PET_BOUNDARIES)}")
    values = (FOREGROUND, BOUNDARY) if boundary == "object" else (FOREGROUND,)

    def read(path: str | Path, label: int) -> np.ndarray:
        trimap = mask_values(open_image(path))
        unknown = ~np.isin(trimap, (FOREGROUND, BACKGROUND, BOUNDARY))
        if unknown.any():
            raise VfmxaiError(
                f"{path}: not an Oxford-IIIT Pet trimap (value {int(trimap[unknown][0])}; expected 1, 2 or 3)"
            )
        return np.isin(trimap, values)

    read.rule = f"oxford-pet trimap values {values}"
    return read


def locate_oxford_pet(root: Path) -> Path:
    """The folder holding images/ and annotations/."""
    if not root.is_dir():
        raise VfmxaiError(f"{root}: dataset folder not found")
    for base in (root, root / "oxford-iiit-pet"):
        if (base / "annotations" / _LISTS["test"]).is_file():
            return base
    raise VfmxaiError(
        f"{root}: not an Oxford-IIIT Pet folder (no annotations/test.txt in it or in {root / 'oxford-iiit-pet'})"
    )


def _read_list(path: Path, problems: Problems) -> list[tuple[str, int, int]]:
    """(image name, class id, line number) per row of trainval.txt or test.txt."""
    if not path.is_file():
        raise VfmxaiError(f"{path}: not found (part of the official Oxford-IIIT Pet layout)")
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            if len(parts) != 4:
                raise ValueError
            rows.append((parts[0], int(parts[1]), line_no))
        except ValueError:
            problems.add(f"{path}:{line_no}: expected '<Image> <CLASS-ID> <SPECIES> <BREED-ID>', got {line.strip()!r}")
    return rows


def _parse(root: Path, problems: Problems, seed: int) -> tuple[dict[str, list[Record]], list[str]]:
    base = locate_oxford_pet(root)
    annotations = base / "annotations"
    breeds: dict[int, str] = {}
    official: dict[str, list[Record]] = {}
    seen: dict[str, str] = {}
    for part, filename in _LISTS.items():
        path = annotations / filename
        official[part] = []
        for name, class_id, line_no in _read_list(path, problems):
            where = f"{path}:{line_no}"
            match = _NAME.match(name)
            if class_id < 1 or match is None:
                problems.add(f"{where}: {name!r} with class {class_id}: expected <Breed>_<n> and a class id >= 1")
                continue
            if breeds.setdefault(class_id, match["breed"]) != match["breed"]:
                problems.add(f"{where}: class {class_id} is {breeds[class_id]!r} elsewhere, {match['breed']!r} here")
                continue
            if name in seen:
                problems.add(f"{where}: image {name!r} is listed again (first in {seen[name]})")
                continue
            seen[name] = where
            official[part].append(
                Record(name, str(base / "images" / f"{name}.jpg"), class_id - 1,
                       str(annotations / "trimaps" / f"{name}.png"))
            )
    if sorted(breeds) != list(range(1, len(breeds) + 1)):
        problems.add(f"{annotations}: class ids must be 1..{len(breeds)} without gaps, found {sorted(breeds)}")
    names = [breeds[i] for i in sorted(breeds)]

    train, val = split_off_validation(official["trainval"], VAL_SHARE, seed)
    records = {"train": train, "val": val, "test": official["test"]}
    return records, names


class OxfordPetDataset(FileDataset):
    """One split of Oxford-IIIT Pet (official test; trainval split by `seed`)."""

    def __init__(
        self, root: str | Path, split: str, image_size: int = 64, seed: int = 0, boundary: str = "background"
    ) -> None:
        if split not in SPLITS:
            raise VfmxaiError(f"split {split!r} unknown; choose one of {', '.join(SPLITS)}")
        read_mask = trimap_reader(boundary)
        self.root = Path(root)
        records, names = _parse(self.root, Problems(), seed)
        missing = next((r for r in records[split] if not os.path.isfile(r.mask)), None)
        if missing is not None:
            raise VfmxaiError(f"{missing.mask}: trimap of {split} image {missing.id!r} not found")
        super().__init__(records[split], names, split, image_size, read_mask)


def oxford_pet_info(root: str | Path, seed: int = 0) -> dict:
    records, names = _parse(Path(root), Problems(collect=True), seed)
    return {"dataset": "oxford-pet", "root": str(root), "splits": split_sizes(records), "num_classes": len(names),
            "class_names": names}


def check_oxford_pet(root: str | Path) -> list[str]:
    """Every problem of an Oxford-IIIT Pet tree, one line each: lists, images, trimaps (missing, unreadable,
    values other than 1-3, a size other than the image's, no pet pixel)."""
    problems = Problems(collect=True)
    try:
        records, _ = _parse(Path(root), problems, 0)
    except VfmxaiError as err:
        return [*problems.lines, str(err)]
    read_mask = trimap_reader()
    for split in SPLITS:
        present = []
        for r in records[split]:
            if not os.path.isfile(r.mask):
                problems.add(f"{r.mask}: trimap of {r.id!r} not found")
                continue
            present.append(r)
        check_records(present, read_mask, problems, require_mask=True)
    return problems.lines
