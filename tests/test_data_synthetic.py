"""The synthetic generator: determinism, exact masks, disk round trip, and class signal in the object only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vfmxai.data import FolderDataset, SyntheticDataset, get_dataset, write_synthetic
from vfmxai.data.synthetic import AREA_RANGE, TASKS, class_names, render
from vfmxai.errors import VfmxaiError


def test_same_seed_same_tensors_and_other_seed_differs():
    a, b = SyntheticDataset("train", 6, seed=3), SyntheticDataset("train", 6, seed=3)
    c = SyntheticDataset("train", 6, seed=4)
    for i in range(6):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])
        assert not torch.equal(a[i]["image"], c[i]["image"])
        assert not torch.equal(a[i]["mask"], c[i]["mask"])


def test_image_depends_only_on_seed_split_index():
    big = SyntheticDataset("val", 40, seed=7)
    small = SyntheticDataset("val", 3, seed=7)
    for i in range(3):
        assert torch.equal(big[i]["image"], small[i]["image"])
    # random access in any order gives the same image
    assert torch.equal(big[37]["image"], SyntheticDataset("val", 38, seed=7)[37]["image"])
    # splits and tasks are different streams
    assert not torch.equal(big[0]["image"], SyntheticDataset("test", 1, seed=7)[0]["image"])
    assert not torch.equal(big[0]["image"], SyntheticDataset("val", 1, seed=7, task="pretrain")[0]["image"])


def test_sample_format_and_balanced_labels():
    ds = SyntheticDataset("test", 12, size=48, image_size=32)
    s = ds[5]
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert s["mask"].shape == (32, 32) and s["mask"].dtype == torch.bool
    assert s["id"] == "test-00005" and s["has_mask"] is True
    assert [ds[i]["label"] for i in range(12)] == [i % 6 for i in range(12)]
    assert ds.class_names == class_names("demo") and ds.num_classes == 6


def test_tasks_have_disjoint_classes():
    demo, pre = set(class_names("demo")), set(class_names("pretrain"))
    assert len(demo) == 6 and len(pre) == 8 and not demo & pre
    assert not set(TASKS["demo"][0]) & set(TASKS["pretrain"][0])
    assert not set(TASKS["demo"][1]) & set(TASKS["pretrain"][1])


def _matches(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Which pixels (N, 3) are within the noise of one of the colours (K, 3)."""
    return (np.abs(values[:, None, :] - centres[None]).max(2) < 25).any(1)


def test_mask_is_where_the_object_was_drawn():
    """Every mask pixel has one of the object's two colours (up to the pixel noise, sd ~5/255), and the
    ring of pixels just outside the mask mostly does not: a mask shifted or grown by one pixel fails."""
    outside_hits = []
    for i in range(24):
        img, mask, _ = render(0, "train", i, 64, "demo")
        px = img.astype(float)
        inside = px[mask]
        near = np.abs(inside - inside[0]).max(1) < 45  # the two colours differ by >= 89 in every channel
        centres = np.stack([np.median(inside[near], 0), np.median(inside[~near], 0)])
        assert _matches(inside, centres).all()
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        outside_hits.append(_matches(px[grown & ~mask], centres).mean())
    assert np.mean(outside_hits) < 0.15, outside_hits


def test_object_area_and_inside_image():
    lo, hi = AREA_RANGE
    for task in TASKS:
        fractions = np.array([render(1, "val", i, 64, task)[1].mean() for i in range(48)])
        # rasterised area within 15 % of the sampled area range
        assert fractions.min() > lo * 0.85 and fractions.max() < hi * 1.15


def test_write_synthetic_round_trip(tmp_path):
    write_synthetic(tmp_path / "s", n_train=7, n_val=3, n_test=4, size=40, seed=5)
    assert (tmp_path / "s" / "classes.txt").read_text().split() == class_names("demo")
    for split, n in (("train", 7), ("val", 3), ("test", 4)):
        disk = FolderDataset(tmp_path / "s", split, image_size=40)
        live = SyntheticDataset(split, n, size=40, seed=5)
        assert len(disk) == n and disk.class_names == live.class_names
        for i in range(n):
            a, b = disk[i], live[i]
            # images are quantised to 1/255 when generated, so PNG stores them exactly
            assert torch.equal(a["image"], b["image"])
            assert torch.equal(a["mask"], b["mask"])
            assert (a["label"], a["id"]) == (b["label"], b["id"])


