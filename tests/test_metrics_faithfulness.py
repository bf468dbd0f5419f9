"""AOPC, ROAD and infidelity against closed forms: a classifier linear in the pixels, a linear image, and a
direct sparse solve of Rong et al.'s imputation system."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse
from scipy.sparse.linalg import spsolve

from vfmxai.errors import VfmxaiError
from vfmxai.metrics import aopc, aopc_of, infidelity, noisy_linear_imputation, road
from vfmxai.metrics.road import NEIGHBOUR_WEIGHTS, removal_counts


class Linear(torch.nn.Module):
    """f_c(x) = <W_c, x>: logits linear in the pixels."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.weights = weights

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", images, self.weights)


def _setup(size: int = 4, classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, size, size, generator=gen)
    maps = torch.rand(2, size, size, generator=gen)  # distinct values: no ties
    weights = torch.randn(classes, 3, size, size, generator=gen)
    return images, maps, Linear(weights), weights


def _closed_form_curve(image, weights, target, order, counts):
    """f_t(x_k) with the first n_k pixels of `order` set to black: sum of W_t * x over the kept pixels."""
    contributions = (weights[target] * image).sum(0).flatten()
    curve = []
    for n in counts:
        kept = torch.ones_like(contributions, dtype=torch.bool)
        kept[order[:n]] = False
        curve.append(float(contributions[kept].sum()))
    return torch.tensor(curve)


def test_morf_lerf_curves_and_aopc_equal_the_closed_form_of_a_linear_classifier():
    images, maps, model, weights = _setup()
    targets = torch.tensor([0, 2])
    result = aopc(model, images, maps, targets, steps=4, score="logit")
    counts = [0, 4, 8, 12, 16]
    for b in range(2):
        descending = maps[b].flatten().argsort(descending=True)
        morf = _closed_form_curve(images[b], weights, targets[b], descending, counts)
        lerf = _closed_form_curve(images[b], weights, targets[b], descending.flip(0), counts)
        torch.testing.assert_close(result.morf_curve[b], morf, atol=1e-5, rtol=0)
        torch.testing.assert_close(result.lerf_curve[b], lerf, atol=1e-5, rtol=0)
        # AOPC = 1/(L+1) sum_k (f(x_0) - f(x_k)), L = 4
        assert result.morf[b].item() == pytest.approx(float((morf[0] - morf).sum() / 5), abs=1e-5)
        assert result.lerf[b].item() == pytest.approx(float((lerf[0] - lerf).sum() / 5), abs=1e-5)
    assert result.morf_curve[:, -1].abs().max() < 1e-6  # everything black: logit 0


def test_morf_and_lerf_share_the_clean_and_the_all_black_image():
    # both orders start at x and end at black: 2 images x (1 + 1 + 2 x 3 mixed) = 2 x 2 x 4 model inputs
    images, maps, model, _ = _setup()
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    aopc(model, images, maps, torch.tensor([0, 2]), steps=4, batch_size=3)
    assert sum(seen) == 2 * 2 * 4
    seen.clear()
    aopc(model, images, maps, torch.tensor([0, 2]), steps=4, region_size=2, regions_per_step=1)  # 4 regions
    assert sum(seen) == 2 * 2 * 4


