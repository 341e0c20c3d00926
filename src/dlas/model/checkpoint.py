"""Model files: safetensors weights plus a JSON description, written atomically, never pickled.

A model is a folder::

    MODEL/
      model.json            what the model is (schema below); written last
      model.safetensors     the weights (a single model), or
      member-1.safetensors  … one file per member of a fold ensemble

``model.json`` holds the architecture, the preprocessing, the structure set and its classes, the
SHA-256 of every weights file, the model hash, the software version, and how the model was made
(recipe, data-set and split hashes, training history, the pretrained model it started from).

Why this format: a PyTorch ``.pt``/``.pth`` file is a pickle, and unpickling a file runs code of
the file's choosing. dlas never unpickles a model file: weights are read with ``safetensors``
(a plain header plus raw tensors) only after the file's SHA-256 matched ``model.json``; a pickle,
a ZIP (``torch.save``) or any other file offered as a model is refused with a
:class:`ModelFileError` before anything in it is interpreted.

The *model hash* (``model_sha256``) covers everything that determines the predictions and their
quality checks — architecture, preprocessing, classes, the weights files' hashes, the structure
set (its post-processing rules change the masks; its QA thresholds change the flags) and the QA
reference measured on the training cases (``qa``) — and not dates or training logs, so it is
the identity written into RTSTRUCTs (``AlgorithmParameters``) and reports. Editing any of these in
``model.json`` makes the model refuse to load. Schema version 1 models (whose hash left out the
structure set) are refused with a request to retrain or re-save them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlas import __version__
from dlas.errors import DlasError
from dlas.io.atomic import atomic_path, write_json
from dlas.model.config import DpnUNetConfig, Preprocessing, config_sha256
from dlas.structures import StructureSet

if TYPE_CHECKING:
    import torch

    from dlas.model.dpn_unet import DpnUNet

__all__ = [
    "MODEL_JSON",
    "MODEL_SCHEMA_VERSION",
    "LoadedModel",
    "ModelFileError",
    "ModelInfo",
    "WeightsEntry",
    "check_state_dict",
    "drop_stale_weights",
    "file_sha256",
    "load_model",
    "load_weights",
    "model_format",
    "read_model_info",
    "read_model_json",
    "save_members",
    "save_model",
    "save_weights",
]

log = logging.getLogger(__name__)

MODEL_JSON = "model.json"
MODEL_SCHEMA_VERSION = 2
_FORMAT = "dlas-dpnunet"

#: First bytes of files that must never be unpickled, with a name for the error message.
_PICKLE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (the torch.save format, which contains a pickle)"),
    (b"\x80", "a Python pickle"),
)


class ModelFileError(DlasError):
    """A model file or folder that is missing, not a dlas model, corrupt, or unsafe to read."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class WeightsEntry:
    """One weights file of a model (one per ensemble member)."""

    file: str
    sha256: str
    fold: int | None = None
    epoch: int | None = None

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"file": self.file, "sha256": self.sha256, "fold": self.fold, "epoch": self.epoch}


class ModelIdentity:
    """What every engine's model record offers: its structures and the version it writes.

    A mixin of :class:`ModelInfo` and the nnU-Net engine's record, which both carry ``classes``,
    ``software`` and ``model_sha256``.
    """

    classes: list[str]
    software: dict[str, Any]
    model_sha256: str

    @property
    def structures(self) -> list[str]:
        """Structure names in output-channel order (without the background)."""
        return self.classes[1:]

    @property
    def version(self) -> str:
        """Version string written into RTSTRUCT/SEG: software version and short model hash."""
        return f"{self.software.get('version', __version__)}+{self.model_sha256[:12]}"


@dataclass(frozen=True)
class ModelFields:
    """The part of ``model.json`` that every engine writes the same way, read and checked once
    (:func:`read_model_fields`); each engine reads its own fields next to it."""

    structure_set: StructureSet
    classes: list[str]
    weights: list[WeightsEntry]
    model_sha256: str
    qa: dict[str, Any]
    name: str
    software: dict[str, Any]
    training: dict[str, Any]
    created: str

    def record(self, folder: Path) -> dict[str, Any]:
        """Keyword arguments for an engine's model record (``ModelInfo`` and the like)."""
        return {"folder": folder, **self.__dict__}


