"""CUB-200-2011 in its official layout, with the separately distributed segmentations.

Accepted layout (ROOT may be the folder holding CUB_200_2011/, or CUB_200_2011/ itself):

    CUB_200_2011/images.txt               "<image_id> <relative path>"
    CUB_200_2011/image_class_labels.txt   "<image_id> <class_id>", class ids 1-based (made 0-based here)
    CUB_200_2011/train_test_split.txt     "<image_id> <1 = train, 0 = test>"
    CUB_200_2011/classes.txt              "<class_id> <NNN.Name>"  (names keep the part after "NNN.")
    CUB_200_2011/images/<relative path>
    segmentations/<relative path, .png>   at ROOT/segmentations, CUB_200_2011/segmentations,
                                          or beside CUB_200_2011/ (the first that exists)

Masks are soft (0–255); object = value >= 128. Split as the ALA paper: the official test set (5,794)
intact; the official train set (5,994) split by `seed` into train and val, val taking
round(994 / 5994 * n_official_train) images (994 on the full set; the same share on a smaller tree),
drawn uniformly (not stratified by class) with numpy's default_rng(seed). Sample ids are file stems.
Masks are required for val and test, optional for train.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vfmxai.data.base import SPLITS, FileDataset, Problems, Record, check_records, split_off_validation, split_sizes
from vfmxai.data.images import mask_values, open_image
from vfmxai.errors import VfmxaiError

MASK_THRESHOLD = 128
VAL_SHARE = 994 / 5994
"""The paper's 994 validation images out of the 5,994 official training images."""

_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def read_cub_mask(path: str | Path, label: int) -> np.ndarray:
    return mask_values(open_image(path)) >= MASK_THRESHOLD


def locate_cub(root: Path) -> tuple[Path, Path | None]:
    """(the folder holding images.txt, the segmentations folder or None)."""
    if not root.is_dir():
        raise VfmxaiError(f"{root}: dataset folder not found")
    for cub in (root, root / "CUB_200_2011"):
        if (cub / "images.txt").is_file():
            break
    else:
        raise VfmxaiError(f"{root}: not a CUB-200-2011 folder (no images.txt in it or in {root / 'CUB_200_2011'})")
    for seg in (root / "segmentations", cub / "segmentations", cub.parent / "segmentations"):
        if seg.is_dir():
            return cub, seg
    return cub, None


def _read_table(path: Path, problems: Problems) -> dict[int, str]:
    """`<int id> <value>` per line -> {id: value}; bad lines and repeated ids are problems."""
    if not path.is_file():
        raise VfmxaiError(f"{path}: not found (part of the official CUB-200-2011 layout)")
    table: dict[int, str] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        try:
            key = int(parts[0])
            if len(parts) != 2:
                raise ValueError
        except ValueError:
            problems.add(f"{path}:{line_no}: expected '<id> <value>', got {line.strip()!r}")
            continue
        if key in table:
            problems.add(f"{path}:{line_no}: id {key} repeats")
            continue
        table[key] = parts[1].strip()
    return table


