"""Shared pytest settings and the one trained run the read-only tests share."""

from pathlib import Path

import pytest
import torch
from run_fixtures import tiny_run_config

from vfmxai.runtime import flush_denormals
from vfmxai.training import train

flush_denormals()  # before the first torch operation starts the thread pool, as the command line does


@pytest.fixture(autouse=True)
def _threads():
    """One thread: the tests' models are tiny, thread hand-offs cost more than they save, and bit-equality
    across processes (sharding) needs the same thread count in each."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny ALA run folder (`tiny_run_config(epochs=1)`), trained once for every test that only reads a
    trained run; a test that changes the folder works on its own copy (`shutil.copytree`)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = tmp_path_factory.mktemp("trained") / "run"
        train(tiny_run_config(epochs=1), run_dir, progress=False)
    finally:
        torch.set_num_threads(previous)
    return run_dir
