"""Where and how models run: the default device, flushing denormal floats to zero, and the precision.

Denormals. In AEA's even epochs the perception branch sees unmasked features, its GELU sits deep in the
negative range for many positions, and the gradient reaching its conv holds thousands of denormal
floats (|x| < 1.2e-38). x86 CPUs handle those in microcode, ~100x slower per operation: on the demo's
model the backward pass of an even epoch took 0.30-0.40 s per batch of 32 instead of 0.15 s, and the
whole of Lightning's apparent overhead over a bare loop was this. Flushing changes values only below
1.2e-38, far under anything a loss, a map or a metric resolves.

The flag (FTZ/DAZ in the x86 MXCSR register) belongs to each thread, and a new thread copies its
creator's. Torch's intra-op (OpenMP) threads are created at the first parallel operation, so the flag
reaches them only when it is set before that: the command line sets it first thing; `train` and the
evaluation workers set it too, which covers at least the calling thread when torch already ran. A
library changing the floating-point mode at import would surprise its host program, so importing
vfmxai does not; call `flush_denormals()` early in a script for the full effect.

Precision. Training takes Lightning's `train.precision` (auto: bf16-mixed on a GPU); explaining, evaluating
and `bench` run their models inside `autocast(precision, device)`, with the same `auto` rule. The
evaluation records the precision it used, and a resumed evaluation must use the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from vfmxai.errors import VfmxaiError
from vfmxai.vocabulary import PRECISIONS


def flush_denormals() -> bool:
    """Flush denormal floats to zero on this thread and the torch threads created after; False where the CPU
    cannot (non-x86 without the feature), in which case nothing changes."""
    return torch.set_flush_denormal(True)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """`auto` -> `bf16` on CUDA, `fp32` elsewhere; `bf16` and `fp32` as given."""
    if precision not in PRECISIONS:
        raise VfmxaiError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[str]:
    """Run the models inside in `precision` (bf16: torch autocast; matrix work in bf16, reductions and
    softmax in fp32); yields the resolved precision. Callers keep maps and metrics in float32: explainers
    return float32 maps, and insertion/deletion takes the softmax of float32 logits."""
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        yield resolved
        return
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        yield resolved


def check_device(device: str | torch.device, option: str = "--device") -> torch.device:
    """`device` as a torch.device that exists on this machine, else one line naming `option` (a misspelt
    device, CUDA or MPS where there is none, a GPU index past the last)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise VfmxaiError(f"{option} {device}: not a device (cpu, cuda, cuda:1 ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VfmxaiError(f"{option} {device}: CUDA is not available on this machine (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VfmxaiError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise VfmxaiError(f"{option} {device}: MPS is not available on this machine (use cpu)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise VfmxaiError(f"{option} {device}: vfmxai runs on cpu, cuda or mps")
    return dev


def default_device() -> str:
    """Where models run unless told: the first GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"
