"""Sparseness and complexity of a map by hand, and the sensitivity of explanations."""

from __future__ import annotations

import math

import pytest
import torch

from vfmxai.errors import VfmxaiError
from vfmxai.metrics import avg_sensitivity, complexity, max_sensitivity, sensitivity_ratios, sparseness


def test_sparseness_is_maximal_for_a_one_hot_map_zero_for_a_constant_one_and_by_hand():
    one_hot = torch.zeros(1, 4, 5)
    one_hot[0, 2, 3] = 7.0
    maps = torch.cat([one_hot, torch.full((1, 4, 5), 0.3), torch.zeros(1, 4, 5)])
    assert sparseness(maps).tolist() == pytest.approx([19 / 20, 0.0, 0.0])
    # sorted |a| = 0, 0, 1, 3; weights 2i - n - 1 = -3, -1, 1, 3: (1 + 9) / (4 * 4)
    assert sparseness(torch.tensor([[[3.0, 0.0], [-1.0, 0.0]]])).item() == pytest.approx(10 / 16)


def test_complexity_is_log_n_for_a_uniform_map_zero_for_a_one_hot_one_and_by_hand():
    one_hot = torch.zeros(1, 4, 5)
    one_hot[0, 0, 1] = 2.0
    maps = torch.cat([torch.full((1, 4, 5), 0.5), one_hot, torch.zeros(1, 4, 5)])
    assert complexity(maps).tolist() == pytest.approx([math.log(20), 0.0, math.log(20)])
    assert complexity(torch.tensor([[[1.0, 1.0, 2.0]]])).item() == pytest.approx(1.5 * math.log(2))
    with pytest.raises(VfmxaiError, match="^complexity: maps"):
        complexity(torch.full((1, 2, 2), float("nan")))


def test_sensitivity_of_a_method_that_ignores_its_input_is_zero():
    fixed = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))

    def ignores(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return fixed[targets]

    images = torch.rand(3, 3, 4, 4)
    assert max_sensitivity(ignores, images, [0, 1, 1], n_samples=5).tolist() == [0.0, 0.0, 0.0]
    assert avg_sensitivity(ignores, images, [0, 1, 1], n_samples=5).tolist() == [0.0, 0.0, 0.0]


def test_sensitivity_of_the_brightness_map_by_hand_from_the_documented_draws():
    def brightness(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=1)

    images = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    radius, n = 0.05, 6
    noise = (torch.rand((n, 3, 5, 5), generator=torch.Generator().manual_seed(4)) * 2 - 1) * radius  # U(-r, r)
    expected = noise.mean(dim=1).flatten(1).norm(dim=1)[None] / brightness(images, None).flatten(1).norm(dim=1)[:, None]
    ratios = sensitivity_ratios(brightness, images, [0, 0], radius=radius, n_samples=n, seed=4, batch_size=5)
    torch.testing.assert_close(ratios, expected, rtol=1e-4, atol=1e-7)
    assert max_sensitivity(brightness, images, [0, 0], radius=radius, n_samples=n, seed=4).tolist() == pytest.approx(
        expected.amax(1).tolist(), rel=1e-4
    )
    assert avg_sensitivity(brightness, images, [0, 0], radius=radius, n_samples=n, seed=4).tolist() == pytest.approx(
        expected.mean(1).tolist(), rel=1e-4
    )


def test_a_zero_map_that_moves_has_no_relative_sensitivity():
    def moves(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=1) - 0.5

    images = torch.full((1, 3, 2, 2), 0.5)
    assert math.isnan(max_sensitivity(moves, images, [0], n_samples=2).item())
    with pytest.raises(VfmxaiError, match="^sensitivity: radius"):
        max_sensitivity(moves, images, [0], radius=0)
