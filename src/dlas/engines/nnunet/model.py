"""nnU-Net models as dlas model folders, and prediction with them.

A model trained or fine-tuned with ``engine: nnunet`` is a dlas model folder like any other
(:mod:`dlas.model.checkpoint`)::

    MODEL/
      model.json            format "dlas-nnunet": nnU-Net's plans, configuration and dataset.json,
                            the structure set, the classes, the weights' hashes, the QA reference
      model.safetensors     the weights (or member-K.safetensors, one per fold of an ensemble)

No pickle is kept: the weights are safetensors, read only after their SHA-256 matched
``model.json``. The model hash covers the plans, configuration, dataset.json, trainer, mirroring
axes, structure set, classes, weights and QA reference; editing any of them in ``model.json``
makes the model refuse to load.

Prediction (:class:`NnUNetPredictor`) uses nnU-Net's own sliding-window predictor
(``nnUNetPredictor``, initialised with the verified weights rather than from a checkpoint
pickle) on the CT in canonical axial orientation — the orientation the data were exported in
for training — and turns the labels into the structure set's post-processed masks on exactly the
CT's grid, as the DpnUNet engine does. An ensemble's members are run one by one and their class
probabilities averaged (so that their agreement can be measured for prediction QA); a single
model is predicted by nnU-Net as is. ``tta`` switches on nnU-Net's test-time mirroring.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dlas import __version__
from dlas.engines.nnunet.checkpoint import check_plans
from dlas.io.atomic import write_json
from dlas.io.volume import Volume
from dlas.model.checkpoint import (
    MODEL_JSON,
    MODEL_SCHEMA_VERSION,
    ModelFileError,
    ModelIdentity,
    WeightsEntry,
    check_model_hash,
    drop_stale_weights,
    load_weights,
    malformed_model,
    read_model_fields,
    read_model_json,
    save_members,
)
from dlas.model.config import config_sha256
from dlas.model.preprocessing import canonical_axial
from dlas.model.runtime import resolve_device
from dlas.structures import StructureSet

if TYPE_CHECKING:
    import torch

    from dlas.prediction.engine import MemberAgreement, ProgressCallback

__all__ = [
    "FORMAT",
    "NnUNetModelInfo",
    "NnUNetPredictor",
    "build_network",
    "read_nnunet_model",
    "save_nnunet_model",
]

FORMAT = "dlas-nnunet"


@dataclass
class NnUNetModelInfo(ModelIdentity):
    """The content of an nnU-Net model's ``model.json`` (see the module docstring)."""

    folder: Path
    name: str
    plans: dict[str, Any]
    configuration: str
    dataset_json: dict[str, Any]
    trainer_name: str
    mirroring_axes: tuple[int, ...] | None
    structure_set: StructureSet
    classes: list[str]
    weights: list[WeightsEntry]
    model_sha256: str
    software: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    qa: dict[str, Any] = field(default_factory=dict)

    #: The body threshold of prediction QA's outside-body check (nnU-Net has no body crop).
    body_threshold_hu: float = -500.0


def _model_hash(data: Mapping[str, Any], weights: Sequence[WeightsEntry]) -> str:
    return config_sha256(
        {
            "format": FORMAT,
            "plans": data["plans"],
            "configuration": data["configuration"],
            "dataset_json": data["dataset_json"],
            "trainer_name": data["trainer_name"],
            "mirroring_axes": data["mirroring_axes"],
            "structure_set": data["structure_set_sha256"],
            "classes": data["classes"],
            "weights": [w.sha256 for w in weights],
            "qa": data["qa"],
        }
    )


def save_nnunet_model(
    folder: str | os.PathLike[str],
    *,
    name: str,
    plans: Mapping[str, Any],
    configuration: str,
    dataset_json: Mapping[str, Any],
    trainer_name: str,
    mirroring_axes: Sequence[int] | None,
    structure_set: StructureSet,
    members: Sequence[tuple[Mapping[str, torch.Tensor], int | None, int | None]],
    training: Mapping[str, Any] | None = None,
    qa: Mapping[str, Any] | None = None,
) -> NnUNetModelInfo:
    """Write an nnU-Net model folder (weights first, ``model.json`` last, each atomically).

    ``members``: ``(state_dict, fold, epoch)`` per member.
    """
    import torch

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    entries = save_members(out, members, metadata={"engine": "nnunet"})
    data: dict[str, Any] = {
        "schema_version": MODEL_SCHEMA_VERSION,
        "kind": "dlas-model",
        "format": FORMAT,
        "name": name,
        "plans": json.loads(json.dumps(dict(plans))),
        "configuration": configuration,
        "dataset_json": json.loads(json.dumps(dict(dataset_json))),
        "trainer_name": trainer_name,
        "mirroring_axes": None if mirroring_axes is None else [int(a) for a in mirroring_axes],
        "structure_set": structure_set.to_data(),
        "structure_set_sha256": structure_set.sha256(),
        "classes": ["background", *structure_set.names],
        "weights": [e.to_data() for e in entries],
        "qa": json.loads(json.dumps(dict(qa or {}))),
    }
    from importlib.metadata import version

    import nnunetv2  # noqa: F401 - only its version is recorded

    data["model_sha256"] = _model_hash(data, entries)
    data["software"] = {
        "name": "dlas",
        "version": __version__,
        "torch": torch.__version__,
        "nnunetv2": version("nnunetv2"),
    }
    data["created"] = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    data["training"] = dict(training or {})
    write_json(out / MODEL_JSON, data)
    drop_stale_weights(out, entries)
    return read_nnunet_model(out)


