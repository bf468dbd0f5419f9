"""The `vfmxai` command: argument parsing only; every command calls the API.

Exit status: 0 on success, 1 on a user error (one line on stderr saying what), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vfmxai.errors import VfmxaiError
from vfmxai.vocabulary import (
    DATASETS,
    DEFAULT_EVAL_METRICS,
    EVAL_METRICS,
    EVAL_SUBSTRATES,
    EXPLAIN_TARGETS,
    SYNTHETIC_SIZE,
    SYNTHETIC_SPLITS,
    SYNTHETIC_TASKS,
    TARGET_MODES,
    THRESHOLD_ON,
)

if TYPE_CHECKING:
    from vfmxai.evaluation import EvaluationSettings, Source

PRECISION_HELP = "auto (bf16 autocast on a GPU, fp32 on a CPU), bf16 or fp32"


def _methods(value: str) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vfmxai", description="Explain what ViT foundation models look at.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="synthetic set -> train ALA on the shipped backbone -> explain -> report")
    demo.add_argument("--out", default="demo_out", type=Path)
    demo.add_argument("--seed", default=0, type=int)

    data = sub.add_parser("data", help="write, describe or check a dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="write the synthetic set in the folder format")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--seed", default=0, type=int)
    synth.add_argument("--size", default=SYNTHETIC_SIZE, type=int)
    for split, size in SYNTHETIC_SPLITS.items():
        synth.add_argument(f"--{split.replace('_', '-')}", default=size, type=int)
    synth.add_argument("--task", default="demo", choices=SYNTHETIC_TASKS)
    synth.add_argument("--force", action="store_true", help="replace what a non-empty --out folder holds")
    for name in ("info", "check"):
        cmd = data_sub.add_parser(name, help="split sizes and classes as JSON" if name == "info" else "every problem")
        cmd.add_argument("--dataset", required=True, choices=DATASETS)
        cmd.add_argument("--root", type=Path)

    train = sub.add_parser("train", help="train ALA + AEA + LoRA")
    train.add_argument("--dataset", required=True, choices=DATASETS)
    train.add_argument("--root", type=Path)
    train.add_argument("--preset", default="toy")
    train.add_argument("--out", required=True, type=Path)
    train.add_argument("--backbone", help="backbone preset, Hugging Face id (local cache) or directory")
    train.add_argument("--seed", type=int)
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--resume", action="store_true")
    train.add_argument("--devices", help="Lightning devices (e.g. 1, 8, auto)")
    train.add_argument("--num-nodes", type=int)
    train.add_argument("--no-progress", action="store_true")

    explain = sub.add_parser("explain", help="overlays and raw maps for images or folders")
    explain.add_argument("--checkpoint", type=Path, help="a trained run folder (or give --backbone)")
    explain.add_argument("--backbone", help="explain a bare backbone (directory, preset or cached id) instead of a run")
    explain.add_argument("--image-size", type=int, help="with --backbone: input size (default: its native size)")
    explain.add_argument(
        "--target", default="class", metavar="|".join(EXPLAIN_TARGETS),
        help="what is explained: the predicted class (each method's own score), its logit or probability, a CLIP "
        "prompt, or the similarity to a reference image",
    )
    explain.add_argument(
        "--against", action="append", default=[], metavar="TEXT", help="with prompt:TEXT: a prompt to contrast with",
    )
    explain.add_argument("--method", required=True, type=_methods)
    explain.add_argument("--out", required=True, type=Path)
    explain.add_argument("--batch-size", default=8, type=int)
    explain.add_argument("--device", default="cpu")
    explain.add_argument("--per-block", action="store_true", help="with daam: the map accumulated block by block")
    explain.add_argument("--precision", default="auto", help=PRECISION_HELP)
    explain.add_argument("--force", action="store_true", help="replace an earlier explain's outputs in --out")
    explain.add_argument("inputs", nargs="+")

    evaluate = sub.add_parser("evaluate", help="every method x a dataset split x every metric -> metrics.json")
    _source_flags(evaluate)
    evaluate.add_argument("--shard", help="RANK/WORLD: evaluate one shard; rank 0 merges (also under torchrun)")
    evaluate.add_argument("--devices", type=int, help="run N worker processes (one per GPU, else CPU) and merge")
    _evaluation_flags(evaluate)

    reproduce = sub.add_parser("reproduce", help="train with several seeds, evaluate everything, the paper's tables")
    reproduce.add_argument("--preset", required=True)
    reproduce.add_argument("--dataset", required=True, choices=DATASETS)
    reproduce.add_argument("--root", type=Path)
    reproduce.add_argument("--seeds", default=5, type=int)
    reproduce.add_argument("--ablations", action="store_true")
    reproduce.add_argument("--methods", default="paper", help=METHODS_HELP)
    reproduce.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    reproduce.add_argument("--out", required=True, type=Path)
    _evaluation_flags(reproduce)

    sanity = sub.add_parser("sanity", help="model-randomisation (MPRT) and random-logit tests of every method")
    _source_flags(sanity)
    sanity.add_argument("--n-images", default=8, type=int, help="images drawn from the split (seeded)")
    sanity.add_argument("--draws", default=3, type=int, help="independent randomisations (and random classes)")
    sanity.add_argument("--seed", default=0, type=int, help="draws the images; draw d randomises with seed + d")
    sanity.add_argument("--fail-at", default=0.5, type=float, help="a method fails a test when Spearman ρ >= this")
    sanity.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    sanity.add_argument("--no-progress", action="store_true")
    _explainer_flags(sanity, batch_size=8)

    bench = sub.add_parser("bench", help="throughput of forward, explainers, insertion/deletion, training steps")
    bench.add_argument("--out", default=Path("bench_out"), type=Path)
    bench.add_argument("--backbone", default="default", help="tiny, default, clip-vit-b16, a directory or HF id")
    bench.add_argument("--image-size", type=int)
    bench.add_argument("--batch-size", default=8, type=int)
    bench.add_argument("--repeats", default=5, type=int)
    bench.add_argument("--warmup", default=1, type=int)
    bench.add_argument(
        "--methods", type=_methods, help="explainers to time (default: the paper's ten and the ViT methods, cheap)"
    )
    bench.add_argument("--insdel-steps", default=20, type=int)
    bench.add_argument(
        "--train", default="lora_ala,full_finetune", type=_methods, help="train-step rows to time; 'none' for none"
    )
    bench.add_argument("--device")
    bench.add_argument("--clock", default="wall", choices=("wall", "cpu"), help="cpu: process CPU time (shared hosts)")
    bench.add_argument("--precision", default="auto", help=PRECISION_HELP)
    return parser


METHODS_HELP = "paper (default: the ALA paper's ten), all (the newer ViT methods too), or M,M,..."


def _source_flags(parser: argparse.ArgumentParser) -> None:
    """A run folder's model on one dataset split, the methods and the output folder (evaluate, sanity)."""
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--methods", default="paper", help=METHODS_HELP)
    parser.add_argument("--out", required=True, type=Path)


