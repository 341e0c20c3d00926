"""Folds trained together (recipe ``concurrent_folds: on``): the stacked optimiser follows
PyTorch's Adam, and each fold of a concurrent run equals the same fold trained alone."""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import pytest
import torch

from dlas.training import TrainingEvent, train
from dlas.training.config import load_recipe
from dlas.training.distributed import DistContext
from dlas.training.folds import StackedAdam, concurrent_refusal
from dlas.training.state import best_weights, load_fold_state
from helpers.synthetic_data import TINY_NETWORK


@pytest.mark.parametrize(("decoupled", "weight_decay"), [(False, 0.0), (False, 0.01), (True, 0.01)])
def test_stacked_adam_equals_pytorch_adam_per_fold(decoupled: bool, weight_decay: float) -> None:
    """Three folds with their own learning rates; the middle one stands still at some steps."""
    g = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, 5, generator=g)
    stacked = {"w": start.clone().requires_grad_(True)}
    adam = StackedAdam(stacked, decoupled=decoupled, weight_decay=weight_decay)
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    alone = [start[k].clone().requires_grad_(True) for k in range(3)]
    optimizers = [kind([p], lr=1.0, weight_decay=weight_decay, foreach=False) for p in alone]
    for i in range(6):
        grads = torch.randn(3, 4, 5, generator=g)
        lr = [1e-2, 3e-3, 5e-4]
        active = [True, i % 2 == 0, True]
        stacked["w"].grad = grads.clone()
        adam.step(lr, active)
        for k in range(3):
            if active[k]:
                optimizers[k].param_groups[0]["lr"] = lr[k]
                alone[k].grad = grads[k].clone()
                optimizers[k].step()
    for k in range(3):
        assert torch.equal(stacked["w"][k], alone[k]), k
        state = optimizers[k].state[alone[k]]
        assert torch.equal(adam.exp_avg["w"][k], state["exp_avg"])
        assert float(adam.steps[k]) == float(state["step"])


def _config(**extra: object) -> dict[str, object]:
    return {
        "epochs": 2,
        "folds": 3,
        "learning_rate": 3e-3,
        "model": TINY_NETWORK,
        "selection": "val_loss",
        **extra,
    }


def test_a_fold_trained_together_equals_the_fold_trained_alone(
    tmp_path: Path, synthetic: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    """Five cases in three folds: the folds train on 3, 3 and 4 cases, so their epochs have
    different numbers of steps and the shorter ones stand still while the longest finishes."""
    dataset = synthetic.make_dataset(tmp_path / "ds", 5, shape=(6, 32, 32))
    events: list[TrainingEvent] = []
    alone = train(dataset, tmp_path / "alone", config=_config(), device="cpu")
    with caplog.at_level(logging.INFO, logger="dlas.training.folds"):
        together = train(
            dataset,
            tmp_path / "together",
            config=_config(concurrent_folds="on"),
            device="cpu",
            progress=events.append,
        )
    assert "folds 1, 2, 3 trained together" in caplog.text
    weights = {}
    for k in (1, 2, 3):
        a = load_fold_state(alone.model_dir / "folds" / f"fold-{k}")
        b = load_fold_state(together.model_dir / "folds" / f"fold-{k}")
        assert a is not None and b is not None and b.complete
        assert a.best_epoch == b.best_epoch
        for x, y in zip(a.history, b.history, strict=True):
            assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)
            assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-4)
            assert y["lr"] == x["lr"]
        weights[k] = (
            best_weights(alone.model_dir / "folds" / f"fold-{k}", a),
            best_weights(together.model_dir / "folds" / f"fold-{k}", b),
        )
    # Weights agree to a fraction of one Adam step (lr 3e-3): the batched network rounds its
    # sums differently, and Adam's m/sqrt(v) turns rounding in near-zero gradients into up to
    # a step's size. Other folds' weights differ by far more (the check discriminates).
    for wa, wb in weights.values():
        for name, tensor in wa.items():
            torch.testing.assert_close(wb[name], tensor, rtol=1e-3, atol=1e-3)
    assert any(
        (weights[1][1][name] - weights[2][0][name]).abs().max() > 1e-2 for name in weights[1][0]
    )
    # the stand-still path was taken: the folds' epochs had different numbers of steps
    steps = {e.fold: e.steps for e in events if e.kind == "step"}
    assert len(set(steps.values())) > 1, steps


def test_concurrent_folds_fall_back_with_a_reason(
    tmp_path: Path, synthetic: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = load_recipe({"concurrent_folds": "on"})
    assert concurrent_refusal(recipe, DistContext(), False, 3) is None
    assert "time budget" in str(concurrent_refusal(recipe, DistContext(), True, 3))
    assert "fewer than two" in str(concurrent_refusal(recipe, DistContext(), False, 1))
    assert concurrent_refusal(load_recipe(None), DistContext(), False, 3) == "off in the recipe"
    dataset = synthetic.make_dataset(tmp_path / "ds", 4, shape=(6, 32, 32))
    with caplog.at_level(logging.WARNING):
        train(
            dataset,
            tmp_path / "model",
            config=_config(epochs=1, folds=2, concurrent_folds="on", time_budget=15),
            device="cpu",
        )
    assert "folds train one after another: the recipe has a time budget" in caplog.text


class _StopError(Exception):
    pass


def test_a_fold_interrupted_in_a_concurrent_run_resumes_alone(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    """The checkpoint of a fold trained together carries its Adam state: stopped after fold
    1's first epoch, the run resumes fold 1 alone (and folds 2 and 3 together, from their
    start) and ends where the uninterrupted run ends."""
    dataset = synthetic.make_dataset(tmp_path / "ds", 5, shape=(6, 32, 32))
    config = _config(concurrent_folds="on")
    whole = train(dataset, tmp_path / "whole", config=config, device="cpu")

    def stop_after_first_epoch(event: TrainingEvent) -> None:
        if event.kind == "epoch" and event.fold == 1 and event.epoch == 1:
            raise _StopError

    with pytest.raises(_StopError):
        train(
            dataset, tmp_path / "cut", config=config, device="cpu", progress=stop_after_first_epoch
        )
    state = load_fold_state(tmp_path / "cut" / "folds" / "fold-1")
    assert state is not None and state.epochs_done == 1 and state.state_file is not None
    resumed = train(dataset, tmp_path / "cut", config=config, device="cpu", resume=True)
    for k in (1, 2, 3):
        a = load_fold_state(whole.model_dir / "folds" / f"fold-{k}")
        b = load_fold_state(resumed.model_dir / "folds" / f"fold-{k}")
        assert a is not None and b is not None
        wa = best_weights(whole.model_dir / "folds" / f"fold-{k}", a)
        wb = best_weights(resumed.model_dir / "folds" / f"fold-{k}", b)
        for name, tensor in wa.items():
            torch.testing.assert_close(wb[name], tensor, rtol=1e-3, atol=1e-3)
