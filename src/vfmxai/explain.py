"""Explain image files with a trained run: `<name>.<method>.png` overlays, `<name>.<method>.npy` raw maps.

Images of any size are resized to the model's square input (as the paper resizes to 384×384); each
map is resized back to the original height and width, so the `.npy` is H×W of the file on disk.
Memory stays near the decoded file's size: a large 8-bit RGB or gray image is area-averaged in PIL to
at most 8× the input side before it becomes float (`model_input`), and the overlay is drawn a block of
rows at a time. An image smaller than the input (even smaller than one patch) is upsampled to it like
any other.

What is explained (`target`, validated before any work): `class` (default: the predicted class, scored as each
method's paper does: the logit; the probability for RISE, Score-CAM, ViT-ReciproCAM, TIS and ViT-CX), `logit` or
`prob` (that score for every method), `prompt:TEXT` (CLIP image–text similarity, contrasted with the `against`
prompts when given), `reference:IMAGE` (cosine similarity of the embeddings to that image's). `backbone` (instead
of a run folder) explains a bare backbone, for the targets that need no head; `prompt` needs a whole CLIP directory
(the run's backbone directory, with a run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vfmxai import explainers
from vfmxai.backbones import load_backbone, load_clip, merged_lora
from vfmxai.data.images import DECODABLE_SUFFIXES, open_image, to_rgb_array
from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write, atomic_write_text, check_out_folder
from vfmxai.maps import normalize_maps, resize_maps
from vfmxai.run_folder import load_run
from vfmxai.runtime import autocast, check_device, resolve_precision
from vfmxai.targets import ClassLogit, ClassProbability, PromptScores, ReferenceSimilarity, Target
from vfmxai.viz.grid import save_grid
from vfmxai.viz.overlay import overlay, save_png
from vfmxai.vocabulary import EXPLAIN_TARGETS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE


@dataclass(frozen=True)
class TargetSpec:
    """`--target` parsed: `kind` one of EXPLAIN_TARGETS' words before any colon; `text` the prompt or the reference
    image's path."""

    kind: str
    text: str = ""
    against: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str, against: list[str] | tuple[str, ...] = ()) -> TargetSpec:
        takes_value = {word.partition(":")[0]: ":" in word for word in EXPLAIN_TARGETS}
        kind, colon, text = spec.partition(":")
        if kind not in takes_value or bool(colon) != takes_value[kind]:
            raise VfmxaiError(f"--target {spec!r}: must be {', '.join(EXPLAIN_TARGETS[:-1])} or {EXPLAIN_TARGETS[-1]}")
        if colon and not text.strip():
            what = "text" if kind == "prompt" else "image file"
            raise VfmxaiError(f"--target {spec!r}: give the {what} after '{kind}:'")
        if against and kind != "prompt":
            raise VfmxaiError("--against: contrasts prompts, so it needs --target prompt:TEXT")
        if any(not a.strip() for a in against):
            raise VfmxaiError("--against: every prompt must be non-empty text")
        if kind == "reference":
            path = Path(text)
            if path.is_dir():
                raise VfmxaiError(f"--target reference:{text}: is a folder; give one image file")
            if not path.is_file():
                raise VfmxaiError(f"--target reference:{text}: no such image file")
            try:  # an undecodable file is named here, before any model is loaded
                open_image(path)
            except VfmxaiError as err:
                raise VfmxaiError(f"--target reference:{err}") from None
        return cls(kind, text, tuple(against))

    @property
    def per_class(self) -> bool:
        return self.kind in ("class", "logit", "prob")


def _load_model(spec: TargetSpec, run_dir: str | Path | None, backbone: str | None, image_size: int | None,
                device: str) -> tuple:
    """(model, input size, class names, (CLIPModel, tokenizer) for a prompt target else None): the run's
    classifier, or the bare `backbone`; a prompt's text tower comes from the CLIP directory of either."""
    clip = None
    if backbone is None:
        model, config, class_names = load_run(run_dir, device)
        size, source = config.backbone.image_size, config.backbone.name
        if spec.kind == "prompt":
            if not Path(source).expanduser().is_dir():
                raise VfmxaiError(
                    f"--target prompt: needs the text tower of a whole CLIP directory; the run's backbone '{source}' "
                    "is no directory"
                )
            clip = load_clip(source)[1:]
    else:
        if spec.kind == "prompt":
            model, *clip = load_clip(backbone, image_size)
        else:
            model = load_backbone(backbone, image_size)
        model, size, class_names = model.to(device).eval(), model.image_size, []
    return model, size, class_names, clip


def _target(spec: TargetSpec, model, size: int, device: str, clip: tuple | None) -> Target | None:
    """The target object for `model` (None: each method's default class score)."""
    if spec.kind == "class":
        return None
    if spec.kind in ("logit", "prob"):
        return ClassLogit() if spec.kind == "logit" else ClassProbability()
    if spec.kind == "reference":
        reference = model_input(open_image(Path(spec.text)), size)[None].to(device)
        return ReferenceSimilarity.from_images(model, reference, name=f"reference {Path(spec.text).name}")
    clip_model, tokenizer = clip
    return PromptScores(clip_model.to(device), tokenizer, spec.text, spec.against)


