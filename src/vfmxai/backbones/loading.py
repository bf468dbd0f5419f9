"""Build or load a `Backbone` with no network: presets, local directories, the Hugging Face cache.

Names `load_backbone` accepts:
- `tiny`: a 4-block CLIP-architecture ViT (width 32, patch 8), random init from a fixed seed; for tests.
- `default`: the small CLIP-architecture ViT shipped in the package (made as `backbones/default/pretraining.json` says).
- `clip-vit-b16`: the CLIP ViT-B/16 image-encoder architecture, random init; for shape tests and `bench`.
- a local directory with a transformers `config.json` and weights (CLIP, SigLIP, DINOv2 with or without
  registers, or ViT);
- a Hugging Face id, resolved in the local cache only (`HF_HUB_OFFLINE` is always honoured: nothing
  is downloaded).

`load_clip(dir)` loads a whole CLIP directory (both towers and the tokenizer), for prompt targets.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Model,
    Dinov2WithRegistersModel,
    SiglipVisionModel,
    ViTModel,
)
from transformers.utils import logging as transformers_logging

from vfmxai.backbones.base import Backbone
from vfmxai.errors import VfmxaiError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

DEFAULT_DIR = Path(__file__).parent / "default"

BACKBONE_PRESETS = ("tiny", "default", "clip-vit-b16")

_MODEL_TYPES = {
    "clip": ("clip", CLIPVisionModel, CLIP_MEAN, CLIP_STD),
    "clip_vision_model": ("clip", CLIPVisionModel, CLIP_MEAN, CLIP_STD),
    "siglip": ("siglip", SiglipVisionModel, HALF, HALF),
    "siglip_vision_model": ("siglip", SiglipVisionModel, HALF, HALF),
    "dinov2": ("dinov2", Dinov2Model, IMAGENET_MEAN, IMAGENET_STD),
    "dinov2_with_registers": ("dinov2", Dinov2WithRegistersModel, IMAGENET_MEAN, IMAGENET_STD),
    "vit": ("vit", ViTModel, HALF, HALF),
}


def tiny_clip_config(image_size: int = 32) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        hidden_act="quick_gelu",
    )


def clip_b16_config(image_size: int = 224) -> CLIPVisionConfig:
    """The OpenAI CLIP ViT-B/16 image encoder's architecture."""
    return CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=image_size,
        patch_size=16,
        hidden_act="quick_gelu",
    )


def _random_clip(config: CLIPVisionConfig, seed: int) -> CLIPVisionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModel(config).eval()


def load_backbone(name: str = "default", image_size: int | None = None, seed: int = 0) -> Backbone:
    """Build the backbone called `name`, for square inputs of `image_size` pixels (None: its native size)."""
    if name == "tiny":
        model = _random_clip(tiny_clip_config(image_size or 32), seed)
        return Backbone(model, "clip", image_size or 32, CLIP_MEAN, CLIP_STD, name)
    if name == "clip-vit-b16":
        model = _random_clip(clip_b16_config(), seed)
        return Backbone(model, "clip", image_size or 224, CLIP_MEAN, CLIP_STD, name)
    if name == "default":
        if not (DEFAULT_DIR / "model.safetensors").is_file():
            raise VfmxaiError(
                f"the shipped default backbone is missing from {DEFAULT_DIR}; "
                "rebuild it in a checkout of the repository with `python scripts/pretrain_default_backbone.py`"
            )
        return _from_directory(DEFAULT_DIR, image_size, "default")
    path = Path(name).expanduser()
    if path.is_dir():
        return _from_directory(path, image_size, name)
    if path.exists() or name.startswith((".", "/", "~")):
        raise VfmxaiError(f"--backbone {name}: not a directory holding a transformers config.json and weights")
    return _from_hub_cache(name, image_size)


def _from_directory(path: Path, image_size: int | None, name: str) -> Backbone:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise VfmxaiError(f"--backbone {path}: no config.json in that directory")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    if model_type not in _MODEL_TYPES:
        raise VfmxaiError(
            f"--backbone {path}: model_type '{model_type}' is not supported "
            f"(supported: {', '.join(sorted(_MODEL_TYPES))})"
        )
    family, model_cls, mean, std = _MODEL_TYPES[model_type]
    mean, std = _preprocessing(path, mean, std)
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning would precede the one-line refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model = model_cls.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    except pickle.UnpicklingError:  # transformers reads a .bin with torch.load(weights_only=True): nothing ran
        raise VfmxaiError(
            f"--backbone {path}: refused its pickled weights (pytorch_model.bin): not plain tensors (a damaged "
            "file, or one whose loading could run code); use model.safetensors"
        ) from None
    except (OSError, RuntimeError, ValueError, EOFError) as err:  # missing, damaged or mismatched weight files
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise VfmxaiError(f"--backbone {path}: could not load weights ({first.strip()})") from None
    return Backbone(model, family, image_size or int(model.config.image_size), mean, std, name)


def _preprocessing(path: Path, mean, std):
    """Mean/std from a `preprocessor_config.json` beside the weights, else the family's defaults."""
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        data = json.loads(pre.read_text())
        mean = tuple(data.get("image_mean", mean))
        std = tuple(data.get("image_std", std))
    return mean, std


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _from_hub_cache(repo_id: str, image_size: int | None) -> Backbone:
    from huggingface_hub import snapshot_download

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        AutoConfig.from_pretrained(repo_id, local_files_only=True)
        local = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - every failure here means the same thing: not in the cache
        raise VfmxaiError(
            f"backbone '{repo_id}' not found offline: looked in the Hugging Face cache {_hub_cache_dir()} "
            "(HF_HOME / HF_HUB_CACHE) and found no complete copy; download it on a machine with network "
            "and pass its directory with --backbone /path/to/dir (or --set backbone.name=/path/to/dir)"
        ) from None
    return _from_directory(Path(local), image_size, repo_id)


def load_clip(path: str | Path, image_size: int | None = None) -> tuple[Backbone, CLIPModel, object]:
    """(the vision tower as a `Backbone`, the whole `CLIPModel`, its tokenizer) of a local CLIP directory: a
    transformers `CLIPModel` (config.json with model_type `clip`, so both towers) and its tokenizer files."""
    path = Path(path).expanduser()
    config_file = path / "config.json"
    if not config_file.is_file():
        raise VfmxaiError(f"--backbone {path}: prompt targets need a CLIP model directory (config.json); none there")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "clip" or "text_config" not in config:
        raise VfmxaiError(
            f"--backbone {path}: prompt targets need a whole CLIP model (model_type 'clip' with a text tower), "
            f"found model_type '{config.get('model_type', '')}'"
        )
    transformers_logging.disable_progress_bar()
    try:
        clip = CLIPModel.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise VfmxaiError(f"--backbone {path}: could not load the CLIP or its tokenizer ({first.strip()})") from None
    mean, std = _preprocessing(path, CLIP_MEAN, CLIP_STD)
    size = image_size or int(clip.config.vision_config.image_size)
    return Backbone(clip.vision_model, "clip", size, mean, std, str(path)), clip, tokenizer
