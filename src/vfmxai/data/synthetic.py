"""The built-in synthetic dataset: one patterned object per image, its class set by its look only.

Each image holds one class object, a shape filled with a two-colour pattern, drawn over a cluttered
background (a smooth two-colour gradient, low-frequency colour waves, pixel noise) and 2–5 distractors
(small plain blobs and thin lines). The class is (shape, pattern). Everything else is drawn independently
of the class: object colours, position, rotation, size (area 10–30 % of the image, the same distribution
for every shape), pattern scale and phase, background, and the type, colour and place of distractors.
So neither background nor distractors nor colour predict the class; only the object's own appearance does.
Distractors are drawn first and the object over them, so the mask is exactly the object's drawn pixels.

Determinism: image `i` of split `s` is drawn from `numpy.random.default_rng([seed, task, s, i])`, so any
subset regenerates identically, on the fly or on disk. Labels cycle `i % num_classes` (exactly balanced).
Pixel values are quantised to 1/255 so the on-the-fly images equal those written as PNG.

Two tasks with disjoint classes: `demo` (disc/ring/bar x stripes/checker, 6 classes) and
`pretrain` (cross/frame/triangle/star x dots/grid, 8 classes), used to pretrain the shipped default
backbone so that the demo starts from features learnt on a different task. The shapes differ in coarse
structure (compact, holed, elongated, armed) rather than only in corners: a small ViT trained from scratch
on disc/square/triangle learnt the patterns but stayed at chance on the shape.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vfmxai.data.base import SPLITS, Sample, make_sample
from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write, atomic_write_json, atomic_write_text, check_out_folder
from vfmxai.vocabulary import SYNTHETIC_SIZE, SYNTHETIC_SPLITS

MAX_SIZE = 4096
"""The largest side of a synthetic image in pixels (as `data.synth_size`): one image of it is 48 MiB as float."""

AREA_RANGE = (0.10, 0.30)
"""Object area as a fraction of the image, uniform; the same for every class."""

ROTATION = math.pi
"""Object rotation is uniform in [-ROTATION, ROTATION] radians."""

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_TASK_IDS = {"demo": 0, "pretrain": 1}


# ---- shapes: inside tests in the object's frame, unit "radius" ----------------------------------------

@dataclass(frozen=True)
class _Shape:
    inside: Callable[[np.ndarray, np.ndarray], np.ndarray]
    area: float
    """Area of the unit shape, so radius = sqrt(target_area / area)."""
    outline: np.ndarray
    """(K, 2) points whose rotated bounding box is the shape's bounding box."""


def _polygon(n: int, phase: float) -> _Shape:
    normals = phase + 2 * math.pi * np.arange(n) / n
    apothem = math.cos(math.pi / n)
    cos, sin = np.cos(normals), np.sin(normals)

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (np.multiply.outer(u, cos) + np.multiply.outer(v, sin)).max(-1) <= apothem

    corners = normals + math.pi / n
    return _Shape(inside, n / 2 * math.sin(2 * math.pi / n), np.stack([np.cos(corners), np.sin(corners)], 1))


def _circle_outline() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _disc() -> _Shape:
    return _Shape(lambda u, v: u * u + v * v <= 1.0, math.pi, _circle_outline())


def _ring(inner: float = 0.5) -> _Shape:
    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        rho2 = u * u + v * v
        return (rho2 <= 1.0) & (rho2 >= inner * inner)

    return _Shape(inside, math.pi * (1 - inner * inner), _circle_outline())


def _star(points: int = 5, inner: float = 0.45) -> _Shape:
    """Star polygon: outer vertices at radius 1, inner ones at `inner`, edges straight."""
    half = math.pi / points
    # edge from the outer vertex P=(1,0) to the inner vertex Q at angle `half`, in a folded sector
    px, py = 1.0, 0.0
    qx, qy = inner * math.cos(half), inner * math.sin(half)
    nx, ny = qy - py, px - qx  # normal of PQ pointing away from the origin
    offset = nx * px + ny * py

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        rho = np.hypot(u, v)
        alpha = np.abs(np.mod(np.arctan2(v, u) + half, 2 * half) - half)
        return rho * (nx * np.cos(alpha) + ny * np.sin(alpha)) <= offset

    angles = np.arange(2 * points) * half
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    outline = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    return _Shape(inside, points * inner * math.sin(half), outline)


