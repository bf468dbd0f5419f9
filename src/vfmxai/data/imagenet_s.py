"""ImageNet-S (ImageNetS919, also S300/S50 via `subset`) in the layout of its official release.

Accepted layout (ROOT may be the folder holding ImageNetS919/, or ImageNetS919/ itself):

    ImageNetS919/train/<wnid>/<name>.JPEG                   ImageNet train images of the 919 classes
    ImageNetS919/train-semi/<wnid>/<name>.JPEG              the 9,190 train images that have masks
    ImageNetS919/train-semi-segmentation/<wnid>/<name>.png
    ImageNetS919/validation/<wnid>/<name>.JPEG              the 12,419 official validation images
    ImageNetS919/validation-segmentation/<wnid>/<name>.png
    ImageNetS_categories_im919.txt                          class-id table of github.com/LUSSeg/ImageNet-S
        (data/categories/), looked for in ROOT, ROOT/ImageNetS919 and ROOT/data/categories

Masks are RGB PNGs whose class id is R + 256·G: 0 = other/background, 1000 = ignore, i = the class on
line i (1-based) of the categories table. The object mask of an image is the pixels of its own class;
ignored pixels count as not-object, pixels of other classes too. Labels are 0-based table rows, so
label = mask class id - 1, and class names are the wnids.

Split as the ALA paper: train = train/ (minus the train-semi images, so validation never overlaps
training), val = train-semi (with masks), test = validation (with masks).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vfmxai.data.base import SPLITS, FileDataset, Problems, Record, split_sizes
from vfmxai.data.images import IMAGE_SUFFIXES, open_image
from vfmxai.errors import VfmxaiError

IGNORE_ID = 1000
_DIRS = {"train": ("train", None), "val": ("train-semi", "train-semi-segmentation"),
         "test": ("validation", "validation-segmentation")}


def class_ids(path: str | Path) -> np.ndarray:
    """Class-id map (H, W) int32 = R + 256·G of an ImageNet-S mask PNG."""
    im = open_image(path)
    if im.mode not in ("RGB", "RGBA", "P"):
        raise VfmxaiError(f"{path}: expected an RGB mask (class id = R + 256*G), got mode {im.mode}")
    rgb = np.asarray(im.convert("RGB"), dtype=np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1]


def read_imagenet_s_mask(path: str | Path, label: int) -> np.ndarray:
    return class_ids(path) == label + 1


def locate_imagenet_s(root: Path, subset: int = 919) -> tuple[Path, Path]:
    """(the ImageNetS<subset> folder, the categories table)."""
    if not root.is_dir():
        raise VfmxaiError(f"{root}: dataset folder not found")
    name = f"ImageNetS{subset}"
    base = root if root.name == name or not (root / name).is_dir() else root / name
    if not any((base / d).is_dir() for d, _ in _DIRS.values()):
        raise VfmxaiError(
            f"{root}: not an ImageNet-S folder (no train, train-semi or validation folder in it or in {root / name})"
        )
    table = f"ImageNetS_categories_im{subset}.txt"
    places = [root / table, base / table, root / "data" / "categories" / table, base.parent / table]
    for place in places:
        if place.is_file():
            return base, place
    raise VfmxaiError(
        f"{root}: {table} not found (the class-id table from github.com/LUSSeg/ImageNet-S, data/categories/; "
        f"put it in {root})"
    )


def _list_dir(folder: Path) -> dict[str, dict[str, str]]:
    """{wnid: {stem: path}} of the image (or mask) files under folder/<wnid>/."""
    out: dict[str, dict[str, Path]] = {}
    with os.scandir(folder) as classes:
        for c in classes:
            if c.is_dir():
                with os.scandir(c.path) as files:
                    out[c.name] = {
                        os.path.splitext(f.name)[0]: f.path
                        for f in files
                        if os.path.splitext(f.name)[1].lower() in IMAGE_SUFFIXES
                    }
    return out


def _parse(
    root: Path, problems: Problems, splits: tuple[str, ...], subset: int = 919
) -> tuple[dict[str, list[Record]], list[str]]:
    base, table = locate_imagenet_s(root, subset)
    wnids = [line.strip() for line in table.read_text(encoding="utf-8").splitlines() if line.strip()]
    label_of = {w: i for i, w in enumerate(wnids)}
    if len(label_of) != len(wnids):
        problems.add(f"{table}: a wnid is listed twice")
    records: dict[str, list[Record]] = {s: [] for s in SPLITS}
    semi = base / _DIRS["val"][0]
    semi_names = {stem for files in _list_dir(semi).values() for stem in files} if semi.is_dir() else set()
    for split in splits:
        image_dir, seg_name = _DIRS[split]
        folder = base / image_dir
        if not folder.is_dir():
            problems.add(f"{folder}: folder not found (the ImageNet-S {split} split)")
            continue
        images = _list_dir(folder)
        masks = None
        if seg_name is not None:
            seg = base / seg_name
            if not seg.is_dir():
                problems.add(f"{seg}: folder not found (masks of the {split} split)")
                continue
            masks = _list_dir(seg)
        for wnid in sorted(images):
            if wnid not in label_of:
                problems.add(f"{folder / wnid}: {wnid} is not a class of {table.name}")
                continue
            for stem, path in sorted(images[wnid].items()):
                if split == "train" and stem in semi_names:
                    continue
                mask = None
                if masks is not None:
                    mask = masks.get(wnid, {}).get(stem)
                    if mask is None:
                        problems.add(f"{path}: no mask {base / seg_name / wnid / (stem + '.png')}")
                        continue
                records[split].append(Record(stem, path, label_of[wnid], mask))
    return records, wnids


class ImageNetSDataset(FileDataset):
    """One split of ImageNet-S: train (no masks), val = train-semi, test = validation."""

    def __init__(self, root: str | Path, split: str, image_size: int = 64, subset: int = 919) -> None:
        if split not in SPLITS:
            raise VfmxaiError(f"split {split!r} unknown; choose one of {', '.join(SPLITS)}")
        self.root = Path(root)
        records, wnids = _parse(self.root, Problems(), (split,), subset)
        super().__init__(records[split], wnids, split, image_size, read_imagenet_s_mask)


def imagenet_s_info(root: str | Path, subset: int = 919) -> dict:
    records, wnids = _parse(Path(root), Problems(collect=True), SPLITS, subset)
    return {"dataset": "imagenet-s", "root": str(root), "splits": split_sizes(records),
            "num_classes": len(wnids), "class_names": wnids}


def check_imagenet_s(root: str | Path, subset: int = 919) -> list[str]:
    """Every problem, one line each. Masked splits are decoded in full; train images are only listed."""
    problems = Problems(collect=True)
    try:
        records, wnids = _parse(Path(root), problems, SPLITS, subset)
    except VfmxaiError as err:
        return [*problems.lines, str(err)]
    for split in ("val", "test"):
        for rec in records[split]:
            try:
                ids = class_ids(rec.mask)
                image = open_image(rec.image)
            except VfmxaiError as err:
                problems.add(str(err))
                continue
            if ids.shape != (image.height, image.width):
                problems.add(
                    f"{rec.mask}: mask is {ids.shape[1]}x{ids.shape[0]} but its image {rec.image} is "
                    f"{image.width}x{image.height} (width x height)"
                )
            bad = np.unique(ids[(ids > len(wnids)) & (ids != IGNORE_ID)])
            if bad.size:
                problems.add(f"{rec.mask}: class id(s) {', '.join(map(str, bad[:5].tolist()))} not in 0..{len(wnids)} "
                             f"or {IGNORE_ID}")
            if not (ids == rec.label + 1).any():
                problems.add(f"{rec.mask}: no pixel of the image's class {wnids[rec.label]} (id {rec.label + 1})")
    return problems.lines
