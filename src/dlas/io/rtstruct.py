"""DICOM RTSTRUCT ↔ binary masks on the CT grid.

Why our own code (and not rt-utils or dicompyler-core): the masks that every metric is computed
on must follow one stated rule, every doubtful contour must be counted and reported instead of
being dropped or "fixed" silently, and the files we write must carry the provenance a planning
system and an auditor need (generation algorithm, model name and version). The geometry lives
in :mod:`dlas.io.contours` (even-odd fill over pixel centres; marching-squares tracing).

Reading (:func:`read_rtstruct`) rasterises each ROI, keyed by ROI number, onto the CT grid:

* all CLOSED_PLANAR contours of an ROI on one slice are filled together by the even-odd rule, so
  holes and holes in holes come out right;
* a contour is placed on the slice its ContourImageSequence references; without a reference (or
  when the reference disagrees with the contour's z), on the slice whose centre lies within
  ``z_tolerance_mm`` of the contour's z;
* counted warnings, never silent drops: empty ROIs, POINT and OPEN contours, contours with fewer
  than 3 points, contours that are not axial, lie off the image, or lie between slices, and ROI
  names used twice;
* refused with an error: an RTSTRUCT whose frame of reference is not the CT's, or that references
  CT images absent from the series.

Writing (:func:`write_rtstruct`) traces each mask slice by slice; holes become inner contours
that the even-odd rule restores. Decimal strings stay within DICOM's 16 characters. Automatic
(or semi-automatic) structures must name the algorithm (model name and version): the writer
refuses otherwise, and records it in ROIGenerationDescription and in the ROI Derivation
Algorithm Identification Sequence.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from dlas import __version__
from dlas.errors import RTStructError
from dlas.io.contours import rasterize_polygons, trace_mask
from dlas.io.ct import CTSeries
from dlas.io.ct_writer import make_uid
from dlas.io.dicom_scan import CT_IMAGE_STORAGE, RTSTRUCT_STORAGE
from dlas.io.volume import Volume
from dlas.structures import Code, RTROIInterpretedType, StructureDef, StructureSet

__all__ = [
    "AlgorithmIdentification",
    "ROIGenerationAlgorithm",
    "ROISummary",
    "RTStructData",
    "RTStructROI",
    "RTStructWarning",
    "read_rtstruct",
    "referenced_series_uids",
    "summarize_rtstruct",
    "write_rtstruct",
]

log = logging.getLogger(__name__)

#: The (retired but universally used) SOP class referenced for the study in RTSTRUCTs.
_STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"

#: DICOM CID 7162 "Surface Processing Algorithm Families": artificial intelligence.
_ARTIFICIAL_INTELLIGENCE = Code(scheme="DCM", value="123110", meaning="Artificial Intelligence")

#: Default palette for structures that a structure set does not describe.
_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
]


class ROIGenerationAlgorithm(str, enum.Enum):
    """DICOM ROI Generation Algorithm (3006,0036)."""

    AUTOMATIC = "AUTOMATIC"
    SEMIAUTOMATIC = "SEMIAUTOMATIC"
    MANUAL = "MANUAL"


@dataclass(frozen=True)
class AlgorithmIdentification:
    """The algorithm (model) that produced automatic structures.

    Attributes
    ----------
    name
        Model or algorithm name, e.g. ``"dlas DpnUNet LFT"``.
    version
        Version of the model, e.g. the software version plus a short weights hash.
    family
        Coded algorithm family; artificial intelligence by default.
    parameters
        Free-text parameters (e.g. the full model hash), optional.
    """

    name: str
    version: str
    family: Code = _ARTIFICIAL_INTELLIGENCE
    parameters: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.version.strip():
            raise RTStructError(
                "incomplete algorithm identification",
                expected="a non-empty algorithm name and version",
                found=f"name {self.name!r}, version {self.version!r}",
                fix="name the model and its version (they are written into the RTSTRUCT)",
            )

    def description(self) -> str:
        """ROIGenerationDescription text (at most 64 characters)."""
        return f"{self.name} {self.version}"[:64]


@dataclass(frozen=True)
class RTStructWarning:
    """A doubtful item found while reading an RTSTRUCT.

    ``code`` is one of: ``empty-roi``, ``duplicate-name``, ``non-closed-contour``,
    ``too-few-points``, ``non-axial-contour``, ``contour-off-image``,
    ``contour-partly-off-image``, ``contour-between-slices``, ``reference-mismatch``,
    ``other-frame-of-reference``.
    """

    code: str
    message: str
    roi_number: int | None = None
    roi_name: str | None = None

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "code": self.code,
            "message": self.message,
            "roi_number": self.roi_number,
            "roi_name": self.roi_name,
        }


@dataclass
class RTStructROI:
    """One ROI rasterised on the CT grid."""

    number: int
    name: str
    interpreted_type: str
    colour: tuple[int, int, int] | None
    mask: npt.NDArray[np.bool_]
    n_contours: int
    warnings: list[RTStructWarning] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether no voxel is inside."""
        return not bool(self.mask.any())


