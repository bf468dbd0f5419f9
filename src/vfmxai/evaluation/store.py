"""Per-image results on disk, one small file per (method, batch), so an interrupted evaluation resumes.

Layout under `OUT/per_image/`:
    manifest.json                      the settings, model and data fingerprints and per-method options they
                                       were made with
    _predictions/b<start>.safetensors  label, predicted (B,) int64 for the images start .. start + B - 1;
                                       mask_share (B,) float32 (the mask's share of the image), thumbnail
                                       (B, 3, t, t) and mask_thumbnail (B, t, t) uint8, t = IMAGE_THUMBNAIL
    <method>/b<start>.safetensors      per-image scores of one method on the same images:
        iou (B,) float32            IoU at the threshold tau
        intersection, union (B,)    int64 pixel counts at tau (for the dataset-level IoU)
        iou_curve (B, T)            IoU at every tau of the oracle's grid (metrics.default_thresholds)
        pointing_game, energy_pg    (B,) float32
        insertion, deletion (B,)    float32 areas; insertion_curve, deletion_curve (B, steps + 1)
        grid_maps (G, H, W)         the maps of the batch's images among the first n_grid (only where G > 0)
        thumbnail (B, t, t) uint8   the normalised map at t = MAP_THUMBNAIL pixels, for report.html
      metadata: ids (JSON list), seconds (explainer wall time for the batch), metric_seconds.
`<start>` is the index of the batch's first image, zero-padded to 8 digits. Every file is written
atomically (`vfmxai.io`), so a file that exists is complete; a batch is done for a method when its file
exists. Files are safetensors: tensors and string metadata only, nothing executable. Results written before
the thumbnails existed load without them (the report then shows no pictures for those images).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write, atomic_write_json

PREDICTIONS = "_predictions"
MANIFEST = "manifest.json"
PER_IMAGE_DIR = "per_image"
"""Per-image scores stored for every method (the ID score is insertion - deletion)."""
IMAGE_THUMBNAIL = 64
MAP_THUMBNAIL = 32
"""Thumbnail sides in pixels: 12 KiB per image and 1 KiB per map and image (a map from a 24 x 24 patch grid
loses little at 32 px), about what a method's 100-step curves already take."""
PICTURES = ("mask_share", "thumbnail", "mask_thumbnail")


@dataclass
class BatchRecord:
    tensors: dict[str, Tensor]
    ids: list[str]
    seconds: float = 0.0
    metric_seconds: float = 0.0


@dataclass
class PerImage:
    """One evaluation's per-image results, images in dataset order."""

    ids: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    methods: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """{method: {name: array}}: every tensor of the batch files, concatenated over batches (grid_maps aside)."""
    grid_maps: dict[str, Tensor] = field(default_factory=dict)
    map_thumbnails: dict[str, Tensor] = field(default_factory=dict)
    """{method: (N, t, t) uint8}, only for methods whose every batch stored one (`MAP_THUMBNAIL`)."""
    pictures: dict[str, Tensor] = field(default_factory=dict)
    """The PICTURES of the predictions' files (mask_share, thumbnail, mask_thumbnail), where every batch has them."""
    seconds: dict[str, float] = field(default_factory=dict)
    metric_seconds: dict[str, float] = field(default_factory=dict)
    prediction_seconds: float = 0.0


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every state-dict entry's name, dtype, shape and bytes: the same weights, the same string."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(value.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ResultStore:
    """The `per_image/` folder of one evaluation."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, method: str, start: int) -> Path:
        return self.root / method / f"b{start:08d}.safetensors"

    def check_manifest(
        self,
        settings: dict[str, Any],
        model: str,
        data: str,
        options: dict[str, dict[str, Any]],
        before_metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """Refuse to mix results made under other settings, by another model, on other data (`data`:
        `vfmxai.data.dataset_fingerprint`) or with other method options; then record this run's (the union of
        methods over runs). `before_metrics`: what a settings key absent from an older manifest stood for (the
        metrics scored before they could be chosen)."""
        path = self.root / MANIFEST
        old: dict[str, Any] = {"settings": settings, "model": model, "data": data, "methods": {}}
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise VfmxaiError(f"{path}: not valid JSON ({err.msg}); delete {self.root} to start over") from None
        where = f"{self.root.parent}: holds per-image results made"
        fix = f"choose another --out or delete {self.root}"
        stored = {**(before_metrics or {}), **old.get("settings", {})}
        for key in sorted(set(settings) | set(old.get("settings", {}))):
            before, now = stored.get(key), settings.get(key)
            if before != now:
                raise VfmxaiError(f"{where} with {key}={json.dumps(before)}, not {json.dumps(now)}; {fix}")
        if old.get("model") != model:
            raise VfmxaiError(f"{where} by a model with other weights; {fix}")
        if old.get("data") != data:
            raise VfmxaiError(f"{where} on other data (an image, mask or label changed, or the image list); {fix}")
        methods = dict(old.get("methods", {}))
        for method, opts in options.items():
            if method in methods and methods[method] != opts and any((self.root / method).glob("b*.safetensors")):
                raise VfmxaiError(
                    f"{where} with options {json.dumps(methods[method], sort_keys=True)} for method '{method}', "
                    f"not {json.dumps(opts, sort_keys=True)}; {fix}"
                )
            methods[method] = opts
        atomic_write_json(path, {"settings": settings, "model": model, "data": data, "methods": methods})

    def save(self, method: str, start: int, record: BatchRecord) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in record.tensors.items()}
        metadata = {
            "ids": json.dumps(record.ids),
            "seconds": repr(float(record.seconds)),
            "metric_seconds": repr(float(record.metric_seconds)),
        }
        atomic_write(self.path(method, start), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    def load(self, method: str, start: int) -> BatchRecord | None:
        """The batch's record, or None when it is not done (no file, or a file that cannot be read)."""
        path = self.path(method, start)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
                meta = handle.metadata() or {}
            return BatchRecord(tensors, json.loads(meta["ids"]), float(meta["seconds"]), float(meta["metric_seconds"]))
        except Exception:  # noqa: BLE001 - a damaged file counts as not done and is computed again
            return None


