"""Prediction QA: flag suspicious predictions before a clinician sees them.

Every prediction is checked structure by structure, and its CT against the training cases; the
result is a :class:`QAReport` (``qa.json`` beside the prediction, see :mod:`dlas.prediction.api`).
A flag never changes a mask: it says what looks wrong, with the numbers, so that a reviewer knows
where to look. Every flag has the severity ``warn``; ``dlas predict --qa-fail error`` turns a
flagged case into a failed one.

Checks (flag codes), per predicted structure
--------------------------------------------
``missing``
    The structure came out empty. The model was trained to find it, so an empty result is
    either an unusual anatomy or a failure; no other check of the structure runs.
``volume-out-of-range``
    The volume (cm³) lies outside the range of the structure's ground-truth volumes on the
    training cases (``model.json`` ``qa.structures``, :mod:`dlas.model.qa_reference`), widened
    by ``volume_margin`` (default 0.25: below ``min x 0.75`` or above ``max x 1.25``). Why 25 %:
    a training cohort of tens of cases does not reach the extremes of the population, so its
    own range alone would flag normal anatomy; a structure missed by half or grown into its
    neighbour (an over-contoured CTV) changes by far more. Skipped when fewer than
    :data:`MIN_REFERENCE_CASES` training cases had the structure.
``fragments``
    Connected components (3-D, 26-connectivity as in post-processing) beyond the largest,
    listed with their volumes; components below ``fragment_min_cm3`` (default 0.1 cm³, a few
    voxels of a typical planning CT, below what a reviewer would draw) are ignored.
    ``max_fragments`` (default 0) are allowed. Organs that are one piece are normally cleaned by
    ``largest_component`` post-processing; this check catches the structures that are not (a
    CTV), and structures that are legitimately in pieces turn it off (``null``).
``z-gaps``
    Empty axial slices between the first and the last slice of the structure (``max_z_gaps``,
    default 0): a contour stack with a missing slice. A gap always splits the structure, so it
    also counts as fragments.
``holes``
    Cavities enclosed in 3-D (background not connected to the outside of the structure's
    bounding box), of at least ``fragment_min_cm3``. Cheap (one hole filling on the bounding
    box); structures post-processed with ``fill_holes`` never have any.
``laterality``
    For a structure whose definition has a side (``laterality`` L or R): its centroid lies on
    the wrong side of the body midline. The midline is the x coordinate (DICOM patient LPS, mm;
    +x is the patient's left) of the centroid of the body; centroids are computed in patient
    coordinates from the volume's geometry, so the orientation of the array does not matter.
``outside-body``
    More than ``outside_body_max`` (default 5 %) of the structure lies outside the body. 5 %
    leaves room for partial-volume voxels where a structure touches the skin; a structure that
    leaks into the air or the couch exceeds it.
``uncertainty``
    For an ensemble or test-time augmentation (two or more members): 1 - the mean pairwise DSC
    between the members' masks (arg-max before post-processing), above ``uncertainty_max``
    (default 0.2). Members of a converged model agree on an organ with pairwise DSCs well
    above 0.8 (the test DSCs of the seed study's structures lie between 0.85 and 0.95);
    disagreement beyond that marks a case the models find hard. The share of the members'
    union that not every member labels is recorded too, and the per-voxel count of
    disagreeing members can be written as a NIfTI map (``uncertainty.nii.gz``).

Check of the input CT
---------------------
``input-domain``
    The CT's in-plane pixel spacing, slice thickness and field of view outside the training
    range widened by ``spacing_margin`` (relative, default 0.25, as for volumes), or its 5th,
    50th or 95th HU percentile (voxels above -500 HU) outside the training range widened by
    ``hu_margin`` (default 100 HU: more than scanner-to-scanner calibration differences of a few
    tens of HU, less than the shift of contrast media or a wrong rescale). One flag per quantity.

Thresholds come from the structure set (``StructureDef.qa``, :class:`~dlas.structures.QAThresholds`;
``StructureSet.qa``, :class:`~dlas.structures.InputQAThresholds`); the defaults are as above and
are judgement calls stated here, not fitted values — a department should tune them on its own
data. The body is the largest 6-connected component of the voxels above the model's
``body_threshold_hu`` (-500 HU by default), holes filled slice by slice.

Outputs are deterministic and hold no identifiers: structure names, codes and numbers only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dlas.io.volume import AXIAL_DIRECTION, Volume, body_mask
from dlas.model.preprocessing import canonical_axial
from dlas.model.qa_reference import input_domain
from dlas.prediction.engine import MemberAgreement
from dlas.structures import InputQAThresholds, QAThresholds, StructureDef, StructureSet

__all__ = [
    "CODES",
    "MIN_REFERENCE_CASES",
    "QA_SCHEMA_VERSION",
    "QAFlag",
    "QAReport",
    "StructureQA",
    "check_prediction",
]

log = logging.getLogger(__name__)

QA_SCHEMA_VERSION = 1
#: Every flag code, in the order of the module docstring.
CODES = (
    "missing",
    "volume-out-of-range",
    "fragments",
    "z-gaps",
    "holes",
    "laterality",
    "outside-body",
    "uncertainty",
    "input-domain",
)
#: Training cases with a structure needed before its volume range is trusted.
MIN_REFERENCE_CASES = 3
_MAX_LISTED = 10


@dataclass(frozen=True)
class QAFlag:
    """One finding: a code of :data:`CODES`, a one-line message, and the numbers behind it."""

    code: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)
    structure: str | None = None
    severity: str = "warn"

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "code": self.code,
            "severity": self.severity,
            "structure": self.structure,
            "message": self.message,
            "values": self.values,
        }


@dataclass
class StructureQA:
    """The checks of one structure: what was measured and what was flagged."""

    name: str
    measures: dict[str, Any] = field(default_factory=dict)
    flags: list[QAFlag] = field(default_factory=list)

    @property
    def codes(self) -> list[str]:
        """Flag codes, each once, in the order of :data:`CODES`."""
        found = {f.code for f in self.flags}
        return [c for c in CODES if c in found]


@dataclass
class QAReport:
    """Prediction QA of one CT (``qa.json``)."""

    structures: dict[str, StructureQA]
    input_measures: dict[str, Any]
    input_flags: list[QAFlag] = field(default_factory=list)
    members: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def flags(self) -> list[QAFlag]:
        """Every flag: the input's first, then each structure's in structure-set order."""
        return [*self.input_flags, *(f for s in self.structures.values() for f in s.flags)]

    @property
    def status(self) -> str:
        """``flagged`` when anything was flagged, else ``pass``."""
        return "flagged" if self.flags else "pass"

    def codes(self, structure: str | None = None) -> list[str]:
        """Flag codes of a structure (None: of the input)."""
        if structure is None:
            found = {f.code for f in self.input_flags}
            return [c for c in CODES if c in found]
        return self.structures[structure].codes

    def summary(self) -> dict[str, Any]:
        """Status, number of flags, and the codes per structure (for ``prediction.json`` and
        ``predictions.json``)."""
        return {
            "status": self.status,
            "flags": len(self.flags),
            "input": self.codes(None),
            "structures": {n: s.codes for n, s in self.structures.items() if s.flags},
        }

    def describe(self) -> str:
        """The flags on one line: ``Bladder fragments: ...; input input-domain: ...``."""
        return "; ".join(f"{f.structure or 'input'} {f.code}: {f.message}" for f in self.flags)

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form (``qa.json``): status, number of flags, the codes (as in
        :meth:`summary`), then measures and flags of the input and of every structure."""
        summary = self.summary()
        return {
            "schema_version": QA_SCHEMA_VERSION,
            "kind": "dlas-prediction-qa",
            "status": summary["status"],
            "flags": summary["flags"],
            "codes": {"input": summary["input"], "structures": summary["structures"]},
            "members": self.members,
            "notes": self.notes,
            "input": {
                "measures": self.input_measures,
                "flags": [f.to_data() for f in self.input_flags],
            },
            "structures": {
                name: {"measures": s.measures, "flags": [f.to_data() for f in s.flags]}
                for name, s in self.structures.items()
            },
        }


