"""Shared pytest settings."""

import pytest
import torch

from vfmxai.runtime import flush_denormals

flush_denormals()  # before the first torch operation starts the thread pool, as the command line does


@pytest.fixture(autouse=True)
def _threads():
    """One thread: the tests' models are tiny, thread hand-offs cost more than they save, and bit-equality
    across processes (sharding) needs the same thread count in each."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
