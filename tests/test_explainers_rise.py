"""RISE: the estimator by hand, its masks, seeding, batching, planted evidence."""

import pytest
import torch
from explainer_fixtures import evidence_auc, planted_classifier, planted_images, randomization_check
from torch import nn

import vfmxai.explainers.perturbation  # noqa: F401  (registers rise)
from vfmxai.errors import VfmxaiError
from vfmxai.explainers import get
from vfmxai.explainers.perturbation import rise_masks, upsample_masks


class LeftBright(nn.Module):
    """Logits (4 * mean of the left half, 0): p_0 grows with the brightness kept on the left."""

    num_classes = 2

    def forward(self, x):
        left = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        return torch.stack([4 * left, torch.zeros_like(left)], dim=1)


def _images(n=2, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_rise_matches_the_estimator_by_hand():
    model, x, t = LeftBright(), _images(2), torch.tensor([0, 1])
    n, grid, p_keep = 40, 3, 0.4
    cells, shift_y, shift_x = rise_masks(n, grid, p_keep, (16, 16), torch.Generator().manual_seed(9))
    masks = upsample_masks(cells, shift_y, shift_x, (16, 16))
    expected = torch.zeros(2, 16, 16)
    for m in masks:  # S = sum_m p_t(x * m) m / (N p_keep)
        probs = model(x * m).softmax(dim=1).gather(1, t[:, None]).view(2, 1, 1)
        expected += probs * m
    expected /= n * p_keep
    explainer = get("rise", model, n_masks=n, grid=grid, p_keep=p_keep, seed=9, batch_size=7)
    torch.testing.assert_close(explainer.attribute(x, t), expected, rtol=1e-5, atol=1e-6)


def test_masks():
    gen = torch.Generator().manual_seed(0)
    cells, shift_y, shift_x = rise_masks(2000, 4, 0.3, (20, 20), gen)
    assert set(cells.unique().tolist()) <= {0.0, 1.0}
    assert abs(cells.mean().item() - 0.3) < 0.02
    assert 0 <= int(shift_y.min()) and int(shift_y.max()) < 5  # cell = ceil(20 / 4) = 5
    masks = upsample_masks(cells, shift_y, shift_x, (20, 20))
    assert masks.shape == (2000, 20, 20) and masks.min() >= 0 and masks.max() <= 1 + 1e-6
    assert abs(masks.mean().item() - 0.3) < 0.02
    # 16 px, grid 4: cell 4, the 4 cells upsampled to (4 + 1) * 4 = 20 px (scale 5); with no shift, pixel
    # (7, 12) samples exactly the centre of cell (1, 2) ((7 + 0.5) / 5 - 0.5 = 1, (12 + 0.5) / 5 - 0.5 = 2)
    zero = torch.zeros(8, dtype=torch.long)
    small = upsample_masks(cells[:8], zero, zero, (16, 16))
    torch.testing.assert_close(small[:, 7, 12], cells[:8, 1, 2])


def test_seed_and_batching():
    model, x, t = LeftBright(), _images(3), torch.tensor([0, 0, 1])
    options = {"n_masks": 64, "grid": 4}
    first = get("rise", model, seed=1, **options)(x, t)
    torch.testing.assert_close(get("rise", model, seed=1, **options)(x, t), first, rtol=0, atol=0)
    torch.testing.assert_close(get("rise", model, seed=1, batch_size=5, **options)(x, t), first)
    assert (get("rise", model, seed=2, **options)(x, t) - first).abs().max() > 0.05
    state = torch.random.get_rng_state()
    get("rise", model, seed=1, **options)(x, t)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is never touched


def test_rise_finds_the_left_half():
    maps = get("rise", LeftBright(), n_masks=2000, grid=4, batch_size=500)(_images(2), torch.tensor([0, 0]))
    assert (maps[..., :8].mean(dim=(1, 2)) > maps[..., 8:].mean(dim=(1, 2)) + 0.25).all()


def test_bad_options():
    model = LeftBright()
    with pytest.raises(VfmxaiError, match="p_keep"):
        get("rise", model, p_keep=1.0)
    with pytest.raises(VfmxaiError, match="n_masks"):
        get("rise", model, n_masks=0)
    with pytest.raises(VfmxaiError, match="grid=32"):
        get("rise", model, grid=32)(_images(1))
    with pytest.raises(VfmxaiError, match="target out of range"):
        get("rise", model)(_images(1), torch.tensor([2]))


def test_planted_evidence():
    x, y, masks = planted_images(8, seed=777)
    maps = get("rise", planted_classifier(), n_masks=500, grid=4, batch_size=256)(x, y)
    auc = evidence_auc(maps, masks)
    assert auc.mean() > 0.75, auc


def test_model_randomization_changes_maps():
    x, _, _ = planted_images(8, seed=777)
    rho = randomization_check("rise", planted_classifier(), x, n_blocks=4, n_masks=500, grid=4, batch_size=256)
    print(f"randomization rise: spearman {rho:.3f}")
    assert rho < 0.8
