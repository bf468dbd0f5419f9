"""Explain image files with a trained run: `<name>.<method>.png` overlays, `<name>.<method>.npy` raw maps.

Images of any size are resized to the model's square input (as the paper resizes to 384×384); each
map is resized back to the original height and width, so the `.npy` is H×W of the file on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vfmxai import explainers
from vfmxai.data import load_image
from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write, atomic_write_text
from vfmxai.maps import resize_maps
from vfmxai.training.checkpoint import load_run
from vfmxai.viz.overlay import save_overlay

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save through a handle: given a path, numpy would append `.npy` to a temporary name."""
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise VfmxaiError(f"{item}: no such image or folder")
    if not paths:
        raise VfmxaiError(f"no images found in {', '.join(map(str, inputs))}")
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise VfmxaiError(f"{p}: same name as {stems[p.stem]}; output files would collide")
        stems[p.stem] = p
    return paths


def _resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(
        image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0].clamp(0, 1)


def explain_files(
    run_dir: str | Path,
    methods: list[str],
    inputs: list[str | Path],
    out: str | Path,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict[str, dict]:
    """Explain every image with every method; returns and writes `predictions.json` (class, probability)."""
    model, config, class_names = load_run(run_dir, device)
    unknown = [m for m in methods if m not in explainers.available()]
    if unknown:
        raise VfmxaiError(f"--method: unknown method(s) {', '.join(unknown)} (available: {', '.join(explainers.available())})")
    paths = collect_images(inputs)
    out = Path(out)
    size = config.backbone.image_size
    predictions: dict[str, dict] = {}
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        originals = [load_image(p) for p in chunk]
        batch = torch.stack([_resize_image(img, size) for img in originals]).to(device)
        with torch.no_grad():
            probs = model(batch).softmax(dim=1)
        predicted = probs.argmax(dim=1)
        for path, cls, p in zip(chunk, predicted.tolist(), probs.max(dim=1).values.tolist(), strict=True):
            predictions[path.stem] = {"file": str(path), "class": cls, "class_name": class_names[cls], "probability": p}
        for method in methods:
            with explainers.get(method, model) as explainer:
                maps = explainer(batch, predicted).cpu()
            for path, image, heat in zip(chunk, originals, maps, strict=True):
                full = resize_maps(heat[None], tuple(image.shape[-2:]))[0].numpy().astype(np.float32)
                atomic_write(out / f"{path.stem}.{method}.npy", lambda tmp, a=full: save_npy(tmp, a))
                save_overlay(image, torch.from_numpy(full), out / f"{path.stem}.{method}.png")
    atomic_write_text(out / "predictions.json", json.dumps(predictions, indent=2, sort_keys=True) + "\n")
    return predictions
