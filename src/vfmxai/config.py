"""Run configuration: dataclasses, the paper's presets, JSON load/save and `key=value` overrides.

A run is fully described by one `RunConfig`; `vfmxai train` writes it, resolved, as `config.json`
into the run folder, and every later command (explain, evaluate, resume) reads it back from there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfmxai.errors import VfmxaiError
from vfmxai.vocabulary import DATASETS, PET_BOUNDARIES, PRECISIONS, SYNTHETIC_SIZE, SYNTHETIC_SPLITS


@dataclass
class BackboneConfig:
    """Which ViT encoder, at which input size, with LoRA where.

    `name`: `tiny` (random, for tests), `default` (the small CLIP-architecture ViT shipped in the
    package, pretrained by `scripts/pretrain_default_backbone.py`), `clip-vit-b16` (the CLIP ViT-B/16
    architecture, random init, for shape tests and benchmarks), a Hugging Face id (loaded from the
    local cache only) or a local directory holding `config.json` + weights.
    """

    name: str = "default"
    image_size: int = 64
    lora: bool = True
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_blocks: list[int] | None = None
    """0-based block indices that get LoRA; None = every block."""
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "o_proj"])
    """Linear layers that get LoRA, by name; the attention output is `out_proj` in CLIP and SigLIP, `o_proj` in
    DINOv2, so the default names both and each model matches its own."""


@dataclass
class ALAConfig:
    """The Attention Lattice Adapter and perception branch (ALA paper §4.1-4.2; its Table 1 names in brackets)."""

    num_classes: int = 0
    """Filled in from the dataset when training starts."""
    patch_size: int = 8
    """#P: the ALA former's own patch size."""
    dim: int = 64
    """#d: width of the ALA transformer layers."""
    depth: int = 4
    """#L: number of ALA transformer layers."""
    heads: int = 4
    """#A: attention heads per ALA layer."""
    mlp_ratio: float = 2.0
    n_inject: int = 4
    """VFM states are added before ALA layers 1..n_inject."""
    inject_layers: str = "first"
    """`first`: h^(0)..h^(n_inject-1), the paper's text; `spread`: evenly spaced from h^(0) to h^(k-1);
    or explicit comma-separated indices into h^(0)..h^(k), e.g. `0,4,8,11`."""
    lattice: bool = True
    """False = the paper's 'no lattice' ablation ("excluding their addition in the image encoder"): no VFM
    state is added; the ALA former sees only its own patch embedding of the image."""
    map_channels: int = 64
    """C_a: channels of f1's feature map F (and of f2's convs)."""
    ala_head_input: str = "map"
    """What f2 (the ALA classifier p_ALA) reads. `map`: h_ALA, the map itself (alpha in odd AEA epochs, all-ones
    in even ones), as the paper's §4.2 says, so CE(p_ALA) trains alpha to carry the class; `features`: f1's
    feature map F (an earlier, ABN-style reading), whose loss never reaches alpha directly."""
    map_norm: str = "none"
    """How f1's 1x1-conv logits z become alpha. `none`: sigmoid(z); `image`: sigmoid((z - mean z) / std z), the
    logits standardised within each image, so alpha cannot saturate to one value everywhere (the paper names
    no activation; ABN, which it follows, normalises the logits before the sigmoid)."""
    pb_token_norm: str = "none"
    """`layernorm`: each h^(k) patch token standardised over its channels (no affine) before h_ALA gates it,
    so tokens of large norm (the high-norm background tokens of DINOv2 without registers) neither dominate
    the perception branch nor pull alpha towards themselves through a larger gradient; `none`: raw h^(k)."""
    gate_norm: str = "none"
    """`none`: h_ALA = alpha (the paper). `mean`: alpha divided by its mean over the grid, per image, before it
    gates h^(k) and feeds f2, so the gate says where to look and not how much: with raw alpha, shutting alpha
    everywhere lowers every logit, a temperature knob that training turns down while the heads are still
    wrong (alpha then shuts all but the border cells). Ones (AEA's even epochs) are unchanged by it. Measured
    on one seed it removed the frame on the pets with DINOv2-S/14 but not on the synthetic set (README)."""
    head_init: str = "default"
    """`default`: PyTorch's init. `zeros`: the final FC layers of the perception branch and f2 start at zero, so
    both predict the uniform distribution at step 0 (measured: it made the demo's map saturate and invert)."""
    conv_padding: str = "zeros"
    """Padding of every 3x3 conv in f1, f2 and the perception branch. `zeros` (PyTorch's default; the paper
    names none) lets a conv tell border cells from inner ones; `replicate` repeats the edge cells, so a conv
    sees no border and cannot single the frame out by where it lies."""
    pb_channels: int = 128
    """Channels of the perception branch's conv."""
    lambda_ala: float = 1.0
    """λ in L = CE(p_PB, y) + λ·CE(p_ALA, y)."""