def malformed_model(index: Path, expected: str, exc: Exception) -> ModelFileError:
    """The error for a ``model.json`` that lacks a field or holds one of the wrong type."""
    return ModelFileError(
        "model.json is incomplete or malformed",
        where=str(index),
        expected=expected,
        found=f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
        fix="restore the model folder from its source",
    )


def read_model_fields(index: Path, data: Mapping[str, Any], *, default_name: str) -> ModelFields:
    """The fields every engine's ``model.json`` has: structure set, classes, weights, hash, QA
    reference and the free-form provenance.

    Raises
    ------
    ModelFileError
        A field missing or malformed, classes that are not the structure set's, or no weights.
    """
    expected = "structure_set, classes, weights, model_sha256 and the engine's own fields"
    try:
        structure_set = StructureSet.from_data(data["structure_set"], source=str(index))
        classes = [str(c) for c in data["classes"]]
        weights = [
            WeightsEntry(str(w["file"]), str(w["sha256"]), w.get("fold"), w.get("epoch"))
            for w in data["weights"]
        ]
        recorded = str(data["model_sha256"])
        qa = data.get("qa", {})
        if not isinstance(qa, dict):
            raise TypeError(f"qa is a {type(qa).__name__}, not an object")
    except (KeyError, TypeError, ValueError) as exc:
        raise malformed_model(index, expected, exc) from None
    if classes != ["background", *structure_set.names]:
        raise ModelFileError(
            "model classes do not match its structure set",
            where=str(index),
            expected=f"background, {', '.join(structure_set.names)}",
            found=", ".join(classes),
            fix="restore the model folder from its source",
        )
    if not weights:
        raise ModelFileError(
            "model lists no weights",
            where=str(index),
            expected="at least one weights file",
            found="an empty list",
            fix="restore the model folder from its source",
        )
    return ModelFields(
        structure_set=structure_set,
        classes=classes,
        weights=weights,
        model_sha256=recorded,
        qa=qa,
        name=str(data.get("name", default_name)),
        software=dict(data.get("software", {})),
        training=dict(data.get("training", {})),
        created=str(data.get("created", "")),
    )


def check_model_hash(index: Path, computed: str, recorded: str) -> None:
    """Refuse a model whose content does not hash to the ``model_sha256`` it records."""
    if computed != recorded:
        raise ModelFileError(
            "model hash does not match model.json",
            where=str(index),
            expected=f"model_sha256 {computed}",
            found=recorded,
            fix="model.json was edited or damaged; restore the model folder from its source",
        )


@dataclass
class ModelInfo(ModelIdentity):
    """The content of ``model.json`` (no weights loaded; no torch needed).

    Attributes
    ----------
    folder
        The model folder.
    name
        Model name, written into RTSTRUCTs (e.g. ``"dlas DpnUNet"``).
    architecture, preprocessing, structure_set
        What the network is and how its input is made.
    classes
        ``["background", *structure names]``: output channel ``i`` is class ``classes[i]``.
    weights
        The weights files (several for a fold ensemble).
    model_sha256
        The model hash (see the module docstring).
    training
        How the model was made (recipe, hashes, history); free-form JSON.
    qa
        What prediction QA compares with (e.g. per-structure volume distributions on the
        training cases); part of the model hash. Empty for a model saved without it.
    """

    folder: Path
    name: str
    architecture: DpnUNetConfig
    preprocessing: Preprocessing
    structure_set: StructureSet
    classes: list[str]
    weights: list[WeightsEntry]
    model_sha256: str
    software: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    qa: dict[str, Any] = field(default_factory=dict)


def _model_hash(
    architecture: DpnUNetConfig,
    preprocessing: Preprocessing,
    structure_set: StructureSet,
    classes: Sequence[str],
    weights: Sequence[WeightsEntry],
    qa: Mapping[str, Any],
) -> str:
    return config_sha256(
        {
            "format": _FORMAT,
            "architecture": architecture.model_dump(mode="json"),
            "preprocessing": preprocessing.model_dump(mode="json"),
            "structure_set": structure_set.sha256(),
            "classes": list(classes),
            "weights": [w.sha256 for w in weights],
            "qa": dict(qa),
        }
    )