@dataclass
class RTStructData:
    """All ROIs of an RTSTRUCT rasterised on one CT, with every warning."""

    rois: dict[int, RTStructROI]
    warnings: list[RTStructWarning]
    frame_of_reference_uid: str
    sop_instance_uid: str
    label: str
    structure_set_date: str

    def warning_counts(self) -> dict[str, int]:
        """Number of warnings per code."""
        return dict(Counter(w.code for w in self.warnings))

    def by_name(self) -> dict[str, list[RTStructROI]]:
        """ROIs grouped by exact name (a name with two ROIs has a list of two)."""
        out: dict[str, list[RTStructROI]] = defaultdict(list)
        for roi in self.rois.values():
            out[roi.name].append(roi)
        return dict(out)


@dataclass(frozen=True)
class ROISummary:
    """What an RTSTRUCT holds for one ROI, read without a CT."""

    number: int
    name: str
    interpreted_type: str
    n_contours: int
    n_points: int
    geometric_types: dict[str, int]
    frame_of_reference_uid: str


def _load(source: str | os.PathLike[str] | Dataset) -> tuple[Dataset, str]:
    if isinstance(source, Dataset):
        return source, str(getattr(source, "filename", None) or "RTSTRUCT")
    path = Path(source)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise RTStructError(
            "cannot read RTSTRUCT (not DICOM, truncated or corrupt)",
            where=str(path),
            expected="a DICOM RT Structure Set file",
            found=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            fix="export the structure set again",
        ) from exc
    return ds, str(path)


def _require_rtstruct(ds: Dataset, where: str) -> None:
    if str(ds.get("Modality", "")) != "RTSTRUCT" and str(ds.get("SOPClassUID", "")) != (
        RTSTRUCT_STORAGE
    ):
        raise RTStructError(
            "not an RTSTRUCT",
            where=where,
            expected="Modality RTSTRUCT",
            found=f"Modality {ds.get('Modality', '<none>')}",
            fix="pass the structure set file (usually named RS*.dcm)",
        )


def summarize_rtstruct(source: str | os.PathLike[str] | Dataset) -> list[ROISummary]:
    """List the ROIs of an RTSTRUCT without rasterising them (no CT needed)."""
    ds, where = _load(source)
    _require_rtstruct(ds, where)
    contours = {int(item.ReferencedROINumber): item for item in ds.get("ROIContourSequence", [])}
    types = {
        int(obs.ReferencedROINumber): str(obs.get("RTROIInterpretedType", "") or "")
        for obs in ds.get("RTROIObservationsSequence", [])
    }
    out = []
    for roi in ds.get("StructureSetROISequence", []):
        number = int(roi.ROINumber)
        item = contours.get(number)
        seq = item.get("ContourSequence", []) if item is not None else []
        geometric = Counter(str(c.get("ContourGeometricType", "")) for c in seq)
        n_points = sum(int(c.get("NumberOfContourPoints", 0) or 0) for c in seq)
        out.append(
            ROISummary(
                number=number,
                name=str(roi.get("ROIName", "")),
                interpreted_type=types.get(number, ""),
                n_contours=len(seq),
                n_points=n_points,
                geometric_types=dict(geometric),
                frame_of_reference_uid=str(roi.get("ReferencedFrameOfReferenceUID", "")),
            )
        )
    return out


