"""Every chosen metric on one method's maps of one batch: the per-image tensors the store keeps.

Which map each metric reads (the same for every method):
- the min-max normalised map at the image size (`maps`): IoU curve, pointing games, insertion/deletion,
  AOPC, ROAD, sparseness, complexity, sensitivity (the explainer's own output, recomputed on the
  perturbed images), infidelity, relevance rank;
- the thresholded map (`thresholded`, normalised or raw per `--threshold-on`): mIoU and its counts;
- the map on the method's own scale, resized (`raw`): relevance mass (on a normalised map it would be the
  energy pointing game).
Max- and average sensitivity with the same options share one set of explanations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from vfmxai.classifier import Classifier
from vfmxai.metrics import (
    aopc,
    complexity,
    energy_pointing_game,
    infidelity,
    insertion_deletion,
    iou_counts,
    iou_curve,
    mean_iou,
    pointing_game,
    relevance_mass,
    relevance_rank,
    road,
    sensitivity_ratios,
    sparseness,
)


@dataclass(frozen=True)
class BatchMaps:
    """One method's maps of one batch and what the metrics need beside them."""

    model: Classifier
    images: Tensor
    masks: Tensor
    targets: Tensor
    raw: Tensor
    maps: Tensor
    thresholded: Tensor
    explain: Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Scoring:
    """The evaluation's settings the metrics read (from `EvaluationSettings`)."""

    threshold: float
    normalised_threshold: bool
    steps: int
    substrate: str
    tie_seed: int
    batch_size: int
    perturb_batch_size: int
    options: Mapping[str, Mapping[str, Any]]
    """`metric_set.resolved_options` of the chosen metrics."""


def score_metrics(metrics: tuple[str, ...], batch: BatchMaps, scoring: Scoring) -> dict[str, Tensor]:
    """{name: per-image tensor (B, ...)} of every metric in `metrics` (the store's keys)."""
    tensors: dict[str, Tensor] = {}
    sensitivities: dict[str, Tensor] = {}
    for metric in metrics:
        options = dict(scoring.options.get(metric, {}))
        if metric in ("max_sensitivity", "avg_sensitivity"):
            key = repr(sorted(options.items()))
            if key not in sensitivities:
                sensitivities[key] = sensitivity_ratios(
                    batch.explain, batch.images, batch.targets, batch.maps, batch_size=scoring.batch_size, **options
                )
            ratios = sensitivities[key]
            tensors[metric] = ratios.amax(dim=1) if metric == "max_sensitivity" else ratios.mean(dim=1)
        else:
            tensors.update(SCORERS[metric](batch, scoring, options))
    return tensors


def _substrate(substrate: str, model: Classifier) -> dict[str, Any]:
    """`substrate` in `make_substrate`'s terms: model-mean is the backbone's mean colour (zero once normalised)."""
    if substrate == "model-mean":
        return {"substrate": "mean", "substrate_value": model.backbone.mean.flatten()}
    return {"substrate": substrate}


def _miou(batch: BatchMaps, scoring: Scoring, options: dict[str, Any]) -> dict[str, Tensor]:
    inter, union = iou_counts(batch.thresholded, batch.masks, scoring.threshold, scoring.normalised_threshold)
    return {
        "iou": mean_iou(batch.thresholded, batch.masks, scoring.threshold, scoring.normalised_threshold),
        "intersection": inter,
        "union": union,
        "iou_curve": iou_curve(batch.maps, batch.masks),
    }


def _insertion_deletion(batch: BatchMaps, scoring: Scoring, options: dict[str, Any]) -> dict[str, Tensor]:
    result = insertion_deletion(
        batch.model, batch.images, batch.maps, batch.targets, steps=scoring.steps,
        batch_size=scoring.perturb_batch_size, tie_seed=scoring.tie_seed, **_substrate(scoring.substrate, batch.model),
    )
    return {
        "insertion": result.insertion,
        "deletion": result.deletion,
        "insertion_curve": result.insertion_curve,
        "deletion_curve": result.deletion_curve,
    }


def _aopc(batch: BatchMaps, scoring: Scoring, options: dict[str, Any]) -> dict[str, Tensor]:
    substrate = _substrate(options.pop("substrate"), batch.model)
    result = aopc(
        batch.model, batch.images, batch.maps, batch.targets, batch_size=scoring.perturb_batch_size,
        tie_seed=scoring.tie_seed, **substrate, **options,
    )
    return {"aopc_morf": result.morf, "aopc_lerf": result.lerf, "morf_curve": result.morf_curve,
            "lerf_curve": result.lerf_curve}


def _road(batch: BatchMaps, scoring: Scoring, options: dict[str, Any]) -> dict[str, Tensor]:
    result = road(
        batch.model, batch.images, batch.maps, batch.targets, batch_size=scoring.perturb_batch_size,
        tie_seed=scoring.tie_seed, **options,
    )
    return {"road_morf_curve": result.morf_curve, "road_lerf_curve": result.lerf_curve,
            "road_morf_correct": result.morf_correct, "road_lerf_correct": result.lerf_correct}


def _infidelity(batch: BatchMaps, scoring: Scoring, options: dict[str, Any]) -> dict[str, Tensor]:
    scores = infidelity(
        batch.model, batch.images, batch.maps, batch.targets, batch_size=scoring.perturb_batch_size, **options
    )
    return {"infidelity": scores}


SCORERS: dict[str, Callable[[BatchMaps, Scoring, dict[str, Any]], dict[str, Tensor]]] = {
    "miou": _miou,
    "insertion_deletion": _insertion_deletion,
    "pointing_game": lambda b, s, o: {"pointing_game": pointing_game(b.maps, b.masks, **o)},
    "energy_pg": lambda b, s, o: {"energy_pg": energy_pointing_game(b.maps, b.masks)},
    "aopc": _aopc,
    "road": _road,
    "sparseness": lambda b, s, o: {"sparseness": sparseness(b.maps)},
    "complexity": lambda b, s, o: {"complexity": complexity(b.maps)},
    "infidelity": _infidelity,
    "relevance_mass": lambda b, s, o: {"relevance_mass": relevance_mass(b.raw, b.masks)},
    "relevance_rank": lambda b, s, o: {"relevance_rank": relevance_rank(b.maps, b.masks, s.tie_seed)},
}
"""Each metric but the sensitivities (`score_metrics`): (batch, settings, its options) -> per-image tensors."""

