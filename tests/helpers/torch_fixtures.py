"""Fixtures shared by the training and prediction tests (imported by their conftest files)."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def synthetic() -> ModuleType:
    """The synthetic data helpers: ``make_case``, ``make_dataset``, ``structure_set``."""
    from helpers import synthetic_data

    return synthetic_data


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: these networks are tiny, and on a shared 2-core machine a second
    spinning OpenMP thread makes steps up to ten times slower, not faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
