"""`evaluate_run`: evaluate a run folder's model on a dataset split, in one process, as one shard of
several, or over N local worker processes; the three differ only in how the batches are scheduled
(`evaluation.sharding`) and all write the same files."""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vfmxai.errors import VfmxaiError
from vfmxai.evaluation.runner import evaluate
from vfmxai.evaluation.settings import EvaluationSettings
from vfmxai.evaluation.sharding import Processes, Shard
from vfmxai.io import check_out_folder
from vfmxai.run_folder import Source, check_run_folder
from vfmxai.runtime import check_device, default_device, flush_denormals


def evaluate_run(
    source: Source,
    methods: str | Sequence[str],
    out: str | Path,
    settings: EvaluationSettings | None = None,
    *,
    parallel: Shard | Processes | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """`vfmxai evaluate`: load the run folder's model, build the split as the run was trained (image size;
    for `synthetic` the run's generator seed and sizes), evaluate it; metrics.json's content (None on a
    shard other than rank 0). `parallel`: None (this process), a `Shard` (this process's part; rank 0
    merges) or `Processes` (N local workers, then the merge); `device` applies to the first two."""
    settings = settings or EvaluationSettings()
    out = check_out_folder(out)
    if device is not None:
        check_device(device)
    check_run_folder(source.run_dir)  # before any worker process starts
    if isinstance(parallel, Processes):
        return _evaluate_in_processes(source, methods, out, settings, parallel, progress)
    model, data, config = source.load(device or default_device())
    return evaluate(
        model, data, methods, out, settings, dataset_name=source.dataset, split=source.split, config=config,
        progress=progress, shard=parallel,
    )


def _evaluate_in_processes(
    source: Source,
    methods: str | Sequence[str],
    out: Path,
    settings: EvaluationSettings,
    processes: Processes,
    progress: bool,
) -> dict[str, Any]:
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    threads = processes.threads or max(1, torch.get_num_threads() // processes.devices)
    rendezvous = out / f".rendezvous-{time.time_ns()}"
    args = (processes.devices, str(rendezvous), threads, source, methods, str(out), settings, progress)
    try:
        torch.multiprocessing.start_processes(
            _worker, args=args, nprocs=processes.devices, join=True, start_method=processes.start_method
        )
    except torch.multiprocessing.ProcessRaisedException as err:
        user_error = re.findall(r"VfmxaiError: (.+)", str(err))
        if not user_error:
            raise
        raise VfmxaiError(user_error[-1]) from None
    finally:
        rendezvous.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()  # a failed start leaves no empty folder behind
    return json.loads((out / "metrics.json").read_text())


def _worker(
    rank: int,
    world: int,
    rendezvous: str,
    threads: int,
    source: Source,
    methods: str | Sequence[str],
    out: str,
    settings: EvaluationSettings,
    progress: bool,
) -> None:
    flush_denormals()
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        device = f"cuda:{rank % torch.cuda.device_count()}"
        torch.cuda.set_device(device)
    else:
        device = "cpu"
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world,
        timeout=datetime.timedelta(days=7),  # ranks finish unevenly; a failing rank ends them all (join)
    )
    try:
        evaluate_run(source, methods, out, settings, parallel=Shard(rank, world), device=device, progress=progress)
    finally:
        dist.destroy_process_group()
