"""Metrics: pure functions on tensors, batched, on the inputs' device (choices: docs/design-notes.md, Metrics)."""

from vfmxai.metrics.classification import accuracy
from vfmxai.metrics.complexity import complexity, sparseness
from vfmxai.metrics.faithfulness import AOPCResult, aopc, aopc_of, infidelity
from vfmxai.metrics.localization import (
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
from vfmxai.metrics.road import ROADResult, noisy_linear_imputation, road
from vfmxai.metrics.robustness import avg_sensitivity, max_sensitivity, sensitivity_ratios
from vfmxai.metrics.similarity import average_ranks, spearman_correlation
from vfmxai.metrics.statistics import mean_std, paired_test

__all__ = [
    "AOPCResult",
    "InsDelResult",
    "ROADResult",
    "accuracy",
    "aopc",
    "aopc_of",
    "auc",
    "average_ranks",
    "avg_sensitivity",
    "best_tau_iou",
    "complexity",
    "dataset_iou",
    "default_thresholds",
    "energy_pointing_game",
    "gaussian_blur",
    "id_score",
    "infidelity",
    "insertion_deletion",
    "iou_counts",
    "iou_curve",
    "make_substrate",
    "max_sensitivity",
    "mean_iou",
    "mean_std",
    "noisy_linear_imputation",
    "paired_test",
    "pixel_ranks",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "road",
    "sensitivity_ratios",
    "sparseness",
    "spearman_correlation",
    "step_counts",
]