def test_registry_passes_options():
    ds = get_dataset("synthetic", None, "val", 32, seed=2, n_val=5, size=48, task="pretrain")
    assert len(ds) == 5 and ds.num_classes == 8 and ds[0]["image"].shape == (3, 32, 32)
    with pytest.raises(VfmxaiError, match="unknown option"):
        get_dataset("synthetic", None, "val", 32, n_vall=5)
    with pytest.raises(VfmxaiError, match="task 'nope'"):
        SyntheticDataset("val", 1, task="nope")
    with pytest.raises(VfmxaiError, match="split 'dev'"):
        SyntheticDataset("dev", 1)


# ---- class signal lives in the object only --------------------------------------------------------------

_OFFSETS = [(0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0), (2, 2), (2, -2), (0, 3), (3, 0), (0, 4), (4, 0)]


def _region_features(img: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Pixel-content statistics of one region only: colour mean/sd/histograms and mean absolute
    differences between pixel pairs at fixed offsets with both pixels inside the region (texture).
    The region's own outline does not enter, so the object silhouette cannot leak into background features."""
    x = img.astype(np.float64) / 255.0
    px = x[region]
    feats = [px.mean(0), px.std(0)]
    bins = np.minimum((px * 8).astype(np.int64), 7) + 8 * np.arange(3)
    feats.append(np.bincount(bins.ravel(), minlength=24) / len(px))
    g, s = x.mean(2), x.shape[0]
    diffs = []
    for dy, dx in _OFFSETS:
        y0, y1, x0, x1 = max(0, -dy), s - max(0, dy), max(0, -dx), s - max(0, dx)
        both = region[y0:y1, x0:x1] & region[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
        diffs.append(np.abs(g[y0:y1, x0:x1] - g[y0 + dy : y1 + dy, x0 + dx : x1 + dx])[both].mean())
    return np.concatenate([*feats, np.array(diffs)])


def _ridge_accuracy(xtr, ytr, xte, yte, classes: int) -> float:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    a = np.c_[(xtr - mu) / sd, np.ones(len(xtr))]
    w = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ np.eye(classes)[ytr])
    pred = (np.c_[(xte - mu) / sd, np.ones(len(xte))] @ w).argmax(1)
    return float((pred == yte).mean())


_N = 400  # images per split


@pytest.fixture(scope="module")
def region_features():
    out = {}
    for split in ("train", "test"):
        bg, obj, leaky, labels = [], [], [], []
        rng = np.random.default_rng(1)
        for i in range(_N):
            img, mask, label = render(0, split, i, 64, "demo")
            bg.append(_region_features(img, ~mask))
            obj.append(_region_features(img, mask))
            # a planted leak: background pixel noise whose amplitude grows with the class (sd 2*label / 255)
            noisy = img + rng.normal(0.0, 2.0 * label, img.shape) * (~mask)[..., None]
            leaky.append(_region_features(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), ~mask))
            labels.append(label)
        out[split] = (np.array(bg), np.array(obj), np.array(leaky), np.array(labels))
    return out


def test_background_and_distractors_do_not_predict_the_class(region_features):
    """A classifier that sees only pixels outside the mask scores at chance on held-out images,
    while the same classifier on the object's pixels (pattern texture), or on a background with a planted
    class-dependent noise level, scores well above it (so the test can fail)."""
    c, n = 6, _N
    chance = 1 / c
    bound = 4 * math.sqrt(chance * (1 - chance) / n)  # 4 binomial standard deviations
    (bg_tr, obj_tr, leak_tr, y_tr), (bg_te, obj_te, leak_te, y_te) = region_features["train"], region_features["test"]
    acc_bg = _ridge_accuracy(bg_tr, y_tr, bg_te, y_te, c)
    acc_obj = _ridge_accuracy(obj_tr, y_tr, obj_te, y_te, c)
    acc_leak = _ridge_accuracy(leak_tr, y_tr, leak_te, y_te, c)
    assert abs(acc_bg - chance) < bound, acc_bg
    assert acc_obj > chance + bound, acc_obj
    assert acc_leak > chance + bound, acc_leak