def referenced_series_uids(ds: Dataset) -> list[str]:
    """SeriesInstanceUIDs the RTSTRUCT says it was drawn on."""
    uids: list[str] = []
    for ref_for in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in ref_for.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                uid = str(series.get("SeriesInstanceUID", ""))
                if uid and uid not in uids:
                    uids.append(uid)
    return uids


def read_rtstruct(
    source: str | os.PathLike[str] | Dataset,
    ct: CTSeries,
    *,
    z_tolerance_mm: float | None = None,
) -> RTStructData:
    """Rasterise every ROI of an RTSTRUCT onto the grid of ``ct``.

    Parameters
    ----------
    source
        Path of the RTSTRUCT file, or the dataset.
    ct
        The CT series the structures were drawn on.
    z_tolerance_mm
        Largest distance (mm) between a contour's plane and a slice centre for the contour to
        belong to that slice; default a quarter of the slice spacing.

    Returns
    -------
    RTStructData
        Masks (z, y, x) keyed by ROI number, and every warning.

    Raises
    ------
    RTStructError
        Not an RTSTRUCT; frame of reference other than the CT's; references to CT images that the
        series does not hold.
    """
    ds, where = _load(source)
    _require_rtstruct(ds, where)
    volume = ct.volume
    sz = float(volume.spacing[0])
    z_tol = 0.25 * sz if z_tolerance_mm is None else float(z_tolerance_mm)
    roi_items = list(ds.get("StructureSetROISequence", []))
    _require_frame_of_reference(ds, roi_items, ct, where)
    slices = _Slices(volume, ct.sop_instance_uids, z_tol)
    _require_referenced_images(ds, slices, ct, where)

    types = {
        int(obs.ReferencedROINumber): str(obs.get("RTROIInterpretedType", "") or "")
        for obs in ds.get("RTROIObservationsSequence", [])
    }
    contour_items = {
        int(item.ReferencedROINumber): item for item in ds.get("ROIContourSequence", [])
    }
    warnings: list[RTStructWarning] = []
    rois: dict[int, RTStructROI] = {}
    names_seen: dict[str, list[int]] = defaultdict(list)
    for roi_item in roi_items:
        number = int(roi_item.ROINumber)
        roi = _read_roi(
            slices,
            roi_item,
            contour_items.get(number),
            types.get(number, ""),
            ct.frame_of_reference_uid,
        )
        names_seen[roi.name.strip().lower()].append(number)
        rois[number] = roi
        warnings.extend(roi.warnings)

    for numbers in names_seen.values():
        if len(numbers) > 1:
            names = ", ".join(f"{n} '{rois[n].name}'" for n in numbers if n in rois)
            warnings.append(
                RTStructWarning(
                    "duplicate-name",
                    f"ROIs {names} share one name; they are kept apart by ROI number, not merged",
                )
            )
    return RTStructData(
        rois=rois,
        warnings=warnings,
        frame_of_reference_uid=ct.frame_of_reference_uid,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        label=str(ds.get("StructureSetLabel", "")),
        structure_set_date=str(ds.get("StructureSetDate", "")),
    )


