"""`reproduce`: the paper's experiment end to end — train ALA per seed, evaluate every method, aggregate.

Seeds: trial k trains with `train.seed = k` (model initialisation, data order, augmentation) while the
data split stays fixed (`data.seed` from the preset or the overrides): every trial is scored on the same
test images, so the spread over seeds is the training's and the paired test over images pairs like with
like. `seeds=N` means seeds 0..N-1; a list gives them explicitly.

Layout of `out`:
    reproduce.json                   the arguments of the reproduction
    seed<k>/run/                     the training run folder (`vfmxai train`'s layout)
    seed<k>/trained.json             written when that training finished: a rerun skips it
    seed<k>/eval/                    `evaluate`'s folder for every method on the test split
    seed<k>/ablation_<variant>/run, trained.json, eval/      with ablations=True (ALA only)
    metrics.json, metrics.csv, table2.md         Table 2: mean ± std over seeds, p-values vs ALA
    ablations.json, table4.md, aea_maps.png      with ablations=True: Table 4 and Fig. 5
    report.html                                  both tables, the first seed's images (`write_reproduce_report`)
Every step resumes: a finished training is skipped, an interrupted one continues from its last.ckpt,
an evaluation continues from its per-image files.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vfmxai.config import RunConfig
from vfmxai.errors import VfmxaiError
from vfmxai.evaluation.aggregate import aggregate, aggregate_results
from vfmxai.evaluation.html_report import REPORT, method_order, metrics_table, report_images, title_of, versions
from vfmxai.evaluation.launch import evaluate_run
from vfmxai.evaluation.report import (
    HEADERS,
    LOWER_IS_BETTER,
    TABLE_COLUMNS,
    per_image_scores,
    render_table,
    source_line,
    table_columns,
)
from vfmxai.evaluation.runner import chosen_methods
from vfmxai.evaluation.settings import EvaluationSettings
from vfmxai.evaluation.store import load_per_image
from vfmxai.explainers import display_name
from vfmxai.io import atomic_write_json, atomic_write_text
from vfmxai.run_folder import CLASSES, CONFIG, LAST, Recipe, Source, dataset_split
from vfmxai.runtime import default_device
from vfmxai.viz.grid import save_grid
from vfmxai.viz.report_html import SummaryTable, write_report_html


@dataclass(frozen=True)
class Ablation:
    """One row of the paper's Table 4: its label, which parts it keeps, the overrides that switch the others off."""

    label: str
    aea: bool
    lora: bool
    lattice: bool
    overrides: tuple[str, ...] = ()


ABLATIONS = {
    "no_lattice": Ablation("(i)", aea=True, lora=True, lattice=False, overrides=("model.lattice=false",)),
    "no_lora": Ablation("(ii)", aea=True, lora=False, lattice=True, overrides=("backbone.lora=false",)),
    "no_aea": Ablation("(iii)", aea=False, lora=True, lattice=True, overrides=("train.aea=false",)),
    "full": Ablation("(iv)", aea=True, lora=True, lattice=True),
}
"""The paper's Table 4 rows, in its order."""
TRAINED = "trained.json"


