"""Folder, CUB-200-2011 and ImageNet-S readers on small trees built in their real formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfmxai.data import (
    DATASETS,
    FORMATS,
    CUBDataset,
    FolderDataset,
    ImageNetSDataset,
    SyntheticDataset,
    check_dataset,
    dataset_info,
    get_dataset,
)
from vfmxai.data.cub import check_cub, cub_info
from vfmxai.data.folder import check_folder, folder_info
from vfmxai.data.imagenet_s import check_imagenet_s, imagenet_s_info, read_imagenet_s_mask
from vfmxai.errors import VfmxaiError


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- folder format -------------------------------------------------------------------------------------


def _folder(root: Path, rows: list[tuple[str, str, str]], classes: list[str] | None = ("a", "b", "c")) -> Path:
    """rows: (id, label, split); every id gets a 12x12 image and a mask with a 3x4 object at its label."""
    for i, (sid, label, _) in enumerate(rows):
        _save(root / "images" / f"{sid}.png", _image(12, 12, i))
        mask = np.zeros((12, 12), dtype=np.uint8)
        k = int(label) if label.isdigit() else 0
        mask[k : k + 3, 2:6] = 255
        _save(root / "masks" / f"{sid}.png", mask)
    (root / "labels.csv").write_text("id,label,split\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


ROWS = [("t0", "0", "train"), ("t1", "1", "train"), ("t2", "2", "train"), ("v0", "1", "val"), ("s0", "2", "test"),
        ("s1", "0", "test")]


def test_folder_reads_counts_labels_masks(tmp_path):
    root = _folder(tmp_path, ROWS)
    (root / "masks" / "t1.png").unlink()  # masks are optional for train
    train = FolderDataset(root, "train", image_size=10)
    assert len(train) == 3 and train.class_names == ["a", "b", "c"] and train.num_classes == 3
    assert [train[i]["label"] for i in range(3)] == [0, 1, 2] and train.split == "train"
    s = train[2]
    assert s["id"] == "t2" and s["has_mask"] and s["image"].shape == (3, 10, 10)
    assert not train[1]["has_mask"] and not bool(train[1]["mask"].any())
    native = FolderDataset(root, "test", image_size=12)
    expect = torch.zeros(12, 12, dtype=torch.bool)
    expect[2:5, 2:6] = True
    assert native[0]["id"] == "s0" and torch.equal(native[0]["mask"], expect)
    raw = torch.from_numpy(np.array(Image.open(root / "images" / "s0.png"))).permute(2, 0, 1)
    assert torch.equal(native[0]["image"], raw.float() / 255)
    double = FolderDataset(root, "test", image_size=24)[0]["mask"]
    assert torch.equal(double, expect.repeat_interleave(2, 0).repeat_interleave(2, 1))
    info = dataset_info("folder", root)
    assert info["splits"] == {"train": 3, "val": 1, "test": 2} and info["num_classes"] == 3
    assert check_dataset("folder", root) == []


def test_folder_labels_by_name_and_without_classes_file(tmp_path):
    root = _folder(tmp_path / "named", [("x", "c", "train"), ("y", "a", "test")])
    assert [FolderDataset(root, "train")[0]["label"], FolderDataset(root, "test")[0]["label"]] == [2, 0]
    bare = _folder(tmp_path / "bare", [("x", "4", "train"), ("y", "1", "test")], classes=None)
    ds = FolderDataset(bare, "test")
    assert ds.num_classes == 5 and ds.class_names == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (lambda r: (r / "labels.csv").unlink(), r"labels.csv: not found"),
        (lambda r: (r / "labels.csv").write_text("id,split\nt0,train\n"), r"labels.csv: missing column\(s\) label"),
        (lambda r: _append(r, "t9,1,dev"), r"labels.csv:8: split 'dev' is not one of"),
        (lambda r: _append(r, "t0,1,train"), r"labels.csv:8: id 't0' duplicates line 2"),
        (lambda r: _append(r, "t9,3,train"), r"labels.csv:8: label 3 out of range: classes.txt lists 3"),
        (lambda r: _append(r, "t9,zebra,train"), r"labels.csv:8: label 'zebra' is not a class name"),
        (lambda r: _append(r, "t9,1,train"), r"images: no image for id 't9' \(.*labels.csv:8"),
        (lambda r: (r / "images" / "t0.JPG").write_bytes(b"x"), r"several images for id 't0'"),
    ],
)
def test_folder_errors_name_the_file_and_row(tmp_path, plant, message):
    root = _folder(tmp_path, ROWS)
    plant(root)
    with pytest.raises(VfmxaiError, match=message):
        FolderDataset(root, "train")


def _append(root: Path, line: str) -> None:
    with (root / "labels.csv").open("a") as f:
        f.write(line + "\n")


def test_folder_load_time_errors(tmp_path):
    root = _folder(tmp_path, ROWS)
    _save(root / "masks" / "s0.png", np.zeros((5, 5), dtype=np.uint8))
    (root / "masks" / "s1.png").unlink()
    with pytest.raises(VfmxaiError, match=r"masks: no mask s1.png for test image 's1'"):
        FolderDataset(root, "test")
    _save(root / "masks" / "s1.png", np.zeros((12, 12), dtype=np.uint8))
    ds = FolderDataset(root, "test")
    with pytest.raises(VfmxaiError, match=r"s0.png: mask is 5x5 but its image .*s0.png is 12x12"):
        ds[0]
    with pytest.raises(VfmxaiError, match="nowhere: dataset folder not found"):
        FolderDataset(tmp_path / "nowhere", "test")


def test_folder_check_reports_every_problem(tmp_path):
    root = _folder(tmp_path, ROWS)
    _append(root, "t0,1,train")  # duplicate id
    _append(root, "q1,1,holdout")  # unknown split
    _append(root, "q2,7,train")  # label out of range
    _append(root, "q3,1,test")  # no image
    _save(root / "masks" / "s0.png", np.zeros((5, 5), dtype=np.uint8))  # wrong size
    _save(root / "masks" / "s1.png", np.zeros((12, 12), dtype=np.uint8))  # empty
    (root / "masks" / "v0.png").unlink()  # val needs a mask
    (root / "images" / "t1.png").write_bytes(b"garbage")  # unreadable
    problems = check_dataset("folder", root)
    expected = [
        "labels.csv:8: id 't0' duplicates line 2",
        "labels.csv:9: split 'holdout'",
        "labels.csv:10: label 7 out of range",
        "no image for id 'q3'",
        "s0.png: mask is 5x5",
        "s1.png: test mask of 's1' has no object pixel",
        "no mask v0.png for val image 'v0'",
        "t1.png: not a readable image",
    ]
    for part in expected:
        assert sum(part in p for p in problems) == 1, (part, problems)
    assert len(problems) == len(expected)


# ---- CUB-200-2011 ----------------------------------------------------------------------------------------


def _cub(root: Path, per_class: tuple[int, int] = (6, 2), seg_at: str = "root") -> Path:
    """3 classes; per class `per_class` = (official train, official test) images of 16x20 (h x w).
    Masks are soft: object 200, a column of 128 (object) and one of 127 (not object)."""
    cub = root / "CUB_200_2011"
    seg = {"root": root / "segmentations", "inside": cub / "segmentations"}[seg_at]
    names = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split = [], [], []
    image_id = 0
    for c, name in enumerate(names, 1):
        for k in range(sum(per_class)):
            image_id += 1
            rel = f"{name}/{name[4:]}_{k:04d}_{image_id}.jpg"
            _save(cub / "images" / rel, _image(16, 20, image_id))
            mask = np.zeros((16, 20), dtype=np.uint8)
            mask[4:10, 5:9] = 200
            mask[4:10, 9] = 128
            mask[4:10, 10] = 127
            _save(seg / rel.replace(".jpg", ".png"), mask)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {1 if k < per_class[0] else 0}")
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (cub / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names, 1)))
    return root


def test_cub_split_labels_and_soft_masks(tmp_path):
    root = _cub(tmp_path)
    train, val, test = (CUBDataset(root, s, image_size=20, seed=0) for s in ("train", "val", "test"))
    # 18 official train images: val = round(994/5994 * 18) = 3, train = 15; test = 6
    assert (len(train), len(val), len(test)) == (15, 3, 6)
    assert train.class_names == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    ids = {s: {r.id for r in d.records} for s, d in (("train", train), ("val", val), ("test", test))}
    assert not ids["train"] & ids["val"] and len(ids["train"] | ids["val"]) == 18
    assert sorted(r.label for r in test.records) == [0, 0, 1, 1, 2, 2]
    assert all(r.id.endswith(("_7", "_8", "_15", "_16", "_23", "_24")) for r in test.records)
    mask = CUBDataset(root, "test", image_size=20)[0]["mask"]  # 16x20 -> 20x20, rows scale 5/4
    cols = mask.any(0).nonzero().flatten().tolist()
    assert cols == [5, 6, 7, 8, 9]  # 200 and 128 are object, 127 is not
    other = CUBDataset(root, "val", seed=1)
    assert {r.id for r in other.records} != ids["val"]  # the split follows the seed
    assert {r.id for r in CUBDataset(tmp_path / "CUB_200_2011", "val").records} == ids["val"]  # root = CUB dir
    info = dataset_info("cub", root)
    assert info["splits"] == {"train": 15, "val": 3, "test": 6} and info["num_classes"] == 3
    assert check_dataset("cub", root) == []


def test_cub_segmentations_inside_and_missing(tmp_path):
    root = _cub(tmp_path / "a", seg_at="inside")
    assert CUBDataset(root, "test")[0]["has_mask"]
    bare = _cub(tmp_path / "b")
    for p in sorted((bare / "segmentations").rglob("*.png")):
        p.unlink()
    for p in sorted((bare / "segmentations").glob("*")):
        p.rmdir()
    (bare / "segmentations").rmdir()
    assert len(CUBDataset(bare, "train")) == 15 and not CUBDataset(bare, "train")[0]["has_mask"]
    with pytest.raises(VfmxaiError, match="no segmentations folder"):
        CUBDataset(bare, "test")
    with pytest.raises(VfmxaiError, match="not a CUB-200-2011 folder"):
        CUBDataset(tmp_path, "test")


def test_cub_check_reports_every_problem(tmp_path):
    root = _cub(tmp_path)
    cub = root / "CUB_200_2011"
    with (cub / "image_class_labels.txt").open("a") as f:
        f.write("99 1\n")  # label for an image that does not exist
    text = (cub / "image_class_labels.txt").read_text().replace("\n2 1\n", "\n2 9\n")  # class out of range
    (cub / "image_class_labels.txt").write_text(text)
    seg = root / "segmentations" / "001.Black_footed_Albatross"
    (seg / "Black_footed_Albatross_0002_3.png").unlink()  # missing mask
    _save(seg / "Black_footed_Albatross_0003_4.png", np.zeros((5, 5), dtype=np.uint8))  # wrong size
    (cub / "images" / "001.Black_footed_Albatross" / "Black_footed_Albatross_0004_5.jpg").write_bytes(b"x")
    problems = check_dataset("cub", root)
    expected = [
        "class 9 of image id 2",
        "image id 99 is not in images.txt",
        "Black_footed_Albatross_0002_3.png: mask of 'Black_footed_Albatross_0002_3' not found",
        "Black_footed_Albatross_0003_4.png: mask is 5x5 but its image",
        "Black_footed_Albatross_0004_5.jpg: not a readable image",
    ]
    for part in expected:
        assert sum(part in p for p in problems) == 1, (part, problems)
    assert len(problems) == len(expected)


# ---- ImageNet-S --------------------------------------------------------------------------------------------

# the categories table lists 300 wnids; the tree holds three of them, at rows 1, 257 and 300, so their mask
# ids are 1 (R=1,G=0), 257 (R=1,G=1) and 300 (R=44,G=1): the reader must decode R + 256*G.
TABLE = [f"n{9000000 - i:08d}" for i in range(300)]  # deliberately not sorted
CLASSES = {TABLE[0]: 1, TABLE[256]: 257, TABLE[299]: 300}


def _id_rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1).astype(np.uint8)


def _imagenet_s(root: Path) -> Path:
    """Per class: 4 train images (2 of them also in train-semi, with masks) and 2 validation images."""
    base = root / "ImageNetS919"
    (root / "ImageNetS_categories_im919.txt").write_text("\n".join(TABLE) + "\n")
    others = list(CLASSES.values())
    for c, (wnid, cid) in enumerate(CLASSES.items()):
        other = others[(c + 1) % 3]
        ids = np.zeros((12, 16), dtype=np.int64)
        ids[2:8, 3:9] = cid  # own class: 36 px
        ids[8:10, 3:9] = 1000  # ignore
        ids[0:2, 10:16] = other  # another class in the same image
        for k in range(4):
            name = f"{wnid}_{k}"
            _save(base / "train" / wnid / f"{name}.JPEG", _image(12, 16, k))
            if k < 2:
                _save(base / "train-semi" / wnid / f"{name}.JPEG", _image(12, 16, k))
                _save(base / "train-semi-segmentation" / wnid / f"{name}.png", _id_rgb(ids))
        for k in range(2):
            name = f"ILSVRC2012_val_{c * 10 + k:08d}"
            _save(base / "validation" / wnid / f"{name}.JPEG", _image(12, 16, 50 + k))
            _save(base / "validation-segmentation" / wnid / f"{name}.png", _id_rgb(ids))
    return root


def test_imagenet_s_splits_labels_and_rgb_class_ids(tmp_path):
    root = _imagenet_s(tmp_path)
    train, val, test = (ImageNetSDataset(root, s, image_size=16) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (6, 6, 6)  # train excludes the train-semi images
    assert {r.id for r in train.records}.isdisjoint({r.id for r in val.records})
    assert train.num_classes == 300 and train.class_names == TABLE
    assert sorted({r.label for r in test.records}) == [0, 256, 299]
    for ds in (val, test):
        for i in range(len(ds)):
            s = ds[i]
            assert s["has_mask"] and s["image"].shape == (3, 16, 16)
            expect = torch.zeros(12, 16, dtype=torch.bool)
            expect[2:8, 3:9] = True  # own class only: not ignore (1000), not the other class
            assert torch.equal(torch.from_numpy(read_imagenet_s_mask(ds.records[i].mask, s["label"])), expect)
    assert not any(train[i]["has_mask"] for i in range(len(train)))
    same = ImageNetSDataset(root / "ImageNetS919", "test")  # root = the ImageNetS919 folder itself
    assert [r.id for r in same.records] == [r.id for r in test.records]
    info = dataset_info("imagenet-s", root)
    assert info["splits"] == {"train": 6, "val": 6, "test": 6} and info["num_classes"] == 300
    assert check_dataset("imagenet-s", root) == []


def test_imagenet_s_errors_and_check(tmp_path):
    root = _imagenet_s(tmp_path)
    base = root / "ImageNetS919"
    wnid = TABLE[0]
    (base / "validation-segmentation" / wnid / "ILSVRC2012_val_00000000.png").unlink()  # missing mask
    with pytest.raises(VfmxaiError, match=r"ILSVRC2012_val_00000000.JPEG: no mask"):
        ImageNetSDataset(root, "test")
    _save(base / "validation" / "n00000001" / "x.JPEG", _image(4, 4, 0))  # folder not in the table
    _save(base / "validation-segmentation" / "n00000001" / "x.png", _id_rgb(np.zeros((4, 4), dtype=np.int64)))
    seg = base / "train-semi-segmentation" / wnid
    _save(seg / f"{wnid}_0.png", _id_rgb(np.zeros((3, 3), dtype=np.int64)))  # wrong size
    _save(seg / f"{wnid}_1.png", _id_rgb(np.full((12, 16), 257, dtype=np.int64)))  # no pixel of its own class
    problems = check_dataset("imagenet-s", root)
    expected = [
        "ILSVRC2012_val_00000000.JPEG: no mask",
        "n00000001 is not a class of ImageNetS_categories_im919.txt",
        f"{wnid}_0.png: mask is 3x3 but its image",
        f"{wnid}_0.png: no pixel of the image's class",
        f"{wnid}_1.png: no pixel of the image's class {wnid} (id 1)",
    ]
    for part in expected:
        assert sum(part in p for p in problems) == 1, (part, problems)
    assert len(problems) == len(expected)
    (root / "ImageNetS_categories_im919.txt").unlink()
    with pytest.raises(VfmxaiError, match="ImageNetS_categories_im919.txt not found"):
        ImageNetSDataset(root, "val")


# ---- registry --------------------------------------------------------------------------------------------


def test_registry_names_and_roots(tmp_path):
    with pytest.raises(VfmxaiError, match="dataset 'coco' unknown; choose one of synthetic, folder, cub, imagenet-s"):
        get_dataset("coco", tmp_path, "train", 32)
    with pytest.raises(VfmxaiError, match="needs a root folder"):
        get_dataset("cub", None, "train", 32)
    with pytest.raises(VfmxaiError, match="missing: dataset folder not found"):
        check_dataset("folder", tmp_path / "missing")
    with pytest.raises(VfmxaiError, match="split 'dev' unknown"):
        get_dataset("folder", tmp_path, "dev", 32)
    root = _folder(tmp_path / "f", ROWS)
    ds = get_dataset("folder", root, "val", 24, seed=3, n_train=5)  # synthetic options are ignored here
    assert len(ds) == 1 and ds[0]["image"].shape == (3, 24, 24)
    info = dataset_info("synthetic", n_test=7)
    assert info["splits"]["test"] == 7 and info["num_classes"] == 6


def test_table_has_one_format_per_dataset_name_and_refuses_others(tmp_path):
    assert tuple(FORMATS) == DATASETS  # same names, same order as the error message lists them
    calls = (lambda: get_dataset("CUB", tmp_path, "train", 32), lambda: dataset_info("CUB", tmp_path),
             lambda: check_dataset("CUB", tmp_path))
    for call in calls:
        with pytest.raises(VfmxaiError, match="dataset 'CUB' unknown"):
            call()


def _ids(dataset) -> list[str]:
    return [r.id for r in dataset.records]


def test_each_name_reaches_its_own_format(tmp_path):
    (tmp_path / "i").mkdir()
    trees = {"folder": _folder(tmp_path / "f", ROWS), "cub": _cub(tmp_path / "c"),
             "imagenet-s": _imagenet_s(tmp_path / "i")}
    own = {
        "folder": (lambda r, s, n: FolderDataset(r, s, n), lambda r: folder_info(r), check_folder),
        "cub": (lambda r, s, n: CUBDataset(r, s, n, seed=2), lambda r: cub_info(r, seed=2), check_cub),
        "imagenet-s": (lambda r, s, n: ImageNetSDataset(r, s, n), lambda r: imagenet_s_info(r), check_imagenet_s),
    }
    for name, root in trees.items():
        read, info, check = own[name]
        for split in ("train", "val", "test"):
            ds = get_dataset(name, root, split, 20, seed=2)
            assert type(ds) is type(read(root, split, 20)) and _ids(ds) == _ids(read(root, split, 20))
        assert dataset_info(name, root, seed=2) == info(root)
        assert check_dataset(name, root) == check(root)
    (trees["folder"] / "masks" / "v0.png").unlink()  # one problem, so the check has something to report
    problems = check_dataset("folder", trees["folder"])
    assert problems == check_folder(trees["folder"]) and len(problems) == 1
    cub = trees["cub"]
    assert _ids(get_dataset("cub", cub, "val", 20, seed=0)) != _ids(get_dataset("cub", cub, "val", 20, seed=2))


def test_synthetic_needs_no_root_and_checks_its_options(tmp_path):
    ds = get_dataset("synthetic", tmp_path / "nowhere", "val", 16, seed=1, n_val=3, size=32)
    assert isinstance(ds, SyntheticDataset) and len(ds) == 3 and ds[0]["image"].shape == (3, 16, 16)
    assert check_dataset("synthetic", tmp_path / "nowhere") == []
    info = dataset_info("synthetic", seed=4, task="demo")
    assert info["splits"] == {"train": 600, "val": 120, "test": 120} and info["seed"] == 4
    with pytest.raises(VfmxaiError, match="unknown option.s. n_dev; known: n_train"):
        dataset_info("synthetic", n_dev=3)
    with pytest.raises(VfmxaiError, match="unknown option.s. n_dev"):
        get_dataset("synthetic", None, "train", 16, n_dev=3)


def test_a_split_with_no_images_is_reported_and_training_refuses_it_up_front(tmp_path):
    from vfmxai.config import preset
    from vfmxai.training import train

    root = _folder(tmp_path / "data", [row for row in ROWS if row[2] != "val"])
    assert check_dataset("folder", root) == [f"{root}: the val split has no images"]
    config = preset("toy")
    config.backbone.name, config.backbone.image_size = "tiny", 32
    config.data.dataset, config.data.root = "folder", str(root)
    with pytest.raises(VfmxaiError, match="the val split has no images; training needs train and val images"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
