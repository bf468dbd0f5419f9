"""Write the second synthetic family ("shift"), used only to evaluate ALA on data it was not shaped around.

It differs from the built-in demo family (vfmxai.data.synthetic) wherever we could make it differ:

| | demo | shift |
|---|---|---|
| image size | 64 px | 96 px |
| classes | 6 = shape x two-colour pattern | 4 = shape only (crescent, L, hourglass, long ellipse) |
| object fill | flat two-colour stripes/checker | multi-octave value-noise texture in one random hue |
| object area | 10–30 % of the image | 3–9 % |
| background | smooth gradient + colour waves | textured value noise in two random colours |
| distractors | 2–5 plain blobs and thin lines | 5–9 textured discs and squares filled like the object |

The class is the object's outline alone: distractors carry the same kind of texture and colours as the
object, so neither texture nor colour nor place says which blob is the object or what its class is.
Distractors are drawn first and the object over them; the mask is exactly the object's drawn pixels.
Image i of split s comes from numpy.random.default_rng([seed, 17, s, i]) (17: not a demo task id).

    python scripts/make_shift_set.py --out shift [--size 96] [--n-train 480 --n-val 60 --n-test 120]
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("crescent", "l_shape", "hourglass", "long_ellipse")
AREA_RANGE = (0.03, 0.09)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
FAMILY_ID = 17


def _inside(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unit-size shape in its own frame (extent about [-1, 1])."""
    name = CLASSES[label]
    if name == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.55) ** 2 + v * v > 0.75**2)
    if name == "l_shape":
        return ((np.abs(u + 0.6) <= 0.4) & (np.abs(v) <= 1.0)) | ((np.abs(v - 0.6) <= 0.4) & (np.abs(u) <= 1.0))
    if name == "hourglass":
        return (np.abs(v) <= 1.0) & (np.abs(u) <= 0.9 * np.abs(v) + 0.08)
    return (u / 1.0) ** 2 + (v / 0.38) ** 2 <= 1.0


def _value_noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    """(S, S) in [0, 1]: random grids of 3, 6, 12, ... cells bilinearly upsampled, halving in weight."""
    total = np.zeros((size, size))
    weight_sum = 0.0
    for octave in range(octaves):
        cells = 3 * 2**octave
        grid = rng.uniform(0, 1, (cells + 1, cells + 1))
        t = np.linspace(0, cells, size, endpoint=False)
        i, f = t.astype(int), t - t.astype(int)
        rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]  # (S, cells+1)
        layer = rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]
        weight = 0.5**octave
        total += weight * layer
        weight_sum += weight
    total /= weight_sum
    return (total - total.min()) / max(float(np.ptp(total)), 1e-6)


def _hue(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark and a light colour of one random hue: (3,), (3,)."""
    hue = rng.uniform(0, 1)
    rgb = 0.5 + 0.5 * np.cos(2 * math.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])))
    return rgb * rng.uniform(0.15, 0.45), 0.35 + 0.65 * rgb * rng.uniform(0.6, 1.0)


def _textured(rng: np.random.Generator, size: int) -> np.ndarray:
    dark, light = _hue(rng)
    t = _value_noise(rng, size)[None]
    return dark[:, None, None] * (1 - t) + light[:, None, None] * t


def render(seed: int, split: str, index: int, size: int = 96) -> tuple[np.ndarray, np.ndarray, int]:
    """(uint8 (S, S, 3), bool mask (S, S), label); depends only on the arguments."""
    rng = np.random.default_rng([seed, FAMILY_ID, SPLIT_IDS[split], index])
    label = index % len(CLASSES)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    back_a, back_b = _hue(rng)[0], _hue(rng)[1]
    t = _value_noise(rng, size, octaves=3)[None]
    img = back_a[:, None, None] * (1 - t) + back_b[:, None, None] * t
    for _ in range(int(rng.integers(5, 10))):
        radius = math.sqrt(rng.uniform(*AREA_RANGE) * size * size / math.pi)
        cx, cy = rng.uniform(0, size, 2)
        if rng.random() < 0.5:
            hit = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
        else:
            hit = (np.abs(x - cx) <= 0.9 * radius) & (np.abs(y - cy) <= 0.9 * radius)
        img = np.where(hit[None], _textured(rng, size), img)
    # the object: scale so its drawn area is the target, rotation uniform, fully inside the image
    theta = rng.uniform(-math.pi, math.pi)
    ct, st = math.cos(theta), math.sin(theta)
    probe = np.linspace(-1.2, 1.2, 121)
    pu, pv = np.meshgrid(probe, probe)
    unit_area = _inside(label, pu, pv).mean() * 2.4**2
    scale = math.sqrt(rng.uniform(*AREA_RANGE) * size * size / unit_area)
    margin = 1.2 * scale
    cx, cy = rng.uniform(margin, size - margin, 2)
    du, dv = x - cx, y - cy
    mask = _inside(label, (du * ct + dv * st) / scale, (-du * st + dv * ct) / scale)
    img = np.where(mask[None], _textured(rng, size), img)
    img = img + rng.normal(0.0, 0.015, img.shape)
    out = np.rint(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)
    return np.ascontiguousarray(out), mask, label


def write(out: Path, counts: dict[str, int], size: int, seed: int) -> None:
    """The folder format of `vfmxai.data.folder`: images/, masks/ (0/255), labels.csv, classes.txt."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"{out}: exists and is not an empty folder; choose a new --out")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    rows = []
    for split, n in counts.items():
        for i in range(n):
            img, mask, label = render(seed, split, i, size)
            sid = f"{split}-{i:05d}"
            for folder, array in (("images", img), ("masks", mask.astype(np.uint8) * 255)):
                buf = io.BytesIO()
                Image.fromarray(array).save(buf, format="PNG")
                (out / folder / f"{sid}.png").write_bytes(buf.getvalue())
            rows.append((sid, CLASSES[label], split))
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("id", "label", "split"))
        writer.writerows(rows)
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=480)
    parser.add_argument("--n-val", type=int, default=60)
    parser.add_argument("--n-test", type=int, default=120)
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error(f"--size {args.size}: need at least 32 px")
    counts = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
    if min(counts.values()) < 0:
        parser.error("image counts must be >= 0")
    write(args.out, counts, args.size, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