@dataclass
class TrainConfig:
    """Defaults are the `toy` preset's (the CPU demo: few epochs, a higher learning rate than the paper's
    5e-5 because it trains on 600 images for 6 epochs); `cub` and `imagenet_s` set the paper's values."""

    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    patience: int = 5
    """Early stopping on validation loss; 0 switches it off."""
    select_by: str = "last"
    """Which epoch's weights become `model.safetensors`. `loss`: the lowest validation L (paper Eq. 4), the
    paper presets' choice beside early stopping; `pb_loss`: the lowest validation CE(p_PB), the prediction's
    own loss; `last`: the last epoch trained, the toy preset's choice: on its 40 validation images and 6
    epochs `loss` picked epoch 1 in the demo for both the full model and the no-AEA ablation (identical
    weights, so Table 4 rows (iii) and (iv) came out equal)."""
    aea: bool = True
    """Alternating Epoch Architect; False = the 'no AEA' ablation (map on and ALA trained every epoch)."""
    flip: bool = True
    crop_scale: float = 0.85
    """Random crop keeps this fraction of each side (then resized back); 1.0 switches cropping off."""
    seed: int = 0
    num_workers: int | None = None
    """Data-loading processes per training process; None: 0 on a CPU, up to 8 on a GPU (`data.loader_workers`)."""
    accelerator: str = "auto"
    devices: int | str = "auto"
    """Lightning's devices: a count, or `auto`."""
    num_nodes: int = 1
    precision: str = "auto"
    """`auto`: bf16 autocast on GPU, fp32 on CPU; or `bf16`, `fp32` (`vocabulary.PRECISIONS`)."""


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str | None = None
    seed: int = 0
    """Seed of the synthetic generator and of dataset splits made by the project (CUB and Pet train/val)."""
    n_train: int = SYNTHETIC_SPLITS["n_train"]
    n_val: int = SYNTHETIC_SPLITS["n_val"]
    n_test: int = SYNTHETIC_SPLITS["n_test"]
    synth_size: int = SYNTHETIC_SIZE
    """Side of the synthetic images in pixels."""
    pet_boundary: str = "background"
    """Oxford-IIIT Pet: where the trimap's boundary band goes, `background` (object = the trimap's foreground,
    DESIGN §5) or `object`."""


@dataclass
class RunConfig:
    preset: str = "toy"
    classifier: str = "ala"
    """`ala`: ALA + AEA + LoRA (the `model` section); `linear_probe`: a linear head on the frozen backbone's
    pooled embedding (`vfmxai.training.probe`), for explaining a backbone with post-hoc methods only; the
    `model` section is then unused."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ALAConfig = field(default_factory=ALAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _from_dict(cls, data, "config")

    def save(self, path: str | Path) -> None:
        from vfmxai.io import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise VfmxaiError(f"{path}: config not found") from None
        except json.JSONDecodeError as err:
            raise VfmxaiError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        try:
            return check_config(_from_dict(cls, data, ""))
        except VfmxaiError as err:
            raise VfmxaiError(f"{path}: {err}") from None


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise VfmxaiError(f"{where or 'config'}: expected an object for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise VfmxaiError(f"{where or 'config'}: unknown {cls.__name__} field(s): {', '.join(map(shown, unknown))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        key = f"{where}.{name}" if where else name
        kwargs[name] = _from_dict(hint, value, key) if dataclasses.is_dataclass(hint) else typed(hint, value, key)
    return cls(**kwargs)


def shown(text: str) -> str:
    """`text` as it is, or its repr when it holds a newline or another unprintable character, so a message that
    names it stays one line."""
    return text if text.isprintable() else repr(text)


def typed(hint: Any, value: Any, key: str) -> Any:
    """`value` as a value of the annotation `hint` (bool, int, float, str, list[...], unions with None), or a
    one-line error naming `key`. A bool is never an int here, and an int is a float; `true`/`false` in any
    case (the Python spelling `False` included) are bools."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return typed(option, value, key)
            except VfmxaiError as err:
                errors.append(str(err))
        raise VfmxaiError(errors[-1] if len(errors) == 1 else f"{key}={value!r}: expected {_describe(hint)}")
    if origin is list:
        if not isinstance(value, list):
            raise VfmxaiError(f"{key}={value!r}: expected a list of {_describe(args[0])}, e.g. [1, 2]")
        return [typed(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise VfmxaiError(f"{key}={value!r}: expected {_describe(hint)}")


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(args[0])}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "text",
            type(None): "null"}.get(hint, str(hint))


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be >= {low}"


