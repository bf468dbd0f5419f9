"""Metrics: pure functions on tensors, batched, on the inputs' device (choices: docs/design-notes.md, Metrics)."""

from vfmxai.metrics.classification import accuracy
from vfmxai.metrics.localization import (
    best_tau_iou,
    dataset_iou,
    default_thresholds,
    energy_pointing_game,
    iou_counts,
    iou_curve,
    mean_iou,
    pointing_game,
)
from vfmxai.metrics.perturbation import (
    InsDelResult,
    auc,
    gaussian_blur,
    id_score,
    insertion_deletion,
    make_substrate,
    pixel_ranks,
    step_counts,
)
from vfmxai.metrics.similarity import average_ranks, spearman_correlation
from vfmxai.metrics.statistics import mean_std, paired_test

__all__ = [
    "InsDelResult",
    "accuracy",
    "auc",
    "average_ranks",
    "best_tau_iou",
    "dataset_iou",
    "default_thresholds",
    "energy_pointing_game",
    "gaussian_blur",
    "id_score",
    "insertion_deletion",
    "iou_counts",
    "iou_curve",
    "make_substrate",
    "mean_iou",
    "mean_std",
    "paired_test",
    "pixel_ranks",
    "pointing_game",
    "spearman_correlation",
    "step_counts",
]
