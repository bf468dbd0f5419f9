"""`vfmxai sanity`: do a method's maps depend on the model they explain, and on the class they explain?

Two tests, per method, on `n_images` images drawn (seeded) from a dataset split, explaining each image's label:
- MPRT, cascading model-parameter randomisation (Adebayo et al. 2018): the model is re-initialised from the
  head down, one step at a time and cumulatively (`evaluation.randomisation`); after each step, Spearman's rho
  between the map of the original model and that of the randomised one, per image, averaged over the images
  and over `draws` independent randomisations (draw d seeded `seed + d`). A method whose rho after the whole
  model is randomised is still >= `fail_at` FAILS: its map does not reflect what the model learnt.
- Random logit (Sixt et al. 2020): rho between the map of the label and that of a class drawn uniformly from
  the others (one draw per `draws`). A rho >= `fail_at` FAILS: the map does not say which class it explains.
  A class-agnostic method (ALA's own map, attention rollout) fails by construction; that is its true answer.
Rho is NaN for a constant map (`metrics.similarity`). An image whose original map is constant has no ranking to
keep: it is left out of that method's means and counted (`constant_maps`); a randomised map that became
constant keeps nothing of the original's ranking and counts as rho 0. With no image left, the verdict is None.

Files in `out`: sanity.json (settings, seeds, steps, per method and step rho mean/std, verdicts), sanity.md,
sanity.png (`viz.sanity`), written only once every check has run: an interrupted run leaves no folder behind,
and the same command starts again without --force (there is nothing to resume). The models run in eval mode,
LoRA merged, in `precision` (`runtime.autocast`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vfmxai import explainers
from vfmxai.backbones.lora import merged_lora
from vfmxai.classifier import Classifier
from vfmxai.data import collate
from vfmxai.errors import VfmxaiError
from vfmxai.evaluation.randomisation import cascade, randomisation_steps
from vfmxai.evaluation.report import rounded, source_line
from vfmxai.evaluation.runner import chosen_methods, resolve_methods
from vfmxai.evaluation.settings import checked_method_options, jsonable
from vfmxai.io import atomic_write_json, atomic_write_text, check_out_folder
from vfmxai.metrics import mean_std, spearman_correlation
from vfmxai.run_folder import Source, check_run_folder
from vfmxai.runtime import autocast, check_device, default_device, resolve_precision
from vfmxai.viz.sanity import save_randomisation_curves

OUTPUTS = ("sanity.json", "sanity.md", "sanity.png")
MAX_DRAWS = 1000
MAX_SEED = 2**32 - 1
"""Draw d is seeded `seed + d`: a seed up to 2**32 - 1 stays far inside what torch.Generator.manual_seed takes."""


@dataclass(frozen=True)
class SanitySettings:
    """How the sanity checks run (the command line's flags): `n_images` drawn from the split with `seed`,
    `batch_size` images per explainer call, `draws` independent randomisations (and random classes), the
    verdict's threshold `fail_at` on rho, `precision` (`runtime.autocast`), `method_options` as
    `EvaluationSettings`'s. Checked when made."""

    n_images: int = 8
    batch_size: int = 8
    draws: int = 3
    seed: int = 0
    fail_at: float = 0.5
    precision: str = "auto"
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("n_images", "batch_size", "draws"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise VfmxaiError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.draws > MAX_DRAWS:
            raise VfmxaiError(f"--draws must be <= {MAX_DRAWS} (each draw randomises the model), got {self.draws}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise VfmxaiError(f"--seed must be an integer in [0, 2**32 - 1], got {self.seed!r}")
        if isinstance(self.fail_at, bool) or not isinstance(self.fail_at, int | float) or not -1 <= self.fail_at <= 1:
            raise VfmxaiError(f"--fail-at must be a rank correlation in [-1, 1], got {self.fail_at!r}")
        resolve_precision(self.precision, "cpu")  # a word of PRECISIONS, else one line
        object.__setattr__(self, "method_options", checked_method_options(self.method_options))

    def options_for(self, method: str) -> dict[str, Any]:
        return dict(self.method_options.get(method, {}))


def sanity_run(
    source: Source,
    methods: str | Sequence[str],
    out: str | Path,
    settings: SanitySettings | None = None,
    *,
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """`vfmxai sanity`: the run folder's model on its split (as `evaluate_run` loads them), then `sanity_check`.
    Every argument, `out` included, is checked before the model is loaded."""
    settings = settings or SanitySettings()
    out = _check_out(out, force)
    chosen_methods(methods, settings.method_options)
    if device is not None:
        check_device(device)
    check_run_folder(source.run_dir)
    model, data, config = source.load(device or default_device())
    return sanity_check(model, data, methods, out, settings, dataset_name=source.dataset, split=source.split,
                        config=config, force=True, progress=progress)


def sanity_check(
    model: Classifier,
    dataset: Dataset,
    methods: str | Sequence[str],
    out: str | Path,
    settings: SanitySettings | None = None,
    *,
    dataset_name: str = "",
    split: str = "test",
    config: Any = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """MPRT and random logit of `methods` on `model` (where its parameters are) and images of `dataset`; writes
    `out` (refused when it holds files, unless `force`) and returns sanity.json's content. `progress`: a bar on
    stderr over the randomised models."""
    settings = settings or SanitySettings()
    out = _check_out(out, force)
    config = jsonable(config.to_dict() if hasattr(config, "to_dict") else config, "config")
    names, missing = resolve_methods(methods, model)
    if not names:
        raise VfmxaiError(f"--methods: none can run ({'; '.join(f'{m}: {why}' for m, why in missing.items())})")
    model.eval()
    device = next(model.parameters()).device
    images, labels, ids = _images(dataset, settings, dataset_name, split, device)
    draw_seeds = [settings.seed + d for d in range(settings.draws)]
    with autocast(settings.precision, device):
        with merged_lora(model):
            original = {m: _maps(model, m, images, labels, settings) for m in names}
            others = [_other_classes(labels, model.num_classes, seed) for seed in draw_seeds]
            logit_rho = {m: _random_logit(model, m, images, original[m], others, settings) for m in names}
        steps = randomisation_steps(model)
        with tqdm(total=len(draw_seeds) * len(steps), desc="sanity", unit="model", file=sys.stderr,
                  disable=not progress, dynamic_ncols=True) as bar:
            mprt_rho = _model_randomisation(model, names, images, labels, original, draw_seeds, settings, bar)
    result = {
        "dataset": dataset_name,
        "split": split,
        "n_images": len(ids),
        "image_ids": ids,
        "config": {
            "sanity": {
                "n_images": settings.n_images, "batch_size": settings.batch_size, "draws": settings.draws,
                "seed": settings.seed, "draw_seeds": draw_seeds, "fail_at": settings.fail_at,
                "precision": resolve_precision(settings.precision, device), "targets": "label",
                "random_logit_classes": [o.tolist() for o in others],
                "method_options": {m: {**explainers.default_options(m), **settings.options_for(m)} for m in names},
            },
            "run": config,
        },
        "steps": [{"name": s.name, "modules": list(s.modules)} for s in steps],
        "methods": {m: _summary(original[m], mprt_rho[m], logit_rho[m], settings.fail_at) for m in names},
        "missing": list(missing),
        "missing_reasons": dict(missing),
    }
    result["fails"] = {
        test: [m for m in names if result["methods"][m][test]["fails"]] for test in ("mprt", "random_logit")
    }
    _write(out, result, [s.name for s in steps])
    return result


def _check_out(out: str | Path, force: bool) -> Path:
    out = check_out_folder(out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise VfmxaiError(f"--out {out}: folder is not empty; pass --force to write the sanity checks there anyway")
    return out


def _images(
    dataset: Dataset, settings: SanitySettings, dataset_name: str, split: str, device: torch.device
) -> tuple[Tensor, Tensor, list[str]]:
    """`n_images` images of the split (all, if it has fewer), drawn with `seed`, in the split's order."""
    if len(dataset) == 0:
        raise VfmxaiError(f"dataset {dataset_name} split {split}: no images")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(settings.seed))
    chosen = sorted(order[: settings.n_images].tolist())
    batch = collate([dataset[i] for i in chosen])
    return batch["image"].to(device), batch["label"].to(device), list(batch["id"])


def _maps(model: Classifier, method: str, images: Tensor, targets: Tensor, settings: SanitySettings) -> Tensor:
    """`method`'s maps (B, H, W) on its own scale (Spearman's rho needs only the order), float32."""
    try:
        explainer = explainers.get(method, model, **settings.options_for(method))
    except TypeError as err:
        raise VfmxaiError(f"method_options for '{method}': {err}") from None
    size = settings.batch_size
    with explainer:
        return torch.cat([
            explainer(images[i : i + size], targets[i : i + size], normalize=False).detach().float()
            for i in range(0, len(images), size)
        ])


def _other_classes(labels: Tensor, num_classes: int, seed: int) -> Tensor:
    """Per image a class other than its label, uniform over the num_classes - 1 others."""
    shift = torch.randint(1, num_classes, labels.shape, generator=torch.Generator().manual_seed(seed))
    return (labels + shift.to(labels.device)) % num_classes


def _similarity(original: Tensor, other: Tensor) -> Tensor:
    """Spearman's rho per image; a constant `other` map keeps none of the original's ranking: 0."""
    return torch.nan_to_num(spearman_correlation(original, other), nan=0.0)


def _random_logit(
    model: Classifier, method: str, images: Tensor, original: Tensor, others: list[Tensor], settings: SanitySettings
) -> Tensor:
    """(draws, B) rho between the label's map and a random other class's."""
    return torch.stack([_similarity(original, _maps(model, method, images, o, settings)) for o in others]).cpu()


def _model_randomisation(
    model: Classifier,
    names: list[str],
    images: Tensor,
    labels: Tensor,
    original: Mapping[str, Tensor],
    draw_seeds: list[int],
    settings: SanitySettings,
    bar: tqdm,
) -> dict[str, Tensor]:
    """{method: (draws, steps, B) rho between its original maps and those of each cumulatively randomised model};
    every method sees the same randomised models."""
    rho: dict[str, list[list[Tensor]]] = {m: [] for m in names}
    for seed in draw_seeds:
        for m in names:
            rho[m].append([])
        for step, randomised in cascade(model, seed):
            bar.set_postfix_str(f"draw {seed - draw_seeds[0] + 1}/{len(draw_seeds)}, down to {step.name}")
            with merged_lora(randomised):
                for m in names:
                    rho[m][-1].append(_similarity(original[m], _maps(randomised, m, images, labels, settings)).cpu())
            bar.update()
    return {m: torch.stack([torch.stack(per_step) for per_step in draws]) for m, draws in rho.items()}


def _summary(original: Tensor, mprt_rho: Tensor, logit_rho: Tensor, fail_at: float) -> dict[str, Any]:
    """One method's entry of sanity.json: rho mean and std (over draws x images) per step and for the random
    logit, and the verdicts; images whose original map is constant are left out."""
    flat = original.flatten(1)
    ranked = (flat.amax(dim=1) > flat.amin(dim=1)).cpu()
    if not bool(ranked.any()):
        empty = {"mean": None, "std": None, "fails": None}
        return {"constant_maps": len(ranked), "mprt": {**empty, "final": None}, "random_logit": empty}
    per_step = [mean_std(mprt_rho[:, s, ranked].flatten()) for s in range(mprt_rho.shape[1])]
    logit_mean, logit_std = mean_std(logit_rho[:, ranked].flatten())
    final = rounded(per_step[-1][0])
    return {
        "constant_maps": int((~ranked).sum()),
        "mprt": {
            "mean": [rounded(m) for m, _ in per_step],
            "std": [rounded(s) for _, s in per_step],
            "final": final,
            "fails": final >= fail_at,
        },
        "random_logit": {
            "mean": rounded(logit_mean), "std": rounded(logit_std), "fails": rounded(logit_mean) >= fail_at
        },
    }


def _write(out: Path, result: Mapping[str, Any], step_names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "sanity.json", result)
    atomic_write_text(out / "sanity.md", render_sanity_markdown(result))
    labels = {m: explainers.display_name(m) for m in result["methods"]}
    curves = {
        m: (np.asarray(r["mprt"]["mean"]), np.asarray(r["mprt"]["std"]))
        for m, r in result["methods"].items() if r["mprt"]["mean"] is not None
    }
    settings = result["config"]["sanity"]
    save_randomisation_curves(curves, step_names, out / "sanity.png", settings["fail_at"], labels, _source_line(result))


def _source_line(result: Mapping[str, Any]) -> str:
    """What the figure was made from: backbone, classifier, data root and split, images and draws."""
    return f"{source_line(result)}, {result['config']['sanity']['draws']} draw(s)"


def _verdict(fails: bool | None) -> str:
    return "n/a" if fails is None else "**fails**" if fails else "passes"


def _rho(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"


def render_sanity_markdown(result: Mapping[str, Any]) -> str:
    """sanity.md: the verdicts, then rho after every step of the cascade."""
    settings = result["config"]["sanity"]
    steps = [s["name"] for s in result["steps"]]
    lines = [
        f"# Sanity checks: {result['dataset']} {result['split']}, {result['n_images']} image(s), "
        f"{settings['draws']} draw(s)",
        "",
        "Spearman's ρ (mean ± std over images and draws) between each method's map and the map after the model is "
        f"re-initialised from the head down (MPRT), or of a random other class (random logit). A method fails a test "
        f"when ρ ≥ {settings['fail_at']:g}, after the whole model is randomised for MPRT.",
        "",
        f"| Method | MPRT ρ after {steps[0]} | MPRT ρ, all randomised | MPRT | Random-logit ρ | Random logit |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in result["methods"].items():
        mprt, logit = r["mprt"], r["random_logit"]
        first = None if mprt["mean"] is None else (mprt["mean"][0], mprt["std"][0])
        last = None if mprt["mean"] is None else (mprt["mean"][-1], mprt["std"][-1])
        lines.append(
            f"| {explainers.display_name(method)} | {_rho(*(first or (None, None)))} | {_rho(*(last or (None, None)))} "
            f"| {_verdict(mprt['fails'])} | {_rho(logit['mean'], logit['std'])} | {_verdict(logit['fails'])} |"
        )
    lines += ["", "MPRT ρ (mean) after each step, cumulative:", "", "| Method | " + " | ".join(steps) + " |",
              "|---|" + "---|" * len(steps)]
    for method, r in result["methods"].items():
        cells = ["n/a"] * len(steps) if r["mprt"]["mean"] is None else [f"{v:.3f}" for v in r["mprt"]["mean"]]
        lines.append(f"| {explainers.display_name(method)} | " + " | ".join(cells) + " |")
    if result["missing"]:
        lines += ["", "Not run: " + "; ".join(f"{m} ({why})" for m, why in result["missing_reasons"].items())]
    return "\n".join(lines) + "\n"
