"""Precision: `auto` resolves per device, and every explainer runs under bf16 autocast with float32 maps."""

from __future__ import annotations

import pytest
import torch
from run_fixtures import tiny_run_config

from vfmxai import explainers
from vfmxai.ala import build_model
from vfmxai.errors import VfmxaiError
from vfmxai.runtime import autocast, resolve_precision

LEVEL_MAPS = {"vit_cx"}
"""ViT-CX's density correction (Σ s_m M_m / Σ M_m) leaves only the masks' score differences, 1e-3 of the map's level
on this untrained model, below bf16's resolution: its raw maps are compared (1 % relative), not their ranks."""
FEW_PASSES = {"rise": {"n_masks": 64}, "ig": {"steps": 8}, "vit_cx": {"n_masks": 16}, "beyond_intuition": {"steps": 4}}


def test_auto_is_bf16_on_a_gpu_and_fp32_on_a_cpu() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", torch.device("cuda", 1)) == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(VfmxaiError, match=r"^--precision fp16: choose from auto, bf16, fp32$"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("method", explainers.available())
def test_explainer_under_bf16_gives_float32_maps_close_to_fp32(method: str) -> None:
    torch.manual_seed(0)
    config = tiny_run_config()
    config.model.num_classes = 6
    model = build_model(config).eval()
    if reason := explainers.inapplicable(method, model):
        pytest.skip(f"{method} on an ALA model: {reason}")
    images, targets = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    maps = {}
    for precision in ("fp32", "bf16"):
        with autocast(precision, "cpu"), explainers.get(method, model, **FEW_PASSES.get(method, {})) as explainer:
            maps[precision] = explainer(images, targets, normalize=method not in LEVEL_MAPS)
    assert maps["bf16"].dtype == torch.float32 and bool(torch.isfinite(maps["bf16"]).all())
    if method in LEVEL_MAPS:
        torch.testing.assert_close(maps["bf16"], maps["fp32"], rtol=1e-2, atol=0)
        return
    assert torch.corrcoef(torch.stack([maps["fp32"].flatten(), maps["bf16"].flatten()]))[0, 1] > 0.95
    if method == "ala":  # the model did run in bf16: its map moved
        assert not torch.equal(maps["bf16"], maps["fp32"])
