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
    blocks_paths: tuple[str, ...]
    """Attribute paths from the vision model to its ModuleList of blocks, the first that exists taken
    (transformers 5 moved ViT's from `encoder.layer` to `layers`)."""
    attention_name: str
    """Name of the self-attention submodule inside a block."""
    final_norm_path: str | None
    """Norm applied to the pooled token (CLIP's post_layernorm), or None."""
    class_token: bool
    """Whether a class token comes first (CLIP, ViT, DINOv2; SigLIP has none: its head attention-pools)."""


FAMILIES = {
    "clip": FamilySpec("clip", ("encoder.layers",), "self_attn", "post_layernorm", True),
    "siglip": FamilySpec("siglip", ("encoder.layers",), "self_attn", "post_layernorm", False),
    "dinov2": FamilySpec("dinov2", ("encoder.layer",), "attention", "layernorm", True),
    "vit": FamilySpec("vit", ("layers", "encoder.layer"), "attention", "layernorm", True),
}


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _has_blocks(module: nn.Module, path: str) -> bool:
    try:
        return isinstance(_get(module, path), nn.ModuleList)
    except AttributeError:
        return False


class Backbone(nn.Module):
    """A ViT encoder: `hidden_states(x)` -> [h^(0), ..., h^(k)], each (B, prefix + N, D).

    h^(0) is the input to block 1 (for CLIP: the embeddings after `pre_layrnorm`), h^(i) the output
    of block i. Position embeddings are interpolated when `image_size` differs from the
    size the weights were trained at. Token order: [class token][registers][patch tokens, row-major];
    `num_prefix_tokens` counts what comes before the patches (DINOv2 with registers: 1 + its registers).
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
        if self.image_size % self.patch_size:
            raise VfmxaiError(
                f"backbone.image_size={self.image_size}: backbone '{name}' has patches of {self.patch_size} px, "
                f"which do not divide it (use a multiple of {self.patch_size}, e.g. "
                f"{max(1, round(self.image_size / self.patch_size)) * self.patch_size})"
            )
        self.num_registers = int(getattr(cfg, "num_register_tokens", 0) or 0)
        found = next((path for path in self.spec.blocks_paths if _has_blocks(vision_model, path)), None)
        if found is None:
            raise VfmxaiError(
                f"backbone '{name}': no block list at {' or '.join(self.spec.blocks_paths)} in its "
                f"{type(vision_model).__name__} (a transformers version vfmxai does not know?)"
            )
        self.blocks_path = found
        """Attribute path of the block list in this model (`FamilySpec.blocks_paths`)."""
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def blocks(self) -> nn.ModuleList:
        return _get(self.model, self.blocks_path)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def final_norm(self) -> nn.Module | None:
        """The norm applied to the pooled token after the last block (`FamilySpec.final_norm_path`), or None."""
        return None if self.spec.final_norm_path is None else _get(self.model, self.spec.final_norm_path)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: the class token (if any) and the registers."""
        return int(self.spec.class_token) + self.num_registers

    @property
    def has_class_token(self) -> bool:
        return self.spec.class_token

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
        """The image embedding a linear probe reads: the normed class token; with none (SigLIP), the normed mean
        patch token (vfmxai does not use SigLIP's attention-pooling head: every method can then say which tokens
        the embedding mixes, and a probe on it is as linear as on a class token)."""
        token = last_hidden[:, 0] if self.has_class_token else last_hidden[:, self.num_prefix_tokens :].mean(dim=1)
        norm = self.final_norm
        return token if norm is None else norm(token)

    def embedding(self, images: Tensor) -> Tensor:
        """`pooled` of the last hidden state (B, D): what a linear probe and DAAM's self-supervised score read."""
        return self.pooled(self(images).hidden_states[-1])
