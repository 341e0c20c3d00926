"""Fixtures of the prediction tests: synthetic data (``tests/training/synthetic_data.py``) and a
small model trained on it once per session."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


def _load_synthetic() -> ModuleType:
    # Tests are not a package (pytest runs with --import-mode=importlib): load by path.
    path = Path(__file__).parents[1] / "training" / "synthetic_data.py"
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


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, synthetic: ModuleType) -> Path:
    """A cpu-preset model trained for a few seconds on three synthetic cases (good enough to
    produce non-trivial masks of every structure)."""
    import torch

    from dlas.training import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained")
    dataset = synthetic.make_dataset(root / "ds", 3, seed=11)
    train(
        dataset,
        root / "model",
        config={
            "model": {"preset": "cpu", "coordinates": True},  # left/right femoral heads
            "epochs": 12,
            "folds": 1,
            "learning_rate": 3e-3,
            "lr_decay": 0.95,
            "augmentation": {"flip_lr": False, "rotation_deg": 0, "scale": 0},
        },
        device="cpu",
        name="dlas test model",
    )
    return root / "model"
