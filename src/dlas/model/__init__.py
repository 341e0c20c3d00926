"""The DpnUNet segmentation model: architecture, presets, preprocessing and model files.

Torch is imported only when a network is built or loaded (``DpnUNet``, ``load_model``), so that
reading a model's description stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlas.model.checkpoint import (
    MODEL_JSON,
    LoadedModel,
    ModelFileError,
    ModelInfo,
    WeightsEntry,
    check_state_dict,
    file_sha256,
    load_model,
    load_weights,
    read_model_info,
    save_model,
    save_weights,
)
from dlas.model.config import (
    PRESETS,
    ArchitectureSpec,
    DpnUNetConfig,
    Preprocessing,
    config_sha256,
)
from dlas.model.preprocessing import (
    SliceGrid,
    body_box,
    canonical_axial,
    context_indices,
    normalise_hu,
    plan_grid,
    resample_to_ct,
    resample_to_model,
)
from dlas.model.qa_reference import (
    QA_REFERENCE_SCHEMA_VERSION,
    CaseMeasures,
    build_qa_reference,
    input_domain,
    measure_case,
)
from dlas.model.runtime import DeviceError, lr_swap_table, resolve_device

if TYPE_CHECKING:
    from dlas.model.dpn_unet import DpnUNet, DualPathBlock, count_parameters

__all__ = [
    "MODEL_JSON",
    "PRESETS",
    "QA_REFERENCE_SCHEMA_VERSION",
    "ArchitectureSpec",
    "CaseMeasures",
    "DeviceError",
    "DpnUNet",
    "DpnUNetConfig",
    "DualPathBlock",
    "LoadedModel",
    "ModelFileError",
    "ModelInfo",
    "Preprocessing",
    "SliceGrid",
    "WeightsEntry",
    "body_box",
    "build_qa_reference",
    "canonical_axial",
    "check_state_dict",
    "config_sha256",
    "context_indices",
    "count_parameters",
    "file_sha256",
    "input_domain",
    "load_model",
    "load_weights",
    "lr_swap_table",
    "measure_case",
    "normalise_hu",
    "plan_grid",
    "read_model_info",
    "resample_to_ct",
    "resample_to_model",
    "resolve_device",
    "save_model",
    "save_weights",
]

_LAZY = {"DpnUNet", "DualPathBlock", "count_parameters"}


def __getattr__(name: str) -> Any:
    # The network classes need torch: import it on first use only.
    if name in _LAZY:
        from dlas.model import dpn_unet

        return getattr(dpn_unet, name)
    raise AttributeError(f"module 'dlas.model' has no attribute {name!r}")
