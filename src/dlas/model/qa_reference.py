"""The QA reference of a model: what its training cases looked like, recorded in ``model.json``.

Prediction QA (:mod:`dlas.prediction.qa`) compares every prediction with the cases the model was
trained on. Training measures them once, from the cases it has already loaded (no extra pass
over the data, no extra training), and :func:`~dlas.model.save_model` stores the result as the
model's ``qa`` block, covered by the model hash::

    {
      "schema_version": 1,
      "cases": 40,
      "structures": {                    # ground-truth volumes, cm³
        "Bladder": {"n": 40, "min": 61.2, "p5": 80.4, "median": 190.0, "p95": 402.5, "max": 455.1},
        ...
      },
      "input": {                         # the CTs, each summarised the same way
        "pixel_spacing_mm": {...}, "slice_thickness_mm": {...}, "field_of_view_mm": {...},
        "hu_p05": {...}, "hu_p50": {...}, "hu_p95": {...}
      },
      "definitions": {...}               # the sentences below, for a reader of model.json
    }

Definitions (identical at training and at prediction, :func:`input_domain`):

* pixel spacing: the in-plane voxel size in mm (both in-plane axes are recorded);
* slice thickness: the voxel size along the axis closest to the patient's z axis, in mm;
* field of view: the larger in-plane extent of the image, voxels x spacing, in mm;
* HU percentiles: the 5th, 50th and 95th percentiles of the voxels above -500 HU (the body and
  what it contains; air is left out so that the field of view does not shift them), on a
  regular in-plane subsample of at most about two million voxels (deterministic).

A structure that a case lacks (partial labels) does not count towards that structure's ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dlas.io.volume import Volume

__all__ = [
    "QA_REFERENCE_SCHEMA_VERSION",
    "CaseMeasures",
    "build_qa_reference",
    "input_domain",
    "measure_case",
    "slice_axis",
]

QA_REFERENCE_SCHEMA_VERSION = 1
#: HU above which a voxel counts for the HU percentiles.
HU_FLOOR = -500.0
_SAMPLE_VOXELS = 2_000_000
_DEFINITIONS = {
    "structures": "ground-truth volume per training case, cm³ (voxel count x voxel volume)",
    "pixel_spacing_mm": "in-plane voxel size, mm (both in-plane axes)",
    "slice_thickness_mm": "voxel size along the axis closest to patient z, mm",
    "field_of_view_mm": "larger in-plane extent of the image (voxels x spacing), mm",
    "hu": "5th, 50th and 95th percentile of the voxels above -500 HU (regular in-plane "
    "subsample of at most about 2 million voxels)",
}


def slice_axis(volume: Volume) -> int:
    """The array axis (0, 1 or 2 of (z, y, x)) that runs closest to the patient's z axis."""
    return int(np.argmax(np.abs(volume.direction[:, 2])))


def input_domain(ct: Volume) -> dict[str, Any]:
    """The input-domain measures of one CT (see the module docstring).

    Returns
    -------
    dict
        ``pixel_spacing_mm`` (list of the two in-plane spacings), ``slice_thickness_mm``,
        ``field_of_view_mm`` (mm) and ``hu_p05``, ``hu_p50``, ``hu_p95`` (HU; None when no voxel
        is above -500 HU).
    """
    axis = slice_axis(ct)
    plane = [a for a in range(3) if a != axis]
    spacing = [float(ct.spacing[a]) for a in plane]
    fov = max(ct.shape[a] * float(ct.spacing[a]) for a in plane)
    per_slice = ct.shape[plane[0]] * ct.shape[plane[1]]
    step = max(1, math.ceil(math.sqrt(ct.array.size / _SAMPLE_VOXELS)))
    index: list[slice] = [slice(None)] * 3
    for a in plane:
        index[a] = slice(None, None, step if per_slice > 1 else 1)
    sample = np.asarray(ct.array[tuple(index)], dtype=np.float32)
    body = sample[sample > HU_FLOOR]
    if body.size:
        p05, p50, p95 = (float(v) for v in np.percentile(body, [5, 50, 95]))
        hu: list[float | None] = [round(p05, 1), round(p50, 1), round(p95, 1)]
    else:
        hu = [None, None, None]
    return {
        "pixel_spacing_mm": [round(v, 4) for v in spacing],
        "slice_thickness_mm": round(float(ct.spacing[axis]), 4),
        "field_of_view_mm": round(fov, 2),
        "hu_p05": hu[0],
        "hu_p50": hu[1],
        "hu_p95": hu[2],
    }


@dataclass
class CaseMeasures:
    """What the QA reference needs from one training case."""

    domain: dict[str, Any]
    volumes_cm3: dict[str, float] = field(default_factory=dict)


def measure_case(ct: Volume, masks: Mapping[str, Volume]) -> CaseMeasures:
    """Input-domain measures of ``ct`` and the volume (cm³) of each mask on its grid."""
    voxel_cm3 = ct.voxel_volume_mm3 / 1000.0
    return CaseMeasures(
        domain=input_domain(ct),
        volumes_cm3={
            name: int(np.count_nonzero(mask.array)) * voxel_cm3 for name, mask in masks.items()
        },
    )


def _summary(values: Sequence[float], digits: int) -> dict[str, Any]:
    """n, min, p5, median, p95, max of ``values`` (linear interpolation), rounded."""
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=np.float64)
    p5, median, p95 = np.percentile(arr, [5, 50, 95])
    return {
        "n": int(arr.size),
        "min": round(float(arr.min()), digits),
        "p5": round(float(p5), digits),
        "median": round(float(median), digits),
        "p95": round(float(p95), digits),
        "max": round(float(arr.max()), digits),
    }


def build_qa_reference(cases: Sequence[CaseMeasures], structures: Sequence[str]) -> dict[str, Any]:
    """The ``qa`` block of ``model.json`` from the training cases' measures (JSON-ready,
    deterministic: it depends on the measures only, not on their order)."""
    domains = [c.domain for c in cases]
    spacing = [v for d in domains for v in d["pixel_spacing_mm"]]
    inputs: dict[str, Any] = {
        "pixel_spacing_mm": _summary(spacing, 4),
        "slice_thickness_mm": _summary([d["slice_thickness_mm"] for d in domains], 4),
        "field_of_view_mm": _summary([d["field_of_view_mm"] for d in domains], 2),
    }
    for key in ("hu_p05", "hu_p50", "hu_p95"):
        inputs[key] = _summary([d[key] for d in domains if d[key] is not None], 1)
    return {
        "schema_version": QA_REFERENCE_SCHEMA_VERSION,
        "cases": len(cases),
        "structures": {
            name: _summary([c.volumes_cm3[name] for c in cases if name in c.volumes_cm3], 3)
            for name in structures
        },
        "input": inputs,
        "definitions": dict(_DEFINITIONS),
    }
