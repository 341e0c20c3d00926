"""DICOM Segmentation (SEG) ↔ masks on a CT grid, through highdicom.

Writing (:func:`write_seg`): highdicom builds and validates the Segmentation IOD; this module
supplies the segment descriptions (codes and colours from the structure set) and the algorithm
identification that highdicom requires for automatic segments.

Reading (:func:`read_seg`) takes a SEG made by any software (a vendor's auto-contouring, 3D
Slicer, TotalSegmentator, ...) onto the grid of the CT it was made on. highdicom parses the file
and decodes each frame; our own code places the frames, because highdicom's
``Segmentation.get_volume`` needs the frames to form one regularly spaced stack (frames that
hold nothing are usually omitted, which leaves irregular gaps) and returns the SEG's own grid,
whereas every mask in `dlas` lives on the CT grid. Each frame is placed by its plane position
(ImagePositionPatient), never by its frame number or its source-image reference, and is checked
against the CT: same frame of reference, axial frames of the CT's size and pixel spacing whose
pixel centres lie on CT voxel centres. A frame may store its rows or columns in the opposite
direction (or rows and columns swapped); it is then reindexed exactly. Nothing is ever
resampled: a SEG on another grid is refused.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dlas import __version__
from dlas.errors import RTStructError
from dlas.io.atomic import atomic_path
from dlas.io.ct import CTSeries
from dlas.io.ct_writer import make_uid
from dlas.io.dicom_scan import LABEL_MAP_SEG_STORAGE, SEG_STORAGE
from dlas.io.rtstruct import (
    AlgorithmIdentification,
    ROIGenerationAlgorithm,
    RTStructData,
    RTStructROI,
    RTStructWarning,
    _require_referenceable,
)
from dlas.io.volume import Volume
from dlas.structures import Code, StructureSet

__all__ = ["SegData", "SegROI", "read_seg", "write_seg"]


_FALLBACK_TYPE = Code(scheme="SCT", value="85756007", meaning="Tissue")


def _coded(code: Code):  # type: ignore[no-untyped-def]
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def write_seg(
    masks: Mapping[str, npt.ArrayLike | Volume],
    ct: CTSeries,
    path: str | os.PathLike[str],
    *,
    generation: ROIGenerationAlgorithm,
    algorithm: AlgorithmIdentification | None,
    structure_set: StructureSet | None = None,
    series_number: int = 901,
    uid_seed: str | None = None,
    series_description: str | None = None,
    segment_descriptions: Mapping[str, str] | None = None,
) -> None:
    """Write masks (z, y, x) on ``ct``'s grid as a binary DICOM SEG referencing the series.

    Empty structures are kept as segments without frames so that segment numbers stay stable.
    ``series_description`` (Series Description) and ``segment_descriptions`` (structure name →
    Segment Description (0062,0006), e.g. prediction QA flags) are cut to 64 characters.
    """
    import highdicom as hd

    generation = ROIGenerationAlgorithm(generation)
    _require_seg_provenance(generation, algorithm, ct, path)
    volume = ct.volume
    names = list(masks)
    if not names:
        raise RTStructError(
            "nothing to write",
            where=str(path),
            expected="at least one structure",
            found="no masks",
            fix="pass the masks to write",
        )
    stack = np.zeros((*volume.shape, len(names)), dtype=np.uint8)
    descriptions = []
    algo = (
        hd.AlgorithmIdentificationSequence(
            name=algorithm.name[:64],
            family=_coded(algorithm.family),
            version=algorithm.version[:64],
        )
        if algorithm is not None
        else None
    )
    for s, name in enumerate(names):
        stack[..., s] = _checked_mask(name, masks[name], volume)
        descriptions.append(_segment_description(s + 1, name, generation, algo, structure_set))
    seed = (uid_seed,) if uid_seed is not None else ()
    seg = hd.seg.Segmentation(
        source_images=ct.headers,
        pixel_array=_stored_layout(stack, ct.original_orientation),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=make_uid(*seed, "seg-series") if seed else make_uid(),
        series_number=series_number,
        sop_instance_uid=make_uid(*seed, "seg-sop") if seed else make_uid(),
        instance_number=1,
        manufacturer="dlas",
        manufacturer_model_name="dlas",
        software_versions=f"dlas {__version__}",
        device_serial_number="0",
        omit_empty_frames=True,
    )
    if series_description:
        seg.SeriesDescription = series_description[:64]
    for s, name in enumerate(names):
        text = (segment_descriptions or {}).get(name)
        if text:
            seg.SegmentSequence[s].SegmentDescription = text[:64]
    with atomic_path(path) as tmp:
        seg.save_as(tmp)


def _require_seg_provenance(
    generation: ROIGenerationAlgorithm,
    algorithm: AlgorithmIdentification | None,
    ct: CTSeries,
    path: str | os.PathLike[str],
) -> None:
    """Refuse automatic segments without their algorithm, and a CT that cannot be referenced."""
    if generation is not ROIGenerationAlgorithm.MANUAL and algorithm is None:
        raise RTStructError(
            "automatic segmentation without algorithm identification",
            where=str(path),
            expected="the name and version of the model that produced the segments",
            found=f"generation {generation.value} and no algorithm",
            fix="pass algorithm=AlgorithmIdentification(name=..., version=...)",
        )
    _require_referenceable(ct, path)


def _checked_mask(name: str, mask: npt.ArrayLike | Volume, volume: Volume) -> npt.NDArray[np.bool_]:
    """The mask as a boolean array (z, y, x) on the CT's grid, or an error naming it."""
    array: npt.NDArray[np.bool_] = np.asarray(mask.array if isinstance(mask, Volume) else mask) != 0
    if array.shape != volume.shape or (isinstance(mask, Volume) and not mask.same_grid(volume)):
        raise RTStructError(
            "mask grid differs from the CT grid",
            where=f"structure {name!r}",
            expected=volume.grid_description(),
            found=f"shape {array.shape}",
            fix="resample the mask onto the CT before writing",
        )
    return array


