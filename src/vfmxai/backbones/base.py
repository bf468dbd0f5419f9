"""`Backbone`: a ViT image encoder that takes pixels in [0, 1] and returns every block's hidden state.

Every model in vfmxai takes images as float tensors (B, 3, H, W) in [0, 1]; the backbone applies its
own mean/std normalisation. So "black" is 0 for every backbone, and attributions are with respect
to the pixels a person sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vfmxai.errors import VfmxaiError


@dataclass(frozen=True)
class FamilySpec:
    """Where the parts of one transformers model family live."""

    family: str
    blocks_path: str
    """Attribute path from the vision model to its ModuleList of blocks."""
    attention_name: str
    """Name of the self-attention submodule inside a block."""
    final_norm_path: str | None
    """Norm applied to the pooled token (CLIP's post_layernorm), or None."""
    num_prefix_tokens: int
    """Tokens before the patch tokens (CLIP, ViT, DINOv2: 1 class token; SigLIP: 0)."""


FAMILIES = {
    "clip": FamilySpec("clip", "encoder.layers", "self_attn", "post_layernorm", 1),
    "siglip": FamilySpec("siglip", "encoder.layers", "self_attn", "post_layernorm", 0),
    "dinov2": FamilySpec("dinov2", "encoder.layer", "attention", "layernorm", 1),
    "vit": FamilySpec("vit", "encoder.layer", "attention", "layernorm", 1),
}


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


class Backbone(nn.Module):
    """A ViT encoder: `hidden_states(x)` -> [h^(0), ..., h^(k)], each (B, prefix + N, D).

    h^(0) is the input to block 1 (for CLIP: the embeddings after `pre_layrnorm`), h^(i) the output
    of block i. Position embeddings are interpolated when `image_size` differs from the
    size the weights were trained at.
    """

    def __init__(self, vision_model: nn.Module, family: str, image_size: int, mean, std, name: str):
        super().__init__()
        self.model = vision_model
        self.spec = FAMILIES[family]
        self.name = name
        cfg = vision_model.config
        self.patch_size = int(cfg.patch_size)
        self.hidden_size = int(cfg.hidden_size)
        self.num_heads = int(cfg.num_attention_heads)
        self.native_image_size = int(cfg.image_size)
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def blocks(self) -> nn.ModuleList:
        return _get(self.model, self.spec.blocks_path)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_prefix_tokens(self) -> int:
        return self.spec.num_prefix_tokens

    def attention(self, block_index: int) -> nn.Module:
        return getattr(self.blocks[block_index], self.spec.attention_name)

    def grid_shape(self, image_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """Patch tokens (rows, columns) for an (H, W) input (None: the square `image_size`)."""
        height, width = image_size or (self.image_size, self.image_size)
        return height // self.patch_size, width // self.patch_size

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: Tensor, output_attentions: bool = False):
        """The underlying transformers output, with every hidden state."""
        kwargs = {}
        if images.shape[-1] != self.native_image_size or images.shape[-2] != self.native_image_size:
            kwargs["interpolate_pos_encoding"] = True
        return self.model(
            pixel_values=self.normalize(images),
            output_hidden_states=True,
            output_attentions=output_attentions,
            **kwargs,
        )

    def hidden_states(self, images: Tensor) -> list[Tensor]:
        return list(self(images).hidden_states)

    def patch_grid(self, tokens: Tensor, image_size: tuple[int, int] | None = None) -> Tensor:
        """The patch tokens on their grid: (B, prefix + N, D) -> (B, D, g_h, g_w), and per-token scores
        (B, prefix + N) -> (B, g_h, g_w); the prefix tokens are dropped.

        The grid is `grid_shape(image_size)` for the (H, W) of the input the tokens came from; without
        it, the square grid of N tokens."""
        patches = tokens[:, self.num_prefix_tokens :]
        n = patches.shape[1]
        rows, cols = (math.isqrt(n),) * 2 if image_size is None else self.grid_shape(image_size)
        if rows * cols != n:
            where = "a square" if image_size is None else f"the {rows}x{cols} grid of a {tuple(image_size)} image"
            raise VfmxaiError(f"backbone '{self.name}': {n} patch tokens do not form {where}")
        if tokens.dim() == 2:
            return patches.reshape(tokens.shape[0], rows, cols)
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, rows, cols)

    def pooled(self, last_hidden: Tensor) -> Tensor:
        """The image embedding a linear probe reads: the normed class token (mean patch token for SigLIP)."""
        token = last_hidden[:, 0] if self.num_prefix_tokens else last_hidden.mean(dim=1)
        if self.spec.final_norm_path is None:
            return token
        return _get(self.model, self.spec.final_norm_path)(token)

    def embedding(self, images: Tensor) -> Tensor:
        """`pooled` of the last hidden state (B, D): what a linear probe and DAAM's self-supervised score read."""
        return self.pooled(self(images).hidden_states[-1])
