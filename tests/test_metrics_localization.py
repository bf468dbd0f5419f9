"""Localisation metrics on hand-made maps and masks with hand-computed values."""

from __future__ import annotations

import pytest
import torch

from vfmxai.errors import VfmxaiError
from vfmxai.metrics import (
    best_tau_iou,
    dataset_iou,
    default_thresholds,
    energy_pointing_game,
    iou_counts,
    iou_curve,
    mean_iou,
    pointing_game,
    relevance_mass,
    relevance_rank,
)


def square(size: int, top: int, left: int, side: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[top : top + side, left : left + side] = True
    return m


def test_perfect_map_has_iou_one():
    masks = torch.stack([square(8, 1, 1, 4), square(8, 3, 2, 5)])
    assert mean_iou(masks.float(), masks).tolist() == [1.0, 1.0]


def test_shifted_square_iou_by_hand():
    # 4x4 squares shifted by one pixel in both directions: I = 3*3 = 9, U = 16 + 16 - 9 = 23.
    mask = square(8, 1, 1, 4).unsqueeze(0)
    shifted = square(8, 2, 2, 4).float().unsqueeze(0)
    inter, union = iou_counts(shifted, mask)
    assert (inter.item(), union.item()) == (9, 23)
    assert mean_iou(shifted, mask).item() == pytest.approx(9 / 23)


def test_all_ones_map_unnormalised_scores_object_share():
    mask = square(10, 2, 3, 5).unsqueeze(0)  # 25 of 100 pixels
    ones = torch.ones(1, 10, 10)
    assert mean_iou(ones, mask, normalize=False).item() == pytest.approx(0.25)


def test_constant_map_normalised_is_empty_prediction():
    mask = square(10, 2, 3, 5).unsqueeze(0)
    assert mean_iou(torch.ones(1, 10, 10), mask).item() == 0.0
    # With an empty mask too, both sets are empty: IoU defined as 1.0.
    empty = torch.zeros(1, 10, 10, dtype=torch.bool)
    assert mean_iou(torch.ones(1, 10, 10), empty).item() == 1.0
    assert mean_iou(torch.rand(1, 10, 10), empty).item() == 0.0


def test_threshold_is_inclusive():
    maps = torch.tensor([[[0.5, 0.4]]])
    mask = torch.tensor([[[1, 0]]])
    assert mean_iou(maps, mask, threshold=0.5, normalize=False).item() == 1.0
    assert mean_iou(maps, mask, threshold=0.51, normalize=False).item() == 0.0


def test_low_resolution_map_is_resized_bilinearly_and_normalised():
    # 2x2 -> 4x4 bilinear (align_corners=False): the 1 in the corner spreads to [[1, .75], [.75, .5625]]
    # in the top-left 2x2 block; every other pixel is <= 0.25.
    maps = torch.tensor([[[3.0, 1.0], [1.0, 1.0]]])  # min-max normalised to [[1, 0], [0, 0]]
    mask = square(4, 0, 0, 2).unsqueeze(0)
    assert mean_iou(maps, mask).item() == 1.0
    assert mean_iou(maps, mask, threshold=0.6).item() == pytest.approx(3 / 4)


def test_dataset_iou_over_images_of_different_sizes():
    # Image A 4x4: mask 2x2, prediction 2x3 containing it -> I = 4, U = 6.
    # Image B 6x6: mask 3x3, prediction 2x2 inside it -> I = 4, U = 9.
    mask_a = square(4, 0, 0, 2).unsqueeze(0)
    map_a = torch.zeros(1, 4, 4)
    map_a[0, 0:2, 0:3] = 1
    mask_b = square(6, 1, 1, 3).unsqueeze(0)
    map_b = square(6, 1, 1, 2).float().unsqueeze(0)
    ia, ua = iou_counts(map_a, mask_a)
    ib, ub = iou_counts(map_b, mask_b)
    assert (ia.item(), ua.item(), ib.item(), ub.item()) == (4, 6, 4, 9)
    assert dataset_iou([ia, ib], [ua, ub]) == pytest.approx(8 / 15)
    assert dataset_iou(torch.cat([ia, ib]), torch.cat([ua, ub])) == pytest.approx(8 / 15)
    per_image = torch.cat([mean_iou(map_a, mask_a), mean_iou(map_b, mask_b)])
    assert per_image.mean().item() == pytest.approx((4 / 6 + 4 / 9) / 2)


def test_iou_curve_by_hand():
    maps = torch.tensor([[[0.2, 0.4, 0.6, 0.8]]])
    mask = torch.tensor([[[False, False, True, True]]])
    curve = iou_curve(maps, mask, [0.1, 0.5, 0.7, 0.9], normalize=False)
    assert curve.tolist() == [[0.5, 1.0, 0.5, 0.0]]


@pytest.mark.parametrize("normalize", [True, False])
def test_iou_curve_matches_single_threshold_counts(normalize):
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(5, 6, 7, generator=gen)
    maps[1] = 0.3  # a constant map
    maps[2] = (maps[2] * 4).round() / 4  # many ties, some exactly on thresholds
    masks = torch.rand(5, 12, 14, generator=gen) > 0.6
    masks[3] = False
    taus = default_thresholds()
    curve = iou_curve(maps, masks, normalize=normalize)
    assert curve.shape == (5, 19)
    expected = torch.stack([mean_iou(maps, masks, float(t), normalize) for t in taus], dim=1)
    assert torch.equal(curve, expected)


def test_best_tau_oracle():
    curves = torch.tensor([[0.2, 0.6, 0.6], [0.4, 0.8, 0.8]])
    assert best_tau_iou(curves, [0.3, 0.5, 0.7]) == (pytest.approx(0.7), pytest.approx(0.5))
    gen = torch.Generator().manual_seed(1)
    maps = torch.rand(6, 4, 4, generator=gen)
    masks = torch.rand(6, 8, 8, generator=gen) > 0.5
    value, tau = best_tau_iou(iou_curve(maps, masks))
    assert value >= mean_iou(maps, masks).mean().item() - 1e-7
    assert mean_iou(maps, masks, tau).mean().item() == pytest.approx(value)


def test_pointing_game_hits_and_raster_tie_break():
    mask = torch.tensor([[[False, True], [False, False]]])
    inside = torch.tensor([[[0.1, 0.9], [0.2, 0.3]]])
    outside = torch.tensor([[[0.9, 0.1], [0.2, 0.3]]])
    tie_first_out = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])  # first max (0, 0) is outside
    tie_first_in = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # first max (0, 1) is inside
    maps = torch.cat([inside, outside, tie_first_out, tie_first_in, torch.ones(1, 2, 2)])
    assert pointing_game(maps, mask.expand(5, -1, -1)).tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    corner = torch.tensor([[[True, False], [False, False]]])
    assert pointing_game(torch.ones(1, 2, 2), corner).item() == 1.0


