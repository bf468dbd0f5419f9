"""`vfmxai bench`: throughput of the bare backbone, every explainer, insertion/deletion and a training step.

Everything is measured in one run, on the same random images (B, 3, S, S) and targets:
- `forward` (the reference): the bare backbone (no LoRA, no head), eval mode, `torch.no_grad`;
- `forward:ala`: the explained ALA model's prediction (backbone + adapter + perception branch), the same
  way: the cost of one model pass, which `insdel` makes 2 * steps of per image;
- `explain:<method>`: on the ALA model, the explainer built, called (validation, targets given,
  upsampling, normalisation) and closed, as `evaluate` does per batch; images explained per second. A method
  that cannot explain the ALA model (`explainers.inapplicable`: TIS, which removes tokens, and ALA's head reads the
  patch grid) is timed on a linear probe on the same backbone (the row's `explained: linear_probe`);
- `insdel`: insertion + deletion of the ALA maps with `insdel_steps` steps, perturbed images in chunks of
  the bench's batch size; its images/s counts model passes, 2 * steps per image (the clean image and the
  substrate scored once each); besides `ratio`,
  `ratio_to_model` takes it over `forward:ala`'s (what building perturbed images costs on top of the
  explained model's own passes);
- `train_step:lora_ala` (LoRA + ALA + perception branch trainable, as training) and
  `train_step:full_finetune` (no LoRA, every backbone weight trainable, same adapter and heads): forward,
  loss, backward and one AdamW step (no augmentation: that is data work, not model work); images per second.
`ratio` = the row's images (or model passes) per second / the reference forward's.
`ala_parts`: the former, f1 and the perception branch timed alone (same rounds and clock), each as a
share of the ALA model's backbone pass: the adapter's overhead, read without subtracting two noisy timings.
The explained model runs as `evaluate` runs it: eval mode, LoRA folded into the backbone's weights
(`merged_lora`); the train-step models are separate copies.

Timing: `warmup` untimed calls per task, then `repeats` rounds; each round calls every task once in turn
(interleaved), so a change of machine load during the run hits every row alike and the ratios stay
comparable on a shared machine. A row reports the median over rounds and the min-max spread.
`clock="cpu"` times with the process's CPU time instead of the wall clock: on a CPU shared with other
jobs, time spent waiting for a core is then not counted, so ratios stay meaningful under any load (all
threads' time adds up: with several threads it measures work, not latency; CPU devices only).
Every task runs in `precision` (`vfmxai.runtime.autocast`; auto: bf16 autocast on a GPU, fp32 on a CPU), as
evaluation and training do; on CUDA the device is synchronised around every timed call.

Peak memory (`peak_mem_mb`, MiB, the largest over the timed calls of the task): on CUDA,
`torch.cuda.max_memory_allocated` during the call minus the memory allocated just before it (the task's
working memory: activations, gradients, temporaries; with a warm-up, AdamW's state already exists and is
not counted). On CPU, the growth of the process's resident set size during the call: Linux's peak RSS
(VmHWM) is reset before each call through /proc/self/clear_refs; where that is not possible,
ru_maxrss's growth (a lower bound). RSS counts pages: memory that an earlier call freed but the
allocator kept is reused without growth, so on CPU the figure is a lower bound of the working memory.

FLOPs (`backbone_flops`): counted analytically, see `vit_flops`.
"""

from __future__ import annotations

import copy
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vfmxai import explainers
from vfmxai.ala import ALAModel, build_model
from vfmxai.backbones import Backbone, load_backbone
from vfmxai.backbones.lora import merged_lora
from vfmxai.classifier import LinearProbe
from vfmxai.config import RunConfig, preset
from vfmxai.errors import VfmxaiError
from vfmxai.io import atomic_write_json, atomic_write_text, check_out_folder
from vfmxai.metrics import insertion_deletion
from vfmxai.runtime import autocast, check_device, default_device, resolve_precision
from vfmxai.training.module import adamw
from vfmxai.vocabulary import MAX_IMAGE_SIZE, METHODS, MIN_IMAGE_SIZE, VIT_METHODS