# ------------------------------------------------------------------------------ geometry
def _centroid_mm(volume: Volume, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Centroid of ``mask`` as an LPS point (x, y, z) in mm, from its marginal sums."""
    total = float(np.count_nonzero(mask))
    index = [
        float(
            np.dot(
                mask.sum(axis=tuple(a for a in range(3) if a != axis)), np.arange(mask.shape[axis])
            )
        )
        / total
        for axis in range(3)
    ]
    return volume.index_to_physical(np.array(index))


def _bbox(mask: npt.NDArray[np.bool_]) -> tuple[slice, ...]:
    out = []
    for axis in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        out.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(out)


def _components_cm3(crop: npt.NDArray[np.bool_], voxel_cm3: float) -> list[float]:
    """Volumes (cm³) of the 26-connected components of ``crop``, largest first."""
    from scipy import ndimage

    labels, n = ndimage.label(crop, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    return [float(v) * voxel_cm3 for v in sorted(sizes.tolist(), reverse=True)]


def _cavities_cm3(crop: npt.NDArray[np.bool_], voxel_cm3: float) -> list[float]:
    """Volumes (cm³) of the cavities enclosed in ``crop`` (3-D), largest first."""
    from scipy import ndimage

    cavities = ndimage.binary_fill_holes(crop) & ~crop
    labels, n = ndimage.label(cavities)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    return [float(v) * voxel_cm3 for v in sorted(sizes.tolist(), reverse=True)]


def _z_gaps(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Runs of empty slices between the first and last non-empty slice of a (z, y, x) mask, as
    (first, last) slice indices."""
    occupied: npt.NDArray[np.bool_] = np.asarray(mask.any(axis=(1, 2)))
    ks = np.flatnonzero(occupied)
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for k in range(int(ks[0]), int(ks[-1]) + 1):
        if not occupied[k] and start is None:
            start = k
        elif occupied[k] and start is not None:
            runs.append((start, k - 1))
            start = None
    return runs


def _range_text(low: float, high: float, unit: str) -> str:
    return f"{low:.4g}-{high:.4g} {unit}".rstrip()


# ------------------------------------------------------------------------------ structures
@dataclass
class _CaseContext:
    """What every structure's checks share."""

    ct: Volume  # canonical axial
    body: npt.NDArray[np.bool_]
    midline_x_mm: float | None
    reference: Mapping[str, Any]
    agreement: MemberAgreement | None
    voxel_cm3: float


def _check_structure(
    definition: StructureDef, mask: npt.NDArray[np.bool_], cls: int, ctx: _CaseContext
) -> StructureQA:
    name, t = definition.name, definition.qa
    result = StructureQA(name)
    voxels = int(np.count_nonzero(mask))
    volume = voxels * ctx.voxel_cm3
    result.measures["volume_cm3"] = round(volume, 3)

    def flag(code: str, message: str, **values: Any) -> None:
        result.flags.append(QAFlag(code, message, values, structure=name))

    _uncertainty(result, t, cls, ctx, flag)
    if voxels == 0:
        if t.missing:
            flag("missing", "the prediction is empty", volume_cm3=0.0)
        return result
    _volume(result, t, volume, ctx.reference.get(name), flag)
    crop = mask[_bbox(mask)]
    pieces = _components_cm3(crop, ctx.voxel_cm3)
    extra = [round(v, 3) for v in pieces[1:] if v >= t.fragment_min_cm3]
    result.measures["fragments"] = len(extra)
    if t.max_fragments is not None and len(extra) > t.max_fragments:
        flag(
            "fragments",
            f"{len(extra)} piece(s) beyond the largest ({pieces[0]:.3g} cm³): "
            + ", ".join(f"{v:.3g}" for v in extra[:_MAX_LISTED])
            + " cm³",
            largest_cm3=round(pieces[0], 3),
            fragments_cm3=extra[:_MAX_LISTED],
            count=len(extra),
            allowed=t.max_fragments,
        )
    runs = _z_gaps(mask)
    empty = sum(b - a + 1 for a, b in runs)
    result.measures["z_gap_slices"] = empty
    if t.max_z_gaps is not None and empty > t.max_z_gaps:
        gaps = [
            [round(float(ctx.ct.index_to_physical([k, 0, 0])[2]), 2) for k in run] for run in runs
        ]
        where = ", ".join(f"z {a:g}" if a == b else f"z {a:g} to {b:g}" for a, b in gaps)
        flag(
            "z-gaps",
            f"{empty} empty slice(s) inside the structure ({where} mm)",
            empty_slices=empty,
            gaps_z_mm=gaps[:_MAX_LISTED],
            allowed=t.max_z_gaps,
        )
    cavities = [round(v, 3) for v in _cavities_cm3(crop, ctx.voxel_cm3) if v >= t.fragment_min_cm3]
    result.measures["holes"] = len(cavities)
    if t.holes and cavities:
        flag(
            "holes",
            f"{len(cavities)} enclosed cavit{'y' if len(cavities) == 1 else 'ies'}: "
            + ", ".join(f"{v:.3g}" for v in cavities[:_MAX_LISTED])
            + " cm³",
            holes_cm3=cavities[:_MAX_LISTED],
            count=len(cavities),
        )
    _laterality(result, definition, mask, ctx, flag)
    _outside_body(result, t, mask, voxels, ctx, flag)
    return result


def _volume(result: StructureQA, t: QAThresholds, volume: float, ref: Any, flag: Any) -> None:
    if t.volume_margin is None or not isinstance(ref, Mapping):
        return
    n = int(ref.get("n", 0))
    if n < MIN_REFERENCE_CASES:
        return
    low = float(ref["min"]) * (1.0 - t.volume_margin)
    high = float(ref["max"]) * (1.0 + t.volume_margin)
    result.measures["volume_allowed_cm3"] = [round(low, 3), round(high, 3)]
    if low <= volume <= high:
        return
    flag(
        "volume-out-of-range",
        f"{volume:.4g} cm³, outside {_range_text(low, high, 'cm³')} "
        f"(training {ref['min']:.4g}-{ref['max']:.4g} cm³ on {n} cases, margin "
        f"{t.volume_margin:.0%})",
        volume_cm3=round(volume, 3),
        allowed_cm3=[round(low, 3), round(high, 3)],
        training_cm3={k: ref[k] for k in ("n", "min", "p5", "median", "p95", "max") if k in ref},
    )


def _laterality(
    result: StructureQA,
    definition: StructureDef,
    mask: npt.NDArray[np.bool_],
    ctx: _CaseContext,
    flag: Any,
) -> None:
    side = definition.laterality
    if side is None or not definition.qa.laterality or ctx.midline_x_mm is None:
        return
    offset = float(_centroid_mm(ctx.ct, mask)[0]) - ctx.midline_x_mm
    result.measures["centroid_from_midline_mm"] = round(offset, 2)  # + : patient left
    found = "L" if offset > 0 else "R"
    if found == side:
        return
    words = {"L": "left", "R": "right"}
    flag(
        "laterality",
        f"a {words[side]} structure with its centroid {abs(offset):.1f} mm to the patient's "
        f"{words[found]} of the body midline",
        expected_side=side,
        found_side=found,
        centroid_from_midline_mm=round(offset, 2),
    )


def _outside_body(
    result: StructureQA,
    t: QAThresholds,
    mask: npt.NDArray[np.bool_],
    voxels: int,
    ctx: _CaseContext,
    flag: Any,
) -> None:
    outside = int(np.count_nonzero(mask & ~ctx.body)) / voxels
    result.measures["outside_body_fraction"] = round(outside, 4)
    if t.outside_body_max is not None and outside > t.outside_body_max:
        flag(
            "outside-body",
            f"{outside:.1%} of the structure lies outside the body "
            f"(at most {t.outside_body_max:.0%} allowed)",
            fraction=round(outside, 4),
            allowed=t.outside_body_max,
        )


def _uncertainty(
    result: StructureQA, t: QAThresholds, cls: int, ctx: _CaseContext, flag: Any
) -> None:
    agreement = ctx.agreement
    if agreement is None or agreement.members < 2:
        return
    score = 1.0 - agreement.mean_pairwise_dsc(cls)
    unagreed = agreement.unagreed_fraction(cls)
    result.measures["uncertainty"] = round(score, 4)
    result.measures["unagreed_fraction"] = round(unagreed, 4)
    if t.uncertainty_max is not None and score > t.uncertainty_max:
        flag(
            "uncertainty",
            f"the {agreement.members} members disagree: 1 - mean pairwise DSC = {score:.3f} "
            f"(at most {t.uncertainty_max:g}); {unagreed:.1%} of their union not agreed by all",
            uncertainty=round(score, 4),
            unagreed_fraction=round(unagreed, 4),
            members=agreement.members,
            allowed=t.uncertainty_max,
        )


# ------------------------------------------------------------------------------ input
_INPUT_LABELS = {
    "pixel_spacing_mm": ("pixel spacing", "mm"),
    "slice_thickness_mm": ("slice thickness", "mm"),
    "field_of_view_mm": ("field of view", "mm"),
    "hu_p05": ("5th HU percentile", "HU"),
    "hu_p50": ("median HU", "HU"),
    "hu_p95": ("95th HU percentile", "HU"),
}


def _input_flags(measures: Mapping[str, Any], reference: Any, t: InputQAThresholds) -> list[QAFlag]:
    """One ``input-domain`` flag per quantity outside its widened training range."""
    if not t.enabled or not isinstance(reference, Mapping):
        return []
    flags: list[QAFlag] = []
    for key, (label, unit) in _INPUT_LABELS.items():
        ref = reference.get(key)
        value = measures.get(key)
        if not isinstance(ref, Mapping) or int(ref.get("n", 0)) < 1 or value is None:
            continue
        lo, hi = float(ref["min"]), float(ref["max"])
        if unit == "HU":
            low, high = lo - t.hu_margin, hi + t.hu_margin
        else:
            low, high = lo * (1.0 - t.spacing_margin), hi * (1.0 + t.spacing_margin)
        values = [float(v) for v in (value if isinstance(value, list) else [value])]
        outside = [v for v in values if not low <= v <= high]
        if not outside:
            continue
        shown = " x ".join(f"{v:.4g}" for v in values)
        flags.append(
            QAFlag(
                "input-domain",
                f"{label} {shown} {unit} outside {_range_text(low, high, unit)} (training "
                f"{lo:.4g}-{hi:.4g} {unit})",
                {
                    "quantity": key,
                    "value": value,
                    "allowed": [round(low, 4), round(high, 4)],
                    "training": [lo, hi],
                },
            )
        )
    return flags


# ------------------------------------------------------------------------------ entry point
def check_prediction(
    ct: Volume,
    masks: Mapping[str, Volume],
    structure_set: StructureSet,
    reference: Mapping[str, Any] | None,
    *,
    agreement: MemberAgreement | None = None,
    body_threshold_hu: float = -500.0,
) -> QAReport:
    """Run every QA check on one prediction (see the module docstring).

    Parameters
    ----------
    ct
        The CT the masks were predicted on (any axis-aligned orientation; HU).
    masks
        Structure name → boolean mask (z, y, x) on the grid of ``ct``; names of
        ``structure_set``, in its order.
    structure_set
        The model's structure set: laterality and QA thresholds of each structure.
    reference
        The model's QA reference (``ModelInfo.qa``, :mod:`dlas.model.qa_reference`); empty or
        None for a model saved without one (volume and input-domain checks are then skipped
        and a note says so).
    agreement
        Member agreement from :meth:`~dlas.prediction.Predictor.predict_with_agreement`
        (uncertainty check); None for a single member.
    body_threshold_hu
        HU threshold of the body (the model's preprocessing ``body_threshold_hu``).

    Returns
    -------
    QAReport
        Flags and measures per structure and for the input.
    """
    canonical = np.allclose(ct.direction, AXIAL_DIRECTION, atol=1e-4)
    ct_c = ct if canonical else canonical_axial(ct)
    ref = dict(reference or {})
    body = body_mask(ct_c, body_threshold_hu)
    midline = float(_centroid_mm(ct_c, body)[0]) if body.any() else None
    ctx = _CaseContext(
        ct=ct_c,
        body=body,
        midline_x_mm=midline,
        reference=ref.get("structures", {}) if isinstance(ref.get("structures"), Mapping) else {},
        agreement=agreement,
        voxel_cm3=ct_c.voxel_volume_mm3 / 1000.0,
    )
    notes: list[str] = []
    if not ref:
        notes.append(
            "the model records no QA reference (saved without one): volume and input-domain "
            "checks skipped"
        )
    if midline is None:
        notes.append(f"no body found above {body_threshold_hu:g} HU: laterality not checked")
    measures = input_domain(ct)
    if midline is not None:
        measures["body_midline_x_mm"] = round(midline, 2)
    structures: dict[str, StructureQA] = {}
    names: Sequence[str] = structure_set.names
    for name, mask in masks.items():
        array = mask.array if canonical else canonical_axial(mask).array
        structures[name] = _check_structure(
            structure_set[name], np.asarray(array, dtype=bool), names.index(name) + 1, ctx
        )
    report = QAReport(
        structures=structures,
        input_measures=measures,
        input_flags=_input_flags(measures, ref.get("input"), structure_set.qa),
        members=agreement.members if agreement is not None else 1,
        notes=notes,
    )
    if report.flags:
        log.info("prediction QA flagged: %s", report.describe())
    return report
