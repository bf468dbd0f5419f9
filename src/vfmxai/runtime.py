"""Process-wide numeric settings for fast CPU work: flush denormal floats to zero.

Why: in AEA's even epochs the perception branch sees unmasked features, its GELU sits deep in the
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
"""

from __future__ import annotations

import torch


def flush_denormals() -> bool:
    """Flush denormal floats to zero on this thread and the torch threads created after; False where the CPU
    cannot (non-x86 without the feature), in which case nothing changes."""
    return torch.set_flush_denormal(True)