DEFAULT_METHODS = (*METHODS, *VIT_METHODS)
TRAIN_TASKS = ("lora_ala", "full_finetune")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def default_method_options(batch_size: int) -> dict[str, dict[str, Any]]:
    """Small settings for the costly methods so the default bench takes minutes, not hours; their extra
    passes are chunked at the bench's batch size, the same memory bound as the reference forward."""
    return {
        "scorecam": {"max_channels": 16, "batch_size": batch_size},
        "ig": {"steps": 8, "internal_batch_size": batch_size},
        "rise": {"n_masks": 64, "batch_size": batch_size},
        "tis": {"n_masks": 64, "batch_size": batch_size},
        "vit_cx": {"n_masks": 32, "batch_size": batch_size},
        "vit_reciprocam": {"batch_size": batch_size},
        "beyond_intuition": {"steps": 8, "batch_size": batch_size},
    }


def vit_flops(
    image_size: int, patch_size: int, hidden: int, intermediate: int, layers: int, prefix_tokens: int = 1
) -> int:
    """FLOPs of one image through a ViT encoder, a multiply-add counted as 2.

    With P = patches (image_size // patch_size)^2, N = prefix_tokens + P tokens, D = hidden, I = intermediate:
      patch embedding   P·(3·p²)·D
      per block         4·N·D² (q, k, v, out projections) + 2·N²·D (QKᵀ and A·V) + 2·N·D·I (MLP)
    total = 2 · (patch embedding + layers · per block). Norms, softmax, activations, biases and position
    embeddings are left out (O(N·D) each, under 1% at ViT-B sizes).
    """
    patches = (image_size // patch_size) ** 2
    n = prefix_tokens + patches
    embed = patches * 3 * patch_size * patch_size * hidden
    block = 4 * n * hidden * hidden + 2 * n * n * hidden + 2 * n * hidden * intermediate
    return 2 * (embed + layers * block)


def backbone_flops(backbone: Backbone, image_size: int | None = None) -> int:
    """`vit_flops` of `backbone` at `image_size` (default: its input size), read from its config."""
    cfg = backbone.model.config
    intermediate = getattr(cfg, "intermediate_size", None) or int(cfg.hidden_size * cfg.mlp_ratio)
    return vit_flops(
        image_size or backbone.image_size,
        backbone.patch_size,
        backbone.hidden_size,
        int(intermediate),
        backbone.num_blocks,
        backbone.num_prefix_tokens,
    )


def bench_config(backbone: str, image_size: int) -> RunConfig:
    """The ALA model benchmarked on `backbone`: the paper's CUB adapter (#P 16, #d 64, #L 8, 200 classes)
    on ViT-B-sized backbones, the toy preset's (10 classes) on `tiny` and `default`."""
    small = backbone in ("tiny", "default")
    config = preset("toy" if small else "cub")
    config.backbone.name = backbone
    config.backbone.image_size = image_size
    config.model.num_classes = 10 if small else 200
    return config


@dataclass
class _Task:
    name: str
    run: Callable[[], object]
    per_call: int
    """Images (for `insdel`: model passes) one call processes."""
    options: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    peak_mb: float = 0.0


@dataclass(frozen=True)
class BenchSettings:
    """What `bench` measures and how (the command's flags). `image_size` None: the backbone's native size;
    `method_options` update `default_method_options`; `methods` must name at least one explainer; `train` picks the
    train-step rows (`TRAIN_TASKS`); `device` None: `vfmxai.runtime.default_device`; `clock`: `CLOCKS`."""

    backbone: str = "default"
    image_size: int | None = None
    batch_size: int = 8
    repeats: int = 5
    warmup: int = 1
    methods: tuple[str, ...] = DEFAULT_METHODS
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    insdel_steps: int = 20
    train: tuple[str, ...] = TRAIN_TASKS
    device: str | None = None
    seed: int = 0
    clock: str = "wall"
    precision: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "train", tuple(self.train))
        object.__setattr__(self, "method_options", {k: dict(v) for k, v in self.method_options.items()})
        _check_args(self.batch_size, self.repeats, self.warmup, self.insdel_steps, self.methods, self.train)
        if self.image_size is not None and not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise VfmxaiError(f"--image-size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {self.image_size}")
        if self.device is not None:
            check_device(self.device)
        for name, options in self.method_options.items():
            explainers.check_options(name, options)
        if self.clock not in CLOCKS:
            raise VfmxaiError(f"--clock {self.clock}: use wall, or cpu on a CPU device")