def read_nnunet_model(path: str | os.PathLike[str]) -> NnUNetModelInfo:
    """Read and validate an nnU-Net model's ``model.json`` (hash, classes, plans).

    Raises
    ------
    ModelFileError
        Missing, malformed, edited, or a model of another engine.
    dlas.engines.nnunet.NnUNetFileError
        Plans that name code dlas does not run.
    """
    index, data = read_model_json(path)
    if data.get("format") != FORMAT:
        raise ModelFileError(
            "not an nnU-Net model",
            where=str(index),
            expected=f"format {FORMAT}",
            found=f"format {data.get('format', 'dlas-dpnunet')!r}",
            fix="use it with the DpnUNet engine (the default), or train with `engine: nnunet`",
        )
    fields = read_model_fields(index, data, default_name="dlas nnU-Net")
    try:
        labels = dict(data["dataset_json"]["labels"])
        configuration = str(data["configuration"])
        plans = dict(data["plans"])
        trainer_name = str(data["trainer_name"])
        axes = data["mirroring_axes"]
        mirroring_axes = None if axes is None else tuple(int(a) for a in axes)
    except (KeyError, TypeError, ValueError) as exc:
        raise malformed_model(
            index, "plans, configuration, dataset_json, trainer_name, mirroring_axes", exc
        ) from None
    order = sorted(labels, key=lambda k: labels[k])
    if order != fields.classes:
        raise ModelFileError(
            "model classes do not match its nnU-Net labels",
            where=str(index),
            expected=", ".join(fields.classes),
            found=f"labels {', '.join(order)}",
            fix="restore the model folder from its source",
        )
    check_model_hash(index, _model_hash(data, fields.weights), fields.model_sha256)
    check_plans(plans, configuration, where=str(index))
    return NnUNetModelInfo(
        **fields.record(index.parent),
        plans=plans,
        configuration=configuration,
        dataset_json=dict(data["dataset_json"]),
        trainer_name=trainer_name,
        mirroring_axes=mirroring_axes,
    )


def build_network(
    plans: Mapping[str, Any],
    configuration: str,
    dataset_json: Mapping[str, Any],
    *,
    deep_supervision: bool,
    where: str,
) -> torch.nn.Module:
    """nnU-Net's network for ``configuration`` of ``plans`` and the labels of ``dataset_json``
    (its plans checked first, see :func:`~dlas.engines.nnunet.checkpoint.check_plans`)."""
    check_plans(plans, configuration, where=where)
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(dict(plans))
    config = manager.get_configuration(configuration)
    channels = determine_num_input_channels(manager, config, dict(dataset_json))
    heads = manager.get_label_manager(dict(dataset_json)).num_segmentation_heads
    network: torch.nn.Module = get_network_from_plans(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        channels,
        heads,
        allow_init=True,
        deep_supervision=deep_supervision,
    )
    return network


@dataclass
class LoadedNnUNet:
    """An nnU-Net model ready for inference: its description and each member's weights."""

    info: NnUNetModelInfo
    states: list[dict[str, torch.Tensor]]
    device: torch.device


