"""The GPU fast path's parts that a CPU can check: device-resident batches equal the host's,
the sync-free step trains the same weights, and the switches resolve per device."""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from dlas.model import read_model_info
from dlas.training import train
from dlas.training.config import load_recipe
from dlas.training.data import DeviceSlices, PreparedCase, SliceSet
from dlas.training.loop import _runtime
from helpers.synthetic_data import TINY_NETWORK


def _cases(rng: np.random.Generator) -> list[PreparedCase]:
    cases = []
    for k, z in enumerate((5, 7)):
        labels = rng.integers(0, 3, size=(z, 24, 24)).astype(np.uint8)
        labels[:, :4] = 0  # some background-only rows, so crops land in different places
        image = rng.normal(size=(z, 24, 24)).astype(np.float32)
        labeled = np.array([True, True, k == 0])
        cases.append(PreparedCase(f"c{k}", image, labels, labeled))
    return cases


@pytest.mark.parametrize("patch", [None, (12, 16)])
def test_device_batches_equal_host_batches(patch: tuple[int, int] | None) -> None:
    rng = np.random.default_rng(0)
    slices = SliceSet(_cases(rng), in_slices=3)
    resident = DeviceSlices(slices, torch.device("cpu"))
    for _ in range(20):
        indices = rng.integers(0, len(slices), size=4).tolist()
        focus = rng.integers(0, 3, size=4).tolist()
        uniforms = rng.random((4, 3))
        host = slices.batch(indices, focus=focus, patch=patch, uniforms=uniforms)
        device = resident.batch(indices, focus=focus, patch=patch, uniforms=uniforms)
        assert device[0].dtype == torch.float32 and device[1].dtype == torch.int64
        assert torch.equal(device[0], torch.from_numpy(host[0]))
        assert torch.equal(device[1], torch.from_numpy(host[1]))
        assert np.array_equal(device[2], host[2])


def test_training_with_device_data_gives_identical_weights(
    tmp_path: Path, synthetic: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    """Batches cut on the device and the loss scaled there train bit for bit the same weights
    as the host path (here both on the CPU, with augmentation and crops)."""
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    config = {
        "epochs": 2,
        "folds": 1,
        "steps_per_epoch": 3,
        "learning_rate": 3e-3,
        "model": TINY_NETWORK,
        "foreground_fraction": 0.5,
    }
    host = train(dataset, tmp_path / "host", config={**config, "device_data": "off"}, device="cpu")
    with caplog.at_level(logging.INFO, logger="dlas.training.loop"):
        on = train(dataset, tmp_path / "on", config={**config, "device_data": "on"}, device="cpu")
    a, b = read_model_info(host.model_dir), read_model_info(on.model_dir)
    assert [w.sha256 for w in a.weights] == [w.sha256 for w in b.weights]
    # the training log says what the step ran with
    assert "fold 1: training step on cpu: float32, data on the device, deterministic" in caplog.text


def test_fast_path_switches_resolve_per_device() -> None:
    recipe = load_recipe(None)
    cpu = _runtime(recipe, torch.device("cpu"))
    assert not (cpu.amp or cpu.channels_last or cpu.device_data or cpu.fused_optimizer)
    assert cpu.describe(compile=False) == "cpu: float32, deterministic"
    cuda = _runtime(recipe, torch.device("cuda", 0))
    assert cuda.amp and cuda.channels_last and cuda.device_data and cuda.fused_optimizer
    assert cuda.describe(compile=True) == (
        "cuda: bf16 autocast, channels-last, data on the device, fused Adam, torch.compile"
    )
    off = _runtime(
        recipe.with_overrides(device_data="off", fused_optimizer="off"), torch.device("cuda", 0)
    )
    assert not (off.device_data or off.fused_optimizer)


def test_fast_path_switches_keep_the_recipe_hash_at_auto() -> None:
    recipe = load_recipe(None)
    assert "device_data" not in recipe.to_data() and "fused_optimizer" not in recipe.to_data()
    changed = recipe.with_overrides(device_data="off")
    assert changed.to_data()["device_data"] == "off"
    assert changed.sha256() != recipe.sha256()
