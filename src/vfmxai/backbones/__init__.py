"""ViT image encoders from Hugging Face transformers behind one interface (`Backbone`)."""

from vfmxai.backbones.base import Backbone
from vfmxai.backbones.loading import BACKBONE_PRESETS, load_backbone, load_clip
from vfmxai.backbones.lora import add_lora, lora_state_dict, merged_lora

__all__ = ["BACKBONE_PRESETS", "Backbone", "add_lora", "load_backbone", "load_clip", "lora_state_dict", "merged_lora"]