class NnUNetPredictor:
    """A loaded nnU-Net model that predicts CT volumes (the interface of
    :class:`dlas.prediction.engine.Predictor`).

    Parameters
    ----------
    model
        An nnU-Net model folder.
    device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    tta
        nnU-Net's test-time mirroring along the axes it allows.
    """

    def __init__(
        self, model: str | os.PathLike[str], *, device: str = "auto", tta: bool = False
    ) -> None:
        from dlas.engines.nnunet.checkpoint import require_nnunet

        require_nnunet("nnU-Net model " + str(model))
        dev = resolve_device(device)
        info = read_nnunet_model(model)
        states = [load_weights(info.folder / w.file, sha256=w.sha256) for w in info.weights]
        self.model = LoadedNnUNet(info=info, states=states, device=dev)
        self.device = dev
        self.tta = bool(tta)
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor as _Engine
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        network = build_network(
            info.plans,
            info.configuration,
            info.dataset_json,
            deep_supervision=False,
            where=str(info.folder),
        )
        from dlas.model.checkpoint import check_state_dict

        for w, state in zip(info.weights, states, strict=True):
            check_state_dict(network, state, where=str(info.folder / w.file))
        manager = PlansManager(dict(info.plans))
        # nnU-Net prints that it keeps the work on the CPU whenever the device is not CUDA,
        # even when it was asked to; on a CPU that is what dlas asked for, so it is not shown.
        with contextlib.redirect_stdout(io.StringIO()):
            self._engine = _Engine(
                tile_step_size=0.5,
                use_gaussian=True,
                use_mirroring=self.tta,
                perform_everything_on_device=dev.type == "cuda",
                device=dev,
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
        self._engine.manual_initialization(
            network.to(dev),
            manager,
            manager.get_configuration(info.configuration),
            states,
            dict(info.dataset_json),
            info.trainer_name,
            info.mirroring_axes,
        )

    @property
    def structures(self) -> list[str]:
        """Names of the structures predicted."""
        return self.model.info.structures

    @property
    def members(self) -> int:
        """Members whose probabilities are averaged (folds of an ensemble)."""
        return len(self.model.states)

    @property
    def body_threshold_hu(self) -> float:
        """The HU threshold of prediction QA's body mask."""
        return self.model.info.body_threshold_hu

    def _run(self, ct_c: Volume, states: list[dict[str, torch.Tensor]], probabilities: bool) -> Any:
        image = np.asarray(ct_c.array, dtype=np.float32)[None]
        self._engine.list_of_parameters = states
        return self._engine.predict_single_npy_array(
            image, {"spacing": [float(s) for s in ct_c.spacing]}, None, None, probabilities
        )

    def _labels(
        self, ct: Volume, agreement: MemberAgreement | None
    ) -> tuple[Volume, npt.NDArray[np.uint8]]:
        import torch

        ct_c = canonical_axial(ct)
        states = self.model.states
        if len(states) == 1:
            labels = np.asarray(self._run(ct_c, states, False), dtype=np.uint8)
            if agreement is not None:
                counts = agreement.add(torch.from_numpy(labels[None]), torch.from_numpy(labels))
                agreement.disagreement = ct_c.with_array(counts.numpy())
            return ct_c, labels
        total: npt.NDArray[np.float32] | None = None
        member_labels = []
        for state in states:
            _, probs = self._run(ct_c, [state], True)
            probs = np.asarray(probs, dtype=np.float32)
            total = probs if total is None else total + probs
            if agreement is not None:
                member_labels.append(probs.argmax(0).astype(np.uint8))
        assert total is not None
        labels = total.argmax(0).astype(np.uint8)
        if agreement is not None:
            counts = agreement.add(
                torch.from_numpy(np.stack(member_labels)), torch.from_numpy(labels)
            )
            agreement.disagreement = ct_c.with_array(counts.numpy())
        return ct_c, labels

    def predict_labels(
        self, ct: Volume, *, progress: ProgressCallback | None = None
    ) -> tuple[Volume, npt.NDArray[np.uint8]]:
        """Label per voxel (0 background, ``i`` structure ``i - 1``) on the canonical axial
        grid of ``ct``; returns that grid's CT volume and the labels (z, y, x)."""
        return self._labels(ct, None)

    def predict(self, ct: Volume, *, progress: ProgressCallback | None = None) -> dict[str, Volume]:
        """Post-processed boolean masks per structure on exactly the grid of ``ct``."""
        from dlas.prediction.engine import structure_masks

        ct_c, labels = self._labels(ct, None)
        return structure_masks(self.model.info.structure_set, self.structures, ct, ct_c, labels)

    def predict_with_agreement(
        self, ct: Volume, *, progress: ProgressCallback | None = None
    ) -> tuple[dict[str, Volume], MemberAgreement]:
        """:meth:`predict`'s masks and the members' agreement (see
        :class:`~dlas.prediction.engine.MemberAgreement`)."""
        from dlas.prediction.engine import MemberAgreement, back_to_grid, structure_masks

        agreement = MemberAgreement.empty(self.members, len(self.model.info.classes))
        ct_c, labels = self._labels(ct, agreement)
        if agreement.disagreement is not None:
            agreement.disagreement = back_to_grid(agreement.disagreement, ct)
        masks = structure_masks(self.model.info.structure_set, self.structures, ct, ct_c, labels)
        return masks, agreement
