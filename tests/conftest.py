"""Shared pytest settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads() -> None:
    """One thread: the tests' models are tiny, and thread hand-offs cost more than they save."""
    torch.set_num_threads(1)
