"""The training loop of one fold, in plain PyTorch.

Per epoch ``e`` (0-based): learning rate ``lr0 * decay**e``; the slices are shuffled (and, with
``empty_slice_fraction < 1``, slices without any structure subsampled) by a generator seeded with
(seed, fold, e); full batches only (the last incomplete batch of an epoch is dropped, as every
process of a distributed run must take an equal share); each batch is augmented, passed through
the network (bf16 autocast and channels-last on CUDA), and the class-weighted cross-entropy

    loss = sum_p w[y_p] * CE_p / sum_p w[y_p]        (p over all pixels of the global batch)

is minimised with Adam. Then the validation cases are predicted slice by slice without
augmentation: validation loss (same weights) and Dice similarity per structure, computed on the
model grid per case and averaged over the cases where the structure is present in the reference
or the prediction (exact metrics on the CT grid come from ``dlas evaluate``). The fold's state is
checkpointed after every epoch (:mod:`dlas.training.state`).
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
from dlas.training.augment import apply_augmentation, draw_params
from dlas.training.config import Recipe
from dlas.training.data import PreparedCase, SliceSet
from dlas.training.distributed import DistContext
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
    "epoch_seed",
    "train_fold",
    "validate",
]

log = logging.getLogger(__name__)


class TrainingError(DlasError):
    """Training cannot go on (diverged loss, too little data, a run that cannot resume)."""


@dataclass(frozen=True)
class TrainingEvent:
    """Progress of a training run, passed to the caller's callback (rank 0 only).

    ``kind``: ``prepare`` (cases being preprocessed: ``step``/``steps``), ``fold``, ``step``
    (within an epoch), ``epoch`` (an epoch finished, with its losses) or ``done``.
    """

    kind: Literal["prepare", "fold", "step", "epoch", "done"]
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
    """Everything one fold trains on."""

    index: int
    folds: int
    folder: Path
    train: SliceSet
    validation: Sequence[PreparedCase]
    class_weights: npt.NDArray[np.float64]
    structure_names: Sequence[str]
    swap: npt.NDArray[np.int64] | None
    run_sha256: str


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """Seed of the generator of one epoch of one fold (independent streams per epoch)."""
    digest = hashlib.sha256(f"dlas-train:{seed}:{fold}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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


def _runtime(recipe: Recipe, device: torch.device) -> _Runtime:
    cuda = device.type == "cuda"
    det = recipe.deterministic == "on" or (recipe.deterministic == "auto" and not cuda)
    return _Runtime(
        device=device,
        amp=cuda and recipe.mixed_precision == "auto",
        channels_last=cuda and recipe.channels_last == "auto",
        deterministic=det,
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
) -> tuple[float, list[float | None]]:
    """Validation loss and per-structure mean Dice over ``cases`` (sharded over processes)."""
    import torch
    import torch.nn.functional as tnf

    num_classes = int(weights.numel())
    # Per case and class: intersection, predicted, reference pixel counts; plus loss terms.
    counts = torch.zeros((len(cases), num_classes, 3), dtype=torch.float64)
    loss_terms = torch.zeros(2, dtype=torch.float64)
    net.eval()
    with torch.no_grad():
        for ci, case in enumerate(cases):
            if ci % dist.world_size != dist.rank:
                continue
            slices = SliceSet([case], in_slices)
            for start in range(0, len(slices), batch_size):
                idx = list(range(start, min(len(slices), start + batch_size)))
                images, labels = slices.batch(idx)
                x = torch.from_numpy(images).to(rt.device)
                y = torch.from_numpy(labels).to(rt.device)
                logits = _forward(net, x, rt)
                loss_terms[0] += float(
                    tnf.cross_entropy(logits, y, weight=weights, reduction="sum")
                )
                loss_terms[1] += float(weights[y].sum())
                pred = logits.argmax(1)
                for c in range(1, num_classes):
                    p, g = pred == c, y == c
                    counts[ci, c, 0] += float((p & g).sum())
                    counts[ci, c, 1] += float(p.sum())
                    counts[ci, c, 2] += float(g.sum())
    net.train()
    dist.all_reduce_sum(counts)
    dist.all_reduce_sum(loss_terms)
    mean_loss = float(loss_terms[0] / loss_terms[1].clamp_min(1e-12))
    dsc: list[float | None] = []
    for c in range(1, num_classes):
        denom = counts[:, c, 1] + counts[:, c, 2]
        defined = denom > 0
        if not bool(defined.any()):
            dsc.append(None)
            continue
        values = 2 * counts[defined, c, 0] / denom[defined]
        dsc.append(float(values.mean()))
    return mean_loss, dsc


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
    """Train one fold for ``recipe.epochs`` epochs, resuming from ``state`` when given.

    Returns the final :class:`FoldState` (``complete``), whose best weights follow the recipe's
    selection rule (``last`` when the fold has no validation cases).
    """
    import torch
    import torch.nn.functional as tnf

    rt = _runtime(recipe, device)
    emit = callback if (callback is not None and dist.is_main) else (lambda event: None)
    rule = recipe.selection if setup.validation else "last"
    in_slices = net.config.in_slices
    batch = recipe.batch_size
    if batch % dist.world_size:
        raise TrainingError(
            "batch size not divisible by the number of processes",
            expected=f"a global batch size that is a multiple of {dist.world_size}",
            found=f"batch_size {batch}",
            fix="change batch_size in the recipe or the number of processes",
        )
    local = batch // dist.world_size
    net.to(device)
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(
        net.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    if state is not None and state.epochs_done > 0:
        restore_training(setup.folder, state, net, optimizer)
        log.info("fold %d: resuming after epoch %d", setup.index, state.epochs_done)
    else:
        state = FoldState(
            fold=setup.index,
            run_sha256=setup.run_sha256,
            class_weights=[float(w) for w in setup.class_weights],
        )
    model: Callable[[torch.Tensor], torch.Tensor] = net
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if recipe.compile:
        model = torch.compile(model)
    weights = torch.tensor(setup.class_weights, dtype=torch.float32, device=device)
    swap = torch.from_numpy(setup.swap) if setup.swap is not None else None
    encoder = set(id(p) for p in net.parameter_groups()["encoder"])
    decoder_only = recipe.train_parts == "decoder"
    emit(
        TrainingEvent(
            "fold",
            fold=setup.index,
            folds=setup.folds,
            epochs=recipe.epochs,
            epoch=state.epochs_done,
        )
    )
    net.train()
    with _deterministic(rt.deterministic):
        for epoch in range(state.epochs_done, recipe.epochs):
            started = time.perf_counter()
            lr = recipe.learning_rate * recipe.lr_decay**epoch
            for group in optimizer.param_groups:
                group["lr"] = lr
            frozen = decoder_only or epoch < recipe.freeze_encoder_epochs
            if not dist.enabled:
                # Skip the encoder's backward pass while it is frozen (DDP needs every gradient,
                # so there the frozen gradients are dropped before the step instead).
                for p in net.parameter_groups()["encoder"]:
                    p.requires_grad_(not frozen)
            generator = torch.Generator().manual_seed(epoch_seed(recipe.seed, setup.index, epoch))
            order = _epoch_order(setup.train, recipe.empty_slice_fraction, generator)
            steps = len(order) // batch
            if steps == 0:
                raise TrainingError(
                    "too few training slices for one batch",
                    where=f"fold {setup.index}",
                    expected=f"at least {batch} slices (batch_size)",
                    found=f"{len(order)} slice(s)",
                    fix="lower batch_size, raise empty_slice_fraction, or add cases",
                )
            num = torch.zeros(2, dtype=torch.float64)
            for step in range(steps):
                chosen = order[step * batch : (step + 1) * batch]
                params = draw_params(
                    generator, batch, recipe.augmentation, can_flip=swap is not None
                )
                lo, hi = dist.rank * local, (dist.rank + 1) * local
                images_np, labels_np = setup.train.batch(chosen[lo:hi])
                images = torch.from_numpy(images_np).to(device)
                labels = torch.from_numpy(labels_np).to(device)
                if recipe.augmentation.enabled:
                    images, labels = apply_augmentation(images, labels, params.part(lo, hi), swap)
                logits = _forward(model, images, rt)
                loss_sum = tnf.cross_entropy(logits, labels, weight=weights, reduction="sum")
                denom = weights[labels].sum().detach().double().cpu().reshape(1)
                dist.all_reduce_sum(denom)
                loss = loss_sum * (dist.world_size / float(denom.clamp_min(1e-12)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                if frozen:
                    for p in net.parameters():
                        if id(p) in encoder:
                            p.grad = None
                optimizer.step()
                num[0] += float(loss_sum.detach())
                num[1] += float(weights[labels].sum())
                emit(
                    TrainingEvent(
                        "step",
                        fold=setup.index,
                        folds=setup.folds,
                        epoch=epoch + 1,
                        epochs=recipe.epochs,
                        step=step + 1,
                        steps=steps,
                        lr=lr,
                    )
                )
            dist.all_reduce_sum(num)
            train_loss = float(num[0] / num[1].clamp_min(1e-12))
            if not math.isfinite(train_loss):
                raise TrainingError(
                    "training diverged",
                    where=f"fold {setup.index}, epoch {epoch + 1}",
                    expected="a finite loss",
                    found=f"loss {train_loss}",
                    fix="lower learning_rate in the recipe",
                )
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
                    net,
                    setup.validation,
                    weights,
                    in_slices=in_slices,
                    batch_size=max(local, 8),
                    rt=rt,
                    dist=dist,
                )
                defined = [d for d in dsc if d is not None]
                entry["val_loss"] = val_loss
                entry["val_dsc"] = float(np.mean(defined)) if defined else None
                entry["val_dsc_per_structure"] = dict(zip(setup.structure_names, dsc, strict=True))
            entry["seconds"] = round(time.perf_counter() - started, 3)
            state.history.append(entry)
            state.epochs_done = epoch + 1
            score = _score(rule, entry)
            improved = _better(rule, score, state.best_score)
            if improved:
                state.best_epoch = epoch + 1
                state.best_score = score
            if dist.is_main:
                best = (
                    {k: v.detach().clone() for k, v in net.state_dict().items()}
                    if improved
                    else None
                )
                save_fold_state(setup.folder, state, net, optimizer, best_weights=best)
            dist.barrier()
            emit(
                TrainingEvent(
                    "epoch",
                    fold=setup.index,
                    folds=setup.folds,
                    epoch=epoch + 1,
                    epochs=recipe.epochs,
                    train_loss=train_loss,
                    val_loss=entry["val_loss"],
                    val_dsc=entry["val_dsc"],
                    lr=lr,
                )
            )
    for p in net.parameters():
        p.requires_grad_(True)
    state.complete = True
    if dist.is_main:
        drop_optimizer_state(setup.folder, state)
    dist.barrier()
    return state


def _epoch_order(slices: SliceSet, empty_fraction: float, generator: torch.Generator) -> list[int]:
    import torch

    n = len(slices)
    keep_draw = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
    keep = slices.has_foreground | (keep_draw < empty_fraction)
    candidates = np.flatnonzero(keep)
    perm = torch.randperm(len(candidates), generator=generator).numpy()
    return [int(i) for i in candidates[perm]]