def _cross(half_width: float = 0.35) -> _Shape:
    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1) & (av <= half_width)) | ((av <= 1) & (au <= half_width))

    w = half_width
    outline = np.array([[1, w], [1, -w], [-1, w], [-1, -w], [w, 1], [-w, 1], [w, -1], [-w, -1]], float)
    return _Shape(inside, 4 * 2 * w - 4 * w * w, outline)


def _rectangle(half_height: float) -> _Shape:
    """A bar: |u| <= 1, |v| <= half_height."""
    h = half_height
    outline = np.array([[1, h], [1, -h], [-1, h], [-1, -h]], float)
    return _Shape(lambda u, v: (np.abs(u) <= 1) & (np.abs(v) <= h), 4 * h, outline)


def _frame(inner: float = 0.55) -> _Shape:
    """A hollow square: the square |u|, |v| <= 1 minus the square |u|, |v| < inner."""

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        m = np.maximum(np.abs(u), np.abs(v))
        return (m <= 1) & (m >= inner)

    outline = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], float)
    return _Shape(inside, 4 * (1 - inner * inner), outline)


@cache
def _shapes() -> dict[str, _Shape]:
    return {
        "disc": _disc(),
        "ring": _ring(),
        "bar": _rectangle(1 / 3),
        "cross": _cross(),
        "frame": _frame(),
        "triangle": _polygon(3, math.pi / 6),
        "star": _star(),
    }


# ---- patterns: True where the second colour goes; coordinates in pixels, object frame ------------------

def _stripes(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, k: float) -> np.ndarray:
    period = max(rng.uniform(6.0, 9.0) * k, 3.0)
    return np.mod(u + rng.uniform(0, period), period) < period / 2


def _checker(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, k: float) -> np.ndarray:
    cell = max(rng.uniform(4.0, 6.0) * k, 2.0)
    ph = rng.uniform(0, cell, 2)
    return (np.floor((u + ph[0]) / cell) + np.floor((v + ph[1]) / cell)) % 2 == 1


def _dots(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, k: float) -> np.ndarray:
    period = max(rng.uniform(6.0, 8.0) * k, 3.0)
    ph = rng.uniform(0, period, 2)
    du = np.mod(u + ph[0], period) - period / 2
    dv = np.mod(v + ph[1], period) - period / 2
    return du * du + dv * dv <= (0.3 * period) ** 2


def _grid(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, k: float) -> np.ndarray:
    period = max(rng.uniform(6.0, 8.0) * k, 3.0)
    ph = rng.uniform(0, period, 2)
    width = 0.3 * period
    return (np.mod(u + ph[0], period) < width) | (np.mod(v + ph[1], period) < width)


_PATTERNS = {"stripes": _stripes, "checker": _checker, "dots": _dots, "grid": _grid}

TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "demo": (("disc", "ring", "bar"), ("stripes", "checker")),
    "pretrain": (("cross", "frame", "triangle", "star"), ("dots", "grid")),
}
"""task -> (shapes, patterns); classes are every (shape, pattern), shape-major."""


def class_names(task: str = "demo") -> list[str]:
    """Class names of a task, e.g. `disc-stripes`; index = label."""
    shapes, patterns = _task(task)
    return [f"{s}-{p}" for s in shapes for p in patterns]


def _task(task: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if task not in TASKS:
        raise VfmxaiError(f"synthetic task {task!r} unknown; choose one of {', '.join(TASKS)}")
    return TASKS[task]


# ---- rendering ---------------------------------------------------------------------------------------

def _rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _TASK_IDS[task], _SPLIT_IDS[split], int(index)])