def run_bench(
    out: str | Path | None = None,
    settings: BenchSettings | None = None,
    *,
    config: RunConfig | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Measure every task (module docstring), write `out/bench.json` and `out/bench.md` (when `out` is given),
    print the table (when `echo`), return bench.json's content.

    `config`: the ALA model to build (default `bench_config`); its backbone name and size are overridden.
    """
    settings = settings or BenchSettings()
    if out is not None:
        check_out_folder(out)  # before the timing, not after it
    dev = torch.device(settings.device or default_device())
    if settings.clock == "cpu" and dev.type != "cpu":
        raise VfmxaiError(f"--clock {settings.clock}: use wall, or cpu on a CPU device")
    resolved = resolve_precision(settings.precision, dev)
    reference = load_backbone(settings.backbone, settings.image_size, seed=settings.seed).to(dev).eval()
    size = reference.image_size
    config = copy.deepcopy(config) if config is not None else bench_config(settings.backbone, size)
    config.backbone.name, config.backbone.image_size = settings.backbone, size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = build_model(config).to(dev).eval()
    generator = torch.Generator().manual_seed(settings.seed)
    images = torch.rand(settings.batch_size, 3, size, size, generator=generator).to(dev)
    targets = (torch.arange(settings.batch_size) % config.model.num_classes).to(dev)
    options = {**default_method_options(settings.batch_size)}
    for name, opts in settings.method_options.items():
        options[name] = {**options.get(name, {}), **opts}

    def forward() -> object:
        with torch.no_grad():
            return reference(images)

    def predict() -> object:
        with torch.no_grad():
            return model(images)

    tasks = [_Task("forward", forward, settings.batch_size), _Task("forward:ala", predict, settings.batch_size)]
    probe = None
    for name in settings.methods:
        opts = options.get(name, {})
        explained, recorded = model, opts
        if explainers.inapplicable(name, model):
            if probe is None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(settings.seed)
                    probe = LinearProbe(model.backbone, config.model.num_classes).to(dev).eval()
            explained, recorded = probe, {**opts, "explained": "linear_probe"}
        try:
            explainers.get(name, explained, **opts).close()  # bad options fail here, before any timing
        except TypeError as err:
            raise VfmxaiError(f"method_options for '{name}': {err}") from None
        explain = _explain(name, explained, opts, images, targets)
        tasks.append(_Task(f"explain:{name}", explain, settings.batch_size, recorded))
    with torch.no_grad():
        maps = model.explain(images)[0]
    passes = 2 * settings.insdel_steps * settings.batch_size
    tasks.append(
        _Task(
            "insdel",
            lambda: insertion_deletion(
                model, images, maps, targets, steps=settings.insdel_steps, batch_size=settings.batch_size
            ),
            passes,
            {"steps": settings.insdel_steps, "batch_size": settings.batch_size, "model_passes": passes},
        )
    )
    for kind in settings.train:
        trained = _train_model(model, config, full=kind == "full_finetune", seed=settings.seed)
        tasks.append(_Task(f"train_step:{kind}", _train_step(trained, config, images, targets), settings.batch_size))

    with merged_lora(model), autocast(resolved, dev):
        _measure(tasks, dev, settings.repeats, settings.warmup, CLOCKS[settings.clock], echo)
        parts = _adapter_parts(model, images)
        _measure(parts, dev, settings.repeats, settings.warmup, CLOCKS[settings.clock], echo=False)
    result = _result(
        tasks, reference, dev, settings.backbone, size, settings.batch_size, settings.repeats, settings.warmup
    )
    result["clock"], result["precision"] = settings.clock, resolved
    backbone_seconds = statistics.median(parts[0].seconds)
    result["ala_parts"] = {p.name: statistics.median(p.seconds) / backbone_seconds for p in parts[1:]}
    table = render_markdown(result)
    if out is not None:
        out = Path(out)
        atomic_write_json(out / "bench.json", result)
        atomic_write_text(out / "bench.md", table)
    if echo:
        print(table, end="")
    return result


def _explain(
    name: str, model: ALAModel | LinearProbe, options: Mapping[str, Any], images: Tensor, targets: Tensor
) -> Callable[[], object]:
    """One call = build the explainer, explain, release its hooks: as `evaluate` does per batch, and no method's
    hooks stay on the model while another task runs."""

    def run() -> object:
        with explainers.get(name, model, **options) as explainer:
            return explainer(images, targets)

    return run


def _adapter_parts(model: ALAModel, images: Tensor) -> list[_Task]:
    """The explained forward cut into its parts, each timed alone on inputs computed once: the backbone pass
    first, then the former, f1 (map) and the perception branch. The parts' shares of the backbone's time
    show the adapter's cost without the noise of subtracting two whole-model timings."""
    with torch.no_grad():
        states = model.backbone.hidden_states(images)
        grid = model.lattice(images, states)
        gated = model.gated_last(states, model.attention_map(grid)[1])

    def timed(name: str, run: Callable[[], object]) -> _Task:
        def call() -> object:
            with torch.no_grad():
                return run()

        return _Task(name, call, len(images))

    return [
        timed("backbone", lambda: model.backbone.hidden_states(images)),
        timed("former", lambda: model.lattice(images, states)),
        timed("f1", lambda: model.attention_map(grid)),
        timed("perception", lambda: model.perception(gated)),
    ]


def _train_model(model: ALAModel, config: RunConfig, full: bool, seed: int) -> ALAModel:
    """A copy of the explained ALA model to train (LoRA + ALA + perception branch), or for `full` the same
    architecture without LoRA, every backbone weight trainable (weights differ: only the speed matters)."""
    if not full:
        return copy.deepcopy(model).train()
    full_config = copy.deepcopy(config)
    full_config.backbone.lora = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trained = build_model(full_config)
    return trained.requires_grad_(True).to(next(model.parameters()).device).train()


def _train_step(model: ALAModel, config: RunConfig, images: Tensor, targets: Tensor) -> Callable[[], object]:
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], config.train)

    def step() -> object:
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(model.forward_all(images), targets)
        loss.backward()
        optimizer.step()
        return loss

    return step