def test_patch_regions_rank_by_their_relevance_sum_and_probability_scores_are_softmaxed():
    images, _, model, weights = _setup()
    # 2 x 2 regions of a 4 x 4 map: sums top-left 4, top-right 10, bottom-left 1, bottom-right 7
    maps = torch.tensor([[1.0, 1, 5, 5], [1, 1, 0, 0], [0, 0, 3, 4], [1, 0, 0, 0]]).expand(2, -1, -1)
    result = aopc(model, images, maps, [1, 1], steps=2, region_size=2, regions_per_step=1, score="probability")
    index = torch.arange(16).view(4, 4)
    regions = {"tl": index[:2, :2], "tr": index[:2, 2:], "bl": index[2:, :2], "br": index[2:, 2:]}
    morf_order = torch.cat([regions[r].flatten() for r in ("tr", "br", "tl", "bl")])
    for b in range(2):
        image = images[b]
        logits = torch.stack([_closed_form_curve(image, weights, c, morf_order, [0, 4, 8]) for c in range(3)], 1)
        torch.testing.assert_close(result.morf_curve[b], logits.softmax(1)[:, 1], atol=1e-5, rtol=0)
        lerf_order = torch.cat([regions[r].flatten() for r in ("bl", "tl", "br", "tr")])
        logits = torch.stack([_closed_form_curve(image, weights, c, lerf_order, [0, 4, 8]) for c in range(3)], 1)
        torch.testing.assert_close(result.lerf_curve[b], logits.softmax(1)[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(result.morf, aopc_of(result.morf_curve))


def test_aopc_does_not_depend_on_chunking_and_bad_options_are_refused():
    images, maps, model, _ = _setup(size=5)
    one = aopc(model, images, maps, [0, 1], steps=5, region_size=2, batch_size=1)
    many = aopc(model, images, maps, [0, 1], steps=5, region_size=2, batch_size=64)
    torch.testing.assert_close(one.morf_curve, many.morf_curve)
    for bad in ({"region_size": 0}, {"score": "odds"}, {"steps": 0}, {"regions_per_step": 0}):
        with pytest.raises(VfmxaiError, match="^aopc: "):
            aopc(model, images, maps, [0, 1], **bad)


def _linear_image(size: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return torch.stack([0.1 + 0.01 * rows + 0.02 * cols, 0.8 - 0.015 * cols, 0.3 + 0.005 * rows - 0.002 * cols])[None]


def test_imputation_reproduces_a_linear_image_exactly_where_the_holes_are_off_the_border():
    image = _linear_image(32)
    removed = torch.zeros(1, 32, 32, dtype=torch.bool)
    removed[0, 1:-1, 1:-1] = torch.rand(30, 30, generator=torch.Generator().manual_seed(0)) < 0.9
    removed[0, 4:28, 6:30] = True  # and one large hole
    out = noisy_linear_imputation(image, removed, noise=0.0)
    torch.testing.assert_close(out, image, atol=1e-4, rtol=0)


def _direct_solution(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Rong et al.'s system, assembled as a sparse matrix and solved directly (scipy)."""
    channels, height, width = image.shape
    unknown = np.flatnonzero(removed.ravel())
    slot = -np.ones(height * width, dtype=int)
    slot[unknown] = np.arange(len(unknown))
    rows, cols = np.divmod(unknown, width)
    matrix = sparse.lil_matrix((len(unknown), len(unknown)))
    rhs = np.zeros((len(unknown), channels))
    degree = np.zeros(len(unknown))
    flat = image.reshape(channels, -1)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            weight = NEIGHBOUR_WEIGHTS[dy + 1][dx + 1]
            r, c = rows + dy, cols + dx
            valid = (weight > 0) & (r >= 0) & (r < height) & (c >= 0) & (c < width)
            degree[valid] += weight
            neighbour = r[valid] * width + c[valid]
            own = np.flatnonzero(valid)
            free = removed.ravel()[neighbour]
            matrix[own[free], slot[neighbour[free]]] = -weight
            rhs[own[~free]] += weight * flat[:, neighbour[~free]].T
    matrix.setdiag(degree)
    out = flat.copy()
    out[:, unknown] = spsolve(matrix.tocsc(), rhs).T
    return out.reshape(image.shape)


def test_imputation_solves_rong_et_al_s_system_including_the_border_and_changes_only_removed_pixels():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 21, 19, generator=gen)  # odd sides: the coarse levels' last row and column are cut
    removed = torch.rand(2, 21, 19, generator=gen) < torch.tensor([0.5, 0.9]).view(2, 1, 1)
    removed[1, :12, :] = True  # a large hole touching the border
    exact = noisy_linear_imputation(images, removed, noise=0.0)
    for b in range(2):
        expected = _direct_solution(images[b].double().numpy(), removed[b].numpy())
        np.testing.assert_allclose(exact[b].numpy(), expected, atol=2e-4)
    noisy = noisy_linear_imputation(images, removed, noise=0.05, seed=3)
    keep = ~removed.unsqueeze(1).expand_as(images)
    assert torch.equal(noisy[keep], images[keep]) and torch.equal(exact[keep], images[keep])
    difference = (noisy - exact)[~keep]
    assert difference.std().item() == pytest.approx(0.05, rel=0.1)
    torch.testing.assert_close(noisy, noisy_linear_imputation(images, removed, noise=0.05, seed=3))


def test_road_scores_the_imputed_images_of_the_top_and_bottom_percentiles():
    images, maps, model, _ = _setup(size=8)
    targets = torch.tensor([0, 1])
    result = road(model, images, maps, targets, percentiles=(25, 50, 90), noise=0.0, score="logit")
    counts = removal_counts(64, torch.tensor([25.0, 50.0, 90.0]))
    assert counts.tolist() == [16, 32, 58]
    for b in range(2):
        order = maps[b].flatten().argsort(descending=True)
        for j, n in enumerate(counts.tolist()):
            for curve, correct, pixels in ((result.morf_curve, result.morf_correct, order[:n]),
                                           (result.lerf_curve, result.lerf_correct, order.flip(0)[:n])):
                removed = torch.zeros(64, dtype=torch.bool)
                removed[pixels] = True
                imputed = noisy_linear_imputation(images[b : b + 1], removed.view(1, 8, 8), noise=0.0)
                logits = model(imputed)[0]
                assert curve[b, j].item() == pytest.approx(logits[targets[b]].item(), abs=1e-4)
                assert correct[b, j].item() == float(logits.argmax() == targets[b])
    with pytest.raises(VfmxaiError, match="^road: percentiles"):
        road(model, images, maps, targets, percentiles=(10, 100))


def test_infidelity_of_the_exact_gradient_on_a_linear_model_is_zero():
    gen = torch.Generator().manual_seed(2)
    pattern = torch.randn(2, 6, 6, generator=gen)
    model = Linear(pattern[:, None].expand(2, 3, 6, 6))  # weights shared by the channels: gradient = pattern
    images = torch.rand(3, 3, 6, 6, generator=gen)
    gradient = pattern[1].expand(3, -1, -1)
    targets = [1, 1, 1]
    exact = infidelity(model, images, gradient, targets, sigma=0.1, n_samples=16)
    assert exact.abs().max() < 1e-8
    # (2a - a)^2 = (0 - a)^2: twice the gradient is as unfaithful as no map at all, and both are not 0
    doubled = infidelity(model, images, 2 * gradient, targets, sigma=0.1, n_samples=16)
    blank = infidelity(model, images, torch.zeros_like(gradient), targets, sigma=0.1, n_samples=16)
    torch.testing.assert_close(doubled, blank, rtol=1e-4, atol=1e-6)
    assert blank.min() > 0
    scaled = infidelity(model, images, 5 * gradient, targets, sigma=0.1, n_samples=16, optimal_scale=True)
    assert scaled.abs().max() < 1e-8
