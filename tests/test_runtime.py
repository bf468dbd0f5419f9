"""`flush_denormals`: denormal floats become zero on every torch thread when it is called first."""

import subprocess
import sys

import pytest

PROBE = """
import torch
from vfmxai.runtime import flush_denormals
supported = flush_denormals() if {flush} else True
torch.set_num_threads(2)
tiny = torch.full((1 << 22,), 1e-39)  # a denormal float32; the product spreads over both threads
print(int(supported), int(((tiny * 3) != 0).sum()))
"""


def _nonzero_products(flush: bool) -> tuple[bool, int]:
    result = subprocess.run([sys.executable, "-c", PROBE.format(flush=flush)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    supported, nonzero = result.stdout.split()
    return supported == "1", int(nonzero)


def test_denormal_products_are_flushed_on_all_threads():
    supported, nonzero = _nonzero_products(flush=True)
    if not supported:
        pytest.skip("this CPU cannot flush denormals")
    assert nonzero == 0
    assert _nonzero_products(flush=False) == (True, 1 << 22)