def _segment_description(
    number: int,
    name: str,
    generation: ROIGenerationAlgorithm,
    algorithm_identification: Any,
    structure_set: StructureSet | None,
) -> Any:
    """The highdicom segment description: label, coded category and type (the structure
    set's, else anatomical structure / tissue) and the algorithm (a highdicom
    AlgorithmIdentificationSequence, or None for manual segments)."""
    import highdicom as hd

    definition = structure_set[name] if structure_set and name in structure_set else None
    category = (
        definition.category
        if definition
        else Code(scheme="SCT", value="91723000", meaning="Anatomical Structure")
    )
    prop = (definition.property_type if definition else None) or _FALLBACK_TYPE
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:64],
        segmented_property_category=_coded(category),
        segmented_property_type=_coded(prop),
        algorithm_type=(
            hd.seg.SegmentAlgorithmTypeValues.MANUAL
            if generation is ROIGenerationAlgorithm.MANUAL
            else hd.seg.SegmentAlgorithmTypeValues(generation.value)
        ),
        algorithm_identification=algorithm_identification,
    )


def _stored_layout(
    stack: npt.NDArray[np.uint8], original_orientation: tuple[float, ...]
) -> npt.NDArray[np.uint8]:
    """The segments (z, y, x, segment) in the CT's stored pixel layout.

    highdicom pairs frames with source images in the order given, in their stored pixel
    layout; this undoes the reader's canonical flips.
    """
    row_dir = original_orientation[:3]
    col_dir = original_orientation[3:]
    if row_dir[0] < 0:
        stack = stack[:, :, ::-1, :]
    if col_dir[1] < 0:
        stack = stack[:, ::-1, :, :]
    return np.ascontiguousarray(stack)


# ---------------------------------------------------------------------------------- reading


