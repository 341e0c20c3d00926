"""Cross-validation folds trained together on one device (recipe ``concurrent_folds: on``).

Why: at the seed recipe's batch of 4 slices a step of the full network keeps a GPU busy only
for a fraction of its time (the step is bound by kernel launches, not arithmetic), and the five
folds of a cross-validation are independent. Here the folds' networks are stacked into one set
of tensors (``torch.func.stack_module_state``) and run as one batched network (``torch.vmap``
over ``torch.func.functional_call``), so one launch serves every fold.

Each fold keeps what it has when trained alone: its own training cases, data order,
augmentation draws and random stream (:meth:`~dlas.training.loop._Step.inputs`, the same code),
batch of ``batch_size`` slices, class weights, loss, learning-rate schedule and Adam state,
validation, selection and checkpoints. Folds whose epochs have fewer steps stand still while
the others finish theirs. The optimiser is written here (:class:`StackedAdam`) because
PyTorch's Adam has one learning rate per tensor and updates every element of it, while a
stacked tensor holds every fold and each fold must follow its own schedule and stand still
when it has no step. It follows ``torch.optim.Adam``/``AdamW`` step by step, and after every
epoch each fold's moments are written into that fold's own PyTorch optimiser, so its
checkpoint resumes (alone) exactly like one written by a fold trained alone.

What equals what: fold k of a concurrent run equals the same fold trained alone up to float
rounding (the batched network sums in another order), tested on the CPU
(``tests/training/test_folds.py``). Limits, each falling back to one fold after another with
a log line saying why: more than one process, a time budget (folds would be re-planned
apart), and folds that had already trained an epoch before a ``--resume``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dlas.training.config import Recipe
from dlas.training.loop import (
    EventCallback,
    FoldSetup,
    TrainingEvent,
    _deterministic,
    _epoch_entry,
    _record_epoch,
    _Step,
    epoch_loss,
    learning_rate,
    plan_epoch,
    prepare_step,
)
from dlas.training.state import FoldState, drop_optimizer_state

if TYPE_CHECKING:
    import torch

    from dlas.model.dpn_unet import DpnUNet
    from dlas.training.distributed import DistContext

__all__ = ["StackedAdam", "concurrent_refusal", "train_folds_together"]

log = logging.getLogger(__name__)


def concurrent_refusal(recipe: Recipe, dist: DistContext, budget: bool, fresh: int) -> str | None:
    """Why the folds cannot train together here (None: they can)."""
    if recipe.concurrent_folds != "on":
        return "off in the recipe"
    if dist.enabled:
        return "more than one process trains"
    if budget:
        return "the recipe has a time budget, which re-plans each fold on its own"
    if fresh < 2:
        return "fewer than two folds are left to train from their start"
    return None


class StackedAdam:
    """Adam (or AdamW) over stacked tensors whose first dimension is the fold, with a learning
    rate per fold and folds that can stand still (see the module docstring).

    The arithmetic is ``torch.optim.Adam``'s single-tensor algorithm: moments updated in
    place, bias corrections from the fold's own step count, ``weight_decay`` added to the
    gradient (Adam) or applied to the weights before the step (AdamW).
    """

    def __init__(
        self,
        params: dict[str, torch.Tensor],
        *,
        decoupled: bool,
        weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        import torch

        self.params = params
        self.decoupled = decoupled
        self.weight_decay = weight_decay
        self.betas = betas
        self.eps = eps
        first = next(iter(params.values()))
        self.steps = torch.zeros(first.shape[0], dtype=torch.float64)
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
        self.stepped: set[str] = set()

    def step(self, lr: Sequence[float], active: Sequence[bool]) -> None:
        """One step for the ``active`` folds, fold k at learning rate ``lr[k]``; parameters
        without a gradient (a frozen encoder) are left alone, as PyTorch's Adam does.

        Each tensor is updated for all folds at once (per-fold factors broadcast along the
        first dimension); a fold standing still gets a step size of 0 and keeps its moments.
        """
        import torch

        b1, b2 = self.betas
        for k, on in enumerate(active):
            if on:
                self.steps[k] += 1
        # Per fold: step size and bias correction (1 where a fold has not stepped yet, so
        # that nothing divides by zero; its step size is 0 anyway).
        size, bias2, decay = [], [], []
        for k, on in enumerate(active):
            t = float(self.steps[k])
            size.append(lr[k] / (1 - b1**t) if on else 0.0)
            bias2.append((1 - b2**t) ** 0.5 if t > 0 else 1.0)
            decay.append(1 - lr[k] * self.weight_decay if on else 1.0)
        with torch.no_grad():
            for name, p in self.params.items():
                if p.grad is None:
                    continue
                self.stepped.add(name)
                shape = (-1,) + (1,) * (p.dim() - 1)
                device = p.device
                mask = torch.tensor(list(active), device=device).view(shape)
                neg_size = torch.tensor([-s for s in size], device=device).view(shape)
                grad = p.grad
                if self.weight_decay and self.decoupled:
                    p.mul_(torch.tensor(decay, device=device).view(shape))
                elif self.weight_decay:
                    grad = grad.add(p, alpha=self.weight_decay)
                m, v = self.exp_avg[name], self.exp_avg_sq[name]
                m.copy_(torch.where(mask, m.lerp(grad, 1 - b1), m))
                v.copy_(torch.where(mask, (v * b2).addcmul_(grad, grad.conj(), value=1 - b2), v))
                denom = (v.sqrt() / torch.tensor(bias2, device=device).view(shape)).add_(self.eps)
                p.add_(neg_size * m / denom)

    def write_into(self, k: int, net: DpnUNet, optimizer: torch.optim.Optimizer) -> None:
        """Fold ``k``'s moments and step count as the state of its own PyTorch optimiser over
        ``net`` (whose parameters hold fold ``k``'s weights), so that its checkpoint resumes
        alone. Parameters never stepped (frozen throughout) get no state, as in PyTorch."""
        import torch

        optimizer.state.clear()
        for name, p in net.named_parameters():
            if self.steps[k] == 0 or name not in self.stepped:
                continue
            optimizer.state[p] = {
                "step": torch.tensor(float(self.steps[k])),
                "exp_avg": self.exp_avg[name][k].detach().clone(),
                "exp_avg_sq": self.exp_avg_sq[name][k].detach().clone(),
            }


@dataclass
class _Fold:
    """One fold of a concurrent run and its bookkeeping."""

    setup: FoldSetup
    step: _Step
    state: FoldState
    generator: torch.Generator | None = None
    order: list[tuple[int, int]] | None = None
    steps: int = 0
    per_epoch: int = 0
    lr: float = 0.0
    sums: torch.Tensor | None = None


def train_folds_together(
    nets: Sequence[DpnUNet],
    setups: Sequence[FoldSetup],
    recipe: Recipe,
    *,
    device: torch.device,
    dist: DistContext,
    callback: EventCallback | None = None,
) -> list[FoldState]:
    """Train the folds of ``setups`` (one network each, from their start) together; the final
    :class:`FoldState` of each, as :func:`~dlas.training.loop.train_fold` returns it."""
    run = _Together(nets, setups, recipe, device, dist, callback)
    with _deterministic(run.rt.deterministic):
        for epoch in range(run.epochs):
            run.epoch(epoch)
    for f in run.folds:
        f.state.complete = True
        if dist.is_main:
            drop_optimizer_state(f.setup.folder, f.state)
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(True)
    return [f.state for f in run.folds]


class _Together:
    """The stacked networks, their optimiser and the folds of one concurrent run."""

    def __init__(
        self,
        nets: Sequence[DpnUNet],
        setups: Sequence[FoldSetup],
        recipe: Recipe,
        device: torch.device,
        dist: DistContext,
        callback: EventCallback | None,
    ) -> None:
        import torch
        from torch.func import functional_call, stack_module_state

        self.nets, self.recipe, self.device = list(nets), recipe, device
        self.emit: EventCallback = callback if callback is not None else (lambda event: None)
        self.folds = [
            _Fold(
                setup=s,
                step=prepare_step(net, s, recipe, device=device, dist=dist),
                state=FoldState(
                    fold=s.index,
                    run_sha256=s.run_sha256,
                    class_weights=[float(w) for w in s.class_weights],
                ),
            )
            for net, s in zip(nets, setups, strict=True)
        ]
        self.rt = self.folds[0].step.rt
        self.epochs = setups[0].epochs
        log.info(
            "folds %s trained together: step on %s",
            ", ".join(str(s.index) for s in setups),
            self.rt.describe(False),
        )
        params, self.buffers = stack_module_state(self.nets)
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        skeleton = copy.deepcopy(self.nets[0]).to("meta")
        self.adam = StackedAdam(
            self.params, decoupled=recipe.optimizer == "adamw", weight_decay=recipe.weight_decay
        )

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
            return functional_call(skeleton, (p, b), (x,))

        self.batched = torch.vmap(one, in_dims=(0, 0, 0))
        encoder = self.folds[0].step.encoder
        self.encoder = {n for n, p in self.nets[0].named_parameters() if id(p) in encoder}
        for f in self.folds:
            self.emit(
                TrainingEvent(
                    "fold", fold=f.setup.index, folds=f.setup.folds, epochs=self.epochs, epoch=0
                )
            )

    def epoch(self, epoch: int) -> None:
        """One epoch of every fold: steps in lockstep, then each fold's own bookkeeping."""
        started = time.perf_counter()
        recipe = self.recipe
        frozen = recipe.train_parts == "decoder" or epoch < recipe.freeze_encoder_epochs
        for name, p in self.params.items():
            p.requires_grad_(not (frozen and name in self.encoder))
        self._start_epoch(epoch)
        for i in range(max(f.steps for f in self.folds)):
            self._step(epoch, i)
        seconds = (time.perf_counter() - started) / len(self.folds)
        for k, f in enumerate(self.folds):
            self._finish_fold(k, f, epoch, frozen, seconds)

    def _start_epoch(self, epoch: int) -> None:
        """Each fold's random stream, sample order and step count for the epoch (as alone)."""
        import torch

        for f in self.folds:
            plan = plan_epoch(f.setup, self.recipe, epoch)
            f.generator, f.per_epoch, f.order, f.steps = (
                plan.generator,
                plan.per_epoch,
                plan.order,
                plan.steps,
            )
            f.sums = torch.zeros(3, dtype=torch.float64, device=self.device)

    def _inputs(
        self, epoch: int, i: int, active: Sequence[bool]
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
        """The stacked images of step ``i``, each fold's labels and delineated classes; a fold
        standing still gets a blank batch (computed and ignored)."""
        import torch

        batch = self.recipe.batch_size
        images: list[torch.Tensor | None] = []
        labels: list[torch.Tensor | None] = []
        labeled: list[torch.Tensor | None] = []
        for f, on in zip(self.folds, active, strict=True):
            x = y = known = None
            if on:
                assert f.order is not None and f.generator is not None
                f.lr = learning_rate(self.recipe, epoch, i, f.per_epoch, self.epochs)
                x, y, known = f.step.inputs(f.order[i * batch : (i + 1) * batch], f.generator)
            images.append(x)
            labels.append(y)
            labeled.append(known)
        x0 = next(x for x in images if x is not None)
        y0 = next(y for y in labels if y is not None)
        stacked = torch.stack([torch.zeros_like(x0) if x is None else x for x in images])
        return stacked, [torch.zeros_like(y0) if y is None else y for y in labels], labeled

    def _step(self, epoch: int, i: int) -> None:
        """Step ``i`` of the epoch for every fold that has one; the others stand still."""
        import torch

        active = [i < f.steps for f in self.folds]
        images, labels, labeled = self._inputs(epoch, i, active)
        with torch.autocast(
            device_type=self.rt.device.type, dtype=torch.bfloat16, enabled=self.rt.amp
        ):
            logits = self.batched(self.params, self.buffers, images)
        if self.rt.amp:
            logits = logits.float()
        losses = []
        for k, f in enumerate(self.folds):
            known = labeled[k]
            if known is None:
                continue
            loss, terms = f.step.loss(logits[k], labels[k], known)
            losses.append(loss)
            assert f.sums is not None
            f.sums += torch.stack([terms.ce_sum, terms.ce_norm, terms.dice]).detach().double()
            self.emit(
                TrainingEvent(
                    "step",
                    fold=f.setup.index,
                    folds=f.setup.folds,
                    epoch=epoch + 1,
                    epochs=self.epochs,
                    step=i + 1,
                    steps=f.steps,
                    lr=f.lr,
                )
            )
        for p in self.params.values():
            p.grad = None
        torch.stack(losses).sum().backward()  # type: ignore[no-untyped-call]
        self.adam.step([f.lr for f in self.folds], active)

    def _finish_fold(self, k: int, f: _Fold, epoch: int, frozen: bool, seconds: float) -> None:
        """Fold ``k``'s weights and Adam state back into its own network and optimiser, then
        its validation, history, selection and checkpoint, as when trained alone."""
        import torch

        net = self.nets[k]
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(self.params[name][k])
        self.adam.write_into(k, net, f.step.optimizer)
        for group in f.step.optimizer.param_groups:
            group["lr"] = f.lr
        assert f.sums is not None
        train_loss = epoch_loss(f.sums.cpu(), f.steps, f.setup.index, epoch)
        entry = _epoch_entry(f.step, f.setup, self.recipe, epoch, f.lr, train_loss, frozen)
        entry["seconds"] = round(seconds, 3)
        entry["epochs_planned"] = self.epochs
        rule = self.recipe.selection if f.setup.validation else "last"
        _record_epoch(f.step, f.setup, f.state, rule, entry)
        self.emit(
            TrainingEvent(
                "epoch",
                fold=f.setup.index,
                folds=f.setup.folds,
                epoch=epoch + 1,
                epochs=self.epochs,
                train_loss=train_loss,
                val_loss=entry["val_loss"],
                val_dsc=entry["val_dsc"],
                lr=f.lr,
            )
        )