def _background(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """(3, S, S): a two-colour linear gradient plus low-frequency colour waves."""
    c0, c1 = rng.uniform(0, 1, (2, 3, 1, 1))
    phi = rng.uniform(0, 2 * math.pi)
    proj = (x - size / 2) * math.cos(phi) + (y - size / 2) * math.sin(phi)
    t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    img = c0 * (1 - t) + c1 * t
    freq = rng.uniform(-2.0, 2.0, (3, 3, 2)) * (2 * math.pi / size)  # (channel, wave, xy), <= 2 cycles
    phase = rng.uniform(0, 2 * math.pi, (3, 3, 1, 1))
    amp = rng.uniform(0.0, 0.08, (3, 3, 1, 1))
    # sin(a + b) = sin a cos b + cos a sin b with a along x, b along y: no per-pixel sine
    a = freq[..., 0, None, None] * x[:1]
    b = freq[..., 1, None, None] * y[:, :1] + phase
    waves = amp * (np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b))
    return img + waves.sum(1)


def _draw_distractors(img: np.ndarray, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, k: float) -> None:
    """2–5 small plain blobs (ellipses) or thin lines, anywhere, in random colours; in place."""
    size = img.shape[-1]
    for _ in range(int(rng.integers(2, 6))):
        colour = rng.uniform(0, 1, (3, 1))
        cx, cy = rng.uniform(0, size, 2)
        angle = rng.uniform(0, math.pi)
        ca, sa = math.cos(angle), math.sin(angle)
        du, dv = x - cx, y - cy
        along, across = du * ca + dv * sa, -du * sa + dv * ca
        if rng.random() < 0.5:
            ax, ay = rng.uniform(1.5, 4.0, 2) * k
            hit = (along / ax) ** 2 + (across / ay) ** 2 <= 1.0
        else:
            length = rng.uniform(8.0, 24.0) * k
            half_width = rng.uniform(0.5, 1.0) * max(k, 1.0)
            hit = (np.abs(across) <= half_width) & (along >= -length / 2) & (along <= length / 2)
        img[:, hit] = colour


