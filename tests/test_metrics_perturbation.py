"""Insertion/deletion against closed-form curves, plus the invariants of the protocol."""

from __future__ import annotations

import pytest
import torch
from explainer_fixtures import tiny_probe
from scipy import ndimage
from torch import nn

from vfmxai.errors import VfmxaiError
from vfmxai.metrics import (
    auc,
    gaussian_blur,
    id_score,
    insertion_deletion,
    make_substrate,
    pixel_ranks,
    step_counts,
)


def mean_red(images: torch.Tensor) -> torch.Tensor:
    """2-class logits [log s, log(1 - s)], s = mean of channel 0: the class-0 softmax probability is s,
    linear in the pixels kept."""
    s = images[:, 0].mean(dim=(1, 2))
    return torch.stack([s.log(), (1 - s).log()], dim=1)


class DropoutMeanRed(nn.Module):
    """`mean_red` behind a dropout layer: only deterministic in eval mode."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.9)
        self.frozen = nn.Dropout(0.5)

    def forward(self, images):
        return mean_red(self.drop(images).clamp(0.01, 0.99))


GREY = (0.2, 0.2, 0.2)


def two_by_two() -> torch.Tensor:
    """One 2x2 image whose channel 0 is [[0.9, 0.1], [0.5, 0.3]] (mean 0.45)."""
    image = torch.full((1, 3, 2, 2), 0.5)
    image[0, 0] = torch.tensor([[0.9, 0.1], [0.5, 0.3]])
    return image


def test_curves_and_aucs_by_hand():
    # Map = the red values: order 0.9, 0.5, 0.3, 0.1; substrate 0.2.
    # Insertion s_n: 0.2, (0.9+3*.2)/4, (0.9+.5+2*.2)/4, (0.9+.5+.3+.2)/4, 1.8/4.
    # Deletion  s_n: 0.45, (.2+.1+.5+.3)/4, (.2+.1+.2+.3)/4, (.2+.1+.2+.2)/4, 0.2.
    image = two_by_two()
    res = insertion_deletion(mean_red, image, image[:, 0], [0], steps=4, substrate="mean", substrate_value=GREY)
    assert res.insertion_curve[0].tolist() == pytest.approx([0.2, 0.375, 0.45, 0.475, 0.45])
    assert res.deletion_curve[0].tolist() == pytest.approx([0.45, 0.275, 0.2, 0.175, 0.2])
    assert res.insertion.item() == pytest.approx(0.40625)
    assert res.deletion.item() == pytest.approx(0.24375)
    assert res.id_score.item() == pytest.approx(0.40625 - 0.24375)
    assert id_score(res.insertion, res.deletion).item() == pytest.approx(0.1625)


def test_constant_map_follows_the_seeded_permutation_deterministically():
    # red values in raster order 0.9, 0.1, 0.5, 0.3; a flat map inserts them in the order of randperm(4, seed)
    image = two_by_two()
    kwargs = dict(steps=4, substrate="mean", substrate_value=GREY)
    first = insertion_deletion(mean_red, image, torch.ones(1, 2, 2), [0], **kwargs)
    again = insertion_deletion(mean_red, image, torch.ones(1, 2, 2), [0], **kwargs)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(0)).tolist()
    red, values = [0.9, 0.1, 0.5, 0.3], [0.2] * 4
    expected = [0.2]
    for pixel in order:
        values[pixel] = red[pixel]
        expected.append(sum(values) / 4)
    assert first.insertion_curve[0].tolist() == pytest.approx(expected)
    assert torch.equal(first.insertion_curve, again.insertion_curve)
    assert torch.equal(first.deletion_curve, again.deletion_curve)


def test_pixel_ranks_break_ties_by_the_seeded_permutation():
    maps = torch.tensor([[[1.0, 2.0], [2.0, 0.0]], [[5.0, 5.0], [5.0, 5.0]]])
    shuffle = torch.randperm(4, generator=torch.Generator().manual_seed(0)).tolist()
    first_two = sorted([1, 2], key=shuffle.index)  # the tied 2.0s in permutation order
    ranks = pixel_ranks(maps).tolist()
    assert ranks[0][first_two[0]] == 0 and ranks[0][first_two[1]] == 1 and ranks[0][0] == 2 and ranks[0][3] == 3
    assert [shuffle.index(i) for i in range(4)] == ranks[1]


def test_uniform_image_gives_linear_curves():
    # Uniform red 0.8 on substrate 0.1: every curve is linear in n_k, so each AUC is (p0 + p1) / 2 when
    # steps divides H*W, and follows n_k = round(k * 64 / 10) (half up) when it does not.
    image = torch.full((2, 3, 8, 8), 0.8)
    maps = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(0))
    kwargs = dict(substrate="mean", substrate_value=(0.1, 0.1, 0.1))
    exact = insertion_deletion(mean_red, image, maps, [0, 0], steps=16, **kwargs)
    assert exact.insertion.tolist() == pytest.approx([0.45, 0.45])
    assert exact.deletion.tolist() == pytest.approx([0.45, 0.45])
    rounded = insertion_deletion(mean_red, image, maps, [0, 0], steps=10, **kwargs)
    n = torch.tensor([0, 6, 13, 19, 26, 32, 38, 45, 51, 58, 64], dtype=torch.float64)
    expected = 0.1 + 0.7 * n / 64
    assert rounded.insertion_curve[0].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert rounded.deletion_curve[1].tolist() == pytest.approx(expected.flip(0).tolist(), abs=1e-6)


def test_step_counts_round_half_up_and_include_both_ends():
    assert step_counts(64, 10).tolist() == [0, 6, 13, 19, 26, 32, 38, 45, 51, 58, 64]
    assert step_counts(2, 4).tolist() == [0, 1, 1, 2, 2]
    assert step_counts(5, 1).tolist() == [0, 5]


def test_auc():
    assert auc(torch.full((3, 11), 0.7)).tolist() == pytest.approx([0.7] * 3)
    assert auc(torch.tensor([0.0, 1.0])).item() == pytest.approx(0.5)
    assert auc(torch.tensor([0.0, 1.0, 0.0])).item() == pytest.approx(0.5)
    assert auc(torch.tensor([1.0, 0.0, 0.0, 0.0])).item() == pytest.approx(1 / 6)
    with pytest.raises(VfmxaiError):
        auc(torch.tensor([1.0]))


@pytest.mark.parametrize("substrate", ["black", "blur", "mean"])
def test_endpoints_are_clean_image_and_substrate(substrate):
    model = tiny_probe(num_classes=3)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=gen)
    maps = torch.rand(3, 7, 7, generator=gen)
    targets = torch.tensor([0, 2, 1])
    res = insertion_deletion(model, images, maps, targets, steps=5, substrate=substrate)
    assert res.insertion_curve.shape == res.deletion_curve.shape == (3, 6)
    with torch.no_grad():
        clean = model(images).softmax(1)[torch.arange(3), targets]
        base = model(make_substrate(images, substrate)).softmax(1)[torch.arange(3), targets]
    torch.testing.assert_close(res.insertion_curve[:, -1], clean, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.deletion_curve[:, 0], clean, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.deletion_curve[:, -1], base, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.insertion_curve[:, 0], base, atol=1e-6, rtol=0)
    assert not torch.allclose(clean, base)


def test_chunking_does_not_change_values():
    model = tiny_probe(num_classes=4)
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(3, 3, 32, 32, generator=gen)
    maps = torch.rand(3, 4, 4, generator=gen)
    targets = torch.tensor([3, 0, 1])
    small = insertion_deletion(model, images, maps, targets, steps=8, batch_size=7)
    large = insertion_deletion(model, images, maps, targets, steps=8, batch_size=1000)
    torch.testing.assert_close(small.insertion_curve, large.insertion_curve, atol=1e-6, rtol=0)
    torch.testing.assert_close(small.deletion_curve, large.deletion_curve, atol=1e-6, rtol=0)


def test_predicted_target_mode():
    # mean_red predicts class 1 (s = 0.45 < 0.5); the curve then scores 1 - s.
    image = two_by_two()
    res = insertion_deletion(
        mean_red, image, image[:, 0], [0], steps=4, substrate="mean", substrate_value=GREY, target_mode="predicted"
    )
    assert res.targets.tolist() == [1]
    assert res.insertion_curve[0].tolist() == pytest.approx([0.8, 0.625, 0.55, 0.525, 0.55])


def test_module_runs_in_eval_mode_and_keeps_its_mode():
    model = DropoutMeanRed().train()
    model.frozen.eval()  # a submodule deliberately kept in eval mode
    image = two_by_two()
    res = insertion_deletion(model, image, image[:, 0], [0], steps=4, substrate="mean", substrate_value=GREY)
    assert res.insertion.item() == pytest.approx(0.40625)
    assert model.training and model.drop.training and not model.frozen.training


def test_own_mean_substrate_and_blur():
    images = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(3))
    own = make_substrate(images, "mean")
    torch.testing.assert_close(own[:, :, 4, 5], images.mean(dim=(2, 3)))
    assert torch.equal(own.amax(dim=(2, 3)), own.amin(dim=(2, 3)))
    flat = torch.full((1, 3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    impulse = torch.zeros(1, 3, 21, 17)
    impulse[0, :, 10, 8] = 1.0
    big = torch.rand(1, 3, 21, 17, generator=torch.Generator().manual_seed(4))
    for x in (impulse, big):
        reference = ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 0, 2, 2), mode="nearest", truncate=3.0)
        torch.testing.assert_close(gaussian_blur(x, 2.0).double(), torch.from_numpy(reference), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"substrate": "noise"},
        {"substrate": "black", "substrate_value": (0.1, 0.1, 0.1)},
        {"substrate": "mean", "substrate_value": (0.1, 0.1)},
        {"steps": 0},
        {"batch_size": 0},
        {"target_mode": "top"},
        {"targets": [0, 0]},
        {"targets": [5]},
        {"targets": None},
        {"maps": torch.rand(2, 2, 2)},
        {"maps": torch.full((1, 2, 2), float("nan"))},
        {"images": torch.rand(1, 1, 2, 2)},
    ],
)
def test_bad_input_raises(kwargs):
    args = dict(images=two_by_two(), maps=torch.rand(1, 2, 2), targets=[0], steps=4)
    args.update(kwargs)
    with pytest.raises(VfmxaiError):
        insertion_deletion(mean_red, **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    model = tiny_probe(num_classes=3)
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(4, 3, 32, 32, generator=gen)
    maps = torch.rand(4, 8, 8, generator=gen)
    targets = torch.tensor([0, 1, 2, 0])
    cpu = insertion_deletion(model, images, maps, targets, steps=10, substrate="blur", batch_size=9)
    gpu = insertion_deletion(model.cuda(), images.cuda(), maps.cuda(), targets.cuda(), steps=10, substrate="blur")
    assert gpu.insertion_curve.is_cuda
    torch.testing.assert_close(gpu.insertion_curve.cpu(), cpu.insertion_curve, atol=1e-4, rtol=0)
    torch.testing.assert_close(gpu.deletion_curve.cpu(), cpu.deletion_curve, atol=1e-4, rtol=0)


class _TopHalfEvidence(torch.nn.Module):
    """Class 1's logit is 4 x the mean of the top half's pixels: all evidence lies in the top half."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        top = images[:, :, : images.shape[2] // 2].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(top), 4 * top], dim=1)


