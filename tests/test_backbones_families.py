"""Every backbone family users bring (CLIP, SigLIP, DINOv2 with and without registers, ViT), random-init from
configs and loaded from a directory as a user's would be: which tokens are patches, the grid of a non-square
input, and every post-hoc method's map on it."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

from vfmxai.backbones import load_backbone
from vfmxai.classifier import LinearProbe
from vfmxai.errors import VfmxaiError
from vfmxai.explainers import get
from vfmxai.vocabulary import METHODS

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "image_size": 32, "patch_size": 8}
FAMILIES = {
    "clip": (CLIPVisionModel, CLIPVisionConfig, 1),
    "siglip": (SiglipVisionModel, SiglipVisionConfig, 0),
    "dinov2": (Dinov2Model, Dinov2Config, 1),
    "dinov2_with_registers": (Dinov2WithRegistersModel, Dinov2WithRegistersConfig, 1 + 4),
    "vit": (ViTModel, ViTConfig, 1),
}
HEIGHT, WIDTH = 32, 48
"""A non-square input: a 4 x 6 grid of 8-px patches."""
POST_HOC = [m for m in METHODS if m != "ala"]


def _saved(family: str, tmp_path_factory) -> str:
    model_cls, config_cls, _ = FAMILIES[family]
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(family)
    model_cls(config_cls(**SMALL)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module", params=list(FAMILIES))
def probe(request, tmp_path_factory) -> LinearProbe:
    backbone = load_backbone(_saved(request.param, tmp_path_factory), image_size=32)
    torch.manual_seed(1)
    probe = LinearProbe(backbone, 3).eval()
    probe.family = request.param
    return probe


def test_the_backbone_says_which_tokens_are_patches_and_the_grid_of_a_non_square_input(probe):
    backbone = probe.backbone
    prefix = FAMILIES[probe.family][2]
    assert backbone.num_prefix_tokens == prefix
    states = backbone.hidden_states(torch.rand(2, 3, HEIGHT, WIDTH))
    assert states[-1].shape[1] == prefix + 4 * 6
    grid = backbone.patch_grid(states[-1], (HEIGHT, WIDTH))
    # patch token t sits at row t // 6, column t % 6: the prefix is dropped, not one patch
    torch.testing.assert_close(grid[:, :, 1, 2], states[-1][:, prefix + 1 * 6 + 2])
    torch.testing.assert_close(grid[:, :, 3, 5], states[-1][:, -1])


@pytest.mark.parametrize("method", POST_HOC)
def test_every_post_hoc_method_maps_a_non_square_input_at_its_size(probe, method):
    images = torch.rand(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    options = {"n_masks": 16} if method == "rise" else {}
    with get(method, probe, **options) as explainer:
        maps = explainer(images, torch.tensor([0, 2]))
    assert maps.shape == (2, HEIGHT, WIDTH)
    assert torch.isfinite(maps).all()
    assert (maps.flatten(1).amax(1) > maps.flatten(1).amin(1)).all(), "a constant map"


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> LinearProbe:
    """DINOv2 with registers whose 4 register tokens carry activations a thousand times a patch token's."""
    backbone = load_backbone(_saved("dinov2_with_registers", tmp_path_factory), image_size=32)
    with torch.no_grad():
        backbone.model.embeddings.register_tokens.fill_(1000.0)
    torch.manual_seed(1)
    return LinearProbe(backbone, 3).eval()


@pytest.mark.parametrize("method", ["gradcam", "rollout", "transformer_attribution", "daam", "lrp"])
def test_a_planted_register_token_shows_up_in_no_map(planted, method):
    """The registers dwarf every patch token at the input to block 1. Were they counted as patches, the
    4 + 24 tokens would not fit the 4 x 6 grid; the maps have the input's shape, are finite and not flat."""
    images = torch.rand(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    states = planted.backbone.hidden_states(images)
    assert states[0][:, 1:5].abs().amin() > 100 * states[0][:, 5:].abs().amax()
    with get(method, planted) as explainer:
        maps = explainer(images, torch.tensor([1, 1]))
    assert maps.shape == (2, HEIGHT, WIDTH) and torch.isfinite(maps).all()
    assert (maps.flatten(1).amax(1) > maps.flatten(1).amin(1)).all()


def test_siglip_methods_defined_through_the_class_token_read_the_mean_patch_token(tmp_path_factory):
    """With no class token, rollout's map is the mean of the patch tokens' rollout rows (`class_row`), here
    checked against the rollout recomputed from the attention probabilities transformers returns."""
    backbone = load_backbone(_saved("siglip", tmp_path_factory), image_size=32)
    probe = LinearProbe(backbone, 3).eval()
    images = torch.rand(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(5))
    backbone.model.set_attn_implementation("eager")  # transformers returns attention probabilities only so
    with torch.no_grad():
        attentions = backbone(images, output_attentions=True).attentions
    assert len(attentions) == 2
    tokens = 4 * 6
    rollout = torch.eye(tokens)
    for a in attentions:
        a = 0.5 * a[0].mean(0) + 0.5 * torch.eye(tokens)
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    expected = rollout.mean(0).reshape(4, 6)
    with get("rollout", probe) as explainer:
        maps = explainer.attribute(images, torch.tensor([0]))
    torch.testing.assert_close(maps[0] / maps[0].sum(), expected / expected.sum(), rtol=1e-4, atol=1e-6)


def test_bad_backbones_are_one_line_naming_the_directory_or_the_option(tmp_path, tmp_path_factory):
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    Dinov2Config(**SMALL).save_pretrained(no_weights)
    with pytest.raises(VfmxaiError, match=f"--backbone {no_weights}: could not load weights") as err:
        load_backbone(str(no_weights))
    assert "\n" not in str(err.value)
    unsupported = tmp_path / "unsupported"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    with pytest.raises(VfmxaiError, match=f"--backbone {unsupported}: model_type 'resnet' is not supported"):
        load_backbone(str(unsupported))
    with pytest.raises(VfmxaiError, match=r"backbone.image_size=36: .* patches of 8 px.*e\.g\. 32") as err:
        load_backbone(_saved("dinov2", tmp_path_factory), image_size=36)
    assert "\n" not in str(err.value)