def _require_frame_of_reference(
    ds: Dataset, roi_items: list[Dataset], ct: CTSeries, where: str
) -> None:
    """Refuse an RTSTRUCT whose declared frames of reference do not include the CT's."""
    ct_for = ct.frame_of_reference_uid
    set_fors = {
        str(item.get("FrameOfReferenceUID", ""))
        for item in ds.get("ReferencedFrameOfReferenceSequence", [])
    }
    roi_fors = {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in roi_items} - {""}
    declared = (roi_fors or set_fors) - {""}
    if declared and ct_for not in declared:
        raise RTStructError(
            "RTSTRUCT belongs to another frame of reference",
            where=where,
            expected=f"FrameOfReferenceUID {ct_for} (of CT series {ct.series_instance_uid})",
            found=f"{', '.join(sorted(declared))}",
            fix="pair the RTSTRUCT with the CT it was drawn on (or register and re-export it)",
        )


def _require_referenced_images(ds: Dataset, slices: _Slices, ct: CTSeries, where: str) -> None:
    """Refuse contours that reference CT images the series does not hold."""
    missing: set[str] = set()
    for item in ds.get("ROIContourSequence", []):
        for contour in item.get("ContourSequence", []):
            for ref in contour.get("ContourImageSequence", []):
                uid = str(ref.get("ReferencedSOPInstanceUID", ""))
                if uid and uid not in slices.slice_of_uid:
                    missing.add(uid)
    if missing:
        raise RTStructError(
            "RTSTRUCT references CT images that are not in the series",
            where=where,
            expected=f"contours on the {slices.volume.shape[0]} images of CT series "
            f"{ct.series_instance_uid}",
            found=f"{len(missing)} referenced image(s) absent, e.g. {sorted(missing)[0]}",
            fix="export the RTSTRUCT together with the complete CT series it was drawn on",
        )


#: Records a warning of one ROI: ``warn(code, message)``.
_Warn = Callable[[str, str], None]