def test_a_constant_map_inserts_in_random_order_not_top_half_first():
    """Raster-order ties would insert the top half (all the evidence) first: insertion far above a random
    order's. With the permutation rule a flat map scores like random orders do."""
    from vfmxai.metrics.perturbation import insertion_deletion

    images = torch.ones(1, 3, 16, 16)
    flat = torch.zeros(1, 16, 16)
    model = _TopHalfEvidence()
    ours = float(insertion_deletion(model, images, flat, [1], steps=32).insertion)
    top_first = torch.zeros(1, 16, 16)
    top_first[:, :8] = 1.0
    raster = float(insertion_deletion(model, images, top_first, [1], steps=32).insertion)
    randoms = [
        float(insertion_deletion(model, images, torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(s)),
                                 [1], steps=32).insertion)
        for s in range(8)
    ]
    spread = max(randoms) - min(randoms)
    assert abs(ours - sum(randoms) / len(randoms)) < max(spread, 0.02)
    assert raster - ours > 0.05 > spread


def test_tie_order_is_fixed_by_the_seed_and_strict_orders_are_unchanged():
    from vfmxai.metrics.perturbation import pixel_ranks

    flat = torch.zeros(2, 5, 5)
    assert torch.equal(pixel_ranks(flat, 3), pixel_ranks(flat, 3))
    assert not torch.equal(pixel_ranks(flat, 3), pixel_ranks(flat, 4))
    assert torch.equal(pixel_ranks(flat, 3)[0], pixel_ranks(flat, 3)[1])  # batch-independent
    strict = torch.randperm(25, generator=torch.Generator().manual_seed(0)).float().view(1, 5, 5)
    expected = torch.argsort(torch.argsort(strict.flatten(1), dim=1, descending=True), dim=1)
    for seed in (0, 1):
        assert torch.equal(pixel_ranks(strict, seed), expected)


