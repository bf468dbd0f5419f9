"""Aggregates, the paired test and accuracy against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from vfmxai.errors import VfmxaiError
from vfmxai.metrics import accuracy, mean_std, paired_test


def test_mean_std_by_hand():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, ddof = 1
    assert mean_std(torch.tensor([0.25])) == (0.25, 0.0)
    assert mean_std(torch.tensor([0.5, 0.5, 0.5])) == (0.5, 0.0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [[1.0, 2.0]]])
def test_mean_std_rejects_bad_values(bad):
    with pytest.raises(VfmxaiError):
        mean_std(bad)


@pytest.mark.parametrize("test", ["wilcoxon", "t"])
def test_identical_samples_give_p_one(test):
    a = torch.tensor([0.1, 0.5, 0.7, 0.2])
    assert paired_test(a, a.clone(), test=test) == 1.0


def test_wilcoxon_exact_values_by_hand():
    # 5 positive, distinct differences: the exact two-sided p is 2 / 2^5.
    assert paired_test([1, 2, 3, 4, 5], [0, 0, 0, 0, 0]) == pytest.approx(0.0625)
    # A zero difference is dropped (zero_method="wilcox"): the same 5 non-zero differences remain.
    assert paired_test([1, 2, 3, 4, 5, 6], [1, 0, 0, 0, 0, 0]) == pytest.approx(0.0625)
    # Signs balanced around zero: ranks 1..4 with signs + - - +: W+ = 5 = W-, p = 1.
    assert paired_test([1, -2, -3, 4], [0, 0, 0, 0]) == pytest.approx(1.0)


def test_paired_t_by_hand():
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3), df = 2, two-sided p = 1 - sqrt(6 / 7).
    assert paired_test([1, 2, 3], [0, 0, 0], test="t") == pytest.approx(1 - math.sqrt(6 / 7))
    assert paired_test([1, 2, 3], [0, 1, 2], test="t") == 0.0  # constant non-zero difference


@pytest.mark.parametrize("test", ["wilcoxon", "t"])
def test_strongly_shifted_samples_give_small_p(test):
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(30, generator=gen)
    b = a + 0.5 + 0.05 * torch.rand(30, generator=gen)
    assert paired_test(a, b, test=test) < 1e-4
    assert paired_test(b, a, test=test) == pytest.approx(paired_test(a, b, test=test))


def test_paired_test_rejects_bad_input():
    with pytest.raises(VfmxaiError):
        paired_test([1, 2, 3], [1, 2])
    with pytest.raises(VfmxaiError):
        paired_test([1, 2], [0, 0], test="anova")
    with pytest.raises(VfmxaiError):
        paired_test([1.0], [0.0], test="t")


def test_accuracy_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]])  # argmax 0, 1, 0 (tie -> first)
    assert accuracy(logits, torch.tensor([0, 2, 0])) == pytest.approx(2 / 3)
    assert accuracy(logits, [0, 1, 0]) == 1.0
    with pytest.raises(VfmxaiError):
        accuracy(logits, [0, 1])
