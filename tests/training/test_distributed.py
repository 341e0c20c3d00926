"""Distributed data-parallel training: 2 gloo processes equal 1 process with the same batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from dlas.model import load_model
from dlas.training import train
from helpers.synthetic_data import TINY_NETWORK

TINY = TINY_NETWORK
RECIPE = {"epochs": 1, "folds": 2, "batch_size": 4, "learning_rate": 3e-3, "model": TINY}

WORKER = """
import json, sys
import torch
torch.set_num_threads(1)
from dlas.training import train
train(sys.argv[1], sys.argv[2], config=json.loads(sys.argv[3]), device="cpu")
"""


def _mean_difference(a: Path, b: Path) -> float:
    """Mean absolute weight difference. (Not the maximum: in Adam's first steps a weight whose
    gradient is pure rounding noise moves by about ±lr either way, so a few weights differ by
    ~1e-4 between any two summation orders.)"""
    wa = load_model(a).networks[0].state_dict()
    wb = load_model(b).networks[0].state_dict()
    return float(torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa]).mean())


def _val_losses(folder: Path) -> list[float]:
    cv = json.loads((folder / "cv.json").read_text())
    return [h["val_loss"] for f in cv["folds"] for h in f["history"]]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 4)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(tmp_path / "ds"),
            str(tmp_path / "ddp"),
            json.dumps(RECIPE),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert run["training"]["world_size"] == 2

    train(dataset, tmp_path / "one", config=RECIPE, device="cpu")
    difference = _mean_difference(tmp_path / "ddp", tmp_path / "one")
    assert difference < 5e-5  # measured: 5e-6
    assert _val_losses(tmp_path / "ddp") == pytest.approx(_val_losses(tmp_path / "one"), rel=1e-5)

    # The comparison can fail: half the global batch per step moves the weights far more.
    train(dataset, tmp_path / "half", config={**RECIPE, "batch_size": 2}, device="cpu")
    assert _mean_difference(tmp_path / "half", tmp_path / "one") > 1e-3  # measured: 9e-3