@dataclass
class SegROI(RTStructROI):
    """One segment of a DICOM SEG on the CT grid.

    An :class:`~dlas.io.rtstruct.RTStructROI`, so that an importer treats RTSTRUCT ROIs and SEG
    segments alike: ``number`` is the SegmentNumber, ``name`` the SegmentLabel,
    ``interpreted_type`` empty (a SEG has none), ``colour`` the RecommendedDisplayCIELabValue as
    RGB (``None`` when absent), ``mask`` (z, y, x) on the CT grid, and ``n_contours`` the number
    of frames placed for the segment.

    Attributes
    ----------
    description
        SegmentDescription (0062,0006); empty when absent.
    property_type
        Meaning of the SegmentedPropertyTypeCodeSequence (e.g. ``"Liver"``); empty when absent.
    """

    description: str = ""
    property_type: str = ""


@dataclass
class SegData(RTStructData):
    """All segments of a DICOM SEG on one CT, with every warning.

    An :class:`~dlas.io.rtstruct.RTStructData` whose ``rois`` are :class:`SegROI` keyed by
    segment number, ``label`` is the ContentLabel and ``structure_set_date`` the ContentDate.

    Attributes
    ----------
    segmentation_type
        ``"BINARY"``, ``"FRACTIONAL"`` or ``"LABELMAP"``.
    """

    segmentation_type: str = "BINARY"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _load_seg(source: str | os.PathLike[str] | Dataset) -> tuple[Any, str]:
    """The SEG as a highdicom Segmentation, and a name for it in messages."""
    import highdicom as hd
    import pydicom

    if isinstance(source, Dataset):
        ds, where = source, str(getattr(source, "filename", None) or "SEG")
    else:
        where = str(source)
        try:
            ds = pydicom.dcmread(Path(source))
        except Exception as exc:
            raise RTStructError(
                "cannot read SEG (not DICOM, truncated or corrupt)",
                where=where,
                expected="a DICOM Segmentation file",
                found=_first_line(exc),
                fix="export the segmentation again",
            ) from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in (SEG_STORAGE, LABEL_MAP_SEG_STORAGE):
        raise RTStructError(
            "not a DICOM SEG",
            where=where,
            expected=f"Modality SEG (Segmentation Storage, {SEG_STORAGE})",
            found=f"Modality {ds.get('Modality', '<none>')}, SOP class {sop_class or '<none>'}",
            fix="pass the segmentation file; an RTSTRUCT is read with read_rtstruct",
        )
    try:
        # copy: from_dataset changes the class of the dataset it is given.
        seg = hd.seg.Segmentation.from_dataset(ds, copy=isinstance(source, Dataset))
    except Exception as exc:
        raise RTStructError(
            "malformed SEG",
            where=where,
            expected="a Segmentation with its required attributes",
            found=_first_line(exc),
            fix="export the segmentation again; the file lacks what a SEG must hold",
        ) from exc
    return seg, where


def _functional(group: Dataset, shared: Dataset, sequence: str, keyword: str) -> Any:
    """A frame's functional-group attribute: per-frame if present there, else shared."""
    for source in (group, shared):
        items = source.get(sequence)
        if items:
            value = items[0].get(keyword)
            if value is not None:
                return value
    return None


@dataclass(frozen=True)
class _Placement:
    """Where one frame goes: CT slice ``k``, and how to turn it into (y, x) order."""

    k: int
    transpose: bool
    flip_rows: bool
    flip_columns: bool

    def canonical(self, frame: npt.NDArray[Any]) -> npt.NDArray[Any]:
        out = frame.T if self.transpose else frame
        if self.flip_rows:
            out = out[::-1, :]
        if self.flip_columns:
            out = out[:, ::-1]
        return out