def _read_roi(
    slices: _Slices,
    roi_item: Dataset,
    item: Dataset | None,
    interpreted_type: str,
    ct_for: str,
) -> RTStructROI:
    """Rasterise one ROI: its usable contours filled slice by slice (even-odd rule), each
    doubtful contour warned about; an ROI in another frame of reference stays empty."""
    number = int(roi_item.ROINumber)
    name = str(roi_item.get("ROIName", ""))
    roi_warnings: list[RTStructWarning] = []

    def warn(code: str, message: str) -> None:
        roi_warnings.append(RTStructWarning(code, message, number, name))

    roi_for = str(roi_item.get("ReferencedFrameOfReferenceUID", "") or ct_for)
    colour: tuple[int, int, int] | None = None
    rgb = item.get("ROIDisplayColor") if item is not None else None
    if rgb is not None and len(rgb) == 3:
        colour = (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    nz, ny, nx = slices.volume.shape
    mask = np.zeros((nz, ny, nx), dtype=bool)
    if roi_for != ct_for:
        warn(
            "other-frame-of-reference",
            f"ROI {number} '{name}' lies in frame of reference {roi_for}, not the CT's; "
            "it is not rasterised",
        )
        return RTStructROI(number, name, interpreted_type, colour, mask, 0, roi_warnings)
    per_slice: dict[int, list[npt.NDArray[np.float64]]] = defaultdict(list)
    used = 0
    for c_index, contour in enumerate(item.get("ContourSequence", []) if item else []):
        placed = slices.place(contour, f"ROI {number} '{name}', contour {c_index + 1}", warn)
        if placed is not None:
            k, xy = placed
            per_slice[k].append(xy)
            used += 1
    for k, polygons in per_slice.items():
        mask[k] = rasterize_polygons(polygons, (ny, nx))
    if not mask.any():
        warn("empty-roi", f"ROI {number} '{name}' has no voxel inside ({used} usable contour(s))")
    return RTStructROI(number, name, interpreted_type, colour, mask, used, roi_warnings)


class _Slices:
    """The CT's slices as contours are placed on them: slice centres along z (mm), the slice
    of each referenced image, and the tolerance (mm) of a contour's distance to a slice."""

    def __init__(self, volume: Volume, sop_instance_uids: list[str], z_tol: float) -> None:
        self.volume = volume
        self.slice_of_uid = {uid: k for k, uid in enumerate(sop_instance_uids)}
        self.z_tol = z_tol
        self.sz = float(volume.spacing[0])
        nz = volume.shape[0]
        self.z_centres = volume.origin[2] + self.sz * np.arange(nz) * volume.direction[0, 2]

    def place(
        self, contour: Dataset, label: str, warn: _Warn
    ) -> tuple[int, npt.NDArray[np.float64]] | None:
        """The slice of a contour and its points as (x, y) pixel indices, or None (with a
        warning) for a contour that is not closed, has too few points, is not axial, or lies
        off the image or between slices."""
        volume = self.volume
        _, ny, nx = volume.shape
        kind = str(contour.get("ContourGeometricType", "")).upper()
        data = contour.get("ContourData")
        points = (
            np.asarray([float(v) for v in data], dtype=np.float64).reshape(-1, 3)
            if data is not None and len(data) % 3 == 0
            else np.zeros((0, 3))
        )
        if kind not in ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR"):
            warn(
                "non-closed-contour",
                f"{label}: {kind or 'untyped'} contour ignored "
                "(only CLOSED_PLANAR contours enclose a volume)",
            )
            return None
        if len(points) < 3:
            warn("too-few-points", f"{label}: {len(points)} point(s), at least 3 needed; ignored")
            return None
        idx = volume.physical_to_index(points)
        spread_mm = float(np.ptp(points @ volume.direction[0]))
        if spread_mm > self.z_tol:
            warn(
                "non-axial-contour",
                f"{label}: points span {spread_mm:.2f} mm across "
                "the slice direction (not an axial contour); ignored",
            )
            return None
        slice_k = self._slice_of(contour, float(idx[:, 0].mean()), points, label, warn)
        if slice_k is None:
            return None
        xy = idx[:, [2, 1]]
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        if hi[0] < -0.5 or hi[1] < -0.5 or lo[0] > nx - 0.5 or lo[1] > ny - 0.5:
            warn("contour-off-image", f"{label}: lies entirely outside the image; ignored")
            return None
        if lo[0] < -0.5 or lo[1] < -0.5 or hi[0] > nx - 0.5 or hi[1] > ny - 0.5:
            warn("contour-partly-off-image", f"{label}: extends beyond the image; clipped")
        return slice_k, xy

    def _slice_of(
        self,
        contour: Dataset,
        k_mean: float,
        points: npt.NDArray[np.float64],
        label: str,
        warn: _Warn,
    ) -> int | None:
        """The slice the contour references when its z agrees, else the slice within the
        tolerance of its mean index ``k_mean``; None (warned) when there is none."""
        nz = self.volume.shape[0]
        sz, z_tol, z_centres = self.sz, self.z_tol, self.z_centres
        z_mean = float(points[:, 2].mean())
        refs = contour.get("ContourImageSequence", [])
        if refs:
            k_ref = self.slice_of_uid[str(refs[0].ReferencedSOPInstanceUID)]
            if abs(z_mean - z_centres[k_ref]) <= max(z_tol, 0.5 * sz - 1e-6):
                return k_ref
            warn(
                "reference-mismatch",
                f"{label}: at z = {z_mean:.2f} mm but references "
                f"the image at z = {z_centres[k_ref]:.2f} mm; placed by its z instead",
            )
        nearest = int(np.rint(k_mean))
        if nearest < 0 or nearest >= nz:
            if abs(k_mean - np.clip(nearest, 0, nz - 1)) * sz > z_tol:
                warn(
                    "contour-off-image",
                    f"{label}: at z = {z_mean:.2f} mm, outside "
                    f"the CT (z {z_centres[0]:.2f} to {z_centres[-1]:.2f} mm); ignored",
                )
                return None
            nearest = int(np.clip(nearest, 0, nz - 1))
        if abs(k_mean - nearest) * sz > z_tol:
            warn(
                "contour-between-slices",
                f"{label}: at z = {z_mean:.2f} mm, "
                f"{abs(k_mean - nearest) * sz:.2f} mm from the nearest slice "
                f"(tolerance {z_tol:.2f} mm); ignored",
            )
            return None
        return nearest


# ---------------------------------------------------------------------------------- writing


def _ds_number(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def write_rtstruct(
    masks: Mapping[str, npt.ArrayLike | Volume],
    ct: CTSeries,
    path: str | os.PathLike[str],
    *,
    generation: ROIGenerationAlgorithm,
    algorithm: AlgorithmIdentification | None = None,
    structure_set: StructureSet | None = None,
    label: str = "dlas",
    series_description: str = "dlas structures",
    series_number: int = 900,
    timestamp: dt.datetime | None = None,
    uid_seed: str | None = None,
    roi_descriptions: Mapping[str, str] | None = None,
) -> Dataset:
    """Write masks on the grid of ``ct`` as an RTSTRUCT that references that series.

    Built in stages: the provenance and the masks are validated first (nothing is written
    when one fails), then the header (patient, study, frame of reference, series and structure
    set modules), the references to the CT images, and one ROI, contour and observation item
    per structure.

    Parameters
    ----------
    masks
        Structure name → boolean mask (z, y, x) on ``ct.volume``'s grid (array or Volume).
    ct
        The CT series the structures belong to (its headers supply patient, study and
        references).
    path
        Output file; written atomically.
    generation
        How the structures were made; AUTOMATIC and SEMIAUTOMATIC need ``algorithm``.
    algorithm
        The model that made them (name and version are written into every ROI).
    structure_set
        Supplies colours and RT ROI interpreted types; every mask name must map onto it (a
        canonical name or any spelling it matches, such as an institution's "CTV_Rectum").
    timestamp
        Structure set date/time (now by default; fixed for reproducible files).
    uid_seed
        Derive the new UIDs deterministically from this string.
    roi_descriptions
        Structure name → ROI Description (3006,0028), the free-text comment a planning system
        shows with the ROI (e.g. prediction QA flags); at most 1024 characters are kept.

    Returns
    -------
    pydicom.dataset.Dataset
        The dataset written.
    """
    from dlas.io.atomic import atomic_path

    generation = ROIGenerationAlgorithm(generation)
    _require_provenance(generation, algorithm, ct, path)
    checked = _checked_masks(masks, ct.volume, structure_set)

    when = timestamp or dt.datetime.now()
    seed = (uid_seed,) if uid_seed is not None else ()
    sop_uid = make_uid(*seed, "rtstruct-sop") if seed else make_uid()
    series_uid = make_uid(*seed, "rtstruct-series") if seed else make_uid()
    ds = _rtstruct_header(
        ct,
        sop_uid,
        series_uid,
        when,
        series_number=series_number,
        series_description=series_description,
        label=label,
    )
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_referenced_frame_of_reference(ct)])

    roi_seq, contour_seq, obs_seq = DicomSequence(), DicomSequence(), DicomSequence()
    for number, (name, array) in enumerate(checked.items(), start=1):
        canonical = structure_set.match(name) if structure_set is not None else None
        definition = structure_set[canonical] if structure_set and canonical else None
        description = roi_descriptions.get(name) if roi_descriptions else None
        roi_seq.append(_roi_item(number, name, ct, generation, algorithm, description))
        colour = definition.colour if definition else _PALETTE[(number - 1) % len(_PALETTE)]
        contour_seq.append(_roi_contour_item(number, array, ct, colour))
        obs_seq.append(_observation_item(number, definition))
    ds.StructureSetROISequence = roi_seq
    ds.ROIContourSequence = contour_seq
    ds.RTROIObservationsSequence = obs_seq
    # Nothing dlas writes is clinically approved: the planning system's review decides that.
    ds.ApprovalStatus = "UNAPPROVED"

    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return ds


