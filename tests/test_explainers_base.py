"""The mechanics the explainers share: the target's score, chunked extra passes, the one activation list."""

from __future__ import annotations

import pytest
import torch
from explainer_fixtures import PatchMeanProbe, tiny_probe
from run_fixtures import tiny_run_config
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

from vfmxai.ala import build_model
from vfmxai.explainers import get
from vfmxai.explainers.base import ACTIVATIONS, index_chunks, target_logits, target_probabilities

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def test_target_logits_and_probabilities_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    targets = torch.tensor([1, 0])
    torch.testing.assert_close(target_logits(logits, targets), torch.tensor([2.0, 0.0]))
    e = torch.e
    expected = torch.tensor([e**2 / (e + e**2 + 1), 1 / (2 + e**3)])
    torch.testing.assert_close(target_probabilities(logits.half(), targets), expected, atol=2e-3, rtol=0)
    assert target_probabilities(logits.half(), targets).dtype == torch.float32


@pytest.mark.parametrize("batch_size", [1, 4, 7, 100])
def test_index_chunks_cover_the_grid_once_in_row_major_order(batch_size):
    chunks = list(index_chunks(3, 5, batch_size, torch.device("cpu")))
    assert all(len(i) <= batch_size for i, _ in chunks)
    pairs = [(int(i), int(j)) for rows, cols in chunks for i, j in zip(rows, cols, strict=True)]
    assert pairs == [(i, j) for i in range(3) for j in range(5)]


def _models_we_build() -> dict[str, nn.Module]:
    """Every family's transformers architecture as it builds by default, the ALA model and the probes."""
    families = {
        "clip": CLIPVisionModel(CLIPVisionConfig(**SMALL, image_size=32, patch_size=8)),
        "siglip": SiglipVisionModel(SiglipVisionConfig(**SMALL, image_size=32, patch_size=8)),
        "dinov2": Dinov2Model(Dinov2Config(**SMALL, image_size=32, patch_size=8)),
        "vit": ViTModel(ViTConfig(**SMALL, image_size=32, patch_size=8)),
    }
    probe = tiny_probe()
    return {**families, "linear_probe": probe, "patch_mean_probe": PatchMeanProbe(probe.backbone, 3), "ala": _ala()}


def _ala() -> nn.Module:
    config = tiny_run_config()
    config.model.num_classes = 3
    return build_model(config)


def _is_elementwise_activation(module: nn.Module) -> bool:
    """Found by where the class is defined, independently of `ACTIVATIONS` (attention is no activation)."""
    defined_in = type(module).__module__
    return defined_in in ("torch.nn.modules.activation", "transformers.activations") and not isinstance(
        module, nn.MultiheadAttention
    )


def test_every_activation_of_the_models_we_build_is_in_the_one_list():
    for name, model in _models_we_build().items():
        # ViT's pooler (dense + tanh) makes `pooler_output`, which no vfmxai model reads
        found = [m for path, m in model.named_modules() if _is_elementwise_activation(m) and "pooler" not in path]
        assert found, name
        missing = {type(m).__name__ for m in found if not isinstance(m, ACTIVATIONS)}
        assert not missing, (name, missing)


def test_guided_bp_and_lrp_rewrite_the_same_modules():
    model = _ala()
    activations = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    layer_norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert {type(m) for m in activations} == {nn.GELU, type(model.backbone.blocks[0].mlp.activation_fn)}
    with get("guided_bp", model) as explainer:
        assert explainer.gated == activations
    with get("lrp", model) as explainer, explainer.rules():
        assert len(explainer._handles) == len(activations) + len(layer_norms)


def test_each_method_names_itself_in_tables_and_figures() -> None:
    """The names the paper's Table 2 and the README's tables print, read from each explainer class."""
    from vfmxai import explainers
    from vfmxai.vocabulary import METHODS

    printed = {
        "ala": "ALA (ours)", "gradcam": "Grad-CAM", "scorecam": "Score-CAM", "ig": "IG", "guided_bp": "Guided BP",
        "lrp": "LRP", "rise": "RISE", "rollout": "Rollout", "transformer_attribution": "Transformer attribution",
        "daam": "DAAM",
    }
    assert {m: explainers.display_name(m) for m in METHODS} == printed
    assert explainers.display_name("not_a_method") == "not_a_method"
