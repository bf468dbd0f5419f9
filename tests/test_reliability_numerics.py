"""Numerical edge cases: constant and non-finite maps, a saturated softmax in insertion/deletion, batches
of one image."""

from __future__ import annotations

import pytest
import torch
from run_fixtures import tiny_run_config
from torch import Tensor, nn

from vfmxai import explainers
from vfmxai.ala import build_model
from vfmxai.errors import VfmxaiError
from vfmxai.explainers import Explainer
from vfmxai.metrics import insertion_deletion


class TwoClasses(nn.Module):
    """logit_0 = scale * (mean brightness - 1/2), logit_1 = 0: p_0 is a step at half brightness when scale is huge."""

    num_classes = 2

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, images: Tensor) -> Tensor:
        first = self.scale * (images.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([first, torch.zeros_like(first)], dim=1)


class Fixed(Explainer):
    """Returns the raw maps it was given, whatever the images."""

    name = "fixed"

    def __init__(self, raw: Tensor) -> None:
        super().__init__(TwoClasses())
        self.raw = raw

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        return self.raw


def _explain(raw: Tensor) -> Tensor:
    images = torch.rand(raw.shape[0], 3, 8, 8)
    return Fixed(raw)(images, torch.zeros(raw.shape[0], dtype=torch.long))


def test_a_constant_or_all_zero_raw_map_becomes_an_all_zero_map():
    raw = torch.stack([torch.full((4, 4), 3.7), torch.zeros(4, 4), torch.arange(16.0).view(4, 4)])
    maps = _explain(raw)
    assert maps.shape == (3, 8, 8)
    assert torch.equal(maps[0], torch.zeros(8, 8)) and torch.equal(maps[1], torch.zeros(8, 8))
    assert float(maps[2].min()) == 0.0 and float(maps[2].max()) == 1.0  # the others are normalised alone
    assert torch.equal(_explain(torch.full((1, 2, 2), -1e30)), torch.zeros(1, 8, 8))


@pytest.mark.parametrize(("bad", "where"), [(float("nan"), [1]), (float("inf"), [0, 2]), (float("-inf"), [2])])
def test_a_non_finite_map_names_the_method_and_the_images(bad, where):
    raw = torch.rand(3, 4, 4)
    for index in where:
        raw[index, 1, 2] = bad
    with pytest.raises(VfmxaiError) as info:
        _explain(raw)
    assert str(info.value) == f"method 'fixed' produced a NaN or infinite map for image(s) {where}"


@pytest.mark.parametrize("scale", [1e4, 1e30, 1e38])
def test_a_saturated_softmax_gives_finite_hand_computed_insertion_and_deletion(scale):
    """White image, black substrate, 4 steps: brightness k/4, so p_0 = 0, 0, 1/2, 1, 1 when inserting
    (a step at 1/2 with logit exactly 0 there) and the reverse when deleting; both areas are 1/2."""
    result = insertion_deletion(TwoClasses(scale), torch.ones(2, 3, 16, 16), torch.rand(2, 16, 16),
                                torch.tensor([0, 0]), steps=4)
    expected = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0])
    assert torch.equal(result.insertion_curve, expected.expand(2, 5))
    assert torch.equal(result.deletion_curve, expected.flip(0).expand(2, 5))
    assert torch.equal(result.insertion, torch.full((2,), 0.5)) and torch.equal(result.deletion, torch.full((2,), 0.5))
    probabilities = insertion_deletion(TwoClasses(scale), torch.ones(1, 3, 16, 16), torch.rand(1, 16, 16),
                                       torch.tensor([1]), steps=4)
    assert torch.equal(probabilities.insertion, torch.full((1,), 0.5))


def test_infinite_logits_are_an_error_or_finite_scores():
    try:
        result = insertion_deletion(TwoClasses(float("inf")), torch.ones(1, 3, 16, 16), torch.rand(1, 16, 16),
                                    torch.tensor([0]), steps=4)
    except VfmxaiError:
        return
    assert bool(torch.isfinite(result.insertion).all()) and 0 <= float(result.insertion) <= 1


CHEAP = {"rise": {"n_masks": 8}, "ig": {"steps": 4}, "scorecam": {"max_channels": 4}, "vit_cx": {"n_masks": 8},
         "beyond_intuition": {"steps": 4}}


def test_every_method_explains_a_batch_of_one_as_it_does_inside_a_batch():
    torch.manual_seed(0)
    config = tiny_run_config()
    config.model.num_classes = 3
    model = build_model(config).eval()
    images, targets = torch.rand(3, 3, 32, 32), torch.tensor([1, 0, 2])
    assert len(explainers.available()) >= 10
    for method in explainers.available():
        if explainers.inapplicable(method, model):  # TIS: an ALA head reads the full patch grid
            continue
        with explainers.get(method, model, **CHEAP.get(method, {})) as explainer:
            batch = explainer(images, targets)
            alone = explainer(images[1:2], targets[1:2])
        assert alone.shape == (1, 32, 32), method
        assert float(alone.min()) == 0.0 and float(alone.max()) == 1.0, method
        torch.testing.assert_close(alone[0], batch[1], rtol=0, atol=1e-4, msg=method)
    one = insertion_deletion(model, images[1:2], alone, targets[1:2], steps=4)
    assert one.insertion.shape == (1,) and 0 <= float(one.insertion) <= 1 and 0 <= float(one.deletion) <= 1
