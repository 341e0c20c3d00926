"""The training loop of one fold, in plain PyTorch.

An epoch (0-based ``e``) is ``steps_per_epoch`` batches, or, without it, one shuffled pass over
the training slices (with ``empty_slice_fraction < 1``, slices without any structure
subsampled). With ``foreground_fraction > 0`` each sample is drawn independently instead: with
that probability from the slices that show a structure chosen uniformly among the classes
(class-balanced foreground oversampling, as nnU-Net does for patches), otherwise from all
slices. Every draw comes from a generator seeded with (seed, fold, e). Full batches only (every
process of a distributed run must take an equal share). Each batch is augmented, passed through
the network (bf16 autocast and channels-last on CUDA), and the loss of
:mod:`dlas.training.losses` — class-weighted (marginal) cross-entropy

    CE = sum_p w[y_p] * -log q_p[y_p] / sum_p w[y_p]        (p over all pixels of the global batch)

plus, for ``loss: dice_ce``, the batch Dice loss — is minimised with Adam or AdamW. The learning
rate follows the recipe's schedule per step (:func:`learning_rate`). Then the validation cases
are predicted slice by slice without augmentation: validation loss (the same loss, the class
weights of the whole training cohort) and Dice similarity per structure, computed on the model
grid per case and averaged over the cases that delineate the structure and where it is present
in the reference or the prediction (exact metrics on the CT grid come from ``dlas evaluate``).
The fold's state is checkpointed after every epoch (:mod:`dlas.training.state`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from dlas.errors import DlasError
from dlas.model.inference import slice_logits
from dlas.training.augment import apply_augmentation, draw_params
from dlas.training.config import Recipe
from dlas.training.data import DeviceSlices, PreparedCase, SliceSet
from dlas.training.distributed import DistContext
from dlas.training.losses import (
    LossTerms,
    marginal_log_probs,
    segmentation_loss,
    soft_dice_counts,
)
from dlas.training.state import (
    FoldState,
    drop_optimizer_state,
    restore_training,
    save_fold_state,
)

if TYPE_CHECKING:
    import torch

    from dlas.model.dpn_unet import DpnUNet

__all__ = [
    "EventCallback",
    "FoldSetup",
    "TrainingError",
    "TrainingEvent",
    "epoch_order",
    "epoch_seed",
    "learning_rate",
    "train_fold",
    "validate",
]

log = logging.getLogger(__name__)


class TrainingError(DlasError):
    """Training cannot go on (diverged loss, too little data, a run that cannot resume)."""


@dataclass(frozen=True)
class TrainingEvent:
    """Progress of a training run, passed to the caller's callback (rank 0 only).

    ``kind``: ``prepare`` (cases being preprocessed: ``step``/``steps``), ``plan`` (the run was
    sized to its time budget: ``message`` says how), ``fold``, ``step`` (within an epoch),
    ``epoch`` (an epoch finished, with its losses) or ``done``.
    """

    kind: Literal["prepare", "plan", "fold", "step", "epoch", "done"]
    fold: int = 0
    folds: int = 0
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    val_dsc: float | None = None
    lr: float | None = None
    message: str = ""

    def summary(self) -> str:
        """One line for an ``epoch`` event: where, and the losses it has."""
        parts = [
            f"{label} {value:{fmt}}"
            for label, value, fmt in (
                ("train loss", self.train_loss, ".4f"),
                ("val loss", self.val_loss, ".4f"),
                ("val DSC", self.val_dsc, ".3f"),
                ("lr", self.lr, ".3g"),
            )
            if value is not None
        ]
        return f"fold {self.fold}/{self.folds} epoch {self.epoch}/{self.epochs}: " + ", ".join(
            parts
        )


EventCallback = Callable[[TrainingEvent], None]


@dataclass
class FoldSetup:
    """Everything one fold trains on.

    ``epochs`` and ``steps_per_epoch`` are the run's resolved values (from the recipe, or sized
    to a time budget); ``air`` is the network input of air (padding of augmented slices);
    ``patch`` the training crop and inference tile (``Preprocessing.patch``); ``deadline`` the
    ``time.perf_counter()`` by which a fold with a time budget must end (its epochs are
    re-fitted to it after every epoch).
    """

    index: int
    folds: int
    folder: Path
    train: SliceSet
    validation: Sequence[PreparedCase]
    class_weights: npt.NDArray[np.float64]
    structure_names: Sequence[str]
    swap: npt.NDArray[np.int64] | None
    run_sha256: str
    epochs: int
    steps_per_epoch: int | None = None
    air: float = -1.0
    patch: tuple[int, int] | None = None
    deadline: float | None = None


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """Seed of the generator of one epoch of one fold (independent streams per epoch)."""
    digest = hashlib.sha256(f"dlas-train:{seed}:{fold}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def learning_rate(
    recipe: Recipe, epoch: int, step: int, steps_per_epoch: int, epochs: int
) -> float:
    """Learning rate of step ``step`` of epoch ``epoch`` (both 0-based) of a run of ``epochs``
    epochs of ``steps_per_epoch`` steps.

    ``exponential``: ``lr0 * lr_decay**epoch`` (the seed study's, constant within an epoch);
    ``poly``: ``lr0 * (1 - t / T)**0.9`` (nnU-Net); ``cosine``: ``lr0 * (1 + cos(pi t / T)) / 2``;
    ``t`` is the step counted over the whole run and ``T`` all steps of the run. With ``warmup``
    the first ``warmup * T`` steps ramp up linearly to the scheduled value.
    """
    per_epoch = max(1, steps_per_epoch)
    total = per_epoch * epochs
    t = min(epoch * per_epoch + min(step, per_epoch - 1), total - 1)
    lr0 = recipe.learning_rate
    if recipe.lr_schedule == "exponential":
        lr = lr0 * recipe.lr_decay**epoch
    elif recipe.lr_schedule == "poly":
        lr = lr0 * (1.0 - t / total) ** 0.9
    else:
        lr = lr0 * 0.5 * (1.0 + math.cos(math.pi * t / total))
    warm = recipe.warmup * total
    if warm >= 1 and t < warm:
        lr *= (t + 1) / warm
    return float(lr)


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def _better(rule: str, score: float, best: float | None) -> bool:
    if best is None or rule == "last":
        return True
    if rule == "val_dsc":
        return score > best
    return score < best


def _score(rule: str, entry: dict[str, Any]) -> float:
    if rule == "val_dsc":
        value = entry["val_dsc"]
        return float("-inf") if value is None else float(value)
    if rule == "val_loss":
        return float(entry["val_loss"])
    return float(entry["epoch"])


@dataclass
class _Runtime:
    device: torch.device
    amp: bool
    channels_last: bool
    deterministic: bool
    device_data: bool = False
    fused_optimizer: bool = False

    def describe(self, compile: bool) -> str:
        """One line for the training log: what the step runs with."""
        parts = [
            "bf16 autocast" if self.amp else "float32",
            "channels-last" if self.channels_last else "",
            "data on the device" if self.device_data else "",
            "fused Adam" if self.fused_optimizer else "",
            "torch.compile" if compile else "",
            "deterministic" if self.deterministic else "",
        ]
        return f"{self.device.type}: " + ", ".join(p for p in parts if p)


def describe_step(device: torch.device, recipe: Recipe | None = None) -> str:
    """What a training step runs with on ``device`` under ``recipe`` (default recipe: the
    switches at auto), as the training log and ``dlas info`` say it."""
    from dlas.training.config import load_recipe

    chosen = recipe if recipe is not None else load_recipe(None)
    return _runtime(chosen, device).describe(chosen.compile)


def _runtime(recipe: Recipe, device: torch.device) -> _Runtime:
    cuda = device.type == "cuda"
    det = recipe.deterministic == "on" or (recipe.deterministic == "auto" and not cuda)
    return _Runtime(
        device=device,
        amp=cuda and recipe.mixed_precision == "auto",
        channels_last=cuda and recipe.channels_last == "auto",
        deterministic=det,
        device_data=recipe.device_data == "on" or (cuda and recipe.device_data == "auto"),
        fused_optimizer=cuda and recipe.fused_optimizer == "auto",
    )


def _forward(
    model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, rt: _Runtime
) -> torch.Tensor:
    import torch

    if rt.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if rt.amp:
        with torch.autocast(device_type=rt.device.type, dtype=torch.bfloat16):
            return model(images).float()
    return model(images)


def validate(
    net: DpnUNet,
    cases: Sequence[PreparedCase],
    weights: torch.Tensor,
    *,
    in_slices: int,
    batch_size: int,
    rt: _Runtime,
    dist: DistContext,
    dice_loss: bool = False,
    patch: tuple[int, int] | None = None,
) -> tuple[float, list[float | None]]:
    """Validation loss and per-structure mean Dice over ``cases`` (sharded over processes).

    The loss is the training loss on whole cases: the (marginal) cross-entropy over every pixel
    and, with ``dice_loss``, one minus the mean soft Dice over the cases and structures present
    in the reference. A structure counts only in the cases that delineate it. Slices are
    predicted as in inference (by tiles of ``patch`` when given).
    """
    import torch

    num_classes = int(weights.numel())
    # Per case and class: intersection, predicted, reference pixel counts (hard, for the DSC)
    # and the soft ones (for the Dice loss); plus the cross-entropy sum and normaliser.
    counts = torch.zeros((len(cases), num_classes, 3), dtype=torch.float64)
    soft = torch.zeros((len(cases), num_classes, 3), dtype=torch.float64)
    loss_terms = torch.zeros(2, dtype=torch.float64)
    known = torch.zeros((len(cases), num_classes), dtype=torch.float64)
    net.eval()
    with torch.no_grad():
        for ci, case in enumerate(cases):
            if ci % dist.world_size != dist.rank:
                continue
            known[ci] = torch.from_numpy(case.labeled.astype(np.float64))
            slices = SliceSet([case], in_slices)
            for start in range(0, len(slices), batch_size):
                idx = list(range(start, min(len(slices), start + batch_size)))
                images, labels, labeled = slices.batch(idx)
                x = torch.from_numpy(images).to(rt.device)
                y = torch.from_numpy(labels).to(rt.device)
                logits = slice_logits(lambda t: _forward(net, t, rt), x, patch)
                terms = segmentation_loss(
                    logits, y, torch.from_numpy(labeled), weights=weights, dice=False
                )
                loss_terms[0] += float(terms.ce_sum)
                loss_terms[1] += float(terms.ce_norm)
                if dice_loss:
                    log_q = marginal_log_probs(logits, torch.from_numpy(labeled))
                    for k, part in enumerate(soft_dice_counts(log_q, y)):
                        soft[ci, :, k] += part.sum(0).double().cpu()
                pred = logits.argmax(1)
                for c in range(1, num_classes):
                    p, g = pred == c, y == c
                    counts[ci, c, 0] += float((p & g).sum())
                    counts[ci, c, 1] += float(p.sum())
                    counts[ci, c, 2] += float(g.sum())
    net.train()
    for tensor in (counts, soft, loss_terms, known):
        dist.all_reduce_sum(tensor)
    mean_loss = float(loss_terms[0] / loss_terms[1].clamp_min(1e-12))
    if dice_loss:
        present = (soft[:, 1:, 2] > 0) & (known[:, 1:] > 0)
        if bool(present.any()):
            ratio = 2 * soft[:, 1:, 0] / (soft[:, 1:, 1] + soft[:, 1:, 2])
            mean_loss += float(1.0 - ratio[present].mean())
    dsc: list[float | None] = []
    for c in range(1, num_classes):
        denom = counts[:, c, 1] + counts[:, c, 2]
        defined = (denom > 0) & (known[:, c] > 0)
        if not bool(defined.any()):
            dsc.append(None)
            continue
        values = 2 * counts[defined, c, 0] / denom[defined]
        dsc.append(float(values.mean()))
    return mean_loss, dsc


def _optimizer(net: DpnUNet, recipe: Recipe, rt: _Runtime) -> torch.optim.Optimizer:
    import torch

    # fused=None is PyTorch's default (foreach where it can), so the CPU's numbers stay as they
    # were; fused=True only where the runtime asks for it (CUDA).
    fused = True if rt.fused_optimizer else None
    kind = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return kind(
        net.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay, fused=fused
    )


@dataclass
class _Step:
    """What one fold's training steps share."""

    net: DpnUNet
    model: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    weights: torch.Tensor
    swap: torch.Tensor | None
    rt: _Runtime
    dist: DistContext
    recipe: Recipe
    setup: FoldSetup
    encoder: set[int]
    resident: DeviceSlices | None = None

    def run(
        self,
        chosen: Sequence[tuple[int, int]],
        generator: torch.Generator,
        lr: float,
        frozen: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimiser step on the global batch ``chosen`` (``(item, focus)`` pairs); returns
        this process's CE sum and normaliser and its Dice loss (detached)."""
        images, labels, labeled = self.inputs(chosen, generator)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits = _forward(self.model, images, self.rt)
        loss, terms = self.loss(logits, labels, labeled)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if frozen:
            for p in self.net.parameters():
                if id(p) in self.encoder:
                    p.grad = None
        self.optimizer.step()
        return terms.ce_sum.detach(), terms.ce_norm.detach(), terms.dice.detach()

    def inputs(
        self, chosen: Sequence[tuple[int, int]], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This process's share of the global batch ``chosen``, augmented: images and labels on
        the device and the delineated classes; draws the batch's random numbers from
        ``generator`` (the same number of draws whatever is enabled)."""
        import torch

        recipe, dist = self.recipe, self.dist
        batch = recipe.batch_size
        local = batch // dist.world_size
        params = draw_params(generator, batch, recipe.augmentation, can_flip=self.swap is not None)
        crops = torch.rand((batch, 3), generator=generator, dtype=torch.float64).numpy()
        lo, hi = dist.rank * local, (dist.rank + 1) * local
        images, labels, labeled_np = self._batch(chosen[lo:hi], crops[lo:hi])
        if recipe.augmentation.enabled:
            part = params.part(lo, hi)
            images, labels = apply_augmentation(images, labels, part, self.swap, air=self.setup.air)
            if self.swap is not None and bool(part.flip.any()):
                # A mirrored slice delineates the mirrored classes (a case without a left
                # femoral head, mirrored, lacks the right one).
                swap = self.swap.numpy()
                labeled_np = np.where(part.flip.numpy()[:, None], labeled_np[:, swap], labeled_np)
        return images, labels, torch.from_numpy(labeled_np)

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, labeled: torch.Tensor
    ) -> tuple[torch.Tensor, LossTerms]:
        """The loss to differentiate (cross-entropy normalised over the global batch, plus the
        Dice term) and its terms."""
        dist = self.dist
        terms = segmentation_loss(
            logits, labels, labeled, weights=self.weights, dice=self.recipe.loss == "dice_ce"
        )
        if dist.enabled:
            denom = terms.ce_norm.detach().double().cpu().reshape(1)
            dist.all_reduce_sum(denom)
            loss = terms.ce_sum * (dist.world_size / float(denom.clamp_min(1e-12))) + terms.dice
        else:
            # The same float32 scale, computed on the device: no host synchronisation per step.
            scale = (1.0 / terms.ce_norm.detach().double().clamp_min(1e-12)).float()
            loss = terms.ce_sum * scale + terms.dice
        return loss, terms

    def _batch(
        self, chosen: Sequence[tuple[int, int]], crops: npt.NDArray[np.float64]
    ) -> tuple[torch.Tensor, torch.Tensor, npt.NDArray[np.bool_]]:
        """This process's images and labels on the device, and the delineated classes."""
        import torch

        items = [item for item, _ in chosen]
        focus = [focus for _, focus in chosen]
        if self.resident is not None:
            return self.resident.batch(items, focus=focus, patch=self.setup.patch, uniforms=crops)
        images, labels, labeled = self.setup.train.batch(
            items, focus=focus, patch=self.setup.patch, uniforms=crops
        )
        device = self.rt.device
        return torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device), labeled


def prepare_step(
    net: DpnUNet,
    setup: FoldSetup,
    recipe: Recipe,
    *,
    device: torch.device,
    dist: DistContext,
) -> _Step:
    """The network on its device with its optimiser, loss weights and runtime switches."""
    import torch

    rt = _runtime(recipe, device)
    batch = recipe.batch_size
    if batch % dist.world_size:
        raise TrainingError(
            "batch size not divisible by the number of processes",
            expected=f"a global batch size that is a multiple of {dist.world_size}",
            found=f"batch_size {batch}",
            fix="change batch_size in the recipe or the number of processes",
        )
    net.to(device)
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = _optimizer(net, recipe, rt)
    model: Callable[[torch.Tensor], torch.Tensor] = net
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if recipe.compile:
        model = torch.compile(model)
    return _Step(
        net=net,
        model=model,
        optimizer=optimizer,
        weights=torch.tensor(setup.class_weights, dtype=torch.float32, device=device),
        swap=torch.from_numpy(setup.swap) if setup.swap is not None else None,
        rt=rt,
        dist=dist,
        recipe=recipe,
        setup=setup,
        encoder={id(p) for p in net.parameter_groups()["encoder"]},
        resident=DeviceSlices(setup.train, device) if rt.device_data else None,
    )


def steps_in_epoch(slices: SliceSet, recipe: Recipe, steps_per_epoch: int | None) -> int:
    """Batches per epoch: ``steps_per_epoch``, or one pass over the slices an epoch uses."""
    if steps_per_epoch is not None:
        return steps_per_epoch
    if recipe.empty_slice_fraction >= 1.0:
        return len(slices) // recipe.batch_size
    expected = int(slices.has_foreground.sum()) + recipe.empty_slice_fraction * int(
        (~slices.has_foreground).sum()
    )
    return int(expected) // recipe.batch_size


def train_fold(
    net: DpnUNet,
    setup: FoldSetup,
    recipe: Recipe,
    *,
    device: torch.device,
    dist: DistContext,
    state: FoldState | None,
    callback: EventCallback | None = None,
) -> FoldState:
    """Train one fold for ``setup.epochs`` epochs, resuming from ``state`` when given.

    Returns the final :class:`FoldState` (``complete``), whose best weights follow the recipe's
    selection rule (``last`` when the fold has no validation cases).
    """
    emit = callback if (callback is not None and dist.is_main) else (lambda event: None)
    rule = recipe.selection if setup.validation else "last"
    step = prepare_step(net, setup, recipe, device=device, dist=dist)
    log.info("fold %d: training step on %s", setup.index, step.rt.describe(recipe.compile))
    if state is not None and state.epochs_done > 0:
        restore_training(setup.folder, state, net, step.optimizer)
        log.info("fold %d: resuming after epoch %d", setup.index, state.epochs_done)
    else:
        state = FoldState(
            fold=setup.index,
            run_sha256=setup.run_sha256,
            class_weights=[float(w) for w in setup.class_weights],
        )
    decoder_only = recipe.train_parts == "decoder"
    # The epochs of this fold: as set up, or as last re-planned when resuming.
    epochs = int(state.history[-1].get("epochs_planned", setup.epochs) if state.history else 0)
    epochs = epochs or setup.epochs
    emit(
        TrainingEvent(
            "fold",
            fold=setup.index,
            folds=setup.folds,
            epochs=epochs,
            epoch=state.epochs_done,
        )
    )
    net.train()
    with _deterministic(step.rt.deterministic):
        epoch = state.epochs_done
        while epoch < epochs:
            started = time.perf_counter()
            frozen = decoder_only or epoch < recipe.freeze_encoder_epochs
            if not dist.enabled:
                # Skip the encoder's backward pass while it is frozen (DDP needs every gradient,
                # so there the frozen gradients are dropped before the step instead).
                for p in net.parameter_groups()["encoder"]:
                    p.requires_grad_(not frozen)
            train_loss, lr = _train_epoch(step, setup, recipe, epoch, epochs, frozen, emit, dist)
            entry = _epoch_entry(step, setup, recipe, epoch, lr, train_loss, frozen)
            entry["seconds"] = round(time.perf_counter() - started, 3)
            if setup.deadline is not None:
                epochs = _replan(state, entry, epochs, setup.deadline, dist)
            entry["epochs_planned"] = epochs
            _record_epoch(step, setup, state, rule, entry)
            emit(
                TrainingEvent(
                    "epoch",
                    fold=setup.index,
                    folds=setup.folds,
                    epoch=epoch + 1,
                    epochs=epochs,
                    train_loss=train_loss,
                    val_loss=entry["val_loss"],
                    val_dsc=entry["val_dsc"],
                    lr=lr,
                )
            )
            epoch += 1
    for p in net.parameters():
        p.requires_grad_(True)
    state.complete = True
    if dist.is_main:
        drop_optimizer_state(setup.folder, state)
    dist.barrier()
    return state


def _train_epoch(
    step: _Step,
    setup: FoldSetup,
    recipe: Recipe,
    epoch: int,
    epochs: int,
    frozen: bool,
    emit: EventCallback,
    dist: DistContext,
) -> tuple[float, float]:
    """Run one epoch's steps; the epoch's training loss (over every process) and its last
    learning rate.

    Raises
    ------
    TrainingError
        Too few slices for one batch, or a loss that is not finite.
    """
    import torch

    plan = plan_epoch(setup, recipe, epoch)
    generator, per_epoch, order, steps = plan.generator, plan.per_epoch, plan.order, plan.steps
    num = torch.zeros(3, dtype=torch.float64, device=step.rt.device)
    lr = recipe.learning_rate
    for i in range(steps):
        lr = learning_rate(recipe, epoch, i, per_epoch, epochs)
        chosen = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
        ce_sum, ce_norm, dice = step.run(chosen, generator, lr, frozen)
        num[0] += ce_sum.double()
        num[1] += ce_norm.double()
        num[2] += dice.double()
        emit(
            TrainingEvent(
                "step",
                fold=setup.index,
                folds=setup.folds,
                epoch=epoch + 1,
                epochs=epochs,
                step=i + 1,
                steps=steps,
                lr=lr,
            )
        )
    num = num.cpu()
    dist.all_reduce_sum(num)
    return epoch_loss(num, steps * dist.world_size, setup.index, epoch), lr


@dataclass
class EpochPlan:
    """One fold's epoch: its random stream, the samples in order and the number of steps
    (``per_epoch``: the steps the learning-rate schedule counts with)."""

    generator: torch.Generator
    per_epoch: int
    order: list[tuple[int, int]]
    steps: int


def plan_epoch(setup: FoldSetup, recipe: Recipe, epoch: int) -> EpochPlan:
    """The epoch's plan of a fold (the same whether it trains alone or with other folds).

    Raises
    ------
    TrainingError
        Too few slices for one batch.
    """
    import torch

    generator = torch.Generator().manual_seed(epoch_seed(recipe.seed, setup.index, epoch))
    per_epoch = steps_in_epoch(setup.train, recipe, setup.steps_per_epoch)
    order = epoch_order(setup.train, recipe, generator, setup.steps_per_epoch)
    steps = len(order) // recipe.batch_size
    if steps == 0:
        raise TrainingError(
            "too few training slices for one batch",
            where=f"fold {setup.index}",
            expected=f"at least {recipe.batch_size} slices (batch_size)",
            found=f"{len(order)} slice(s)",
            fix="lower batch_size, raise empty_slice_fraction, or add cases",
        )
    return EpochPlan(generator, per_epoch, order, steps)


def epoch_loss(sums: torch.Tensor, batches: int, fold: int, epoch: int) -> float:
    """The loss optimised over an epoch from its sums (CE sum, CE normaliser, Dice losses) over
    ``batches`` batches: cross-entropy over the epoch's pixels plus the mean batch Dice loss (0
    without a Dice term), on the scale of the validation loss.

    Raises
    ------
    TrainingError
        A loss that is not finite.
    """
    loss = float(sums[0] / sums[1].clamp_min(1e-12)) + float(sums[2] / batches)
    if not math.isfinite(loss):
        raise TrainingError(
            "training diverged",
            where=f"fold {fold}, epoch {epoch + 1}",
            expected="a finite loss",
            found=f"loss {loss}",
            fix="lower learning_rate in the recipe",
        )
    return loss


def _replan(
    state: FoldState, entry: dict[str, Any], epochs: int, deadline: float, dist: DistContext
) -> int:
    """The fold's number of epochs re-fitted to its deadline after an epoch.

    A time budget is planned from the first steps timed; a shared machine then runs faster or
    slower. After every epoch the epochs still to come are re-counted from the time left and
    the mean duration of the recent epochs, so that the fold ends on time and the learning-rate
    schedule still runs its whole course. Rank 0 decides for every process.
    """
    import torch

    done = int(entry["epoch"])
    recent = [h["seconds"] for h in state.history[-4:]] + [entry["seconds"]]
    per_epoch = sum(recent) / len(recent)
    left = deadline - time.perf_counter()
    planned = done + max(0, int(left // per_epoch))
    decided = torch.tensor([float(planned if dist.is_main else 0)], dtype=torch.float64)
    dist.all_reduce_sum(decided)
    planned = int(decided[0])
    if planned != epochs:
        log.info(
            "fold %d: %d epoch(s) fit the time left (%.0f s at %.1f s per epoch), not %d",
            state.fold,
            planned,
            max(left, 0.0),
            per_epoch,
            epochs,
        )
    return planned


def _epoch_entry(
    step: _Step,
    setup: FoldSetup,
    recipe: Recipe,
    epoch: int,
    lr: float,
    train_loss: float,
    frozen: bool,
) -> dict[str, Any]:
    """The epoch's history entry, with the validation results when the fold has validation.

    ``train_loss`` is the loss optimised over the epoch: the cross-entropy over all its pixels
    plus, for ``dice_ce``, the mean of the batches' Dice losses.
    """
    entry: dict[str, Any] = {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": train_loss,
        "val_loss": None,
        "val_dsc": None,
        "val_dsc_per_structure": None,
        "encoder_frozen": frozen,
    }
    if setup.validation:
        val_loss, dsc = validate(
            step.net,
            setup.validation,
            step.weights,
            in_slices=step.net.config.in_slices,
            batch_size=max(recipe.batch_size // step.dist.world_size, 8),
            rt=step.rt,
            dist=step.dist,
            dice_loss=recipe.loss == "dice_ce",
            patch=setup.patch,
        )
        defined = [d for d in dsc if d is not None]
        entry["val_loss"] = val_loss
        entry["val_dsc"] = float(np.mean(defined)) if defined else None
        entry["val_dsc_per_structure"] = dict(zip(setup.structure_names, dsc, strict=True))
    return entry


def _record_epoch(
    step: _Step, setup: FoldSetup, state: FoldState, rule: str, entry: dict[str, Any]
) -> None:
    """Append the epoch to the history, track the best epoch and checkpoint the fold."""
    state.history.append(entry)
    state.epochs_done = int(entry["epoch"])
    score = _score(rule, entry)
    improved = _better(rule, score, state.best_score)
    if improved:
        state.best_epoch = state.epochs_done
        state.best_score = score
    if step.dist.is_main:
        best = (
            {k: v.detach().clone() for k, v in step.net.state_dict().items()} if improved else None
        )
        save_fold_state(setup.folder, state, step.net, step.optimizer, best_weights=best)
    step.dist.barrier()


def epoch_order(
    slices: SliceSet, recipe: Recipe, generator: torch.Generator, steps: int | None
) -> list[tuple[int, int]]:
    """The samples of one epoch, in training order: ``(item, focus)`` pairs, ``item`` indexing
    ``slices.items`` and ``focus`` the class a crop is centred on (0: anywhere).

    The epoch uses every slice with a structure and a random ``empty_slice_fraction`` of the
    others. Without foreground oversampling: one shuffled pass over them (``steps`` None), or as
    many shuffled passes as ``steps`` batches need. With it: ``steps`` batches (default: as many
    as one pass) of independent draws, a ``foreground_fraction`` of them from the slices showing
    a class chosen uniformly among the classes present (and centred on it).
    """
    import torch

    n = len(slices)
    keep_draw = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
    keep = slices.has_foreground | (keep_draw < recipe.empty_slice_fraction)
    candidates = np.flatnonzero(keep)
    batch = recipe.batch_size
    if len(candidates) == 0:
        return []
    if recipe.foreground_fraction <= 0.0:
        perm = torch.randperm(len(candidates), generator=generator).numpy()
        order = [(int(i), 0) for i in candidates[perm]]
        if steps is None:
            return order
        while len(order) < steps * batch:
            perm = torch.randperm(len(candidates), generator=generator).numpy()
            order.extend((int(i), 0) for i in candidates[perm])
        return order[: steps * batch]
    wanted = (steps if steps is not None else len(candidates) // batch) * batch
    classes = [c for c in range(1, len(slices.slices_with)) if len(slices.slices_with[c])]
    u = torch.rand((3, wanted), generator=generator, dtype=torch.float64).numpy()
    drawn: list[tuple[int, int]] = []
    for k in range(wanted):
        if classes and u[0, k] < recipe.foreground_fraction:
            focus = classes[int(u[1, k] * len(classes))]
            pool = slices.slices_with[focus]
        else:
            focus, pool = 0, candidates
        drawn.append((int(pool[int(u[2, k] * len(pool))]), focus))
    return drawn
