"""Progress of an evaluation on stderr: one bar per method with the running mean of each per-image score."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vfmxai.evaluation.store import BatchRecord


class Progress:
    """One bar per method (tqdm on stderr) with the running mean of each per-image metric."""

    def __init__(self, names: Sequence[str], total: int, done: Mapping[str, int], enabled: bool):
        self.bars: dict[str, Any] = {}
        self.enabled = enabled and bool(names)
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        width = max(len(n) for n in names)
        for position, name in enumerate(names):
            if tqdm is None:
                self.bars[name] = _Line(name, total, done[name])
            else:
                self.bars[name] = tqdm(
                    total=total, initial=done[name], desc=name.ljust(width), unit="img", position=position,
                    leave=True, file=sys.stderr, dynamic_ncols=True,
                )

    def refresh(self, records: Mapping[str, Mapping[int, BatchRecord]]) -> None:
        for name, by_start in records.items():
            if by_start and self.enabled:
                self.bars[name].set_postfix_str(running_means(by_start), refresh=True)

    def update(self, name: str, n: int, by_start: Mapping[int, BatchRecord]) -> None:
        if self.enabled:
            self.bars[name].set_postfix_str(running_means(by_start), refresh=False)
            self.bars[name].update(n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class _Line:
    """The fallback without tqdm: one line on stderr per finished batch."""

    def __init__(self, name: str, total: int, done: int):
        self.name, self.total, self.done, self.postfix = name, total, done, ""

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def update(self, n: int) -> None:
        self.done += n
        print(f"{self.name}: {self.done}/{self.total} images  {self.postfix}", file=sys.stderr, flush=True)

    def close(self) -> None:
        return None


def running_means(by_start: Mapping[int, BatchRecord]) -> str:
    def mean(key: str) -> float:
        return float(torch.cat([r.tensors[key] for r in by_start.values()]).double().mean())

    ins, dele = mean("insertion"), mean("deletion")
    values = {"mIoU": mean("iou"), "ins": ins, "del": dele, "ID": ins - dele, "PG": mean("pointing_game")}
    return " ".join(f"{k} {v:.3f}" for k, v in values.items() if not math.isnan(v))