def render(seed: int, split: str, index: int, size: int = 64, task: str = "demo") -> tuple[np.ndarray, np.ndarray, int]:
    """One image: (uint8 (S, S, 3), bool mask (S, S), label). Depends only on the arguments."""
    shapes, patterns = _task(task)
    if split not in _SPLIT_IDS:
        raise VfmxaiError(f"synthetic split {split!r} unknown; choose one of {', '.join(SPLITS)}")
    rng = _rng(seed, task, split, index)
    label = index % (len(shapes) * len(patterns))
    shape = _shapes()[shapes[label // len(patterns)]]
    pattern = _PATTERNS[patterns[label % len(patterns)]]
    k = size / 64.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    img = _background(rng, x, y, size)
    _draw_distractors(img, rng, x, y, k)

    area = rng.uniform(*AREA_RANGE) * size * size
    radius = math.sqrt(area / shape.area)
    theta = rng.uniform(-ROTATION, ROTATION)
    ct, st = math.cos(theta), math.sin(theta)
    rot = shape.outline @ np.array([[ct, st], [-st, ct]]) * radius  # outline points in image axes
    low, high = -rot.min(0), size - rot.max(0)
    cx, cy = rng.uniform(low, np.maximum(high, low))
    du, dv = x - cx, y - cy
    u, v = du * ct + dv * st, -du * st + dv * ct  # object frame, pixels
    mask = shape.inside(u / radius, v / radius)
    base = rng.uniform(0, 1, 3)
    second = np.mod(base + 0.5 + rng.uniform(-0.15, 0.15, 3), 1.0)
    second_here = pattern(u, v, rng, k)
    colour = np.where(second_here[None], second[:, None, None], base[:, None, None])
    img = np.where(mask[None], colour, img)

    img = img + rng.normal(0.0, 0.02, img.shape)
    out = np.rint(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)
    return np.ascontiguousarray(out), mask, label


def _check_args(split: str, n: int, size: int, seed: int, task: str) -> None:
    _task(task)
    if split not in _SPLIT_IDS:
        raise VfmxaiError(f"synthetic split {split!r} unknown; choose one of {', '.join(SPLITS)}")
    if n < 0:
        raise VfmxaiError(f"synthetic: number of {split} images must be >= 0, got {n}")
    if not 16 <= size <= MAX_SIZE:
        raise VfmxaiError(f"synthetic: size must be in [16, {MAX_SIZE}] px, got {size}")
    if seed < 0:
        raise VfmxaiError(f"synthetic: seed must be >= 0, got {seed}")


class SyntheticDataset(torch.utils.data.Dataset):
    """`n` synthetic images of one split, rendered on access at `size` px, returned at `image_size` px.

    Samples follow the common format of `vfmxai.data.base` (every sample has an exact mask).
    """

    def __init__(
        self,
        split: str,
        n: int,
        size: int = 64,
        seed: int = 0,
        task: str = "demo",
        image_size: int | None = None,
    ) -> None:
        _check_args(split, n, size, seed, task)
        self.split, self.n, self.size, self.seed, self.task = split, int(n), int(size), int(seed), task
        self.image_size = int(image_size or size)
        self.class_names = class_names(task)
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        img, mask, label = render(self.seed, self.split, index, self.size, self.task)
        image = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
        return make_sample(image, torch.from_numpy(mask), label, sample_id(self.split, index), True, self.image_size)

    def fingerprint(self) -> str:
        """The set is a pure function of these parameters (`render`), so they identify its samples."""
        params = [self.task, self.split, self.n, self.size, self.seed, self.image_size]
        return "synthetic:" + json.dumps(params)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """All images (n, 3, S, S), masks (n, S, S) and labels (n,) at once."""
        samples = [self[i] for i in range(self.n)]
        return (
            torch.stack([s["image"] for s in samples]),
            torch.stack([s["mask"] for s in samples]),
            torch.tensor([s["label"] for s in samples], dtype=torch.long),
        )


def sample_id(split: str, index: int) -> str:
    """The id of image `index` of `split`, also its file name on disk: `train-00012`."""
    return f"{split}-{index:05d}"


def write_synthetic(
    out: str | Path,
    n_train: int = SYNTHETIC_SPLITS["n_train"],
    n_val: int = SYNTHETIC_SPLITS["n_val"],
    n_test: int = SYNTHETIC_SPLITS["n_test"],
    size: int = SYNTHETIC_SIZE,
    seed: int = 0,
    task: str = "demo",
    force: bool = False,
) -> Path:
    """Write a synthetic set in the folder format (`vfmxai.data.folder`) and return `out`.

    Writes images/<id>.png, masks/<id>.png (0/255), labels.csv (id,label,split), classes.txt and
    synthetic.json (the generator's arguments). Every file is written atomically. A folder that exists and
    is not empty is refused (it may hold someone's dataset) unless `force`: the set then replaces what is
    there, and images/ and masks/ keep only its own files (stale images of a larger set would otherwise
    join the new one). Every argument and `out` are checked before anything is written.
    """
    names = class_names(task)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in counts.items():
        _check_args(split, n, size, seed, task)
    out = check_out_folder(out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise VfmxaiError(f"--out {out}: folder is not empty; pass --force to replace what is there by the set")
    rows = ["id,label,split"]
    written: set[str] = set()
    for split, n in counts.items():
        for i in range(n):
            img, mask, label = render(seed, split, i, size, task)
            sid = sample_id(split, i)
            _write_png(out / "images" / f"{sid}.png", img)
            _write_png(out / "masks" / f"{sid}.png", mask.astype(np.uint8) * 255)
            rows.append(f"{sid},{label},{split}")
            written.add(f"{sid}.png")
    for stale in [*(out / "images").glob("*"), *(out / "masks").glob("*")]:
        if stale.is_file() and stale.name not in written:
            stale.unlink()
    atomic_write_text(out / "labels.csv", "\n".join(rows) + "\n")
    atomic_write_text(out / "classes.txt", "\n".join(names) + "\n")
    atomic_write_json(
        out / "synthetic.json",
        {"task": task, "seed": seed, "size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test},
    )
    return out


def _write_png(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


__all__ = [
    "AREA_RANGE",
    "TASKS",
    "SyntheticDataset",
    "class_names",
    "render",
    "sample_id",
    "write_synthetic",
]