def test_energy_pointing_game_by_hand():
    mask = torch.tensor([[[False, True], [False, False]]]).expand(3, -1, -1)
    maps = torch.stack(
        [
            torch.tensor([[1.0, 0.5], [0.0, 0.0]]),  # already min-max normalised: 0.5 / 1.5
            torch.tensor([[3.0, 2.0], [1.0, 1.0]]),  # normalised to [[1, .5], [0, 0]]: also 1/3
            torch.full((2, 2), 7.0),  # constant -> all zeros -> no mass -> 0
        ]
    )
    assert energy_pointing_game(maps, mask).tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])
    raw = torch.tensor([[[3.0, 1.0], [0.0, 0.0]]])
    assert energy_pointing_game(raw, mask[:1], normalize=False).item() == pytest.approx(0.25)


@pytest.mark.parametrize(
    "maps, masks, kwargs",
    [
        (torch.rand(2, 4, 4), torch.full((2, 4, 4), 0.5), {}),  # soft mask
        (torch.rand(3, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool), {}),  # batch mismatch
        (torch.rand(2, 1, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool), {}),  # maps with a channel
        (torch.full((1, 4, 4), float("nan")), torch.ones(1, 4, 4, dtype=torch.bool), {}),
        (torch.rand(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool), {"threshold": 1.5}),
    ],
)
def test_bad_input_raises(maps, masks, kwargs):
    with pytest.raises(VfmxaiError):
        mean_iou(maps, masks, **kwargs)


def test_bad_thresholds_and_counts_raise():
    masks = torch.ones(1, 4, 4, dtype=torch.bool)
    with pytest.raises(VfmxaiError):
        iou_curve(torch.rand(1, 4, 4), masks, [0.5, 2.0])
    with pytest.raises(VfmxaiError):
        best_tau_iou(torch.rand(2, 3), [0.5])
    with pytest.raises(VfmxaiError):
        dataset_iou(torch.ones(2), torch.ones(3))


def test_pointing_game_tolerance_reaches_a_peak_just_outside_the_mask():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, 2, 2] = True
    maps = torch.zeros(3, 8, 8)
    maps[0, 2, 3] = 1.0  # distance 1
    maps[1, 4, 5] = 1.0  # distance sqrt(13) = 3.61
    maps[2, 2, 2] = 1.0  # on the object
    assert pointing_game(maps, masks).tolist() == [0.0, 0.0, 1.0]
    assert pointing_game(maps, masks, tolerance=1).tolist() == [0.0, 0.0, 1.0]  # TorchRay's disc: d < t
    assert pointing_game(maps, masks, tolerance=1.5).tolist() == [1.0, 0.0, 1.0]
    assert pointing_game(maps, masks, tolerance=3.6).tolist() == [1.0, 0.0, 1.0]
    assert pointing_game(maps, masks, tolerance=3.7).tolist() == [1.0, 1.0, 1.0]
    corner = torch.zeros(1, 8, 8)
    corner[0, 7, 7] = 1.0  # the disc around a corner peak leaves the image
    assert pointing_game(corner, masks[:1], tolerance=15).tolist() == [1.0]
    with pytest.raises(VfmxaiError, match="tolerance"):
        pointing_game(maps, masks, tolerance=-1)


def test_relevance_mass_and_rank_by_hand():
    maps = torch.tensor([[[2.0, -1.0], [1.0, 0.0]], [[4.0, 3.0], [2.0, 1.0]]])
    masks = torch.tensor([[[1, 0], [0, 0]], [[0, 1], [1, 0]]], dtype=torch.bool)
    # positive mass 3, of which 2 inside; image 2: 5 of 10
    assert relevance_mass(maps, masks).tolist() == pytest.approx([2 / 3, 0.5])
    # K = 1: the top pixel (0, 0) is inside; K = 2: the top two are (0, 0), (0, 1), one inside
    assert relevance_rank(maps, masks).tolist() == pytest.approx([1.0, 0.5])
    empty = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert relevance_rank(maps[:1], empty).tolist() == [0.0]
    assert relevance_mass(-maps[1:], masks[1:]).tolist() == [0.0]  # no positive relevance


def test_relevance_rank_breaks_ties_by_the_seeded_permutation():
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    flat = torch.ones(1, 4, 4)
    scores = {relevance_rank(flat, masks, tie_seed=s).item() for s in range(20)}
    assert len(scores) > 1  # a flat map ranks no pixel first: the seed decides which 8 are "top"
    assert relevance_rank(flat, masks, tie_seed=3).item() == relevance_rank(flat, masks, tie_seed=3).item()