def _place_frame(
    volume: Volume,
    position: npt.NDArray[np.float64],
    orientation: npt.NDArray[np.float64],
    pixel_spacing: npt.NDArray[np.float64],
    shape: tuple[int, int],
    tolerance: float,
    where: str,
) -> _Placement:
    """Map one frame onto a slice of ``volume`` exactly, or raise saying why it cannot be."""
    rows, columns = shape
    row_dir, col_dir = orientation[:3], orientation[3:]
    # Index steps (k, j, i) of the CT per frame column (along row_dir) and per frame row.
    step_col = (pixel_spacing[1] * row_dir) @ volume.direction.T / volume.spacing
    step_row = (pixel_spacing[0] * col_dir) @ volume.direction.T / volume.spacing
    axis_c, axis_r = int(np.argmax(np.abs(step_col))), int(np.argmax(np.abs(step_row)))
    nz = volume.shape[0]
    found_frame = (
        f"{rows}x{columns} pixels of {pixel_spacing[0]:.4g}x{pixel_spacing[1]:.4g} mm, "
        f"ImageOrientationPatient {np.round(orientation, 4).tolist()}, first pixel at "
        f"({position[0]:.2f}, {position[1]:.2f}, {position[2]:.2f}) mm"
    )
    ny, nx = volume.shape[1:]
    first = volume.index_to_physical([0, 0, 0])
    last = volume.index_to_physical([0, ny - 1, nx - 1])
    expected_grid = (
        f"axial frames of the CT's {ny}x{nx} pixels of {volume.spacing[1]:.4g}x"
        f"{volume.spacing[2]:.4g} mm, pixel centres from (x, y) = ({first[0]:.2f}, "
        f"{first[1]:.2f}) to ({last[0]:.2f}, {last[1]:.2f}) mm"
    )
    fix = (
        "pair the SEG with the CT series it was made on, or resample it onto that CT in the "
        "software that made it (dlas does not resample a SEG)"
    )
    if axis_c == 0 or axis_r == 0 or axis_c == axis_r:
        raise RTStructError(
            "SEG frames are not axial slices of the CT",
            where=where,
            expected=expected_grid,
            found=found_frame,
            fix=fix,
        )
    sizes = (rows, columns)
    if (volume.shape[axis_r], volume.shape[axis_c]) != sizes:
        raise RTStructError(
            "SEG frame size differs from the CT's",
            where=where,
            expected=expected_grid,
            found=found_frame,
            fix=fix,
        )
    sign_r, sign_c = float(np.sign(step_row[axis_r])), float(np.sign(step_col[axis_c]))
    start = volume.physical_to_index(position)
    k = int(np.rint(start[0]))
    worst_plane = worst_z = 0.0
    for r in (0, rows - 1):
        for c in (0, columns - 1):
            actual = start + r * step_row + c * step_col
            expected = np.array([float(k), 0.0, 0.0])
            expected[axis_r] = (0 if sign_r > 0 else rows - 1) + sign_r * r
            expected[axis_c] = (0 if sign_c > 0 else columns - 1) + sign_c * c
            off = np.abs(actual - expected)
            worst_plane = max(worst_plane, float(off[1:].max()))
            worst_z = max(worst_z, float(off[0]))
    if worst_plane > tolerance:
        raise RTStructError(
            "SEG frame grid differs from the CT grid in-plane",
            where=where,
            expected=f"{expected_grid} (± {tolerance:g} pixel)",
            found=f"{found_frame}, pixel centres up to {worst_plane:.3g} pixels off the CT's",
            fix=fix,
        )
    sz = float(volume.spacing[0])
    z_first = float(volume.index_to_physical([0, 0, 0]) @ volume.direction[0])
    z_last = float(volume.index_to_physical([nz - 1, 0, 0]) @ volume.direction[0])
    z_frame = float(position @ volume.direction[0])
    if not 0 <= k < nz:
        raise RTStructError(
            "SEG frame lies outside the CT",
            where=where,
            expected=f"frames on the CT's {nz} slices, z from {z_first:.2f} to {z_last:.2f} mm",
            found=f"a frame at z = {z_frame:.2f} mm",
            fix=fix,
        )
    if worst_z > tolerance:
        raise RTStructError(
            "SEG frame lies between CT slices",
            where=where,
            expected=f"frames within {tolerance * sz:.3g} mm ({tolerance:g} of the slice "
            f"spacing) of the CT's slices, every {sz:.4g} mm from z = {z_first:.2f} mm",
            found=f"a frame at z = {z_frame:.2f} mm, up to {worst_z * sz:.3g} mm from slice {k}",
            fix=fix,
        )
    return _Placement(
        k=k,
        transpose=axis_r == 2,
        flip_rows=(sign_c if axis_r == 2 else sign_r) < 0,
        flip_columns=(sign_r if axis_r == 2 else sign_c) < 0,
    )


