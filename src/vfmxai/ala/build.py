"""Build an `ALAModel` from a `RunConfig`: backbone, LoRA (unless the no-LoRA ablation), adapter."""

from __future__ import annotations

from vfmxai.ala.model import ALAModel
from vfmxai.backbones import add_lora, load_backbone
from vfmxai.config import RunConfig


def build_model(config: RunConfig) -> ALAModel:
    bc = config.backbone
    backbone = load_backbone(bc.name, bc.image_size, seed=config.train.seed)
    if bc.lora:
        add_lora(backbone, bc.lora_rank, bc.lora_alpha, bc.lora_blocks, bc.lora_targets, bc.lora_dropout)
    else:
        backbone.requires_grad_(False)
    return ALAModel(backbone, config.model)