def _require_provenance(
    generation: ROIGenerationAlgorithm,
    algorithm: AlgorithmIdentification | None,
    ct: CTSeries,
    path: str | os.PathLike[str],
) -> None:
    """Refuse automatic structures without their algorithm, and a CT that cannot be
    referenced."""
    if generation is not ROIGenerationAlgorithm.MANUAL and algorithm is None:
        raise RTStructError(
            "automatic structures without algorithm identification",
            where=str(path),
            expected="the name and version of the model that produced the structures",
            found=f"ROI generation {generation.value} and no algorithm",
            fix="pass algorithm=AlgorithmIdentification(name=..., version=...)",
        )
    _require_referenceable(ct, path)


def _require_referenceable(ct: CTSeries, path: str | os.PathLike[str]) -> None:
    """Refuse a CT series that lacks a UID needed to reference it (from an RTSTRUCT or SEG)."""
    if not ct.referenceable:
        raise RTStructError(
            "CT series lacks the UIDs needed to reference it",
            where=str(path),
            expected="SeriesInstanceUID, StudyInstanceUID, FrameOfReferenceUID and SOPInstanceUIDs",
            found="some of them empty (the export was anonymised by blanking UIDs)",
            fix="re-export the CT with UIDs (replaced UIDs are fine, empty ones are not)",
        )