def _colour(item: Dataset) -> tuple[int, int, int] | None:
    """RecommendedDisplayCIELabValue as sRGB (0-255), or ``None`` when absent."""
    value = item.get("RecommendedDisplayCIELabValue")
    if value is None or len(value) != 3:
        return None
    from skimage.color import lab2rgb

    # DICOM scales L* 0..100 and a*, b* -128..127 to 0..65535 (PS3.3 C.10.7.1.1), D65.
    lab = np.array(
        [
            float(value[0]) * 100.0 / 0xFFFF,
            float(value[1]) * 255.0 / 0xFFFF - 128.0,
            float(value[2]) * 255.0 / 0xFFFF - 128.0,
        ]
    )
    rgb = np.rint(np.clip(lab2rgb(lab[None, :])[0], 0.0, 1.0) * 255.0).astype(int)
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def read_seg(
    source: str | os.PathLike[str] | Dataset,
    ct: CTSeries,
    *,
    tolerance: float = 0.1,
) -> SegData:
    """Place every segment of a DICOM SEG (binary, fractional or label map) on the grid of ``ct``.

    Parameters
    ----------
    source
        Path of the SEG file, or the dataset (left unchanged).
    ct
        The CT series the segmentation was made on.
    tolerance
        How far, as a fraction of the CT voxel size along each axis, a frame's pixel centres may
        lie from the CT's voxel centres (default 1/10): along z, the distance of a frame from the
        nearest CT slice; in-plane, the largest offset anywhere on the frame, which bounds
        differences of pixel spacing, orientation and position together.

    Returns
    -------
    SegData
        One :class:`SegROI` per segment, keyed by segment number, with its mask (z, y, x) on
        ``ct.volume``'s grid, and every warning: ``empty-roi`` for a segment with no voxel inside
        (no frames, or none above the threshold), ``duplicate-name`` for segments that share a
        label (kept apart by segment number, not merged).

    Notes
    -----
    Which voxels are inside:

    * BINARY: stored value 1;
    * FRACTIONAL (probability or occupancy): the fraction stored / MaximumFractionalValue is at
      least 0.5, i.e. the stored value is at least half the MaximumFractionalValue;
    * LABELMAP: the stored value equals the segment number.

    Raises
    ------
    RTStructError
        The file is unreadable or not a SEG; the SEG lies in another frame of reference than the
        CT (or names none); a frame has no plane position (e.g. slide coordinates), is not an
        axial slice, differs from the CT in size, pixel spacing or in-plane position, or lies
        between CT slices or outside the CT; two frames of one segment lie on one slice; a frame
        refers to a segment the SEG does not describe.
    """
    seg, where = _load_seg(source)
    seg_for = str(seg.get("FrameOfReferenceUID", "") or "")
    if seg_for != ct.frame_of_reference_uid:
        raise RTStructError(
            "SEG belongs to another frame of reference"
            if seg_for
            else "SEG has no frame of reference",
            where=where,
            expected=f"FrameOfReferenceUID {ct.frame_of_reference_uid or '<empty>'} "
            f"(of CT series {ct.series_instance_uid})",
            found=seg_for or "no FrameOfReferenceUID",
            fix="pair the SEG with the CT it was made on (or register and re-export it)",
        )
    seg_type = str(seg.get("SegmentationType", "")).upper()
    items = {int(item.SegmentNumber): item for item in seg.get("SegmentSequence", [])}
    threshold = _threshold(seg, seg_type, where)
    frames = _SegFrames(seg, ct.volume, seg_type, threshold, items, tolerance, where)
    for index in range(int(seg.get("NumberOfFrames", 1) or 1)):
        frames.place(index)

    rois: dict[int, RTStructROI] = {}
    warnings: list[RTStructWarning] = []
    names_seen: dict[str, list[int]] = defaultdict(list)
    for number, item in items.items():
        roi = _segment_roi(number, item, frames.masks[number], frames.n_frames[number])
        names_seen[roi.name.strip().lower()].append(number)
        rois[number] = roi
        warnings.extend(roi.warnings)
    for numbers in names_seen.values():
        if len(numbers) > 1:
            listing = ", ".join(f"{n} '{rois[n].name}'" for n in numbers)
            warnings.append(
                RTStructWarning(
                    "duplicate-name",
                    f"segments {listing} share one label; they are kept apart by segment "
                    "number, not merged",
                )
            )
    return SegData(
        rois=rois,
        warnings=warnings,
        frame_of_reference_uid=seg_for,
        sop_instance_uid=str(seg.get("SOPInstanceUID", "")),
        label=str(seg.get("ContentLabel", "") or ""),
        structure_set_date=str(seg.get("ContentDate", "") or ""),
        segmentation_type=seg_type,
    )