def batch_starts(n_images: int, batch_size: int) -> list[int]:
    return list(range(0, n_images, batch_size))


def collect(records: dict[str, dict[int, BatchRecord]], starts: list[int]) -> PerImage:
    """Concatenate every method's batch records (all of `starts` must be present) into a `PerImage`."""
    preds = [records[PREDICTIONS][s] for s in starts]
    result = PerImage(
        ids=[i for r in preds for i in r.ids],
        labels=torch.cat([r.tensors["label"] for r in preds]).numpy(),
        predicted=torch.cat([r.tensors["predicted"] for r in preds]).numpy(),
        prediction_seconds=sum(r.seconds for r in preds),
        pictures=_concat_common(preds, PICTURES),
    )
    for method, by_start in records.items():
        if method == PREDICTIONS:
            continue
        batch = [by_start[s] for s in starts]
        ids = [i for r in batch for i in r.ids]
        if ids != result.ids:
            raise VfmxaiError(f"per-image results of '{method}' are for other images than the predictions'")
        keys = [k for k in batch[0].tensors if k not in ("grid_maps", "thumbnail")]
        result.methods[method] = {k: torch.cat([r.tensors[k] for r in batch]).numpy() for k in keys}
        if thumbnails := _concat_common(batch, ("thumbnail",)):
            result.map_thumbnails[method] = thumbnails["thumbnail"]
        grid = [r.tensors["grid_maps"] for r in batch if "grid_maps" in r.tensors]
        if grid:
            result.grid_maps[method] = torch.cat(grid)
        result.seconds[method] = sum(r.seconds for r in batch)
        result.metric_seconds[method] = sum(r.metric_seconds for r in batch)
    return result


def _concat_common(records: list[BatchRecord], keys: tuple[str, ...]) -> dict[str, Tensor]:
    """{key: the batches' tensors concatenated} for the `keys` every record holds."""
    return {k: torch.cat([r.tensors[k] for r in records]) for k in keys if all(k in r.tensors for r in records)}


def load_per_image(eval_dir: str | Path) -> PerImage:
    """Every per-image result of a finished evaluation folder (the one `evaluate` wrote)."""
    root = Path(eval_dir) / PER_IMAGE_DIR
    path = root / MANIFEST
    if not path.is_file():
        raise VfmxaiError(f"{Path(eval_dir)}: no {PER_IMAGE_DIR}/{MANIFEST}; is it an evaluation folder?")
    manifest = json.loads(path.read_text())
    settings = manifest["settings"]
    store = ResultStore(root)
    starts = batch_starts(settings["n_images"], settings["batch_size"])
    records: dict[str, dict[int, BatchRecord]] = {}
    for method in [PREDICTIONS, *manifest["methods"]]:
        loaded = {s: store.load(method, s) for s in starts}
        missing = [s for s, r in loaded.items() if r is None]
        if missing and method == PREDICTIONS:
            raise VfmxaiError(f"{root}: the evaluation is not finished (batch at image {missing[0]} missing); rerun it")
        if not missing:
            records[method] = loaded
    return collect(records, starts)
