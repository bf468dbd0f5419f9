"""How an evaluation is split over processes: `Shard` (this process's part) and `Processes` (N local workers).

Batch i (images i·batch_size .. (i+1)·batch_size - 1, dataset order) belongs to rank i % world. Every rank
writes its per-image files (`evaluation.store`) into the same `OUT/per_image/` (a shared folder); after
`Shard.join`, rank 0 reads every batch's file and writes metrics.json and the other files from all of them.
A batch's results do not depend on which process made them (fp32, eval mode, the same images in the same
batch), so metrics.json is byte-identical to a single-process run's; on CPU, given the same number of
threads per process (float reductions may be ordered by the thread count).

Barrier: torch.distributed's when a process group is initialised (any backend); otherwise (ranks started
independently, e.g. `vfmxai evaluate --shard RANK/WORLD` jobs on a shared file system) rank 0 waits until
every batch's file exists.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from vfmxai.errors import VfmxaiError


@dataclass(frozen=True)
class Shard:
    """This process's part of a sharded evaluation: rank `rank` of `world`. Without a process group, rank 0
    polls every `poll_s` seconds for the other ranks' files, for at most `timeout_s` (None: no limit)."""

    rank: int
    world: int
    timeout_s: float | None = None
    poll_s: float = 2.0

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and isinstance(self.world, int) and 0 <= self.rank < self.world):
            raise VfmxaiError(f"--shard {self.rank}/{self.world}: expected RANK/WORLD with 0 <= RANK < WORLD")

    @classmethod
    def from_process_group(cls, timeout_s: float | None = None) -> Shard:
        """Rank and world of the initialised torch.distributed group (e.g. under torchrun)."""
        if not (dist.is_available() and dist.is_initialized()):
            raise VfmxaiError("sharded evaluation: give a rank and a world size, or initialise torch.distributed")
        return cls(dist.get_rank(), dist.get_world_size(), timeout_s)

    def mine(self, starts: Sequence[int]) -> list[int]:
        """The batch starts this rank computes."""
        return list(starts[self.rank :: self.world])

    def join(self, expected: Sequence[Path]) -> None:
        """Wait for the other ranks: the process group's barrier, else (rank 0 only) until every file in
        `expected` exists."""
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            return
        if self.rank != 0 or self.world == 1:
            return
        begin = time.monotonic()
        announced = False
        while missing := [p for p in expected if not p.is_file()]:
            if self.timeout_s is not None and time.monotonic() - begin > self.timeout_s:
                raise VfmxaiError(
                    f"--shard: after {self.timeout_s:.0f} s, {len(missing)} batch file(s) from other ranks are "
                    f"missing, first {missing[0]}; rerun the missing shard(s), then rank 0"
                )
            if not announced:
                print(f"rank 0: waiting for {len(missing)} batch file(s) from the other ranks", file=sys.stderr,
                      flush=True)
                announced = True
            time.sleep(self.poll_s)


@dataclass(frozen=True)
class Processes:
    """N local worker processes in a gloo group, each one shard: rank r on GPU r where there are GPUs, else
    on the CPU with `threads` threads each (None: this process's threads // N)."""

    devices: int
    threads: int | None = None
    start_method: str = "spawn"

    def __post_init__(self) -> None:
        if not isinstance(self.devices, int) or isinstance(self.devices, bool) or self.devices < 1:
            raise VfmxaiError(f"--devices must be a positive integer, got {self.devices}")


def parse_shard(text: str) -> Shard:
    """`--shard RANK/WORLD` -> Shard(rank, world), 0 <= rank < world."""
    rank, sep, world = str(text).partition("/")
    try:
        numbers = (int(rank), int(world))
    except ValueError:
        numbers = (-1, 0)
    if not sep or not 0 <= numbers[0] < numbers[1]:
        raise VfmxaiError(f"--shard {text}: expected RANK/WORLD with 0 <= RANK < WORLD, e.g. 0/4")
    return Shard(*numbers)