def _threshold(seg: Any, seg_type: str, where: str) -> float:
    """The stored value from which a pixel is inside: half the MaximumFractionalValue of a
    FRACTIONAL SEG, 1 otherwise; an unknown segmentation type is refused."""
    if seg_type == "FRACTIONAL":
        max_value = float(seg.get("MaximumFractionalValue", 0) or 0)
        if max_value <= 0:
            raise RTStructError(
                "fractional SEG without MaximumFractionalValue",
                where=where,
                expected="MaximumFractionalValue (0062,000E) > 0",
                found=repr(seg.get("MaximumFractionalValue")),
                fix="export the segmentation again",
            )
        return max_value / 2.0
    if seg_type in ("BINARY", "LABELMAP"):
        return 1.0
    raise RTStructError(
        "unknown segmentation type",
        where=where,
        expected="SegmentationType BINARY, FRACTIONAL or LABELMAP",
        found=f"SegmentationType {seg_type or '<none>'}",
        fix="export the segmentation again",
    )


class _SegFrames:
    """Places the frames of a SEG, one by one, into a mask per segment on the CT grid."""

    def __init__(
        self,
        seg: Any,
        volume: Volume,
        seg_type: str,
        threshold: float,
        items: Mapping[int, Dataset],
        tolerance: float,
        where: str,
    ) -> None:
        self.seg = seg
        self.volume = volume
        self.seg_type = seg_type
        self.threshold = threshold
        self.tolerance = tolerance
        self.where = where
        self.masks = {number: np.zeros(volume.shape, dtype=bool) for number in items}
        self.n_frames: dict[int, int] = defaultdict(int)
        self.placed: dict[tuple[int, int], int] = {}  # (segment, slice) → frame number
        shared_items = seg.get("SharedFunctionalGroupsSequence")
        self.shared = shared_items[0] if shared_items else Dataset()
        self.per_frame = list(seg.get("PerFrameFunctionalGroupsSequence", []))
        self.shape = (int(seg.Rows), int(seg.Columns))

    def place(self, index: int) -> None:
        """Place frame ``index`` (from 0) on its CT slice, in the masks of its segments."""
        frame_where = f"{self.where}, frame {index + 1}"
        group = self.per_frame[index] if index < len(self.per_frame) else Dataset()
        placement = self._placement(group, frame_where)
        try:
            stored = np.asarray(self.seg.get_stored_frame(index + 1))
        except Exception as exc:
            raise RTStructError(
                "cannot decode SEG frame (truncated, or compressed with an unavailable codec)",
                where=frame_where,
                expected=f"{self.shape[0]}x{self.shape[1]} pixels",
                found=_first_line(exc),
                fix="export the segmentation again, uncompressed",
            ) from exc
        frame = placement.canonical(stored)
        if self.seg_type == "LABELMAP":
            numbers = [int(v) for v in np.unique(frame) if v != 0]
        else:
            number = _functional(
                group, self.shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber"
            )
            numbers = [int(number)] if number is not None else [-1]
        for number in numbers:
            self._check_segment(number, placement.k, index, frame_where)
            self.n_frames[number] += 1
            inside = frame == number if self.seg_type == "LABELMAP" else frame >= self.threshold
            self.masks[number][placement.k] = inside

    def _placement(self, group: Dataset, frame_where: str) -> _Placement:
        """Where the frame goes, from its plane position, orientation and pixel spacing."""
        shared = self.shared
        position = _functional(group, shared, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _functional(
            group, shared, "PlaneOrientationSequence", "ImageOrientationPatient"
        )
        spacing = _functional(group, shared, "PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None or spacing is None:
            raise RTStructError(
                "SEG frame without its place in the patient",
                where=frame_where,
                expected="ImagePositionPatient, ImageOrientationPatient and PixelSpacing in the "
                "functional groups",
                found="missing "
                + ", ".join(
                    k
                    for k, v in (
                        ("ImagePositionPatient", position),
                        ("ImageOrientationPatient", orientation),
                        ("PixelSpacing", spacing),
                    )
                    if v is None
                ),
                fix="only SEGs in patient coordinates (made on a CT) can be read",
            )
        return _place_frame(
            self.volume,
            np.array([float(v) for v in position]),
            np.array([float(v) for v in orientation]),
            np.array([float(v) for v in spacing]),
            self.shape,
            self.tolerance,
            frame_where,
        )

    def _check_segment(self, number: int, k: int, index: int, frame_where: str) -> None:
        """Refuse a frame of an undescribed segment, or a second frame of a segment on one
        slice."""
        if number not in self.masks:
            raise RTStructError(
                "SEG frame refers to a segment it does not describe",
                where=frame_where,
                expected=f"one of the segments {sorted(self.masks)}",
                found=f"segment {number}" if number >= 0 else "no ReferencedSegmentNumber",
                fix="export the segmentation again",
            )
        earlier = self.placed.setdefault((number, k), index + 1)
        if earlier != index + 1:
            raise RTStructError(
                "two SEG frames of one segment on one CT slice",
                where=self.where,
                expected="at most one frame per segment and slice",
                found=f"frames {earlier} and {index + 1} of segment {number} on slice {k}",
                fix="export the segmentation again (several time points or stacks in one "
                "SEG are not supported)",
            )


def _segment_roi(number: int, item: Dataset, mask: npt.NDArray[np.bool_], n_frames: int) -> SegROI:
    """One segment as an ROI: label, colour, description and property type, its mask, and an
    ``empty-roi`` warning when no voxel is inside."""
    name = str(item.get("SegmentLabel", ""))
    property_items = item.get("SegmentedPropertyTypeCodeSequence") or []
    roi_warnings = []
    if not mask.any():
        roi_warnings.append(
            RTStructWarning(
                "empty-roi",
                f"segment {number} '{name}' has no voxel inside ({n_frames} frame(s))",
                number,
                name,
            )
        )
    return SegROI(
        number=number,
        name=name,
        interpreted_type="",
        colour=_colour(item),
        mask=mask,
        n_contours=n_frames,
        warnings=roi_warnings,
        description=str(item.get("SegmentDescription", "") or ""),
        property_type=str(property_items[0].get("CodeMeaning", "")) if property_items else "",
    )