def _refuse_unsafe(path: Path) -> None:
    """Refuse pickles and ZIP archives by their first bytes, for a clear message.

    Safety does not rest on this check: nothing dlas reads from a model file is ever unpickled
    (JSON and safetensors only). A safetensors file starts with its 8-byte header length
    followed by ``{``; that is told apart from a pickle whose first byte is also 0x80.
    """
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[8:9] == b"{":
        return
    for signature, kind in _PICKLE_SIGNATURES:
        if head.startswith(signature):
            raise ModelFileError(
                "refusing to load a pickled model file",
                where=str(path),
                expected="a dlas model folder (model.json + .safetensors weights)",
                found=f"{kind}; unpickling it could run arbitrary code",
                fix="ask the vendor for the model as a dlas model folder (safetensors weights "
                "with model.json); dlas never unpickles model files",
            )


def _model_json(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        candidate = p / MODEL_JSON
        if not candidate.is_file():
            raise ModelFileError(
                "not a dlas model folder",
                where=str(p),
                expected=f"a folder with {MODEL_JSON} (made by `dlas train`)",
                found="no model.json",
                fix="point at the folder `dlas train --out` wrote",
            )
        return candidate
    if not p.exists():
        raise ModelFileError(
            "model not found",
            where=str(p),
            expected="a dlas model folder",
            found="nothing at that path",
            fix="check the path",
        )
    _refuse_unsafe(p)
    if p.name != MODEL_JSON:
        raise ModelFileError(
            "not a dlas model",
            where=str(p),
            expected=f"a dlas model folder or its {MODEL_JSON}",
            found=f"a file named {p.name}",
            fix="point at the folder `dlas train --out` wrote (weights alone lack the "
            "preprocessing and classes)",
        )
    return p


def read_model_json(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The ``model.json`` of a model folder (or the file itself) and its content, checked to be
    a dlas model description of this schema version (of any engine: see ``format``).

    Raises
    ------
    ModelFileError
        Missing, pickled, not JSON, not a dlas model, or of another schema version.
    """
    index = _model_json(path)
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            "model.json is not valid JSON",
            where=str(index),
            expected="the JSON written by `dlas train`",
            found=str(exc).splitlines()[0],
            fix="restore the model folder from its source",
        ) from None
    if not isinstance(data, dict) or data.get("kind") != "dlas-model":
        raise ModelFileError(
            "not a dlas model description",
            where=str(index),
            expected='a JSON object with "kind": "dlas-model"',
            found=type(data).__name__
            if not isinstance(data, dict)
            else f"kind {data.get('kind')!r}",
            fix="point at a folder written by `dlas train`",
        )
    if data.get("schema_version") != MODEL_SCHEMA_VERSION:
        raise ModelFileError(
            "unsupported model schema version",
            where=str(index),
            expected=f"schema_version {MODEL_SCHEMA_VERSION}",
            found=f"schema_version {data.get('schema_version')!r}",
            fix=(
                "retrain it with this dlas version (version-1 model hashes left out the "
                "structure set's post-processing)"
                if data.get("schema_version") == 1
                else "use the dlas version that wrote the model, or retrain"
            ),
        )
    return index, data


def model_format(path: str | os.PathLike[str]) -> str:
    """The engine format of a dlas model folder: ``dlas-dpnunet`` or ``dlas-nnunet``.

    Raises
    ------
    ModelFileError
        See :func:`read_model_json`.
    """
    return str(read_model_json(path)[1].get("format", _FORMAT))


def read_model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Read and validate ``model.json`` of a DpnUNet model (``path``: the model folder or the
    file itself).

    Raises
    ------
    ModelFileError
        Missing, pickled, malformed, of another schema version, or a model of another engine.
    """
    index, data = read_model_json(path)
    if data.get("format", _FORMAT) != _FORMAT:
        raise ModelFileError(
            "a model of another engine",
            where=str(index),
            expected=f"a DpnUNet model (format {_FORMAT})",
            found=f"format {data.get('format')!r}",
            fix="fine-tune an nnU-Net model with `engine: nnunet` in the recipe; `dlas predict` "
            "and `dlas study` take either",
        )
    from pydantic import ValidationError

    fields = read_model_fields(index, data, default_name="dlas DpnUNet")
    try:
        architecture = DpnUNetConfig.model_validate(data["architecture"])
        preprocessing = Preprocessing.model_validate(data["preprocessing"])
    except (KeyError, TypeError, ValidationError) as exc:
        raise malformed_model(index, "architecture, preprocessing", exc) from None
    if len(fields.classes) != architecture.num_classes:
        raise ModelFileError(
            "model classes do not match its network",
            where=str(index),
            expected=f"{architecture.num_classes} classes (the network's outputs)",
            found=f"{len(fields.classes)}: {', '.join(fields.classes)}",
            fix="restore the model folder from its source",
        )
    if preprocessing.spacing_mm is None:
        raise ModelFileError(
            "model preprocessing has no pixel spacing",
            where=str(index),
            expected="preprocessing.spacing_mm (mm)",
            found="null",
            fix="restore the model folder from its source",
        )
    check_model_hash(
        index,
        _model_hash(
            architecture,
            preprocessing,
            fields.structure_set,
            fields.classes,
            fields.weights,
            fields.qa,
        ),
        fields.model_sha256,
    )
    return ModelInfo(
        **fields.record(index.parent), architecture=architecture, preprocessing=preprocessing
    )


def save_weights(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write tensors as safetensors atomically; returns the file's SHA-256."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # One metadata key only: safetensors writes several keys in a random order, and identical
    # weights must give identical files (and hashes).
    meta = {
        "dlas": json.dumps(
            {"format": _FORMAT, "version": __version__, **dict(metadata or {})}, sort_keys=True
        )
    }
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=meta)
        digest = file_sha256(tmp)
    return digest


def load_weights(
    path: str | os.PathLike[str], *, sha256: str | None = None, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a safetensors file (never a pickle), after checking its SHA-256 when given.

    Raises
    ------
    ModelFileError
        Missing, pickled, of another hash, or not a valid safetensors file.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(
            "weights file not found",
            where=str(p),
            expected="the .safetensors file listed in model.json",
            found="nothing at that path",
            fix="copy the whole model folder",
        )
    _refuse_unsafe(p)
    if sha256 is not None:
        found = file_sha256(p)
        if found != sha256:
            raise ModelFileError(
                "weights file does not match model.json",
                where=str(p),
                expected=f"sha256 {sha256}",
                found=f"sha256 {found}",
                fix="the file was replaced or damaged; restore the model folder from its source",
            )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(
            "cannot read weights",
            where=str(p),
            expected="a safetensors file",
            found=" ".join(str(exc).split())[:200],
            fix="restore the model folder from its source",
        ) from None


def save_members(
    out: Path,
    members: Sequence[tuple[Mapping[str, torch.Tensor], int | None, int | None]],
    *,
    metadata: Mapping[str, str] | None = None,
) -> list[WeightsEntry]:
    """Write each member's tensors (``(state_dict, fold, epoch)``) as ``model.safetensors``, or
    ``member-K.safetensors`` for an ensemble; returns their entries for ``model.json``.

    Tensors are copied first: some networks (nnU-Net's) hold one tensor under two names, which
    safetensors refuses; a copy writes the same bytes.
    """
    import torch

    entries: list[WeightsEntry] = []
    for i, (state, fold, epoch) in enumerate(members, start=1):
        file = "model.safetensors" if len(members) == 1 else f"member-{i}.safetensors"
        tensors = {k: v.detach().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
        digest = save_weights(out / file, tensors, metadata={"member": str(i), **(metadata or {})})
        entries.append(WeightsEntry(file, digest, fold, epoch))
    return entries


def drop_stale_weights(out: Path, entries: Sequence[WeightsEntry]) -> None:
    """Remove weights of an earlier model in ``out`` that ``entries`` no longer lists."""
    keep = {e.file for e in entries}
    for stale in [*out.glob("member-*.safetensors"), out / "model.safetensors"]:
        if stale.exists() and stale.name not in keep:
            stale.unlink()


def save_model(
    folder: str | os.PathLike[str],
    *,
    name: str,
    architecture: DpnUNetConfig,
    preprocessing: Preprocessing,
    structure_set: StructureSet,
    members: Sequence[tuple[Mapping[str, torch.Tensor], int | None, int | None]],
    training: Mapping[str, Any] | None = None,
    qa: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Write a model folder (weights first, ``model.json`` last, each atomically).

    Parameters
    ----------
    members
        ``(state_dict, fold, epoch)`` per member; one for a single model.
    qa
        The QA reference of the model (JSON-ready; part of the model hash).

    Returns
    -------
    ModelInfo
        The description as written.
    """
    import torch

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    classes = ["background", *structure_set.names]
    if len(classes) != architecture.num_classes:
        raise ValueError(f"{len(classes)} classes for a network with {architecture.num_classes}")
    entries = save_members(out, members)
    qa_data = json.loads(json.dumps(dict(qa or {})))
    model_sha = _model_hash(architecture, preprocessing, structure_set, classes, entries, qa_data)
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    data = {
        "schema_version": MODEL_SCHEMA_VERSION,
        "kind": "dlas-model",
        "format": _FORMAT,
        "name": name,
        "architecture": architecture.model_dump(mode="json"),
        "preprocessing": preprocessing.model_dump(mode="json"),
        "structure_set": structure_set.to_data(),
        "structure_set_sha256": structure_set.sha256(),
        "classes": classes,
        "weights": [e.to_data() for e in entries],
        "model_sha256": model_sha,
        "software": {"name": "dlas", "version": __version__, "torch": torch.__version__},
        "created": created,
        "training": dict(training or {}),
        "qa": qa_data,
    }
    write_json(out / MODEL_JSON, data)
    drop_stale_weights(out, entries)
    log.info("model %s written to %s", model_sha[:12], out)
    return read_model_info(out)


@dataclass
class LoadedModel:
    """A model ready for inference: its description and one network per member (eval mode)."""

    info: ModelInfo
    networks: list[DpnUNet]
    device: torch.device


def load_model(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder for inference (weights verified against ``model.json``).

    Raises
    ------
    ModelFileError
        See :func:`read_model_info` and :func:`load_weights`; also weights that do not fit the
        architecture.
    """
    import torch

    from dlas.model.dpn_unet import DpnUNet

    info = read_model_info(path)
    dev = torch.device(device)
    networks = []
    for entry in info.weights:
        state = load_weights(info.folder / entry.file, sha256=entry.sha256)
        net = DpnUNet(info.architecture)
        check_state_dict(net, state, where=str(info.folder / entry.file))
        net.load_state_dict(state)
        networks.append(net.to(dev).eval())
    return LoadedModel(info=info, networks=networks, device=dev)


def check_state_dict(
    net: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    where: str,
    ignore_prefixes: Sequence[str] = (),
) -> None:
    """Raise a :class:`ModelFileError` listing every layer whose tensor is missing, unexpected
    or of another shape (layers under ``ignore_prefixes`` are not compared)."""
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(tuple(ignore_prefixes))}
    other = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}
    problems: list[str] = []
    for key in sorted(set(own) | set(other)):
        if key not in other:
            problems.append(f"{key} missing")
        elif key not in own:
            problems.append(f"{key} unexpected")
        elif tuple(own[key].shape) != tuple(other[key].shape):
            problems.append(
                f"{key} shape {tuple(other[key].shape)} instead of {tuple(own[key].shape)}"
            )
    if problems:
        shown = "; ".join(problems[:8]) + (
            f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        )
        raise ModelFileError(
            "weights do not fit the architecture",
            where=where,
            expected="the layers and shapes of the configured DpnUNet",
            found=f"{len(problems)} mismatching layer(s): {shown}",
            fix="use the architecture the weights were trained with (drop the model overrides "
            "from the recipe), or train from scratch",
        )
