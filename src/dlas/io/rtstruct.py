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
from collections.abc import Mapping
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
from dlas.structures import Code, RTROIInterpretedType, StructureSet

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
    nz, ny, nx = volume.shape
    sz = float(volume.spacing[0])
    z_tol = 0.25 * sz if z_tolerance_mm is None else float(z_tolerance_mm)
    ct_for = ct.frame_of_reference_uid

    roi_items = list(ds.get("StructureSetROISequence", []))
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

    slice_of_uid = {uid: k for k, uid in enumerate(ct.sop_instance_uids)}
    missing: set[str] = set()
    for item in ds.get("ROIContourSequence", []):
        for contour in item.get("ContourSequence", []):
            for ref in contour.get("ContourImageSequence", []):
                uid = str(ref.get("ReferencedSOPInstanceUID", ""))
                if uid and uid not in slice_of_uid:
                    missing.add(uid)
    if missing:
        raise RTStructError(
            "RTSTRUCT references CT images that are not in the series",
            where=where,
            expected=f"contours on the {nz} images of CT series {ct.series_instance_uid}",
            found=f"{len(missing)} referenced image(s) absent, e.g. {sorted(missing)[0]}",
            fix="export the RTSTRUCT together with the complete CT series it was drawn on",
        )

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
    z_centres = volume.origin[2] + sz * np.arange(nz) * volume.direction[0, 2]

    for roi_item in roi_items:
        number = int(roi_item.ROINumber)
        name = str(roi_item.get("ROIName", ""))
        names_seen[name.strip().lower()].append(number)
        roi_warnings: list[RTStructWarning] = []

        def warn(
            code: str,
            message: str,
            *,
            _n: int = number,
            _name: str = name,
            _list: list[RTStructWarning] = roi_warnings,
        ) -> None:
            _list.append(RTStructWarning(code, message, _n, _name))

        roi_for = str(roi_item.get("ReferencedFrameOfReferenceUID", "") or ct_for)
        item = contour_items.get(number)
        colour: tuple[int, int, int] | None = None
        rgb = item.get("ROIDisplayColor") if item is not None else None
        if rgb is not None and len(rgb) == 3:
            colour = (int(rgb[0]), int(rgb[1]), int(rgb[2]))
        mask = np.zeros((nz, ny, nx), dtype=bool)
        if roi_for != ct_for:
            warn(
                "other-frame-of-reference",
                f"ROI {number} '{name}' lies in frame of reference {roi_for}, not the CT's; "
                "it is not rasterised",
            )
            rois[number] = RTStructROI(
                number, name, types.get(number, ""), colour, mask, 0, roi_warnings
            )
            warnings.extend(roi_warnings)
            continue
        per_slice: dict[int, list[npt.NDArray[np.float64]]] = defaultdict(list)
        used = 0
        for c_index, contour in enumerate(item.get("ContourSequence", []) if item else []):
            label = f"ROI {number} '{name}', contour {c_index + 1}"
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
                continue
            if len(points) < 3:
                warn(
                    "too-few-points", f"{label}: {len(points)} point(s), at least 3 needed; ignored"
                )
                continue
            idx = volume.physical_to_index(points)
            k_float = idx[:, 0]
            spread_mm = float(np.ptp(points @ volume.direction[0]))
            if spread_mm > z_tol:
                warn(
                    "non-axial-contour",
                    f"{label}: points span {spread_mm:.2f} mm across "
                    "the slice direction (not an axial contour); ignored",
                )
                continue
            k_mean = float(k_float.mean())
            z_mean = float(points[:, 2].mean())
            slice_k: int | None = None
            refs = contour.get("ContourImageSequence", [])
            if refs:
                k_ref = slice_of_uid[str(refs[0].ReferencedSOPInstanceUID)]
                if abs(z_mean - z_centres[k_ref]) <= max(z_tol, 0.5 * sz - 1e-6):
                    slice_k = k_ref
                else:
                    warn(
                        "reference-mismatch",
                        f"{label}: at z = {z_mean:.2f} mm but references "
                        f"the image at z = {z_centres[k_ref]:.2f} mm; placed by its z instead",
                    )
            if slice_k is None:
                nearest = int(np.rint(k_mean))
                if nearest < 0 or nearest >= nz:
                    if abs(k_mean - np.clip(nearest, 0, nz - 1)) * sz > z_tol:
                        warn(
                            "contour-off-image",
                            f"{label}: at z = {z_mean:.2f} mm, outside "
                            f"the CT (z {z_centres[0]:.2f} to {z_centres[-1]:.2f} mm); ignored",
                        )
                        continue
                    nearest = int(np.clip(nearest, 0, nz - 1))
                if abs(k_mean - nearest) * sz > z_tol:
                    warn(
                        "contour-between-slices",
                        f"{label}: at z = {z_mean:.2f} mm, "
                        f"{abs(k_mean - nearest) * sz:.2f} mm from the nearest slice "
                        f"(tolerance {z_tol:.2f} mm); ignored",
                    )
                    continue
                slice_k = nearest
            xy = idx[:, [2, 1]]
            lo, hi = xy.min(axis=0), xy.max(axis=0)
            if hi[0] < -0.5 or hi[1] < -0.5 or lo[0] > nx - 0.5 or lo[1] > ny - 0.5:
                warn("contour-off-image", f"{label}: lies entirely outside the image; ignored")
                continue
            if lo[0] < -0.5 or lo[1] < -0.5 or hi[0] > nx - 0.5 or hi[1] > ny - 0.5:
                warn("contour-partly-off-image", f"{label}: extends beyond the image; clipped")
            per_slice[slice_k].append(xy)
            used += 1
        for k, polygons in per_slice.items():
            mask[k] = rasterize_polygons(polygons, (ny, nx))
        if not mask.any():
            warn(
                "empty-roi", f"ROI {number} '{name}' has no voxel inside ({used} usable contour(s))"
            )
        rois[number] = RTStructROI(
            number, name, types.get(number, ""), colour, mask, used, roi_warnings
        )
        warnings.extend(roi_warnings)

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
        frame_of_reference_uid=ct_for,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        label=str(ds.get("StructureSetLabel", "")),
        structure_set_date=str(ds.get("StructureSetDate", "")),
    )


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
    if generation is not ROIGenerationAlgorithm.MANUAL and algorithm is None:
        raise RTStructError(
            "automatic structures without algorithm identification",
            where=str(path),
            expected="the name and version of the model that produced the structures",
            found=f"ROI generation {generation.value} and no algorithm",
            fix="pass algorithm=AlgorithmIdentification(name=..., version=...)",
        )
    if not ct.referenceable:
        raise RTStructError(
            "CT series lacks the UIDs needed to reference it",
            where=str(path),
            expected="SeriesInstanceUID, StudyInstanceUID, FrameOfReferenceUID and SOPInstanceUIDs",
            found="some of them empty (the export was anonymised by blanking UIDs)",
            fix="re-export the CT with UIDs (replaced UIDs are fine, empty ones are not)",
        )
    volume = ct.volume
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

    when = timestamp or dt.datetime.now()
    seed = (uid_seed,) if uid_seed is not None else ()
    sop_uid = make_uid(*seed, "rtstruct-sop") if seed else make_uid()
    series_uid = make_uid(*seed, "rtstruct-series") if seed else make_uid()
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

    contour_images = DicomSequence()
    for uid in ct.sop_instance_uids:
        ref = Dataset()
        ref.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        ref.ReferencedSOPInstanceUID = uid
        contour_images.append(ref)
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
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([for_ref])

    roi_seq, contour_seq, obs_seq = DicomSequence(), DicomSequence(), DicomSequence()
    for number, (name, array) in enumerate(checked.items(), start=1):
        canonical = structure_set.match(name) if structure_set is not None else None
        definition = structure_set[canonical] if structure_set and canonical else None
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ct.frame_of_reference_uid
        roi.ROIName = name
        if roi_descriptions and roi_descriptions.get(name):
            roi.ROIDescription = roi_descriptions[name][:1024]
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
        roi_seq.append(roi)

        colour = definition.colour if definition else _PALETTE[(number - 1) % len(_PALETTE)]
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
                ref = Dataset()
                ref.ReferencedSOPClassUID = CT_IMAGE_STORAGE
                ref.ReferencedSOPInstanceUID = ct.sop_instance_uids[int(k)]
                contour.ContourImageSequence = DicomSequence([ref])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = n
                contour.ContourNumber = len(contours) + 1
                contour.ContourData = [_ds_number(v) for v in points.reshape(-1)]
                contours.append(contour)
        if len(contours):
            item.ContourSequence = contours
        contour_seq.append(item)

        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = (
            definition.interpreted_type.value if definition else RTROIInterpretedType.ORGAN.value
        )
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = roi_seq
    ds.ROIContourSequence = contour_seq
    ds.RTROIObservationsSequence = obs_seq
    # Nothing dlas writes is clinically approved: the planning system's review decides that.
    ds.ApprovalStatus = "UNAPPROVED"

    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return ds