def _explainer_flags(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """Where and how the explainers run (evaluate, reproduce, sanity)."""
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--batch-size", default=batch_size, type=int)
    parser.add_argument("--precision", default="auto", help=PRECISION_HELP)
    parser.add_argument(
        "--method-option", dest="method_options", action="append", default=[], type=_method_option,
        metavar="METHOD.KEY=VALUE", help="an explainer option, e.g. rise.n_masks=64 (value parsed as JSON)",
    )


def _evaluation_flags(parser: argparse.ArgumentParser) -> None:
    _explainer_flags(parser, batch_size=16)
    parser.add_argument("--steps", default=100, type=int, help="insertion/deletion steps")
    parser.add_argument(
        "--substrate", default="black", choices=EVAL_SUBSTRATES,
        help="black (the paper), blur, mean (each image's mean colour), model-mean (zero in the backbone's "
        "normalised input space)",
    )
    parser.add_argument("--target", default="given", choices=TARGET_MODES, help="class scored")
    parser.add_argument("--threshold", default=0.5, type=float, help="IoU threshold τ")
    parser.add_argument(
        "--threshold-on", default="normalised", choices=THRESHOLD_ON,
        help="normalised: τ on the min-max normalised map (every method); raw: on the map as returned (ALA's alpha)",
    )
    parser.add_argument(
        "--num-workers", type=int, help="data-loading processes (default: 0 on a CPU, up to 8 on a GPU)"
    )
    parser.add_argument(
        "--metrics", help=f"what to score: all, or a list of {','.join(EVAL_METRICS)} "
        f"(default: the paper's {','.join(DEFAULT_EVAL_METRICS)})",
    )
    parser.add_argument(
        "--metric-option", dest="metric_options", action="append", default=[], type=_metric_option,
        metavar="METRIC.KEY=VALUE", help="a metric option, e.g. road.noise=0.02 (value parsed as JSON)",
    )
    parser.add_argument("--no-progress", action="store_true")


def _dotted_option(text: str, form: str) -> tuple[str, str, object]:
    key, sep, raw = text.partition("=")
    owner, dot, option = key.partition(".")
    if not sep or not dot or not owner or not option:
        raise argparse.ArgumentTypeError(f"'{text}': expected {form}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return owner.strip(), option.strip(), value


def _method_option(text: str) -> tuple[str, str, object]:
    return _dotted_option(text, "METHOD.KEY=VALUE, e.g. rise.n_masks=64")


def _metric_option(text: str) -> tuple[str, str, object]:
    return _dotted_option(text, "METRIC.KEY=VALUE, e.g. pointing_game.tolerance=15")


def _evaluation_settings(args: argparse.Namespace) -> EvaluationSettings:
    from vfmxai.evaluation import EvaluationSettings

    return EvaluationSettings(
        steps=args.steps,
        substrate=args.substrate,
        target_mode=args.target,
        threshold=args.threshold,
        threshold_on=args.threshold_on,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        precision=args.precision,
        method_options=_collect_options(args.method_options),
        **({} if args.metrics is None else {"metrics": args.metrics}),
        metric_options=_collect_options(args.metric_options),
    )


def _collect_options(items: list[tuple[str, str, object]]) -> dict[str, dict[str, object]]:
    options: dict[str, dict[str, object]] = {}
    for method, option, value in items:
        options.setdefault(method, {})[option] = value
    return options


def _source(args: argparse.Namespace) -> Source:
    from vfmxai.evaluation import Source

    return Source(args.checkpoint, args.dataset, args.root, args.split)


def _need_root(args: argparse.Namespace) -> None:
    if args.dataset != "synthetic" and args.root is None:
        raise VfmxaiError(f"--root is required for --dataset {args.dataset}")


def _demo(args: argparse.Namespace) -> int:
    from vfmxai.demo import run_demo

    run_demo(args.out, seed=args.seed)
    return 0


def _data(args: argparse.Namespace) -> int:
    from vfmxai import data

    if args.data_command == "synth":
        data.write_synthetic(
            args.out, args.n_train, args.n_val, args.n_test, args.size, args.seed, args.task, force=args.force
        )
        print(f"wrote the synthetic set ({args.task}, seed {args.seed}) to {args.out}")
        return 0
    _need_root(args)
    if args.data_command == "info":
        print(json.dumps(data.dataset_info(args.dataset, args.root), indent=2, sort_keys=True))
        return 0
    problems = data.check_dataset(args.dataset, args.root)
    for line in problems:
        print(line)
    print(f"{len(problems)} problem(s) found in {args.root}", file=sys.stderr)
    return 1 if problems else 0


def _train(args: argparse.Namespace) -> int:
    """`--backbone`, `--seed` (train.seed and data.seed), `--devices` and `--num-nodes` set their fields
    before `--set`, so an explicit `--set` wins (`Recipe`)."""
    from vfmxai.run_folder import MAP_CHECK, Recipe
    from vfmxai.training import train

    _need_root(args)
    fields: dict[str, object] = {}
    if args.backbone:
        fields["backbone.name"] = args.backbone
    if args.seed is not None:
        fields["train.seed"] = fields["data.seed"] = args.seed
    if args.devices is not None:
        fields["train.devices"] = args.devices
    if args.num_nodes is not None:
        fields["train.num_nodes"] = args.num_nodes
    recipe = Recipe(args.preset, args.dataset, args.root, tuple(args.overrides), fields)
    train(recipe.config(), args.out, resume=args.resume, progress=not args.no_progress)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:  # under DDP every rank runs this command
        print(f"trained; run folder: {args.out}")
        check_file = Path(args.out) / MAP_CHECK
        check = json.loads(check_file.read_text()) if check_file.is_file() else {"degenerate": False}
        if check["degenerate"]:
            print(f"vfmxai: warning: the ALA map is degenerate on the validation split: {'; '.join(check['problems'])} "
                  f"(details in {Path(args.out) / MAP_CHECK})", file=sys.stderr)
    return 0


def _explain(args: argparse.Namespace) -> int:
    from vfmxai.explain import explain_files

    predictions = explain_files(
        args.checkpoint, args.method, args.inputs, args.out, args.batch_size, args.device, args.per_block,
        args.precision, force=args.force, target=args.target, against=args.against, backbone=args.backbone,
        image_size=args.image_size,
    )
    print(f"explained {len(predictions)} image(s) with {', '.join(args.method)} -> {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from vfmxai.evaluation import Processes, evaluate_run
    from vfmxai.evaluation.runner import chosen_methods
    from vfmxai.evaluation.sharding import parse_shard

    _need_root(args)
    if args.shard and args.devices is not None:
        raise VfmxaiError("--shard and --devices: choose one (a shard of a job, or N local worker processes)")
    settings = _evaluation_settings(args)
    chosen_methods(args.methods, settings.method_options)
    parallel = parse_shard(args.shard) if args.shard else None if args.devices is None else Processes(args.devices)
    result = evaluate_run(
        _source(args), args.methods, args.out, settings, parallel=parallel, device=args.device,
        progress=not args.no_progress,
    )
    if result is None:
        print(f"shard {args.shard} done -> {args.out}")
    else:
        print(f"evaluated {result['n_images']} image(s) -> {args.out / 'metrics.json'}")
        if empty := result.get("empty_masks"):
            print(f"vfmxai: warning: {len(empty)} image(s) have an empty object mask and are left out of mIoU and "
                  f"the pointing games (listed in metrics.json, empty_masks)", file=sys.stderr)
    return 0


def _sanity(args: argparse.Namespace) -> int:
    from vfmxai.evaluation.sanity import SanitySettings, sanity_run

    _need_root(args)
    settings = SanitySettings(
        n_images=args.n_images, batch_size=args.batch_size, draws=args.draws, seed=args.seed, fail_at=args.fail_at,
        precision=args.precision, method_options=_collect_options(args.method_options),
    )
    try:
        result = sanity_run(
            _source(args), args.methods, args.out, settings, device=args.device, force=args.force,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:  # sanity keeps its work in memory and writes --out only at the end
        raise KeyboardInterrupt(f"interrupted; nothing was written to {args.out} (rerun the same command to start "
                                "again)") from None
    for test, words in (("mprt", "model randomisation (MPRT)"), ("random_logit", "random logit")):
        failing = result["fails"][test]
        undecided = [m for m, r in result["methods"].items() if r[test]["fails"] is None]
        passing = "no method fails" if undecided else "every method passes"
        verdict = f"{', '.join(failing)} fail" if failing else passing
        print(f"{words}: {verdict}" + (f"; no verdict (constant maps): {', '.join(undecided)}" if undecided else ""))
    print(f"sanity checks of {len(result['methods'])} method(s) on {result['n_images']} image(s) -> "
          f"{args.out / 'sanity.json'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from vfmxai.bench import DEFAULT_METHODS, BenchSettings, run_bench

    settings = BenchSettings(
        backbone=args.backbone, image_size=args.image_size, batch_size=args.batch_size, repeats=args.repeats,
        warmup=args.warmup, methods=DEFAULT_METHODS if args.methods is None else args.methods,
        insdel_steps=args.insdel_steps,
        train=tuple(t for t in args.train if t != "none"), device=args.device, clock=args.clock,
        precision=args.precision,
    )
    run_bench(args.out, settings)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from vfmxai.evaluation import reproduce
    from vfmxai.run_folder import Recipe

    _need_root(args)
    recipe = Recipe(args.preset, args.dataset, args.root, tuple(args.overrides))
    reproduce(
        recipe, args.seeds, args.out, _evaluation_settings(args), methods=args.methods, ablations=args.ablations,
        device=args.device, progress=not args.no_progress,
    )
    print(f"reproduced -> {args.out}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _demo,
    "data": _data,
    "train": _train,
    "explain": _explain,
    "evaluate": _evaluate,
    "sanity": _sanity,
    "bench": _bench,
    "reproduce": _reproduce,
}
"""Each command's handler: it translates the flags into the API's terms and calls it."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from vfmxai.runtime import flush_denormals

    flush_denormals()  # before torch starts its threads, so they inherit it (vfmxai.runtime)
    try:
        return COMMANDS[args.command](args)
    except VfmxaiError as err:
        print(f"vfmxai: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        detail = str(err) or "interrupted; finished work is saved (rerun the same command to continue)"
        print(f"vfmxai: {detail}", file=sys.stderr)
        return 143 if getattr(err, "signal", "SIGINT") == "SIGTERM" else 130


if __name__ == "__main__":
    sys.exit(main())