def _measure(
    tasks: list[_Task], device: torch.device, repeats: int, warmup: int, clock: Callable[[], float], echo: bool
) -> None:
    memory = _PeakMemory(device)
    for task in tasks:
        if echo:
            print(f"bench: warming up {task.name}", file=sys.stderr, flush=True)
        for _ in range(warmup):
            task.run()
    for round_ in range(repeats):
        if echo:
            print(f"bench: round {round_ + 1}/{repeats}", file=sys.stderr, flush=True)
        for task in tasks:
            _sync(device)
            memory.start()
            begin = clock()
            task.run()
            _sync(device)
            task.seconds.append(clock() - begin)
            task.peak_mb = max(task.peak_mb, memory.stop())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PeakMemory:
    """Working memory of one call in MiB (module docstring: what it means on CUDA and on CPU)."""

    CLEAR_REFS = Path("/proc/self/clear_refs")
    STATUS = Path("/proc/self/status")

    def __init__(self, device: torch.device):
        self.device = device
        self.base = 0.0
        self.proc = device.type != "cuda" and self._proc_works()

    def _proc_works(self) -> bool:
        try:
            self.CLEAR_REFS.write_text("5")
            self._status("VmHWM")
        except (OSError, ValueError, AttributeError):
            return False
        return True

    def _status(self, key: str) -> float:
        """/proc/self/status field `key` (kB) in MiB."""
        return int(re.search(rf"^{key}:\s+(\d+)", self.STATUS.read_text(), re.M).group(1)) / 1024

    def start(self) -> None:
        if self.device.type == "cuda":
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.proc:
            self.CLEAR_REFS.write_text("5")
            self.base = self._status("VmRSS")
        else:
            self.base = _max_rss_mb()

    def stop(self) -> float:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.proc:
            peak = self._status("VmHWM")
        else:
            peak = _max_rss_mb()
        return max(0.0, peak - self.base)


def _max_rss_mb() -> float:
    """ru_maxrss in MiB (Linux reports kB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _rates(task: _Task) -> tuple[float, float, float]:
    """(median, min, max) of the task's images (or model passes) per second over the timed rounds."""
    rates = [task.per_call / s for s in task.seconds]
    return statistics.median(rates), min(rates), max(rates)