def _between(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must be >= {low}" if v < low else f"must be <= {high}"


def _choice(options: Sequence[str]) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"choose one of {', '.join(options)}"


RULES: dict[str, Callable[[Any], str | None]] = {
    "backbone.name": lambda v: None if v.strip() else "must name a backbone (tiny, default, clip-vit-b16, a directory "
    "or a Hugging Face id)",
    "backbone.image_size": _between(8, 4096),
    "backbone.lora_rank": _between(1, 1024),
    "backbone.lora_alpha": lambda v: None if v > 0 else "must be > 0",
    "backbone.lora_dropout": lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
    "model.num_classes": _between(0, 100_000),
    "model.patch_size": _between(1, 4096),
    "model.dim": _between(1, 4096),
    "model.depth": _between(1, 64),
    "model.heads": _at_least(1),
    "model.mlp_ratio": lambda v: None if 0 < v <= 16 else "must be in (0, 16]",
    "model.n_inject": _at_least(0),
    "model.map_channels": _between(1, 4096),
    "model.pb_channels": _between(1, 4096),
    "model.lambda_ala": _at_least(0),
    "train.epochs": _between(1, 100_000),
    "train.batch_size": _between(1, 65_536),
    "train.lr": lambda v: None if v > 0 else "must be > 0",
    "train.betas": lambda v: None if len(v) == 2 and all(0 <= b < 1 for b in v) else "must be two numbers in [0, 1)",
    "train.weight_decay": _at_least(0),
    "train.patience": _at_least(0),
    "train.crop_scale": lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
    "train.seed": _at_least(0),
    "train.num_workers": lambda v: None if v is None or v >= 0 else "must be >= 0",
    "train.devices": lambda v: None if v == "auto" or str(v).isdigit() and int(v) >= 1 else "must be >= 1 or auto",
    "train.num_nodes": _at_least(1),
    "train.precision": _choice(PRECISIONS),
    "data.dataset": _choice(DATASETS),
    "data.seed": _at_least(0),
    "data.n_train": _at_least(0),
    "data.n_val": _at_least(0),
    "data.n_test": _at_least(0),
    "data.pet_boundary": _choice(PET_BOUNDARIES),
    "data.synth_size": lambda v: None if 8 <= v <= 4096 else "must be in [8, 4096]",
}
"""Ranges and choices of single fields, checked with the types by `check_config`. The upper bounds are far above
any real run (the paper's adapters have #d <= 240, #L = 8) and stop a config edited by mistake (`model.dim=10**9`)
before anything is allocated; `check_config` bounds the adapter as a whole too (`MAX_ADAPTER_PARAMETERS`)."""

MAX_ADAPTER_PARAMETERS = 10**9
"""The most parameters `adapter_parameters` may estimate (4 GB as float32, 16 GB with AdamW's state and the
gradients); the paper's CUB adapter has under a million."""
MAX_GRID_TOKENS = 128 * 128
"""The most cells of the ALA grid, (image_size / patch_size)^2: each layer's attention is tokens^2 per head."""


def adapter_parameters(model: ALAConfig) -> int:
    """About how many parameters the ALA former, f1, f2 and the perception branch's classifier hold (the parts
    the backbone's width does not size): depth * dim^2 * (4 + 2 * mlp_ratio) for the transformer layers, plus
    the 3x3 convs and the heads."""
    layers = model.depth * model.dim**2 * (4 + 2 * model.mlp_ratio)
    convs = 9 * model.map_channels * (model.dim + 2 * model.map_channels)
    heads = (model.map_channels + model.pb_channels) * model.num_classes
    return int(layers + convs + heads)


def check_config(config: RunConfig) -> RunConfig:
    """Every field of the right type and in range, and the width divisible by the heads; else one line
    naming the key, the value and what is allowed."""
    hints = {section.name: typing.get_type_hints(type(getattr(config, section.name)))
             for section in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, section.name))}
    for section, fields in hints.items():
        part = getattr(config, section)
        for name, hint in fields.items():
            key = f"{section}.{name}"
            value = typed(hint, getattr(part, name), key)
            setattr(part, name, value)
            problem = RULES[key](value) if key in RULES else None
            if problem:
                raise VfmxaiError(f"{key}={value!r}: {problem}")
    model = config.model
    if model.dim % model.heads:
        raise VfmxaiError(f"model.heads={model.heads}: must divide model.dim={model.dim} (each head takes dim/heads)")
    tokens = (config.backbone.image_size // model.patch_size) ** 2
    if tokens > MAX_GRID_TOKENS:
        raise VfmxaiError(
            f"model.patch_size={model.patch_size}: the ALA grid at backbone.image_size={config.backbone.image_size} "
            f"would have {tokens} cells, more than {MAX_GRID_TOKENS}"
        )
    if (n := adapter_parameters(model)) > MAX_ADAPTER_PARAMETERS:
        raise VfmxaiError(
            f"model: the adapter would hold about {n:.2g} parameters (model.dim={model.dim}, "
            f"model.depth={model.depth}, model.mlp_ratio={model.mlp_ratio}, model.map_channels={model.map_channels}), "
            f"more than {MAX_ADAPTER_PARAMETERS:.0e}"
        )
    return config


PRESETS = ("toy", "cub", "imagenet_s", "dinov2", "probe")
CLASSIFIERS = ("ala", "linear_probe")


def preset(name: str) -> RunConfig:
    """The paper's Table 1 settings (`cub`, `imagenet_s`), the CPU demo's (`toy`), ALA on DINOv2-S/14 at 224 px
    (`dinov2`), or a linear probe on the frozen backbone (`probe`: full-batch AdamW on cached embeddings, 300
    steps at lr 1e-2).

    `dinov2` is what was measured on the Oxford-IIIT Pet sample on a CPU (README, "ALA's map on data it was not
    shaped around"): the adapter's patch is the backbone's 14, so both grids are 16x16 at 224 px; the toy
    preset's widths, batch 8, lr 3e-4 (at 1e-3 the classifier overfit and then fell apart by epoch 30), 30
    epochs without early stopping, the last epoch's weights; and four readings the paper leaves open or that
    depart from its text, each a `model` field: replicate padding, alpha's logits standardised per image, f2
    reading F rather than h_ALA (departs from §4.2) and the lattice fed h^(0), h^(4), h^(7), h^(11) rather than
    h^(0)..h^(3) (departs from §4.1). With the paper's readings, the same budget shut the map (pointing game
    0.00). The backbone is loaded from the Hugging Face cache; `--backbone DIR` takes a local copy."""
    if name == "toy":
        return RunConfig(preset="toy")
    if name == "probe":
        return RunConfig(
            preset="probe",
            classifier="linear_probe",
            backbone=BackboneConfig(lora=False),
            train=TrainConfig(epochs=300, batch_size=16, lr=1e-2, weight_decay=1e-4, patience=0),
        )
    if name == "dinov2":
        return RunConfig(
            preset="dinov2",
            backbone=BackboneConfig(name="facebook/dinov2-small", image_size=224),
            model=ALAConfig(
                patch_size=14, conv_padding="replicate", map_norm="image", ala_head_input="features",
                inject_layers="spread",
            ),
            train=TrainConfig(epochs=30, batch_size=8, lr=3e-4, weight_decay=1e-4, patience=0),
        )
    if name == "cub":
        return RunConfig(
            preset="cub",
            backbone=BackboneConfig(name="openai/clip-vit-base-patch16", image_size=384),
            model=ALAConfig(patch_size=16, dim=64, depth=8, heads=4, map_channels=128, pb_channels=256),
            train=TrainConfig(epochs=120, batch_size=8, lr=5e-5, weight_decay=1e-4, patience=5, select_by="loss"),
            data=DataConfig(dataset="cub"),
        )
    if name == "imagenet_s":
        return RunConfig(
            preset="imagenet_s",
            backbone=BackboneConfig(name="openai/clip-vit-base-patch16", image_size=384),
            model=ALAConfig(patch_size=16, dim=240, depth=8, heads=6, map_channels=256, pb_channels=512),
            train=TrainConfig(epochs=20, batch_size=64, lr=5e-5, weight_decay=1e-4, patience=5, select_by="loss"),
            data=DataConfig(dataset="imagenet-s"),
        )
    raise VfmxaiError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` strings (values parsed as JSON, else taken as text)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise VfmxaiError(f"--set {shown(item)}: expected key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        set_field(config, key.strip(), value, f"--set {shown(item)}", text=raw)
    return config


def set_field(config: RunConfig, key: str, value: Any, origin: str | None = None, text: str | None = None) -> None:
    """`config.<key> = value` for a dotted `section.field` key, typed by the field; an unknown section or field
    is an error naming `origin` (default: the key). `text`: the value as typed, kept for a text field whose
    value parsed as something else (`backbone.name=123` stays "123")."""
    origin = origin or shown(key)
    *path, leaf = key.split(".")
    target: Any = config
    for part in path:
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            raise VfmxaiError(f"{origin}: unknown section '{shown(part)}'")
        target = getattr(target, part)
    if not dataclasses.is_dataclass(target) or leaf not in {f.name for f in dataclasses.fields(target)}:
        raise VfmxaiError(f"{origin}: unknown field '{shown(key)}'")
    hint = typing.get_type_hints(type(target))[leaf]
    if dataclasses.is_dataclass(hint):
        example = f"{key}.{dataclasses.fields(hint)[0].name}"
        raise VfmxaiError(f"{origin}: '{key}' is a section; set one of its fields, e.g. {example}=...")
    if text is not None and hint in (str, str | None) and not isinstance(value, str | None):
        value = text
    setattr(target, leaf, typed(hint, value, key))
