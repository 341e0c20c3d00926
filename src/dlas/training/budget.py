"""Sizing a training run to a time budget (``time_budget`` in the recipe, ``--time-budget``).

After the cases are prepared, a few training steps of the real network on real batches are
timed (on a copy, so the run itself is unaffected), and one validation batch; then::

    per fold  = (budget - time spent so far - reserve) / folds still to train
    epoch     = steps_per_epoch * step + validation + checkpoint
    epochs    = floor(per fold / epoch)

``steps_per_epoch`` is the recipe's (or one pass over the slices); it is raised where needed so
that validation takes at most a tenth of an epoch, and lowered (with one epoch) when the budget
cannot buy a whole epoch. The learning-rate schedule then spans the chosen steps. A shared
machine does not keep the speed it had during those first steps, so each fold also gets a
deadline, and after every epoch the fold's remaining epochs are re-fitted to the time left
(:func:`dlas.training.loop.train_fold`). The plan is logged and recorded in ``run.json`` and
``model.json``, and every epoch records the epochs then planned; a resumed run keeps the plan
and the last re-fitted count, without a deadline (the time before the interruption is lost).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dlas.model.inference import slice_logits
from dlas.training.config import Recipe
from dlas.training.distributed import DistContext
from dlas.training.loop import FoldSetup, TrainingError, epoch_order, prepare_step

if TYPE_CHECKING:
    import torch

    from dlas.model.dpn_unet import DpnUNet

__all__ = ["BudgetPlan", "measure_step", "plan_budget"]

log = logging.getLogger(__name__)

#: Time kept back for writing the model and the curves at the end (seconds, and share).
RESERVE_S = 3.0
RESERVE_SHARE = 0.03
#: Checkpoint and bookkeeping per epoch (seconds).
EPOCH_OVERHEAD_S = 0.5
#: Validation may take at most this share of an epoch when the budget sizes the epochs.
VALIDATION_SHARE = 0.1


@dataclass(frozen=True)
class BudgetPlan:
    """How a run was sized to its budget (all times in seconds)."""

    budget_s: float
    spent_before_s: float
    step_s: float
    validation_s: float
    folds: int
    epochs: int
    steps_per_epoch: int
    expected_s: float
    reserve_s: float = RESERVE_S

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> BudgetPlan:
        """The plan recorded in ``run.json``."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def describe(self) -> str:
        """One line for the log."""
        return (
            f"time budget {self.budget_s:.0f} s: {self.step_s * 1000:.0f} ms per step"
            + (f", {self.validation_s:.1f} s validation per epoch" if self.validation_s else "")
            + f" -> {self.epochs} epoch(s) of {self.steps_per_epoch} steps per fold"
            f" x {self.folds} fold(s), about {self.expected_s:.0f} s in all"
        )


def measure_step(
    net: DpnUNet,
    setup: FoldSetup,
    recipe: Recipe,
    *,
    device: torch.device,
    dist: DistContext,
    steps: int = 12,
    warmup: int = 3,
) -> tuple[float, float]:
    """Seconds per training step (the mean of ``steps`` after ``warmup``) and per validation
    batch, timed on a copy of ``net``.

    The validation batch is ``max(batch_size, 8)`` slices through the network in eval mode.
    """
    import torch

    probe = copy.deepcopy(net)
    step = prepare_step(probe, setup, recipe, device=device, dist=dist)
    generator = torch.Generator().manual_seed(recipe.seed + 7919)
    order = epoch_order(setup.train, recipe, generator, steps + warmup)
    batch = recipe.batch_size
    if len(order) < batch:
        raise TrainingError(
            "too few training slices for one batch",
            where=f"fold {setup.index}",
            expected=f"at least {batch} slices (batch_size)",
            found=f"{len(order)} slice(s)",
            fix="lower batch_size, raise empty_slice_fraction, or add cases",
        )
    timings = []
    for i in range(steps + warmup):
        chosen = [order[(i * batch + k) % len(order)] for k in range(batch)]
        _synchronise(device)
        started = time.perf_counter()
        step.run(chosen, generator, recipe.learning_rate, frozen=False)
        _synchronise(device)
        if i >= warmup:
            timings.append(time.perf_counter() - started)
    val_batch = max(batch // dist.world_size, 8)
    images, _, _ = setup.train.batch([order[k % len(order)][0] for k in range(val_batch)])
    probe.eval()
    with torch.no_grad():
        x = torch.from_numpy(images).to(device)
        slice_logits(probe, x, setup.patch)
        _synchronise(device)
        started = time.perf_counter()
        slice_logits(probe, x, setup.patch)
        _synchronise(device)
        val_s = time.perf_counter() - started
    return sum(timings) / len(timings), val_s


def _synchronise(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plan_budget(
    recipe: Recipe,
    *,
    budget_s: float,
    spent_s: float,
    step_s: float,
    validation_s: float,
    folds: int,
    pass_steps: int,
) -> BudgetPlan:
    """Epochs and steps per epoch that fit ``folds`` folds into what is left of the budget.

    ``validation_s`` is one epoch's validation; ``pass_steps`` the steps of one pass over the
    training slices (the epoch when the recipe gives no ``steps_per_epoch``).

    Raises
    ------
    TrainingError
        The budget cannot buy even a few training steps per fold.
    """
    reserve = max(RESERVE_S, RESERVE_SHARE * budget_s)
    per_fold = (budget_s - spent_s - reserve) / max(1, folds)
    per_epoch = recipe.steps_per_epoch or pass_steps
    if validation_s > 0:
        # validation / (steps * step + validation) <= VALIDATION_SHARE
        share = VALIDATION_SHARE
        per_epoch = max(per_epoch, math.ceil(validation_s * (1 - share) / (share * step_s)))
    epoch_s = per_epoch * step_s + validation_s + EPOCH_OVERHEAD_S
    epochs = int(per_fold // epoch_s)
    if epochs < 1:
        epochs = 1
        per_epoch = int((per_fold - validation_s - EPOCH_OVERHEAD_S) // step_s)
        minimum = 10
        if per_epoch < minimum:
            need = spent_s + reserve + folds * (minimum * step_s + validation_s + EPOCH_OVERHEAD_S)
            raise TrainingError(
                "time budget too short",
                where="recipe time_budget",
                expected=f"at least about {math.ceil(need)} s for {folds} fold(s) "
                f"of {minimum} steps on this machine ({step_s * 1000:.0f} ms per step, "
                f"{spent_s:.0f} s already spent preparing)",
                found=f"{budget_s:.0f} s",
                fix="give a longer --time-budget, fewer folds, or a smaller model",
            )
        epoch_s = per_epoch * step_s + validation_s + EPOCH_OVERHEAD_S
    return BudgetPlan(
        budget_s=budget_s,
        spent_before_s=spent_s,
        step_s=step_s,
        validation_s=validation_s,
        folds=folds,
        epochs=epochs,
        steps_per_epoch=per_epoch,
        expected_s=spent_s + folds * epochs * epoch_s,
        reserve_s=reserve,
    )
