"""Training state of one fold, checkpointed after every epoch so that a killed run resumes.

Per fold folder::

    state.json                 epochs done, history, best epoch, class weights, run hash; last
    state-eNNNN.safetensors    network weights ("model.*") and Adam state ("optim.*") after
                               epoch NNNN
    best-eNNNN.safetensors     weights of the best epoch so far under the selection rule

Files are written atomically, tensors first and ``state.json`` last, with new names per epoch,
so that whatever moment a run is killed at, ``state.json`` names complete files (older files are
removed only after it is written). Randomness needs no saved generator state: every epoch's
shuffling and augmentation come from a generator seeded with (seed, fold, epoch).
Nothing here is pickled; the Adam state is stored as tensors plus JSON.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlas.io.atomic import write_json
from dlas.model.checkpoint import load_weights, save_weights

if TYPE_CHECKING:
    import torch

__all__ = ["FoldState", "load_fold_state", "restore_training", "save_fold_state"]

log = logging.getLogger(__name__)

STATE_JSON = "state.json"


@dataclass
class FoldState:
    """What ``state.json`` records about a fold."""

    fold: int
    run_sha256: str
    epochs_done: int = 0
    complete: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    class_weights: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    best_file: str | None = None
    best_sha256: str | None = None
    state_file: str | None = None
    state_sha256: str | None = None
    optimizer_groups: list[dict[str, Any]] = field(default_factory=list)

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"schema_version": 1, **asdict(self)}


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    import torch

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optim.{pid}.{key}"] = value
    groups = [dict(g) for g in sd["param_groups"]]
    return tensors, groups


def save_fold_state(
    folder: Path,
    state: FoldState,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    best_weights: dict[str, torch.Tensor] | None,
) -> None:
    """Write the state after epoch ``state.epochs_done`` (and new best weights, if any)."""
    folder.mkdir(parents=True, exist_ok=True)
    old = [p for p in folder.glob("*.safetensors")]
    tensors, groups = _optimizer_tensors(optimizer)
    model_tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    name = f"state-e{state.epochs_done:04d}.safetensors"
    state.state_sha256 = save_weights(folder / name, {**model_tensors, **tensors})
    state.state_file = name
    state.optimizer_groups = groups
    if best_weights is not None:
        best = f"best-e{state.epochs_done:04d}.safetensors"
        state.best_sha256 = save_weights(folder / best, best_weights)
        state.best_file = best
    write_json(folder / STATE_JSON, state.to_data())
    keep = {state.state_file, state.best_file}
    for path in old:
        if path.name not in keep:
            path.unlink(missing_ok=True)


def drop_optimizer_state(folder: Path, state: FoldState) -> None:
    """After a fold is complete only its best weights and history are needed."""
    if state.state_file is not None:
        (folder / state.state_file).unlink(missing_ok=True)
    state.state_file = None
    state.state_sha256 = None
    write_json(folder / STATE_JSON, state.to_data())


def load_fold_state(folder: Path) -> FoldState | None:
    """The fold's recorded state, or None when the fold has not completed an epoch."""
    path = folder / STATE_JSON
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("schema_version", None)
    return FoldState(**data)


def restore_training(
    folder: Path, state: FoldState, net: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Load weights and Adam state of the last completed epoch into ``net`` and ``optimizer``."""
    if state.state_file is None:
        raise ValueError("fold state holds no training state")
    tensors = load_weights(folder / state.state_file, sha256=state.state_sha256)
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    net.load_state_dict(model)
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        _, pid, name = key.split(".", 2)
        per_param.setdefault(int(pid), {})[name] = value
    groups = []
    for group in state.optimizer_groups:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})


def best_weights(folder: Path, state: FoldState) -> dict[str, torch.Tensor]:
    """The fold's best weights (verified against ``state.json``)."""
    if state.best_file is None:
        raise ValueError("fold has no best weights yet")
    return load_weights(folder / state.best_file, sha256=state.best_sha256)
