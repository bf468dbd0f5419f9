"""Fuzzing the loaders: whatever the bytes, `load_image` returns a (3, H, W) float tensor in [0, 1] or
raises VfmxaiError with one line; the folder loader loads, lists problems or raises VfmxaiError.

Budget: 60 examples per test, derandomised (the same examples every run, so the suite cannot flake) and
without hypothesis' example database. Longer exploratory runs are in the reliability report.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from vfmxai.data import FolderDataset, check_dataset, load_image
from vfmxai.errors import VfmxaiError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.*")  # "Corrupt EXIF data" and the like

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}
HEADERS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*", b"BM", b"GIF89a",
           b"RIFF\x00\x00\x00\x00WEBPVP8 "]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def assert_loads_or_one_line_error(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor | None:
    """The tensor if the file loads (checked against the contract), None after a one-line VfmxaiError."""
    try:
        image = load_image(path)
    except VfmxaiError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return None
    assert image.dtype == torch.float32 and image.dim() == 3 and image.shape[0] == 3
    assert bool(torch.isfinite(image).all()) and float(image.min()) >= 0 and float(image.max()) <= 1
    if size is not None:
        assert tuple(image.shape[1:]) == size
    return image


def _picture(mode: str, width: int, height: int, seed: int, special: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "F":
        values = rng.normal(0.5, 1.0, (height, width)).astype(np.float32)
        if special:
            values.flat[rng.integers(0, values.size, 3)] = [np.nan, np.inf, -np.inf]
        return Image.fromarray(values)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    im = rgb.convert("P").convert("PA") if mode == "PA" else rgb.convert(mode)
    if special and mode == "P":
        im.info["transparency"] = 0
    return im


def _encoded(im: Image.Image, fmt: str) -> bytes | None:
    buffer = io.BytesIO()
    try:
        im.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return None  # this format cannot store this mode
    return buffer.getvalue()


@FUZZ
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=400), suffix=st.sampled_from(list(FORMATS.values())))
def test_random_bytes_load_or_raise_one_line(scratch, header, body, suffix):
    path = scratch / f"random{suffix}"
    path.write_bytes(header + body)
    assert_loads_or_one_line_error(path)


@FUZZ
@given(
    mode=st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "PA", "I;16", "F", "CMYK", "YCbCr"]),
    fmt=st.sampled_from(list(FORMATS)),
    width=st.integers(1, 48),
    height=st.integers(1, 48),
    seed=st.integers(0, 2**16),
    special=st.booleans(),
)
@example(mode="F", fmt="TIFF", width=5, height=3, seed=0, special=True)  # found: NaN and inf pixels
def test_valid_images_of_any_mode_and_size_give_the_contract_tensor(scratch, mode, fmt, width, height, seed, special):
    data = _encoded(_picture(mode, width, height, seed, special), fmt)
    if data is None:
        return
    path = scratch / f"valid{FORMATS[fmt]}"
    path.write_bytes(data)
    assert assert_loads_or_one_line_error(path, (height, width)) is not None


@FUZZ
@given(
    fmt=st.sampled_from(["PNG", "JPEG", "TIFF", "GIF", "WEBP"]),
    seed=st.integers(0, 2**16),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_damaged_valid_files_load_or_raise_one_line(scratch, fmt, seed, flips, cut):
    data = bytearray(_encoded(_picture("RGB", 23, 17, seed, False), fmt))
    for position, value in flips:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    path = scratch / f"damaged{FORMATS[fmt]}"
    path.write_bytes(bytes(data))
    assert_loads_or_one_line_error(path)


# ---- the folder format ------------------------------------------------------------------------------------

IDS = ("a", "b", "c")
CELLS = st.one_of(
    st.sampled_from([*IDS, "d", "", "train", "val", "test", "0", "1", "2", "-1", "x", "a/b", '"', " 1", "1e3",
                     "1_0", "٣", "NaN"]),
    st.text(max_size=4),
)
ROWS = st.lists(CELLS, max_size=5).map(",".join)
HEADER = st.sampled_from(["id,label,split", "split,label,id", "id,label", "id,label,split,note", "\ufeffid,label,split",
                          "id, label ,split", ""])
LABELS_CSV = st.tuples(HEADER, st.lists(ROWS, max_size=6), st.sampled_from(["\n", "\r\n", "\r"])).map(
    lambda parts: parts[2].join([parts[0], *parts[1]])
)
CLASSES_TXT = st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "c", "", " ", "a "]), max_size=4).map("\n".join))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three 6x6 images with masks; each example writes its own labels.csv and classes.txt."""
    root = tmp_path_factory.mktemp("folder")
    for sid in IDS:
        (root / "images").mkdir(exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.full((6, 6, 3), 90, dtype=np.uint8)).save(root / "images" / f"{sid}.png")
        mask = np.zeros((6, 6), dtype=np.uint8)
        mask[1:4, 2:5] = 255
        Image.fromarray(mask).save(root / "masks" / f"{sid}.png")
    return root


@FUZZ
@given(labels=LABELS_CSV, classes=CLASSES_TXT)
def test_any_labels_csv_loads_lists_problems_or_raises_one_line(folder, labels, classes):
    (folder / "labels.csv").write_text(labels, encoding="utf-8")
    (folder / "classes.txt").unlink(missing_ok=True)
    if classes is not None:
        (folder / "classes.txt").write_text(classes, encoding="utf-8")
    problems = check_dataset("folder", folder)
    assert all(isinstance(line, str) and line and "\n" not in line for line in problems)
    for split in ("train", "val", "test"):
        try:
            dataset = FolderDataset(folder, split, image_size=4)
        except VfmxaiError as err:
            assert "\n" not in str(err)
            assert problems, f"{split} refused ({err}) but check_dataset found no problem"
            continue
        for sample in dataset:
            assert sample["image"].shape == (3, 4, 4) and 0 <= sample["label"] < dataset.num_classes
            assert sample["id"] in IDS


@pytest.mark.parametrize("name", ["labels.csv", "classes.txt"])
def test_a_labels_file_that_is_not_utf8_is_a_one_line_error(folder, name):
    (folder / "labels.csv").write_text("id,label,split\na,0,train\n", encoding="utf-8")
    (folder / "classes.txt").write_text("a\nb\n", encoding="utf-8")
    (folder / name).write_bytes("id,label,split\nb,é,train\n".encode("latin-1"))
    with pytest.raises(VfmxaiError, match=name):
        FolderDataset(folder, "train")