def _checked_masks(
    masks: Mapping[str, npt.ArrayLike | Volume],
    volume: Volume,
    structure_set: StructureSet | None,
) -> dict[str, npt.NDArray[np.bool_]]:
    """The masks as boolean arrays (z, y, x), each on the CT's grid with a valid ROI name that
    maps onto ``structure_set`` (when given), or an error naming the structure."""
    checked: dict[str, npt.NDArray[np.bool_]] = {}
    for name, mask in masks.items():
        if isinstance(mask, Volume):
            if not mask.same_grid(volume):
                raise RTStructError(
                    "mask grid differs from the CT grid",
                    where=f"structure {name!r}",
                    expected=volume.grid_description(),
                    found=mask.grid_description(),
                    fix="resample the mask onto the CT (nearest neighbour) before writing",
                )
            array = np.asarray(mask.array) != 0
        else:
            array = np.asarray(mask) != 0
            if array.shape != volume.shape:
                raise RTStructError(
                    "mask shape differs from the CT",
                    where=f"structure {name!r}",
                    expected=f"shape (z, y, x) {volume.shape}",
                    found=f"shape {array.shape}",
                    fix="resample the mask onto the CT before writing",
                )
        if structure_set is not None and structure_set.match(name) is None:
            raise RTStructError(
                "structure not in the structure set",
                where=f"structure {name!r}",
                expected=f"a name that maps to one of {', '.join(structure_set.names)}",
                found=repr(name),
                fix="use canonical names or their synonyms, or write without a structure set",
            )
        if len(name) > 64 or not name.strip():
            raise RTStructError(
                "invalid ROI name",
                where=f"structure {name!r}",
                expected="1 to 64 characters",
                found=f"{len(name)} characters",
                fix="shorten the name",
            )
        checked[name] = array
    return checked


def _rtstruct_header(
    ct: CTSeries,
    sop_uid: str,
    series_uid: str,
    when: dt.datetime,
    *,
    series_number: int,
    series_description: str,
    label: str,
) -> Dataset:
    """File meta, SOP common, patient and study (the CT's), frame of reference, series and
    structure set modules."""
    first = ct.first
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(RTSTRUCT_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"DLAS_{__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 100")
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    ds.SOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = sop_uid
    # Patient and study: those of the CT, so the planning system files it with the images.
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
        "StudyDescription",
    ):
        setattr(ds, keyword, first.get(keyword, ""))
    # Frame of Reference module: recent editions of the standard include it in the RTSTRUCT IOD.
    ds.FrameOfReferenceUID = ct.frame_of_reference_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:64]
    ds.SeriesDate = ds.InstanceCreationDate
    ds.SeriesTime = ds.InstanceCreationTime
    ds.OperatorsName = ""
    ds.Manufacturer = "dlas"
    ds.ManufacturerModelName = "dlas"
    ds.SoftwareVersions = f"dlas {__version__}"
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime
    return ds


