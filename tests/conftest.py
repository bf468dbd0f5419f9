"""Shared pytest settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)
