"""The Attention Lattice Adapter model (Hirano et al., ICONIP 2025, arXiv 2509.14664, §4).

    images ─► backbone (LoRA) ─► h^(0) .. h^(k)
    images ─► ALA former: own patch embed + position embedding; before layer i (i = 1..n_inject) a
              linear projection of one VFM state's patch tokens is added ─► h_l
    F     = conv3x3(h_l); alpha = sigmoid(1x1 conv(F))         (f1, the map)
    h_ALA = alpha (map on) | ones (AEA's even epochs)
    p_ALA = FC(GAP(conv(pool(conv(h_ALA)))))                   (f2, the ALA classifier; reads h_ALA, §4.2)
    p_PB  = FC(GAP(conv(h_ALA ⊙ h^(k) patch grid)))            (perception branch; the prediction)

`model.ala_head_input = "features"` feeds f2 the feature map F instead of h_ALA (an ABN-style reading).
One backbone pass gives every state the adapter and the perception branch need, so the explanation
(alpha upsampled to the image) costs no extra pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmxai.backbones import Backbone
from vfmxai.classifier import Classifier
from vfmxai.config import ALAConfig
from vfmxai.errors import VfmxaiError


@dataclass
class ALAOutput:
    logits: Tensor
    """p_PB logits (B, C): the model's prediction."""
    logits_ala: Tensor | None
    """p_ALA logits (B, C): the adapter's own classifier, used only in the loss (None when not asked for)."""
    alpha: Tensor
    """The attention map (B, G, G) in [0, 1] on the ALA grid."""


def inject_indices(config: ALAConfig, num_blocks: int) -> list[int]:
    """Which VFM states h^(j), j in 0..k, are added before ALA layers 1, 2, ...; none without the lattice."""
    if not config.lattice:
        return []
    n = config.n_inject
    if n < 1 or n > config.depth:
        raise VfmxaiError(f"model.n_inject={n}: must be between 1 and model.depth={config.depth}")
    if config.inject_layers == "first":
        indices = list(range(n))
    elif config.inject_layers == "spread":
        indices = torch.linspace(0, num_blocks - 1, n).round().long().tolist()
    else:
        try:
            indices = [int(part) for part in str(config.inject_layers).split(",")]
        except ValueError:
            raise VfmxaiError(
                f"model.inject_layers='{config.inject_layers}': use first, spread or indices like 0,4,8,11"
            ) from None
    if len(indices) > config.depth or any(not 0 <= i <= num_blocks for i in indices):
        raise VfmxaiError(
            f"model.inject_layers={indices}: need at most {config.depth} indices in 0..{num_blocks}"
        )
    return indices


class ConvHead(nn.Module):
    """`stages` × (conv3x3 → GELU), a 2×2 max-pool between stages, then global average pooling → FC: the
    shape of f2 and of the perception branch ("convolutional layers, pooling layers, GAP, FC", §4.2–4.3).

    Activations are modules (not `F.gelu`) throughout the adapter, so methods that rewrite activation
    gradients (guided backpropagation) reach them."""

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, stages: int = 1, padding_mode: str = "zeros"
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for stage in range(stages):
            if stage:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            conv = nn.Conv2d(in_channels if stage == 0 else channels, channels, 3, padding=1, padding_mode=padding_mode)
            layers += [conv, nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, grid: Tensor) -> Tensor:
        return self.fc(self.body(grid).mean(dim=(2, 3)))