def _image_reference(ct: CTSeries, k: int) -> Dataset:
    """A reference to the CT image of slice ``k``."""
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    ref.ReferencedSOPInstanceUID = ct.sop_instance_uids[k]
    return ref


def _referenced_frame_of_reference(ct: CTSeries) -> Dataset:
    """The frame of reference → study → series → every CT image the structures lie on."""
    contour_images = DicomSequence()
    for k in range(len(ct.sop_instance_uids)):
        contour_images.append(_image_reference(ct, k))
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = ct.series_instance_uid
    series_ref.ContourImageSequence = contour_images
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP_CLASS
    study_ref.ReferencedSOPInstanceUID = ct.study_instance_uid
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    for_ref = Dataset()
    for_ref.FrameOfReferenceUID = ct.frame_of_reference_uid
    for_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    return for_ref


def _roi_item(
    number: int,
    name: str,
    ct: CTSeries,
    generation: ROIGenerationAlgorithm,
    algorithm: AlgorithmIdentification | None,
    description: str | None,
) -> Dataset:
    """The Structure Set ROI item: number, name, description and how it was generated (with
    the algorithm's identification for automatic structures)."""
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = ct.frame_of_reference_uid
    roi.ROIName = name
    if description:
        roi.ROIDescription = description[:1024]
    roi.ROIGenerationAlgorithm = generation.value
    if algorithm is not None:
        roi.ROIGenerationDescription = algorithm.description()
        ident = Dataset()
        ident.AlgorithmFamilyCodeSequence = DicomSequence([_code_item(algorithm.family)])
        ident.AlgorithmName = algorithm.name[:64]
        ident.AlgorithmVersion = algorithm.version[:64]
        if algorithm.parameters:
            ident.AlgorithmParameters = algorithm.parameters[:10240]
        roi.ROIDerivationAlgorithmIdentificationSequence = DicomSequence([ident])
    return roi


def _roi_contour_item(
    number: int, array: npt.NDArray[np.bool_], ct: CTSeries, colour: Sequence[int]
) -> Dataset:
    """The ROI Contour item: colour and the traced contours of the mask, slice by slice (each
    referencing its CT image; holes are inner contours)."""
    volume = ct.volume
    item = Dataset()
    item.ROIDisplayColor = [int(c) for c in colour]
    item.ReferencedROINumber = number
    contours = DicomSequence()
    for k in np.flatnonzero(array.reshape(array.shape[0], -1).any(axis=1)):
        for polygon in trace_mask(array[k]):
            n = len(polygon)
            idx = np.column_stack([np.full(n, float(k)), polygon[:, 1], polygon[:, 0]])
            points = volume.index_to_physical(idx)
            contour = Dataset()
            contour.ContourImageSequence = DicomSequence([_image_reference(ct, int(k))])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = n
            contour.ContourNumber = len(contours) + 1
            contour.ContourData = [_ds_number(v) for v in points.reshape(-1)]
            contours.append(contour)
    if len(contours):
        item.ContourSequence = contours
    return item


def _observation_item(number: int, definition: StructureDef | None) -> Dataset:
    """The RT ROI Observations item: the interpreted type (ORGAN unless the structure set
    says otherwise)."""
    obs = Dataset()
    obs.ObservationNumber = number
    obs.ReferencedROINumber = number
    obs.RTROIInterpretedType = (
        definition.interpreted_type.value if definition else RTROIInterpretedType.ORGAN.value
    )
    obs.ROIInterpreter = ""
    return obs
