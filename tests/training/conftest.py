"""Fixtures of the training tests: tiny synthetic data sets (see ``synthetic_data.py``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


def _load_synthetic() -> ModuleType:
    # Tests are not a package (pytest runs with --import-mode=importlib): load by path.
    path = Path(__file__).with_name("synthetic_data.py")
    spec = importlib.util.spec_from_file_location("dlas_tests_synthetic_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synthetic() -> ModuleType:
    """The synthetic data helpers: ``make_case``, ``make_dataset``, ``structure_set``."""
    return _load_synthetic()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: these networks are tiny, and on a shared 2-core machine a second
    spinning OpenMP thread makes steps up to ten times slower, not faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