class CountingMeanRed:
    """`mean_red` that records every image it is called on."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        return mean_red(images.clamp(0.01, 0.99))


def test_clean_image_and_substrate_are_scored_once_and_every_curve_point_is_unchanged():
    # 2 images x 3 steps: insertion's first / deletion's last point is the substrate, insertion's last /
    # deletion's first the clean image; each is scored once, the 2 x 2 mixed images once each: 2 * 2 * 3 = 12
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 4, 4, generator=gen)
    maps = torch.rand(2, 4, 4, generator=gen)
    model = CountingMeanRed()
    res = insertion_deletion(model, images, maps, [0, 0], steps=3, substrate="mean", batch_size=5)  # own mean
    seen = torch.cat(model.seen)
    assert len(seen) == 2 * 2 * 3
    assert len(torch.unique(seen.flatten(1), dim=0)) == len(seen)  # no image scored twice
    model.seen.clear()
    one_step = insertion_deletion(model, images, maps, [0, 0], steps=1, substrate="mean")
    assert sum(len(x) for x in model.seen) == 2 * 2  # the clean image and the substrate only
    torch.testing.assert_close(one_step.insertion_curve, res.insertion_curve[:, [0, -1]])
    ranks = pixel_ranks(maps)
    base = images.mean(dim=(2, 3), keepdim=True)

    def probability(image: torch.Tensor) -> float:
        return mean_red(image[None].clamp(0.01, 0.99)).softmax(1)[0, 0].item()

    for b in range(2):
        for k, n in enumerate(step_counts(16, 3, images.device).tolist()):
            top = (ranks[b] < n).view(1, 4, 4)
            assert res.insertion_curve[b, k].item() == pytest.approx(probability(torch.where(top, images[b], base[b])))
            assert res.deletion_curve[b, k].item() == pytest.approx(probability(torch.where(top, base[b], images[b])))