def reproduce(
    recipe: Recipe,
    seeds: int | Sequence[int],
    out: str | Path,
    settings: EvaluationSettings | None = None,
    *,
    methods: str | Sequence[str] = "paper",
    ablations: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate every seed, aggregate Table 2 (and Table 4 with `ablations`); return the aggregate
    (Table 2's metrics.json content, with the ablation aggregate under "ablations" when run).

    Trial k's config is `recipe.config(seed=k)`: the data split stays the recipe's (module docstring).
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise VfmxaiError(f"--seeds: need at least one seed and no repeats, got {seeds}")
    settings = settings or EvaluationSettings()
    out = Path(out)
    device = device or default_device()
    record = {
        "preset": recipe.preset, "dataset": recipe.dataset, "root": recipe.root, "seeds": seed_list,
        "ablations": ablations, "methods": methods if isinstance(methods, str) else list(methods),
        "overrides": list(recipe.overrides), "fields": dict(recipe.fields),
        "evaluation": dataclasses.asdict(settings),
    }
    recipe.config(seed_list[0])  # bad preset / override: fail before any work
    chosen_methods(methods, settings.method_options)  # a typo in --methods or --method-option: likewise
    atomic_write_json(out / "reproduce.json", json.loads(json.dumps(record, sort_keys=True, default=str)))

    def trial(seed: int, folder: Path, extra: Sequence[str], trial_methods: str | Sequence[str]) -> Path:
        trial_recipe = dataclasses.replace(recipe, overrides=(*recipe.overrides, *extra))
        _say(progress, f"[reproduce] seed {seed}: {folder.relative_to(out)}")
        _train_once(trial_recipe.config(seed), folder, progress)
        source = Source(folder / "run", recipe.dataset, recipe.root, "test")
        evaluate_run(source, trial_methods, folder / "eval", settings, device=device, progress=progress)
        return folder / "eval"

    eval_dirs = [trial(seed, out / f"seed{seed}", (), methods) for seed in seed_list]
    result = aggregate(eval_dirs, out, seeds=seed_list, table_name="table2.md")
    if not ablations:
        write_reproduce_report(out)
        return result
    if "ala" not in result["methods"]:
        raise VfmxaiError("--ablations compares ALA variants: 'ala' must be among --methods and run")
    variant_dirs = {
        name: [
            trial(seed, out / f"seed{seed}" / f"ablation_{name}", ablation.overrides, ["ala"]) for seed in seed_list
        ]
        for name, ablation in ABLATIONS.items()
        if name != "full"
    }
    variant_dirs["full"] = eval_dirs
    table4 = ablation_table(variant_dirs, seed_list)
    atomic_write_json(out / "ablations.json", table4)
    atomic_write_text(out / "table4.md", render_ablation_markdown(table4))
    _aea_figure(variant_dirs["full"][0], variant_dirs["no_aea"][0], out / "aea_maps.png", out / f"seed{seed_list[0]}")
    write_reproduce_report(out)
    return {**result, "ablations": table4}


def ablation_table(variant_dirs: Mapping[str, Sequence[Path]], seeds: Sequence[int]) -> dict[str, Any]:
    """Table 4 as an aggregate: the `ala` entry of each variant's evaluations, rows in ABLATIONS' order,
    p-values of each variant against the full model (over images, as `aggregate`)."""
    runs, per_image = [], []
    for k in range(len(seeds)):
        run: dict[str, Any] | None = None
        scores = {}
        for name in (n for n in ABLATIONS if n in variant_dirs):
            directory = Path(variant_dirs[name][k])
            metrics = json.loads((directory / "metrics.json").read_text())
            if run is None:
                evaluation = {**metrics["config"]["evaluation"], "methods": ["ala"]}
                run = {**metrics, "methods": {}, "missing_reasons": {}, "config": {"evaluation": evaluation, "run": {}}}
            run["methods"][name] = metrics["methods"]["ala"]
            run["config"]["run"][name] = metrics["config"]["run"]
            scores[name] = per_image_scores(load_per_image(directory).methods["ala"])
        runs.append(run)
        per_image.append(scores)
    result = aggregate_results(runs, per_image, reference="full", seeds=seeds)
    result.pop("accuracy", None)
    result.pop("accuracy_std", None)
    return result


ABLATION_COLUMNS = ("miou", "insertion", "deletion", "id")
"""Table 4's metric columns, as the paper's (those that were chosen), then any non-paper metric chosen."""


def _ablation_columns(rows: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    return tuple(c for c in table_columns(rows) if c in ABLATION_COLUMNS or c not in TABLE_COLUMNS)


def _ablation_marks() -> list[tuple[str, dict[str, str]]]:
    """Table 4's leading tick columns: which of AEA, LoRA and the lattice each variant keeps."""
    return [
        (header, {name: "✓" if getattr(ablation, part) else "" for name, ablation in ABLATIONS.items()})
        for header, part in (("AEA", "aea"), ("LoRA", "lora"), ("ALA", "lattice"))
    ]


def render_ablation_markdown(table: Mapping[str, Any]) -> str:
    names = {name: ablation.label for name, ablation in ABLATIONS.items()}
    body = render_table(
        table["methods"], _ablation_columns(table["methods"]), table["p_values"] or None,
        reference="full", leading=_ablation_marks(), names=names, first_header="Model",
    )
    seeds = len(table["seeds"])
    return (
        f"# Ablations (paper Table 4) — {table['dataset']} / {table['split']}, {table['n_images']} images, "
        f"{seeds} seed(s), mean ± std over seeds\n\n{body}\n"
        "(i) no lattice: no VFM state injected into the ALA former; (ii) no LoRA: backbone frozen; (iii) no AEA; "
        "(iv) full.\n"
        "p: two-sided Wilcoxon signed-rank test of per-image IoU against (iv), each image averaged over seeds.\n"
    )


def write_reproduce_report(
    out: str | Path, path: str | Path | None = None, timings: Mapping[str, float] | None = None
) -> Path:
    """report.html of a reproduction folder (default OUT/report.html): Table 2 over seeds with p-values, Table 4
    when ablations ran, and the per-image view of the FIRST seed's evaluation (a per-image table averaged over
    seeds would show maps no model made). `timings`: {step: seconds} to list with the first seed's timing.json."""
    out = Path(out)
    table2 = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "reproduce.json").read_text())
    seed = out / f"seed{record['seeds'][0]}"
    results = load_per_image(seed / "eval")
    names = method_order(table2)
    classes = seed / "run" / CLASSES
    tables = [metrics_table(table2, f"Methods (paper Table 2 layout), mean ± std over {len(record['seeds'])} seed(s)")]
    if (out / "ablations.json").is_file():
        tables.append(_ablation_summary(json.loads((out / "ablations.json").read_text())))
    timing = seed / "eval" / "timing.json"
    details = {
        "Reproduction (reproduce.json)": record,
        "Seeds": table2["seeds"],
        "Evaluation settings": table2["config"]["evaluation"],
        "Run configs, one per seed": table2["config"]["runs"],
        f"Timings of {seed.name}/eval (timing.json)": json.loads(timing.read_text()) if timing.is_file() else {},
        **({"Timings of the steps (seconds)": dict(timings)} if timings else {}),
        "Versions": versions(),
    }
    figures = {
        f"Method grid ({seed.name})": seed / "eval" / "grid.png",
        f"Insertion and deletion curves, mean over images ({seed.name})": seed / "eval" / "curves.png",
        "Maps with and without AEA (paper Fig. 5)": out / "aea_maps.png",
    }
    return write_report_html(
        Path(path) if path is not None else out / REPORT,
        title_of(table2) + f", {len(record['seeds'])} seed(s)",
        tables,
        report_images(results, names, classes.read_text().splitlines() if classes.is_file() else None),
        {m: display_name(m) for m in names},
        figures,
        details,
        summary=f"Every image below: {seed.name}'s evaluation.",
    )


def _ablation_summary(table: Mapping[str, Any]) -> SummaryTable:
    """Table 4 as render_ablation_markdown lays it out."""
    p_values = {m: ps["miou"] for m, ps in (table.get("p_values") or {}).items() if "miou" in ps}
    rows = {name: table["methods"][name] for name in ABLATIONS if name in table["methods"]}  # on disk: sorted
    return SummaryTable(
        f"Ablations (paper Table 4 layout), mean ± std over {len(table['seeds'])} seed(s)", rows,
        [(c, HEADERS[c]) for c in _ablation_columns(rows)], labels={n: a.label for n, a in ABLATIONS.items()},
        lower_is_better=LOWER_IS_BETTER, leading=_ablation_marks(),
        p_values=("p vs (iv) (mIoU)", p_values) if p_values else None,
        note="(i) no lattice; (ii) no LoRA: backbone frozen; (iii) no AEA; (iv) full. p: Wilcoxon signed-rank "
        "over images against (iv).", first_header="Model",
    )


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def _train_once(config: RunConfig, folder: Path, progress: bool) -> None:
    """Train into folder/run unless folder/trained.json says it finished; continue an interrupted run."""
    from vfmxai.training import train  # Lightning loads only when a training runs

    run_dir = folder / "run"
    if (run_dir / CONFIG).is_file():
        saved = RunConfig.load(run_dir / CONFIG)
        ours = RunConfig.from_dict(config.to_dict())
        ours.model.num_classes = saved.model.num_classes
        difference = _first_difference(saved.to_dict(), ours.to_dict())
        if difference:
            raise VfmxaiError(
                f"{run_dir}: holds a run trained with {difference}; choose another --out or delete {folder}"
            )
    if (folder / TRAINED).is_file():
        return
    train(config, run_dir, resume=(run_dir / LAST).is_file(), progress=progress)
    atomic_write_json(folder / TRAINED, {"config": RunConfig.load(run_dir / CONFIG).to_dict()})


def _first_difference(saved: Any, ours: Any, key: str = "") -> str | None:
    if isinstance(saved, dict) and isinstance(ours, dict):
        for name in sorted(set(saved) | set(ours)):
            found = _first_difference(saved.get(name), ours.get(name), f"{key}.{name}" if key else name)
            if found:
                return found
        return None
    return None if saved == ours else f"{key}={json.dumps(saved)} (this call: {json.dumps(ours)})"


def _aea_figure(full_dir: Path, no_aea_dir: Path, path: Path, seed_folder: Path) -> None:
    """Paper Fig. 5: the first test images with the full model's map and the no-AEA model's."""
    with_aea = load_per_image(full_dir).grid_maps.get("ala")
    without = load_per_image(no_aea_dir).grid_maps.get("ala")
    if with_aea is None or without is None:
        return
    config = RunConfig.load(seed_folder / "run" / CONFIG)
    test = dataset_split(config, "test")
    n = min(len(with_aea), len(without))
    images = torch.stack([test[i]["image"] for i in range(n)])
    caption = source_line(json.loads((full_dir / "metrics.json").read_text()))
    save_grid(images, [("with AEA", with_aea[:n]), ("without AEA", without[:n])], path, caption=caption)
