"""Where a model runs (device selection) and how its classes mirror left-right."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from dlas.errors import DlasError
from dlas.structures import StructureSet, name_stem

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceError", "lr_swap_table", "resolve_device"]


class DeviceError(DlasError):
    """A compute device that is unknown or not available."""


def resolve_device(device: str, *, local_rank: int | None = None) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` as a torch device.

    ``local_rank`` picks the GPU of a distributed process when ``cuda`` names none.

    Raises
    ------
    DeviceError
        CUDA asked for but not available, or an unknown device name.
    """
    import torch

    name = device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA is not available",
                where=f"--device {device}",
                expected="a CUDA GPU and a CUDA build of PyTorch",
                found=f"torch {torch.__version__} without a usable GPU",
                fix="use --device cpu (or auto)",
            )
        if name == "cuda" and local_rank is not None:
            name = f"cuda:{local_rank}"
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise DeviceError(
        "unknown device",
        where=f"--device {device}",
        expected="auto, cpu, cuda or cuda:N",
        found=repr(device),
        fix="choose one of those",
    )


def lr_swap_table(structure_set: StructureSet) -> npt.NDArray[np.int64] | None:
    """Class permutation of a left-right mirror: each sided structure ↔ its counterpart.

    Class ``i + 1`` is structure ``i`` of the set, class 0 the background. Returns None when a
    sided structure has no counterpart in the set (mirroring would then produce a label no
    patient can have, so mirroring is not used).
    """
    table = np.arange(len(structure_set.names) + 1)
    by_key = {}
    for i, s in enumerate(structure_set.structures, start=1):
        stem, _ = name_stem(s.name)
        by_key[(stem, s.laterality)] = i
    for (stem, side), i in by_key.items():
        if side is None:
            continue
        other = by_key.get((stem, "R" if side == "L" else "L"))
        if other is None:
            return None
        table[i] = other
    return table