def _save_block_figures(model, batch: torch.Tensor, targets: torch.Tensor | None, paths: list[Path], out: Path,
                        target: Target | None) -> None:
    with explainers.get("daam", model, target=target) as daam:
        _, accumulated = daam.explain_blocks(batch, targets)
    accumulated = accumulated.detach().cpu()
    for i, path in enumerate(paths):
        columns = [(f"1..{b + 1}", normalize_maps(accumulated[i : i + 1, b])) for b in range(accumulated.shape[1])]
        save_grid(batch[i : i + 1].cpu(), columns, out / f"{path.stem}.daam.blocks.png")


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save through a handle: given a path, numpy would append `.npy` to a temporary name."""
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in DECODABLE_SUFFIXES)
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


PREDICTIONS = "predictions.json"

OVERLAY_ROWS = 256
"""Rows of the overlay drawn at once: the float picture and colour map of a whole 8000×8000 photo take GBs."""


PREFILTER = 8
"""A large 8-bit image is area-averaged to at most PREFILTER × the input side before the float resize."""


def model_input(im: Image.Image, size: int) -> torch.Tensor:
    """Decoded image -> (3, size, size) float in [0, 1]: `to_rgb_array`, then bilinear antialiased resize.

    An 8-bit RGB or gray image without transparency with a side over PREFILTER × size is first
    area-averaged in PIL (`Image.BOX`, exact geometry) to at most that many pixels per side, so no
    full-size float copy is made. Measured against the direct float resize on noisy test images the
    input changes by <= 0.002 on average (uint8 rounding of the intermediate) and < 0.01 at most.
    """
    limit = PREFILTER * size
    if (im.width > limit or im.height > limit) and im.mode in ("RGB", "L") and "transparency" not in im.info:
        im = im.resize((min(im.width, limit), min(im.height, limit)), Image.Resampling.BOX)
    image = torch.from_numpy(to_rgb_array(im)).permute(2, 0, 1)
    return torch.nn.functional.interpolate(
        image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0].clamp(0, 1)


def save_overlay_by_rows(im: Image.Image, heat: np.ndarray, path: Path) -> None:
    """`viz.overlay` of the decoded image and its full-size map, computed `OVERLAY_ROWS` rows at a time."""
    height, width = heat.shape
    picture = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, OVERLAY_ROWS):
        bottom = min(top + OVERLAY_ROWS, height)
        strip = torch.from_numpy(to_rgb_array(im.crop((0, top, width, bottom)))).permute(2, 0, 1)
        picture[top:bottom] = overlay(strip, torch.from_numpy(heat[top:bottom]))
    save_png(picture, path)


def explain_files(
    run_dir: str | Path | None,
    methods: list[str],
    inputs: list[str | Path],
    out: str | Path,
    batch_size: int = 8,
    device: str = "cpu",
    per_block: bool = False,
    precision: str = "auto",
    force: bool = False,
    target: str = "class",
    against: list[str] | tuple[str, ...] = (),
    backbone: str | None = None,
    image_size: int | None = None,
) -> dict[str, dict]:
    """Explain every image with every method; returns and writes `predictions.json` (class, probability; for a
    target other than a class: the target and each image's score).

    `precision`: as `vfmxai.runtime.autocast` (auto: bf16 on a GPU); the maps written are float32.

    `per_block` (with method `daam`) also writes `<name>.daam.blocks.png`: the DAAM map accumulated over
    blocks 1..b for every b, left to right, each column scaled to [0, 1] for display.

    `target`, `against`: what is explained (module docstring). `backbone` (a directory, preset or cached id) at
    `image_size` (None: its native size) replaces `run_dir` for the targets that need no head.

    One explain per `out`: a folder that already holds an earlier explain's `predictions.json`, or any file
    this one would write, is refused unless `force`, which first deletes the earlier explain's outputs (the
    maps, overlays and block figures of the images its predictions.json lists) so the runs never mix. `out`
    may not be one of the input folders (a second run would explain the overlays of the first); a folder
    inside an input folder is fine, since folders are listed without recursion. Every check runs before
    the model is loaded.
    """
    if not methods:
        raise VfmxaiError("--method: name at least one method")
    unknown = [m for m in methods if m not in explainers.available()]
    if unknown:
        known = ", ".join(explainers.available())
        raise VfmxaiError(f"--method: unknown method(s) {', '.join(unknown)} (available: {known})")
    if per_block and "daam" not in methods:
        raise VfmxaiError("--per-block draws DAAM's block-by-block maps: add daam to --method")
    if batch_size < 1:
        raise VfmxaiError(f"--batch-size must be >= 1, got {batch_size}")
    spec = _check_target(target, against, methods, run_dir, backbone, image_size)
    check_device(device)
    precision = resolve_precision(precision, device)
    out = check_out_folder(out)
    paths = collect_images(inputs)
    _check_explain_out(out, inputs, paths, methods, per_block, force)
    model, size, class_names, clip = _load_model(spec, run_dir, backbone, image_size, device)
    predictions: dict[str, dict] = {}
    with merged_lora(model), autocast(precision, device):
        target_object = _target(spec, model, size, device, clip)
        for start in range(0, len(paths), batch_size):
            _explain_chunk(model, methods, paths[start : start + batch_size], size, class_names, out, predictions,
                           device, per_block, target_object)
    atomic_write_text(out / PREDICTIONS, json.dumps(predictions, indent=2, sort_keys=True) + "\n")
    return predictions


def _check_target(
    target: str, against: list[str] | tuple[str, ...], methods: list[str], run_dir: str | Path | None,
    backbone: str | None, image_size: int | None,
) -> TargetSpec:
    """`--target` and what it needs (a model it can score, methods that take a target), checked before any work."""
    if (run_dir is None) == (backbone is None):
        raise VfmxaiError("--checkpoint or --backbone: give one (a trained run, or a bare backbone to explain)")
    if image_size is not None and backbone is None:
        raise VfmxaiError("--image-size: applies to --backbone (a run explains at the size it was trained at)")
    if image_size is not None and not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise VfmxaiError(f"--image-size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}")
    spec = TargetSpec.parse(target, against)
    if backbone is not None and spec.per_class:
        raise VfmxaiError(
            f"--target {target}: a bare --backbone has no class logits; use --checkpoint RUN, or --target "
            "reference:IMAGE or prompt:TEXT"
        )
    if spec.kind != "class":
        fixed = [m for m in methods if not explainers.uses_target(m)]
        if fixed:
            raise VfmxaiError(
                f"--target {target}: method(s) {', '.join(fixed)} take no target (their maps do not depend on "
                "what is explained); leave them out or use --target class"
            )
    return spec


def _outputs(stem: str, methods: list[str], per_block: bool) -> list[str]:
    """The file names explain writes for the image `stem`."""
    names = [f"{stem}.{method}.{ext}" for method in methods for ext in ("npy", "png")]
    return [*names, f"{stem}.daam.blocks.png"] if per_block else names


def _check_explain_out(
    out: Path, inputs: list[str | Path], paths: list[Path], methods: list[str], per_block: bool, force: bool
) -> None:
    """Refuse an `out` that is an input folder, or that holds an earlier explain or a file this one would
    write (unless `force`: the earlier explain's outputs are then deleted); see `explain_files`."""
    for item in map(Path, inputs):
        if item.is_dir() and out.resolve() == item.resolve():
            raise VfmxaiError(
                f"--out {out}: is the input folder {item}; explaining it again would explain these overlays too "
                "(choose another folder, e.g. a subfolder)"
            )
    earlier = out / PREDICTIONS
    if force:
        if earlier.is_file():
            try:
                stems = list(json.loads(earlier.read_text()))
            except (json.JSONDecodeError, TypeError):
                raise VfmxaiError(f"--force: {earlier} is not an explain's {PREDICTIONS}; remove it yourself") from None
            for stem in stems:
                for name in _outputs(stem, list(explainers.available()), per_block=True):
                    (out / name).unlink(missing_ok=True)
            earlier.unlink()
        return
    if earlier.is_file():
        raise VfmxaiError(
            f"--out {out}: already holds an earlier explain ({PREDICTIONS}); pass --force to replace it, or "
            "choose another folder"
        )
    for path in paths:
        for name in _outputs(path.stem, methods, per_block):
            if (out / name).exists():
                raise VfmxaiError(f"--out {out}: {name} exists; pass --force to replace it, or choose another folder")


def _explain_chunk(model, methods: list[str], chunk: list[Path], size: int, class_names: list[str], out: Path,
               predictions: dict[str, dict], device: str, per_block: bool, target: Target | None) -> None:
    """One batch of files: predict, explain with every method, write maps and overlays (LoRA merged)."""
    decoded = [open_image(p) for p in chunk]
    batch = torch.stack([model_input(im, size) for im in decoded]).to(device)
    if target is None or target.per_class:
        with torch.no_grad():
            probs = model(batch).float().softmax(dim=1)
        predicted = probs.argmax(dim=1)
        for path, cls, p in zip(chunk, predicted.tolist(), probs.max(dim=1).values.tolist(), strict=True):
            predictions[path.stem] = {"file": str(path), "class": cls, "class_name": class_names[cls], "probability": p}
    else:
        predicted = None
        index = torch.arange(len(chunk), device=batch.device)
        with torch.no_grad():
            scores = target.score(target.scored_model(model)(batch), index).float()
        for path, score in zip(chunk, scores.tolist(), strict=True):
            predictions[path.stem] = {"file": str(path), "target": target.describe(), "score": score}
    for method in methods:
        with explainers.get(method, model, target=target) as explainer:
            maps = explainer(batch, predicted).cpu()
        for path, im, heat in zip(chunk, decoded, maps, strict=True):
            full = resize_maps(heat[None].float(), (im.height, im.width))[0].numpy()
            atomic_write(out / f"{path.stem}.{method}.npy", lambda tmp, a=full: save_npy(tmp, a))
            save_overlay_by_rows(im, full, out / f"{path.stem}.{method}.png")
    if per_block:
        _save_block_figures(model, batch, predicted, chunk, out, target)