class ALAFormer(nn.Module):
    """Own patch embedding + #L pre-norm transformer layers with VFM states injected before the first ones."""

    def __init__(self, config: ALAConfig, image_size: int, vfm_width: int, n_injected: int):
        super().__init__()
        if image_size % config.patch_size:
            raise VfmxaiError(
                f"model.patch_size={config.patch_size} does not divide backbone.image_size={image_size}"
            )
        self.grid = image_size // config.patch_size
        self.patch_embed = nn.Conv2d(3, config.dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.position = nn.Parameter(torch.zeros(1, self.grid * self.grid, config.dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.inject = nn.ModuleList(nn.Linear(vfm_width, config.dim) for _ in range(n_injected))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.dim,
                config.heads,
                int(config.dim * config.mlp_ratio),
                dropout=0.0,
                activation=nn.GELU(),
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, images: Tensor, states: list[Tensor]) -> Tensor:
        """images (B,3,H,W) normalised; states: VFM patch grids (B, D, g, g), one per injection (none
        without the lattice) -> ALA grid (B, d, G, G)."""
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2) + self.position
        for i, layer in enumerate(self.layers):
            if i < len(states):
                state = states[i]
                if state.shape[-1] != self.grid:
                    state = F.interpolate(state, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
                tokens = tokens + self.inject[i](state.flatten(2).transpose(1, 2))
            tokens = layer(tokens)
        tokens = self.norm(tokens)
        b, n, d = tokens.shape
        # contiguous: a channels-last view would give the convs after it channels-last weight gradients,
        # which DDP's gradient buckets copy (and warn about) every step
        return tokens.transpose(1, 2).reshape(b, d, self.grid, self.grid).contiguous()


ALA_HEAD_INPUTS = ("map", "features")
MAP_NORMS = ("none", "image")
PB_TOKEN_NORMS = ("none", "layernorm")
HEAD_INITS = ("zeros", "default")
GATE_NORMS = ("mean", "none")
CONV_PADDINGS = ("zeros", "replicate")
READINGS = {
    "ala_head_input": ALA_HEAD_INPUTS,
    "map_norm": MAP_NORMS,
    "pb_token_norm": PB_TOKEN_NORMS,
    "head_init": HEAD_INITS,
    "gate_norm": GATE_NORMS,
    "conv_padding": CONV_PADDINGS,
}
"""The `ALAConfig` fields that name one reading among fixed choices, checked before anything is built."""


class ALAModel(Classifier):
    """Backbone + Attention Lattice Adapter + perception branch. `forward` gives p_PB logits."""

    def __init__(self, backbone: Backbone, config: ALAConfig):
        super().__init__()
        if config.num_classes < 2:
            raise VfmxaiError(f"model.num_classes={config.num_classes}: need at least 2 classes")
        self.backbone = backbone
        self.config = config
        self.num_classes = config.num_classes
        for field_name, choices in READINGS.items():
            if getattr(config, field_name) not in choices:
                raise VfmxaiError(
                    f"model.{field_name}='{getattr(config, field_name)}': choose one of {', '.join(choices)}"
                )
        self.inject_from = inject_indices(config, backbone.num_blocks)
        padding = config.conv_padding
        self.former = ALAFormer(config, backbone.image_size, backbone.hidden_size, len(self.inject_from))
        self.map_features = nn.Sequential(
            nn.Conv2d(config.dim, config.map_channels, kernel_size=3, padding=1, padding_mode=padding), nn.GELU()
        )
        self.map_out = nn.Conv2d(config.map_channels, 1, kernel_size=1)
        self.ala_head_reads_map = config.ala_head_input == "map"
        # a one-channel map needs a second conv stage to see shapes larger than 3x3 cells before pooling
        self.ala_head = (
            ConvHead(1, config.map_channels, config.num_classes, stages=2, padding_mode=padding)
            if self.ala_head_reads_map
            else ConvHead(config.map_channels, config.map_channels, config.num_classes, padding_mode=padding)
        )
        self.perception = ConvHead(backbone.hidden_size, config.pb_channels, config.num_classes, padding_mode=padding)
        if config.head_init == "zeros":
            for head in (self.ala_head, self.perception):
                nn.init.zeros_(head.fc.weight)
                nn.init.zeros_(head.fc.bias)
        self.use_map = True
        """AEA's switch, set by the `AlternatingEpochArchitect` callback alone: False replaces the map by
        all-ones before the perception branch."""

    def adapter_modules(self) -> list[nn.Module]:
        """Every ALA part (former, f1, f2): what AEA freezes in even epochs."""
        return [self.former, self.map_features, self.map_out, self.ala_head]

    def forward_all(self, images: Tensor, ala_logits: bool = True, map_on: bool | None = None) -> ALAOutput:
        """Every output of one pass; `ala_logits=False` skips f2, which only the loss reads (prediction and
        explanation leave it out). `map_on` overrides AEA's `use_map` for this pass (validation scores the
        model with its map in every epoch)."""
        states = self.backbone.hidden_states(images)
        features, alpha = self.attention_map(self.lattice(images, states))
        gate = self.h_ala(alpha, self.use_map if map_on is None else map_on)
        logits = self.perception(self.gated_last(states, gate))
        logits_ala = None
        if ala_logits:
            logits_ala = self.ala_head(gate if self.ala_head_reads_map else features)
        return ALAOutput(logits=logits, logits_ala=logits_ala, alpha=alpha.squeeze(1))

    def lattice(self, images: Tensor, states: list[Tensor]) -> Tensor:
        """The ALA former's output grid (B, d, G, G), the chosen VFM states injected."""
        injected = [self.backbone.patch_grid(states[j]) for j in self.inject_from]
        return self.former(self.backbone.normalize(images), injected)

    def attention_map(self, grid: Tensor) -> tuple[Tensor, Tensor]:
        """f1: (F (B, C_a, G, G), alpha (B, 1, G, G)); `model.map_norm` says how the logits become alpha."""
        features = self.map_features(grid)
        logits = self.map_out(features)
        if self.config.map_norm == "image":
            mean = logits.mean(dim=(2, 3), keepdim=True)
            std = logits.std(dim=(2, 3), keepdim=True, correction=0)
            logits = (logits - mean) / (std + 1e-5)
        return features, torch.sigmoid(logits)

    def h_ala(self, alpha: Tensor, map_on: bool = True) -> Tensor:
        """h_ALA (paper Eq. 3): alpha (over its grid mean with `model.gate_norm=mean`), or all-ones in AEA's even
        epochs (`map_on=False`)."""
        if not map_on:
            return torch.ones_like(alpha)
        if self.config.gate_norm == "mean":
            return alpha / alpha.mean(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        return alpha

    def gated_last(self, states: list[Tensor], gate: Tensor) -> Tensor:
        """h^(k)'s patch grid (tokens standardised if `model.pb_token_norm`) times h_ALA resized to that grid."""
        last = self.backbone.patch_grid(states[-1])
        if self.config.pb_token_norm == "layernorm":
            last = F.layer_norm(last.movedim(1, -1), last.shape[1:2]).movedim(-1, 1)
        if gate.shape[-2:] != last.shape[-2:]:
            gate = F.interpolate(gate, size=last.shape[-2:], mode="bilinear", align_corners=False)
        return last * gate

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_all(images, ala_logits=False).logits

    def explain(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(maps (B, H, W): alpha upsampled bilinearly to the input, logits (B, C)) from one forward; the images
        are checked first (`Classifier.check_input`)."""
        out = self.forward_all(self.check_input(images, "ALAModel.explain"), ala_logits=False)
        maps = F.interpolate(out.alpha.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return maps.squeeze(1), out.logits

    def loss(self, out: ALAOutput, labels: Tensor) -> Tensor:
        """L = CE(p_PB, y) + λ·CE(p_ALA, y) (paper Eq. 4)."""
        if out.logits_ala is None:
            raise ValueError("ALAModel.loss needs forward_all(..., ala_logits=True)")
        return F.cross_entropy(out.logits, labels) + self.config.lambda_ala * F.cross_entropy(out.logits_ala, labels)

    @staticmethod
    def is_trainable(name: str) -> bool:
        """ALA, perception branch and LoRA weights train; every other backbone weight stays frozen."""
        return not name.startswith("backbone.") or "lora_" in name

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser steps (AEA toggles `requires_grad` on the adapter's share of them)."""
        return [p for name, p in self.named_parameters() if self.is_trainable(name)]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything a checkpoint holds: the trainable weights, never the frozen backbone again."""
        return {k: v for k, v in self.state_dict().items() if self.is_trainable(k)}
