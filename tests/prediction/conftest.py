"""Fixtures of the prediction tests: synthetic data (``tests/helpers/synthetic_data.py``) and a
small model trained on it once per session."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from helpers.torch_fixtures import _one_torch_thread, synthetic

__all__ = ["_one_torch_thread", "synthetic", "trained_model"]


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
