"""Reading nnU-Net checkpoints and plans without running code from a model folder.

An nnU-Net checkpoint (``checkpoint_final.pth``) is a ``torch.save`` pickle: unpickling it with
``torch.load(weights_only=False)`` — what nnunetv2 itself does — runs whatever the file says.
dlas reads it with ``torch.load(weights_only=True)``, PyTorch's restricted unpickler, which
builds tensors and plain containers only, and allows exactly the few extra types nnU-Net stores
in its training log (:data:`ALLOWED_GLOBALS`: NumPy scalars and dtypes, under NumPy 1's names
as well as NumPy 2's). Anything else in the file is refused, with the names of the types it
asked for, before it is built.

A ``plans.json`` names the network class and the layer types nnU-Net imports and calls by name
(``network_class_name``, ``_kw_requires_import``). A plans file could name any callable, so
:func:`check_plans` allows only the classes of ``dynamic_network_architectures`` and layer
types of ``torch.nn`` before anything is imported. Plans written before nnU-Net 2.4 name the
network in ``UNet_*`` fields; :func:`current_plans` rewrites them with nnU-Net's own conversion.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlas.errors import DlasError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ALLOWED_GLOBALS",
    "NnUNetCheckpoint",
    "NnUNetFileError",
    "check_plans",
    "current_plans",
    "load_checkpoint",
    "require_nnunet",
]

#: Names of the non-tensor types an nnU-Net checkpoint may contain (its training log holds
#: NumPy scalars); everything else is refused.
ALLOWED_GLOBALS = (
    "numpy.dtype",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray.scalar",
    "numpy.dtypes.*DType",
)

_SCALAR_MODULES = ("numpy._core.multiarray", "numpy.core.multiarray")
_NETWORK_PREFIX = "dynamic_network_architectures.architectures."
_LAYER_PREFIX = "torch.nn."


class NnUNetFileError(DlasError):
    """An nnU-Net model folder, checkpoint or plans file that is missing, unreadable or unsafe;
    or nnunetv2 not installed."""


def require_nnunet(what: str = "the nnU-Net engine") -> None:
    """Raise :class:`NnUNetFileError` saying how to install nnunetv2 when it is missing."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise NnUNetFileError(
            "nnunetv2 is not installed",
            where=what,
            expected="the nnunetv2 package (the optional extra dlas[nnunet])",
            found="no module named nnunetv2",
            fix="pip install 'dlas[nnunet]' (on a CPU-only machine install the CPU builds of "
            "torch and torchvision first)",
        )


def _numpy_scalar() -> Any:
    """NumPy's scalar constructor, from whichever of its two homes this NumPy has."""
    for module in _SCALAR_MODULES:
        try:
            return importlib.import_module(module).scalar
        except (ImportError, AttributeError):
            continue
    return None  # pragma: no cover - every NumPy has one of them


def _allowed_objects() -> list[Any]:
    """The objects of :data:`ALLOWED_GLOBALS`. NumPy's scalar constructor is allowed under both
    of its names: a checkpoint written under NumPy 1 (every nnU-Net model released before
    2024, TotalSegmentator's among them) names it ``numpy.core.multiarray.scalar``, one written
    under NumPy 2 ``numpy._core.multiarray.scalar``, and PyTorch matches the name written in
    the file, not the object it stands for."""
    import numpy as np

    objects: list[Any] = [np.dtype]
    scalar = _numpy_scalar()
    if scalar is not None:
        objects += [(scalar, f"{module}.scalar") for module in _SCALAR_MODULES]
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                 "uint16", "uint32", "uint64", "bool_"):  # fmt: skip
        objects.append(type(np.dtype(getattr(np, name))))
    return objects


@dataclass
class NnUNetCheckpoint:
    """What dlas uses of an nnU-Net checkpoint.

    Attributes
    ----------
    weights
        The network's state dict (tensors on the CPU).
    trainer_name, configuration
        The nnU-Net trainer class and configuration (``2d``, ``3d_fullres`` ...) it was trained
        with (``configuration`` empty when the checkpoint does not say).
    mirroring_axes
        Axes nnU-Net allows for test-time mirroring (None: none recorded).
    log
        nnU-Net's training log (losses and pseudo Dice per epoch), JSON-ready.
    epochs
        Epochs trained.
    """

    weights: dict[str, torch.Tensor]
    trainer_name: str = ""
    configuration: str = ""
    mirroring_axes: tuple[int, ...] | None = None
    log: dict[str, list[Any]] = field(default_factory=dict)
    epochs: int = 0


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []
    return sorted(str(n) for n in names)


