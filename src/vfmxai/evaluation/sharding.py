"""Sharded evaluation: N processes evaluate disjoint sets of batches, rank 0 merges them into one result.

Batch i (images i·batch_size .. (i+1)·batch_size - 1, dataset order) belongs to rank i % world. Every rank
writes its per-image files (`evaluation.store`) into the same `OUT/per_image/` (a shared folder); after a
barrier, rank 0 calls `evaluate` without a shard: every batch is done, nothing is computed again, and it
writes metrics.json and the other files from all of them. A batch's results do not depend on which process
made them (fp32, eval mode, the same images in the same batch), so metrics.json is byte-identical to a
single-process run's; on CPU, given the same number of threads per process (float reductions may be
ordered by the thread count).

Barrier: torch.distributed's when a process group is initialised (any backend); otherwise (ranks started
independently, e.g. `vfmxai evaluate --shard RANK/WORLD` jobs on a shared file system) rank 0 waits until
every batch's file exists.
"""

from __future__ import annotations

import datetime
import inspect
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from vfmxai.classifier import Classifier
from vfmxai.errors import VfmxaiError
from vfmxai.evaluation.runner import evaluate, resolve_methods
from vfmxai.evaluation.store import PER_IMAGE_DIR, PREDICTIONS, ResultStore, batch_starts
from vfmxai.runtime import flush_denormals


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard RANK/WORLD` -> (rank, world), 0 <= rank < world."""
    rank, sep, world = str(text).partition("/")
    try:
        shard = (int(rank), int(world))
    except ValueError:
        shard = (-1, 0)
    if not sep or not 0 <= shard[0] < shard[1]:
        raise VfmxaiError(f"--shard {text}: expected RANK/WORLD with 0 <= RANK < WORLD, e.g. 0/4")
    return shard


def evaluate_sharded(
    model: Classifier,
    dataset: Dataset,
    methods: str | Sequence[str],
    out: str | Path,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    timeout_s: float | None = None,
    poll_s: float = 2.0,
    **options: Any,
) -> dict[str, Any] | None:
    """Evaluate this process's shard, wait for the others, and on rank 0 merge: metrics.json's content there,
    None on the other ranks. `options` are `evaluate`'s keyword arguments (the same on every rank).

    `rank`/`world_size` default to torch.distributed's (which must then be initialised). Without a process
    group, rank 0 polls every `poll_s` seconds for the other ranks' files, for at most `timeout_s` (None: no
    limit).
    """
    rank, world_size = _rank_world(rank, world_size)
    progress = options.pop("progress", True)
    evaluate(model, dataset, methods, out, shard=(rank, world_size), progress=progress and rank == 0, **options)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    elif rank == 0 and world_size > 1:
        _wait_for_batches(model, dataset, methods, Path(out), options, timeout_s, poll_s)
    if rank != 0:
        return None
    return evaluate(model, dataset, methods, out, progress=False, **options)


def evaluate_run_sharded(
    run_dir: str | Path,
    dataset: str,
    root: str | Path | None,
    split: str,
    methods: str | Sequence[str],
    out: str | Path,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    device: str | None = None,
    **options: Any,
) -> dict[str, Any] | None:
    """`vfmxai evaluate --shard RANK/WORLD`: `evaluate_run`, for one shard (see `evaluate_sharded`)."""
    from vfmxai.evaluation.runner import load_run_split

    model, data, run_config = load_run_split(run_dir, dataset, root, split, device)
    return evaluate_sharded(
        model, data, methods, out, rank=rank, world_size=world_size,
        config=run_config.to_dict(), dataset_name=dataset, split=split, **options,
    )


def evaluate_run_parallel(
    run_dir: str | Path,
    dataset: str,
    root: str | Path | None,
    split: str,
    methods: str | Sequence[str],
    out: str | Path,
    *,
    devices: int,
    threads: int | None = None,
    start_method: str = "spawn",
    **options: Any,
) -> dict[str, Any]:
    """`vfmxai evaluate --devices N`: N local processes (a gloo group; rank r on GPU r where there are GPUs,
    else on the CPU with `threads` threads each, default this process's threads // N) each evaluate a shard;
    returns metrics.json's content. `options` are `evaluate`'s keyword arguments."""
    if not isinstance(devices, int) or devices < 1:
        raise VfmxaiError(f"--devices must be a positive integer, got {devices}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = threads or max(1, torch.get_num_threads() // devices)
    rendezvous = out / f".rendezvous-{time.time_ns()}"
    args = (devices, str(rendezvous), threads, str(run_dir), dataset, root, split, methods, str(out), options)
    try:
        torch.multiprocessing.start_processes(
            _worker, args=args, nprocs=devices, join=True, start_method=start_method
        )
    except torch.multiprocessing.ProcessRaisedException as err:
        user_error = re.findall(r"VfmxaiError: (.+)", str(err))
        if not user_error:
            raise
        raise VfmxaiError(user_error[-1]) from None
    finally:
        rendezvous.unlink(missing_ok=True)
    return json.loads((out / "metrics.json").read_text())


def _worker(
    rank: int,
    world_size: int,
    rendezvous: str,
    threads: int,
    run_dir: str,
    dataset: str,
    root: str | None,
    split: str,
    methods: str | Sequence[str],
    out: str,
    options: dict[str, Any],
) -> None:
    flush_denormals()
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        device = f"cuda:{rank % torch.cuda.device_count()}"
        torch.cuda.set_device(device)
    else:
        device = "cpu"
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(days=7),  # ranks finish unevenly; a failing rank ends them all (join)
    )
    try:
        evaluate_run_sharded(run_dir, dataset, root, split, methods, out, device=device, **options)
    finally:
        dist.destroy_process_group()


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        if not (dist.is_available() and dist.is_initialized()):
            raise VfmxaiError("sharded evaluation: pass rank and world_size, or initialise torch.distributed")
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise VfmxaiError(f"--shard {rank}/{world_size}: expected RANK/WORLD with 0 <= RANK < WORLD")
    return rank, world_size


def _wait_for_batches(
    model: Classifier,
    dataset: Dataset,
    methods: str | Sequence[str],
    out: Path,
    options: dict[str, Any],
    timeout_s: float | None,
    poll_s: float,
) -> None:
    """Block until every (method, batch) file of the evaluation exists (the other ranks wrote them)."""
    batch_size = options.get("batch_size", inspect.signature(evaluate).parameters["batch_size"].default)
    names, _ = resolve_methods(methods, model)
    store = ResultStore(out / PER_IMAGE_DIR)
    expected = [store.path(m, s) for m in [PREDICTIONS, *names] for s in batch_starts(len(dataset), batch_size)]
    begin = time.monotonic()
    announced = False
    while missing := [p for p in expected if not p.is_file()]:
        if timeout_s is not None and time.monotonic() - begin > timeout_s:
            raise VfmxaiError(
                f"--shard: after {timeout_s:.0f} s, {len(missing)} batch file(s) from other ranks are missing, "
                f"first {missing[0]}; rerun the missing shard(s), then rank 0"
            )
        if not announced:
            print(f"rank 0: waiting for {len(missing)} batch file(s) from the other ranks", file=sys.stderr, flush=True)
            announced = True
        time.sleep(poll_s)