def _parse(root: Path, problems: Problems, seed: int) -> tuple[dict[str, list[Record]], list[str], Path | None]:
    cub, seg = locate_cub(root)
    images, labels, flags, classes = (_read_table(cub / name, problems) for name in _FILES)
    class_ids = sorted(classes)
    if class_ids != list(range(1, len(class_ids) + 1)):
        problems.add(f"{cub / 'classes.txt'}: class ids must be 1..{len(class_ids)} without gaps")
    names = [classes[i].split(".", 1)[1] if "." in classes[i] else classes[i] for i in class_ids]

    official: dict[str, list[Record]] = {"train": [], "test": []}
    seen: dict[str, int] = {}
    for image_id in sorted(images):
        rel = images[image_id]
        where = f"image id {image_id} ({rel})"
        if image_id not in labels:
            problems.add(f"{cub / 'image_class_labels.txt'}: no class for {where}")
            continue
        if image_id not in flags:
            problems.add(f"{cub / 'train_test_split.txt'}: no split for {where}")
            continue
        try:
            label = int(labels[image_id])
        except ValueError:
            problems.add(f"{cub / 'image_class_labels.txt'}: class {labels[image_id]!r} of {where} is not a number")
            continue
        if not 1 <= label <= len(names):
            problems.add(f"{cub / 'image_class_labels.txt'}: class {label} of {where} is not in 1..{len(names)}")
            continue
        if flags[image_id] not in ("0", "1"):
            problems.add(f"{cub / 'train_test_split.txt'}: split {flags[image_id]!r} of {where} is not 0 or 1")
            continue
        sid = Path(rel).stem
        if sid in seen:
            problems.add(f"{cub / 'images.txt'}: {where} has the same file name as image id {seen[sid]}")
            continue
        seen[sid] = image_id
        mask = str(seg / Path(rel).with_suffix(".png")) if seg is not None else None
        official["train" if flags[image_id] == "1" else "test"].append(
            Record(sid, str(cub / "images" / rel), label - 1, mask)
        )
    for extra in sorted(set(labels) - set(images)):
        problems.add(f"{cub / 'image_class_labels.txt'}: image id {extra} is not in images.txt")

    train, val = split_off_validation(official["train"], VAL_SHARE, seed)
    records = {"train": train, "val": val, "test": official["test"]}
    return records, names, seg


class CUBDataset(FileDataset):
    """One split of CUB-200-2011 (the paper's 5,000 / 994 / 5,794)."""

    def __init__(self, root: str | Path, split: str, image_size: int = 64, seed: int = 0) -> None:
        if split not in SPLITS:
            raise VfmxaiError(f"split {split!r} unknown; choose one of {', '.join(SPLITS)}")
        self.root = Path(root)
        records, names, seg = _parse(self.root, Problems(), seed)
        if split != "train":
            if seg is None:
                raise VfmxaiError(
                    f"{self.root}: no segmentations folder (looked in {self.root / 'segmentations'} and "
                    f"beside images.txt); the {split} split needs masks"
                )
            missing = next((r for r in records[split] if not os.path.isfile(r.mask)), None)
            if missing is not None:
                raise VfmxaiError(f"{missing.mask}: mask of {split} image {missing.id!r} not found")
        else:
            records["train"] = [
                r if r.mask is not None and os.path.isfile(r.mask) else Record(r.id, r.image, r.label, None)
                for r in records["train"]
            ]
        super().__init__(records[split], names, split, image_size, read_cub_mask)


def cub_info(root: str | Path, seed: int = 0) -> dict:
    records, names, seg = _parse(Path(root), Problems(collect=True), seed)
    return {"dataset": "cub", "root": str(root), "splits": split_sizes(records), "num_classes": len(names),
            "class_names": names, "segmentations": str(seg) if seg else None}


def check_cub(root: str | Path) -> list[str]:
    """Every problem of a CUB tree, one line each: tables, files, masks (missing, unreadable, wrong size)."""
    problems = Problems(collect=True)
    try:
        records, _, seg = _parse(Path(root), problems, 0)
    except VfmxaiError as err:
        return [*problems.lines, str(err)]
    if seg is None:
        problems.add(f"{root}: no segmentations folder (looked in ROOT/segmentations and beside images.txt)")
    for split in SPLITS:
        recs = records[split] if seg is not None else [Record(r.id, r.image, r.label, None) for r in records[split]]
        present = []
        for r in recs:
            if r.mask is not None and not os.path.isfile(r.mask):
                problems.add(f"{r.mask}: mask of {r.id!r} not found")
                r = Record(r.id, r.image, r.label, None)
            present.append(r)
        check_records(present, read_cub_mask, problems, require_mask=False)
    return problems.lines
