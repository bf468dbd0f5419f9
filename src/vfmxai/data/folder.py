"""Any folder of images with masks, in this format (the README's "Real data" shows it too):

    ROOT/images/<id>.<png|jpg|jpeg>   (suffix in any letter case)
    ROOT/masks/<id>.png               nonzero = object; optional for train, required for val and test
    ROOT/labels.csv                   header with at least id,label,split (other columns are ignored)
    ROOT/classes.txt                  optional: one class name per line, line i = label i

`label` is a 0-based class index or, when classes.txt exists, a class name from it. Without classes.txt
the classes are 0..max(label) over all rows, named by their index. A train image without a mask gets an
all-False mask and `has_mask = False`. Rows are checked for every split (so the class list is the same
whichever split is loaded); files are checked for the split being loaded.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vfmxai.data.base import SPLITS, FileDataset, Problems, Record, check_records, split_sizes
from vfmxai.data.images import index_images, mask_values, open_image
from vfmxai.errors import VfmxaiError

COLUMNS = ("id", "label", "split")
MAX_CLASSES = 100_000
"""Without classes.txt the class count is the largest label + 1; a larger label is taken as a typo."""


def read_folder_mask(path: str | Path, label: int) -> np.ndarray:
    return mask_values(open_image(path)) > 0


def _read_classes(path: Path, problems: Problems) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise VfmxaiError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    seen: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if not name:
            problems.add(f"{path}:{i}: empty class name")
        elif name in seen:
            problems.add(f"{path}:{i}: class name {name!r} repeats line {seen[name]}")
        else:
            seen[name] = i
    return names


def _parse(root: Path, problems: Problems, file_splits: tuple[str, ...]) -> tuple[dict[str, list[Record]], list[str]]:
    """Rows of labels.csv as records by split, and the class names; problems go to `problems`."""
    if not root.is_dir():
        raise VfmxaiError(f"{root}: dataset folder not found")
    labels_path = root / "labels.csv"
    if not labels_path.is_file():
        raise VfmxaiError(f"{labels_path}: not found (the folder format needs labels.csv with columns id,label,split)")
    names = _read_classes(root / "classes.txt", problems)
    by_name = {n: i for i, n in enumerate(names or [])}

    try:
        return _parse_rows(root, labels_path, names, by_name, problems, file_splits)
    except UnicodeDecodeError as err:
        raise VfmxaiError(f"{labels_path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _parse_rows(
    root: Path, labels_path: Path, names: list[str] | None, by_name: dict[str, int], problems: Problems,
    file_splits: tuple[str, ...],
) -> tuple[dict[str, list[Record]], list[str]]:
    with labels_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise VfmxaiError(
                f"{labels_path}: missing column(s) {', '.join(missing)} (header is {','.join(header) or 'empty'}; "
                f"need {','.join(COLUMNS)})"
            )
        reader.fieldnames = header
        rows = []  # (line, id, label, split)
        first_line: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            sid = (row.get("id") or "").strip()
            split = (row.get("split") or "").strip()
            raw = (row.get("label") or "").strip()
            where = f"{labels_path}:{line}"
            if not sid:
                problems.add(f"{where}: empty id")
                continue
            if "/" in sid or "\\" in sid:
                problems.add(f"{where}: id {sid!r} contains a path separator")
                continue
            if sid in first_line:
                problems.add(f"{where}: id {sid!r} duplicates line {first_line[sid]}")
                continue
            first_line[sid] = line
            if split not in SPLITS:
                problems.add(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
                continue
            label = _parse_label(raw, names, by_name, where, problems)
            if label is not None:
                rows.append((line, sid, label, split))

    if names is None:
        names = [str(i) for i in range(max((r[2] for r in rows), default=-1) + 1)]

    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise VfmxaiError(f"{images_dir}: folder not found (the folder format keeps images in ROOT/images)")
    images = index_images(images_dir)
    masks = {p.name: str(p) for p in masks_dir.iterdir()} if masks_dir.is_dir() else {}
    records: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for line, sid, label, split in rows:
        if split not in file_splits:
            records[split].append(Record(sid, "", label, None))  # counted, not opened
            continue
        where = f"{labels_path}:{line}"
        found = images.get(sid, [])
        if not found:
            problems.add(f"{images_dir}: no image for id {sid!r} ({where}; looked for {sid}.png/.jpg/.jpeg)")
            continue
        if len(found) > 1:
            problems.add(f"{images_dir}: several images for id {sid!r} ({', '.join(p.name for p in found)})")
            continue
        mask = masks.get(f"{sid}.png")
        if mask is None and split != "train":
            problems.add(f"{masks_dir}: no mask {sid}.png for {split} image {sid!r} ({where})")
            continue
        records[split].append(Record(sid, str(found[0]), label, mask))
    return records, names


def _parse_label(
    raw: str, names: list[str] | None, by_name: dict[str, int], where: str, problems: Problems
) -> int | None:
    try:
        label = int(raw)
    except ValueError:
        if raw in by_name:
            return by_name[raw]
        known = "a class name from classes.txt or " if names is not None else ""
        problems.add(f"{where}: label {raw!r} is not {known}a 0-based class index")
        return None
    if label < 0:
        problems.add(f"{where}: label {label} is negative")
        return None
    if names is None and label >= MAX_CLASSES:
        problems.add(f"{where}: label {label} is implausibly large (over {MAX_CLASSES:,} classes); "
                     "give classes.txt or 0-based labels")
        return None
    if names is not None and label >= len(names):
        n = len(names)
        problems.add(f"{where}: label {label} out of range: classes.txt lists {n} classes (0..{n - 1})")
        return None
    return label


class FolderDataset(FileDataset):
    """One split of a folder-format dataset."""

    def __init__(self, root: str | Path, split: str, image_size: int = 64) -> None:
        if split not in SPLITS:
            raise VfmxaiError(f"split {split!r} unknown; choose one of {', '.join(SPLITS)}")
        self.root = Path(root)
        records, names = _parse(self.root, Problems(), (split,))
        super().__init__(records[split], names, split, image_size, read_folder_mask)


def folder_info(root: str | Path) -> dict:
    records, names = _parse(Path(root), Problems(collect=True), ())
    return {"dataset": "folder", "root": str(root), "splits": split_sizes(records),
            "num_classes": len(names), "class_names": names}


def check_folder(root: str | Path) -> list[str]:
    """Every problem of a folder dataset, one line each; empty when the dataset is sound."""
    problems = Problems(collect=True)
    try:
        records, names = _parse(Path(root), problems, SPLITS)
    except VfmxaiError as err:
        return [*problems.lines, str(err)]
    for split in SPLITS:
        check_records(records[split], read_folder_mask, problems, require_mask=split != "train", where=f"{split} ")
    if not any(records.values()):
        problems.add(f"{Path(root) / 'labels.csv'}: no usable rows")
    return problems.lines