def _plain(value: Any) -> Any:
    """A JSON-ready copy of a training-log value (NumPy scalars become Python numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _unreadable(path: Path, exc: BaseException) -> NnUNetFileError:
    return NnUNetFileError(
        "cannot read the nnU-Net checkpoint",
        where=str(path),
        expected="a checkpoint written by nnU-Net (torch.save)",
        found=" ".join(str(exc).split())[:160],
        fix="restore the file from its source",
    )


def load_checkpoint(path: str | os.PathLike[str]) -> NnUNetCheckpoint:
    """Read an nnU-Net checkpoint with PyTorch's restricted unpickler (nothing in it is run).

    Raises
    ------
    NnUNetFileError
        Missing, not a checkpoint, containing types outside :data:`ALLOWED_GLOBALS`, or without
        network weights.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise NnUNetFileError(
            "nnU-Net checkpoint not found",
            where=str(p),
            expected="a checkpoint file (fold_N/checkpoint_final.pth)",
            found="nothing at that path",
            fix="check the path; an nnU-Net result folder holds plans.json, dataset.json and "
            "fold_N/checkpoint_final.pth",
        )
    try:
        with torch.serialization.safe_globals(_allowed_objects()):
            data = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(p)
        if not unsafe:
            raise _unreadable(p, exc) from None
        raise NnUNetFileError(
            "refusing to load an nnU-Net checkpoint that contains more than weights",
            where=str(p),
            expected="tensors, plain containers and NumPy scalars only (what nnU-Net saves)",
            found="it asks for "
            + ", ".join(unsafe[:8])
            + (" ..." if len(unsafe) > 8 else "")
            + "; unpickling those could run arbitrary code",
            fix="use a checkpoint written by nnU-Net itself; dlas never executes a pickle from "
            "a model folder",
        ) from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise _unreadable(p, exc) from None
    weights = data.get("network_weights") if isinstance(data, dict) else None
    if not isinstance(weights, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise NnUNetFileError(
            "not an nnU-Net checkpoint",
            where=str(p),
            expected="a dictionary with network_weights (layer name → tensor)",
            found=type(data).__name__
            if not isinstance(data, dict)
            else "keys " + ", ".join(map(str, list(data)[:8])),
            fix="point at fold_N/checkpoint_final.pth of an nnU-Net result folder",
        )
    init = data.get("init_args") if isinstance(data.get("init_args"), dict) else {}
    axes = data.get("inference_allowed_mirroring_axes")
    epoch = data.get("current_epoch", 0)
    return NnUNetCheckpoint(
        weights={k.removeprefix("module."): v for k, v in weights.items()},
        trainer_name=str(data.get("trainer_name", "")),
        configuration=str(init.get("configuration", "") or ""),
        mirroring_axes=tuple(int(a) for a in axes) if isinstance(axes, (list, tuple)) else None,
        log=_plain(data.get("logging", {})) if isinstance(data.get("logging"), dict) else {},
        epochs=int(epoch) if isinstance(epoch, int) else 0,
    )


def _unreadable_plans(where: str, configuration: str, found: str) -> NnUNetFileError:
    return NnUNetFileError(
        "nnU-Net plans dlas cannot read",
        where=f"{where}, configuration {configuration}",
        expected="plans written by nnU-Net v2 (old-format plans: a PlainConvUNet or "
        "ResidualEncoderUNet)",
        found=" ".join(found.split())[:200],
        fix="use the plans.json the checkpoint was trained with, unchanged",
    )


def _resolved(plans: Mapping[str, Any], configuration: str, *, where: str) -> dict[str, Any]:
    """``configuration`` of ``plans`` as nnU-Net reads it: inheritance resolved and, for plans
    written before nnU-Net 2.4, the network rebuilt into today's ``architecture`` entry (by
    nnU-Net's own conversion, on a copy; its advice to plan again is not shown: dlas converts)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected old nnU-Net plans format")
        try:
            config = PlansManager(copy.deepcopy(dict(plans))).get_configuration(configuration)
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise _unreadable_plans(where, configuration, f"{type(exc).__name__}: {exc}") from None
    resolved: dict[str, Any] = config.configuration
    resolved.pop("inherits_from", None)
    return resolved


def current_plans(plans: Mapping[str, Any], configuration: str, *, where: str) -> dict[str, Any]:
    """A copy of ``plans`` whose ``configuration`` is written out in full in today's plans
    format: inheritance resolved, and the network of plans written before nnU-Net 2.4 (such as
    TotalSegmentator's) given as the ``architecture`` entry nnU-Net itself would rebuild. The
    other configurations are kept as they are.

    Raises
    ------
    NnUNetFileError
        The configuration is missing, or nnU-Net cannot read it.
    """
    out = copy.deepcopy(dict(plans))
    out["configurations"] = {
        **out["configurations"],
        configuration: _checked(plans, configuration, where=where),
    }
    return out


def check_plans(plans: Mapping[str, Any], configuration: str, *, where: str) -> None:
    """Refuse plans whose configuration is missing or names code outside nnU-Net's network
    architectures and ``torch.nn`` layers (a plans file is data, never a way to run code).

    Raises
    ------
    NnUNetFileError
        See above.
    """
    _checked(plans, configuration, where=where)


def _checked(plans: Mapping[str, Any], configuration: str, *, where: str) -> dict[str, Any]:
    """``configuration`` of ``plans`` resolved (:func:`_resolved`), once :func:`check_plans`'s
    rules hold for it."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, Mapping) or configuration not in configurations:
        names = ", ".join(configurations) if isinstance(configurations, Mapping) else "none"
        raise NnUNetFileError(
            "nnU-Net plans lack the configuration",
            where=where,
            expected=f"configuration {configuration!r} in plans.json",
            found=f"configurations: {names}",
            fix="choose one of the plans' configurations (nnunet.configuration in the recipe)",
        )
    config = _resolved(plans, configuration, where=where)
    architecture = config.get("architecture")
    if not isinstance(architecture, Mapping):
        raise _unreadable_plans(where, configuration, "no architecture")
    named = {"network class": str(architecture.get("network_class_name"))}
    kwargs = architecture.get("arch_kwargs") or {}
    for key in architecture.get("_kw_requires_import") or ():
        value = kwargs.get(key)
        if value is not None:
            named[key] = str(value)
    for role, name in named.items():
        prefix = _NETWORK_PREFIX if role == "network class" else _LAYER_PREFIX
        if not name.startswith(prefix):
            raise NnUNetFileError(
                "nnU-Net plans name code dlas does not run",
                where=f"{where}, configuration {configuration}, {role}",
                expected=f"a name starting with {prefix}",
                found=name,
                fix="use plans written by nnU-Net with its own network architectures",
            )
    return config