def _result(
    tasks: list[_Task],
    reference: Backbone,
    device: torch.device,
    backbone: str,
    image_size: int,
    batch_size: int,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    forward, *rows = tasks
    ref_rate, ref_min, ref_max = _rates(forward)
    flops = backbone_flops(reference, image_size)
    result: dict[str, Any] = {
        "device": _device_name(device),
        "backbone": backbone,
        "batch_size": batch_size,
        "image_size": image_size,
        "repeats": repeats,
        "warmup": warmup,
        "torch": torch.__version__,
        "reference": {
            "task": "forward",
            "images_per_s": ref_rate,
            "images_per_s_min": ref_min,
            "images_per_s_max": ref_max,
            "peak_mem_mb": forward.peak_mb,
            "flops_per_image": flops,
            "flop_per_s": flops * ref_rate,
        },
        "rows": [],
        "peak_mem": "CUDA: max allocated minus allocated before the call"
        if device.type == "cuda"
        else "CPU: growth of the process's peak RSS during the call (a lower bound of the working memory)",
    }
    model_rate = _rates(rows[0])[0]
    for task in rows:
        rate, low, high = _rates(task)
        row = {
            "task": task.name,
            "images_per_s": rate,
            "ratio": rate / ref_rate,
            "peak_mem_mb": task.peak_mb,
            "images_per_s_min": low,
            "images_per_s_max": high,
            "options": task.options,
        }
        if task.name == "insdel":
            row["ratio_to_model"] = rate / model_rate
        result["rows"].append(row)
    return result


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        name = found.group(1).strip() if found else name
    except OSError:
        pass
    return f"cpu: {name}, {torch.get_num_threads()} thread(s)"


def render_markdown(result: Mapping[str, Any]) -> str:
    """bench.md: the settings, then one row per task (median images/s, min-max, ratio, peak memory)."""
    ref = result["reference"]
    lines = [
        f"# vfmxai bench — {result['backbone']} @ {result['image_size']} px, batch {result['batch_size']}",
        "",
        f"{result['device']}; {result['precision']}; {result['clock']} clock; median of {result['repeats']} round(s) "
        f"after {result['warmup']} warm-up call(s). Backbone: {ref['flops_per_image'] / 1e9:.4g} GFLOP/image "
        f"(analytic), {ref['flop_per_s'] / 1e9:.4g} GFLOP/s achieved by the forward. "
        f"Peak memory — {result['peak_mem']}.",
        "",
        "| task | images/s | min–max | ratio | peak MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in [{**ref, "ratio": 1.0}, *result["rows"]]:
        lines.append(
            f"| {row['task']} | {row['images_per_s']:.4g} | {row['images_per_s_min']:.4g}–{row['images_per_s_max']:.4g}"
            f" | {row['ratio']:.3f} | {row['peak_mem_mb']:.1f} |"
        )
    lines.append("")
    lines.append("`insdel` counts model passes (2·steps per image); ratio = images/s over the forward's.")
    parts = result["ala_parts"]
    shares = ", ".join(f"{name} {100 * share:.1f} %" for name, share in parts.items())
    lines.append(
        f"ALA's parts, each timed alone, as a share of the backbone pass's time: {shares} "
        f"(together {100 * sum(parts.values()):.1f} %)."
    )
    for row in result["rows"]:
        if "ratio_to_model" in row:
            lines.append(
                f"`insdel` model passes per second over `forward:ala`'s (the explained model's own pass): "
                f"{row['ratio_to_model']:.3f}."
            )
    return "\n".join(lines) + "\n"


def _check_args(
    batch_size: int, repeats: int, warmup: int, insdel_steps: int, methods: Sequence[str], train: Sequence[str]
) -> None:
    for option, value, low in (
        ("--batch-size", batch_size, 1),
        ("--repeats", repeats, 1),
        ("--warmup", warmup, 0),
        ("--insdel-steps", insdel_steps, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise VfmxaiError(f"{option} must be an integer >= {low}, got {value}")
    if not methods:
        raise VfmxaiError("--methods: name at least one method (leave the flag out for the default set)")
    known = explainers.available()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise VfmxaiError(f"--methods: unknown method(s) {', '.join(unknown)} (known: {', '.join(known)})")
    bad = [t for t in train if t not in TRAIN_TASKS]
    if bad:
        raise VfmxaiError(f"--train: unknown task(s) {', '.join(bad)} (known: {', '.join(TRAIN_TASKS)})")

