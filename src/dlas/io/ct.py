"""Reading a DICOM CT series into a :class:`~dlas.io.volume.Volume` of Hounsfield units.

The reader is strict on purpose: a planning CT that is not one regular, axial stack of slices
would silently distort every contour and every metric computed on it. It refuses, with a
message naming the files and positions involved, series with

* a modality other than CT, or images of several series mixed together;
* several frames of reference, orientations or image sizes;
* a non-axial (or in-plane rotated) orientation, or a gantry tilt;
* two slices at one position, a missing slice, or otherwise irregular slice spacing.

Slices are sorted along the slice normal, so the result does not depend on file order or
InstanceNumber. Pixel values become HU through RescaleSlope and RescaleIntercept. The volume is
returned in the canonical axial orientation (slices inferior → superior, rows anterior →
posterior, columns right → left, i.e. the direction matrix :data:`AXIAL_DIRECTION`); series
stored with flipped rows or columns are flipped losslessly, and ``sop_instance_uids`` follows
the same slice order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from dlas.errors import DicomSeriesError
from dlas.io.dicom_scan import (
    CT_IMAGE_STORAGE,
    ScannedFile,
    read_header,
    scan_dicom,
    series_key,
    sop_class_of,
    sop_instance_of,
)
from dlas.io.volume import AXIAL_DIRECTION, Volume

__all__ = ["CTSeries", "SeriesTolerances", "read_ct_series", "scanner_tags"]

log = logging.getLogger(__name__)

#: DICOM attributes that describe the scanner and protocol; recorded for every imported case.
SCANNER_TAGS = (
    "Manufacturer",
    "ManufacturerModelName",
    "StationName",
    "KVP",
    "ConvolutionKernel",
    "PixelSpacing",
    "SliceThickness",
    "ReconstructionDiameter",
)


@dataclass(frozen=True)
class SeriesTolerances:
    """Tolerances of the CT series checks.

    Attributes
    ----------
    orientation
        Largest deviation of a direction cosine from the axial axes (about 0.06° for 1e-3).
    position_mm
        Two slices closer than this along the normal are duplicates.
    spacing_fraction
        Largest deviation of a slice gap from the median gap, as a fraction of the median.
    spacing_mm
        ... or in mm, whichever is larger (scanners round positions to 0.01 mm or so).
    tilt_mm
        Largest in-plane shift of consecutive slice origins before the stack counts as tilted.
    """

    orientation: float = 1e-3
    position_mm: float = 0.01
    spacing_fraction: float = 0.01
    spacing_mm: float = 0.02
    tilt_mm: float = 0.05


@dataclass
class CTSeries:
    """A CT series read from DICOM.

    Attributes
    ----------
    volume
        HU values (float32) in canonical axial orientation, (z, y, x).
    headers
        One header per slice in the volume's slice order (pixel data not kept).
    sop_instance_uids
        SOPInstanceUID of each slice, in the volume's slice order.
    """

    volume: Volume
    headers: Sequence[Dataset]
    sop_instance_uids: list[str]
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    files: list[Path] = field(default_factory=list)
    original_orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    @property
    def referenceable(self) -> bool:
        """Whether every UID needed to reference this series (from an RTSTRUCT or SEG) is set."""
        return all(
            [
                self.series_instance_uid,
                self.study_instance_uid,
                self.frame_of_reference_uid,
                *self.sop_instance_uids,
            ]
        )

    @property
    def first(self) -> Dataset:
        """The header of the first slice (patient, study and equipment attributes)."""
        return self.headers[0]

    def scanner(self) -> dict[str, Any]:
        """The scanner and protocol attributes of this series."""
        return scanner_tags(self.first)


def scanner_tags(ds: Dataset) -> dict[str, Any]:
    """Scanner/protocol attributes of a header as JSON-ready values (``None`` when absent)."""
    out: dict[str, Any] = {}
    for key in SCANNER_TAGS:
        value = ds.get(key)
        if value is None or value == "":
            out[key] = None
        elif key == "PixelSpacing":
            out[key] = [float(v) for v in value]
        elif key in ("KVP", "SliceThickness", "ReconstructionDiameter"):
            out[key] = float(value)
        elif isinstance(value, pydicom.multival.MultiValue):
            out[key] = "\\".join(str(v) for v in value)
        else:
            out[key] = str(value)
    return out


def _where(paths: Sequence[Path]) -> str:
    if not paths:
        return "<no files>"
    folders = sorted({str(p.parent) for p in paths})
    return folders[0] if len(folders) == 1 else f"{folders[0]} (and {len(folders) - 1} more)"


def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> npt.NDArray[np.float64]:
    value = ds.get(keyword)
    if value is None or len(value) != n:
        raise DicomSeriesError(
            f"missing or malformed {keyword}",
            where=str(path),
            expected=f"{keyword} with {n} numbers",
            found=repr(value),
            fix="export the series again; this attribute is required to place the slice",
        )
    return np.array([float(v) for v in value], dtype=np.float64)


def _files_of_series(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], series_uid: str | None
) -> list[ScannedFile]:
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.exists():
            raise DicomSeriesError(
                "folder not found",
                where=str(root),
                expected="a folder or file of DICOM CT images",
                found="nothing at that path",
                fix="check the path",
            )
        scan = scan_dicom(root)
        if not scan.ct_series:
            others = sorted({s.reason for s in scan.skipped})
            found = "no files" if not scan.n_files else "; ".join(others[:3])
            raise DicomSeriesError(
                "no CT series found",
                where=str(root),
                expected="DICOM CT images (Modality CT)",
                found=found,
                fix="point at the folder that holds the planning CT",
            )
        if series_uid is None:
            if len(scan.ct_series) > 1:
                listing = ", ".join(
                    f"{uid} ({len(files)} files)" for uid, files in scan.ct_series.items()
                )
                raise DicomSeriesError(
                    "folder holds several CT series",
                    where=str(root),
                    expected="one CT series, or a series UID to choose one",
                    found=f"{len(scan.ct_series)} series: {listing}",
                    fix="pass series_uid=..., or use `dlas import`, which imports each series",
                )
            return next(iter(scan.ct_series.values()))
        if series_uid not in scan.ct_series:
            raise DicomSeriesError(
                "series not found",
                where=str(root),
                expected=f"CT series {series_uid}",
                found=f"series {', '.join(scan.ct_series)}",
                fix="check the SeriesInstanceUID",
            )
        return scan.ct_series[series_uid]
    return [ScannedFile(Path(p), read_header(p)) for p in source]


#: Where a decoder of a compressed transfer syntax comes from, when none is installed.
_DECODER_FIX = (
    "install a decoder: pip install 'dlas[jpeg]' (pylibjpeg-libjpeg, GPL-3.0: JPEG baseline, "
    "extended, lossless and JPEG-LS) or python-gdcm; or export the series uncompressed"
)


def _check_decoder(ds: Dataset, where: str) -> None:
    """Refuse a compressed image whose decoder is not installed, naming what to install
    (pydicom's own error would only list plugin names).

    The GPL-licensed JPEG decoder is an optional extra (``dlas[jpeg]``) so that the core
    package stays permissively licensed; JPEG 2000 and RLE decode without it.
    """
    from pydicom.pixels.decoders.base import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        available = False
    else:
        available = decoder.is_available
    if not available:
        raise DicomSeriesError(
            "no decoder installed for the image compression",
            where=where,
            expected=f"a decoder for {syntax.name} ({syntax})",
            found="none installed",
            fix=_DECODER_FIX,
        )


def read_ct_series(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Sequence[ScannedFile],
    *,
    series_uid: str | None = None,
    tolerances: SeriesTolerances | None = None,
) -> CTSeries:
    """Read one CT series.

    Parameters
    ----------
    source
        A folder (searched at any depth; it must hold exactly one CT series unless
        ``series_uid`` is given), a list of file paths, or files found by
        :func:`~dlas.io.dicom_scan.scan_dicom`.
    series_uid
        SeriesInstanceUID to read from a folder holding several series.
    tolerances
        Tolerances of the geometric checks.

    Raises
    ------
    DicomSeriesError
        For any of the defects listed in the module docstring.
    """
    tol = tolerances or SeriesTolerances()
    files = _source_files(source, series_uid)
    where = _where([f.path for f in files])
    _check_one_series(files, where)
    orientation = _axial_orientation(files, where, tol)
    stack = _slice_stack(files, where, tol)
    row_spacing, col_spacing = _pixel_spacing(stack.headers, where)
    array = _hounsfield(stack.files)
    # Canonical orientation: columns along +x, rows along +y (lossless flips).
    row_dir, col_dir = orientation[:3], orientation[3:]
    if row_dir[0] < 0:
        array = array[:, :, ::-1]
    if col_dir[1] < 0:
        array = array[:, ::-1, :]
    headers = stack.headers
    ncols, nrows = int(headers[0].Columns), int(headers[0].Rows)
    origin = stack.positions[0].copy()
    if row_dir[0] < 0:
        origin[0] -= (ncols - 1) * col_spacing
    if col_dir[1] < 0:
        origin[1] -= (nrows - 1) * row_spacing
    volume = Volume(
        np.ascontiguousarray(array, dtype=np.float32),
        spacing=np.array([stack.step, row_spacing, col_spacing]),
        origin=origin,
        direction=AXIAL_DIRECTION.copy(),
    )
    first = headers[0]
    return CTSeries(
        volume=volume,
        headers=headers,
        sop_instance_uids=[sop_instance_of(h) for h in headers],
        series_instance_uid=str(first.get("SeriesInstanceUID", "") or ""),
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        files=[f.path for f in stack.files],
        original_orientation=tuple(float(v) for v in orientation),
    )


def _source_files(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Sequence[ScannedFile],
    series_uid: str | None,
) -> list[ScannedFile]:
    """The files of the series: scanned files as given, or those of a folder or path list."""
    if (
        isinstance(source, Sequence)
        and not isinstance(source, str)
        and source
        and isinstance(source[0], ScannedFile)
    ):
        files = [f for f in source if isinstance(f, ScannedFile)]
    else:
        files = _files_of_series(source, series_uid)  # type: ignore[arg-type]
    if not files:
        raise DicomSeriesError(
            "empty series",
            expected="at least one CT image",
            found="no files",
            fix="point at the folder that holds the planning CT",
        )
    return files


def _check_one_series(files: Sequence[ScannedFile], where: str) -> None:
    """Refuse other modalities, localizers, several series, frames of reference or sizes."""
    for f in files:
        modality = str(f.header.get("Modality", ""))
        if modality != "CT" or sop_class_of(f.header) != CT_IMAGE_STORAGE:
            raise DicomSeriesError(
                "not a CT image",
                where=str(f.path),
                expected="Modality CT (CT Image Storage)",
                found=f"Modality {modality or '<none>'}",
                fix="only CT series can be read as planning CTs; remove other modalities",
            )
        image_type = [str(v).upper() for v in f.header.get("ImageType", [])]
        if "LOCALIZER" in image_type:
            raise DicomSeriesError(
                "localizer (scout) image in the series",
                where=str(f.path),
                expected="axial CT slices",
                found="ImageType " + "\\".join(image_type),
                fix="remove the localizer images; they are not part of the CT volume",
            )
    keys = {series_key(f.header) for f in files}
    if len(keys) > 1:
        raise DicomSeriesError(
            "several series mixed together",
            where=where,
            expected="one SeriesInstanceUID for the whole series",
            found=f"{len(keys)} series: " + ", ".join(sorted(keys)[:3]),
            fix="keep one series per folder, or use `dlas import`, which splits them",
        )
    _require_single(
        files,
        "FrameOfReferenceUID",
        "mixed frames of reference",
        where,
        "the slices come from different acquisitions; export one series only",
    )
    for keyword in ("Rows", "Columns"):
        _require_single(
            files,
            keyword,
            f"slices of different size ({keyword})",
            where,
            "export the series again; all slices must share one matrix size",
        )


def _axial_orientation(
    files: Sequence[ScannedFile], where: str, tol: SeriesTolerances
) -> npt.NDArray[np.float64]:
    """The series' one ImageOrientationPatient (row, column direction cosines), axial and
    untilted, or an error."""
    orientations = np.array(
        [_floats(f.header, "ImageOrientationPatient", 6, f.path) for f in files]
    )
    if np.abs(orientations - orientations[0]).max() > tol.orientation:
        worst = int(np.abs(orientations - orientations[0]).max(axis=1).argmax())
        raise DicomSeriesError(
            "mixed orientations",
            where=where,
            expected="one ImageOrientationPatient for every slice",
            found=f"{orientations[0].round(4).tolist()} and "
            f"{orientations[worst].round(4).tolist()} ({files[worst].path.name})",
            fix="export one series at a time",
        )
    row_dir, col_dir = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row_dir, col_dir)
    axis_aligned = (
        abs(abs(row_dir[0]) - 1) < tol.orientation
        and abs(abs(col_dir[1]) - 1) < tol.orientation
        and abs(abs(normal[2]) - 1) < tol.orientation
    )
    if not axis_aligned:
        raise DicomSeriesError(
            "non-axial or rotated orientation",
            where=where,
            expected="axial slices, ImageOrientationPatient ±(1,0,0) / ±(0,1,0)",
            found=f"ImageOrientationPatient {orientations[0].round(4).tolist()}",
            fix="reformat the CT to axial slices in the scanner or planning system",
        )
    tilts = {float(f.header.get("GantryDetectorTilt", 0) or 0) for f in files}
    if any(abs(t) > 1e-3 for t in tilts):
        raise DicomSeriesError(
            "gantry tilt",
            where=where,
            expected="GantryDetectorTilt 0",
            found=f"GantryDetectorTilt {sorted(tilts)} degrees",
            fix="reconstruct the acquisition without tilt (or resample it to axial slices)",
        )
    orientation: npt.NDArray[np.float64] = orientations[0]
    return orientation


@dataclass(frozen=True)
class _Stack:
    """The slices sorted inferior → superior, their positions (mm) and the slice spacing."""

    files: list[ScannedFile]
    headers: Sequence[Dataset]
    positions: npt.NDArray[np.float64]  # ImagePositionPatient of each slice, (n, 3)
    step: float  # slice spacing (mm)


def _slice_stack(files: Sequence[ScannedFile], where: str, tol: SeriesTolerances) -> _Stack:
    """Sort the slices along z; refuse a tilted stack, duplicate or missing slices and
    irregular spacing."""
    positions = np.array([_floats(f.header, "ImagePositionPatient", 3, f.path) for f in files])
    order = np.argsort(positions[:, 2], kind="stable")
    positions = positions[order]
    files = [files[int(i)] for i in order]
    z = positions[:, 2]
    lateral = positions[:, :2] - positions[0, :2]
    if len(files) > 1 and np.abs(np.diff(lateral, axis=0)).max() > tol.tilt_mm:
        step = np.abs(np.diff(lateral, axis=0)).max()
        raise DicomSeriesError(
            "tilted acquisition",
            where=where,
            expected="slice origins stacked along the slice normal",
            found=f"slice origins shift by up to {step:.2f} mm in-plane from one slice to the next",
            fix="reconstruct without gantry tilt (or resample to axial slices)",
        )
    gaps = np.diff(z)
    duplicate = np.flatnonzero(gaps < tol.position_mm)
    if duplicate.size:
        d = int(duplicate[0])
        raise DicomSeriesError(
            "duplicate slice position",
            where=where,
            expected="one slice per position",
            found=f"{files[d].path.name} and {files[d + 1].path.name} both at z = {z[d]:.2f} mm",
            fix="remove the duplicate file (two exports of one series mixed in one folder?)",
        )
    headers = [f.header for f in files]
    if len(files) > 1:
        step = _regular_spacing(z, where, tol)
    else:
        thickness = headers[0].get("SliceThickness")
        if thickness is None or float(thickness) <= 0:
            raise DicomSeriesError(
                "single slice without SliceThickness",
                where=where,
                expected="several slices, or SliceThickness for a single one",
                found="one slice and no SliceThickness",
                fix="export the whole series",
            )
        step = float(thickness)
    return _Stack(files, headers, positions, step)


def _regular_spacing(z: npt.NDArray[np.float64], where: str, tol: SeriesTolerances) -> float:
    """The median gap (mm) between the sorted slice positions ``z``, when every gap matches it
    (within the tolerances); else a missing slice or irregular spacing is refused."""
    gaps = np.diff(z)
    step = float(np.median(gaps))
    allowed = max(tol.spacing_mm, tol.spacing_fraction * step)
    bad = np.flatnonzero(np.abs(gaps - step) > allowed)
    if bad.size:
        b = int(bad[0])
        ratio = gaps[b] / step
        if abs(ratio - round(ratio)) * step <= allowed and round(ratio) >= 2:
            raise DicomSeriesError(
                "missing slice",
                where=where,
                expected=f"slices every {step:.3g} mm",
                found=f"a gap of {gaps[b]:.3g} mm between z = {z[b]:.2f} and "
                f"z = {z[b + 1]:.2f} mm ({round(ratio) - 1} slice(s) missing)",
                fix="export the complete series",
            )
        raise DicomSeriesError(
            "irregular slice spacing",
            where=where,
            expected=f"slices every {step:.3g} mm (± {allowed:.3g} mm)",
            found=f"a gap of {gaps[b]:.3g} mm between z = {z[b]:.2f} and z = {z[b + 1]:.2f} mm",
            fix="resample the series to a regular spacing in the planning system",
        )
    return step


def _pixel_spacing(headers: Sequence[Dataset], where: str) -> tuple[float, float]:
    """The series' one PixelSpacing (row, column; mm), positive and finite, or an error."""
    spacings = {tuple(float(v) for v in h.get("PixelSpacing", [])) for h in headers}
    if len(spacings) != 1 or len(next(iter(spacings))) != 2:
        raise DicomSeriesError(
            "missing or mixed PixelSpacing",
            where=where,
            expected="one PixelSpacing (row, column) for every slice",
            found=f"{sorted(spacings)}",
            fix="export the series again",
        )
    row_spacing, col_spacing = next(iter(spacings))
    if (
        not (np.isfinite(row_spacing) and np.isfinite(col_spacing))
        or min(row_spacing, col_spacing) <= 0
    ):
        raise DicomSeriesError(
            "invalid PixelSpacing",
            where=where,
            expected="two positive pixel spacings in mm (row, column), e.g. 0.98\\0.98",
            found=f"{row_spacing:g}\\{col_spacing:g}",
            fix="export the series again from the scanner or planning system; the images "
            "cannot be placed in space without it",
        )
    return row_spacing, col_spacing


def _hounsfield(files: Sequence[ScannedFile]) -> npt.NDArray[np.float32]:
    """The slices' pixel data in HU (RescaleSlope and RescaleIntercept applied), stacked
    in the given order as stored (z, rows, columns)."""
    slices = []
    for f in files:
        ds = read_header(f.path, pixels=True)
        _check_decoder(ds, str(f.path))
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise DicomSeriesError(
                "cannot decode pixel data (truncated or compressed with an unavailable codec)",
                where=str(f.path),
                expected=f"{ds.get('Rows')}x{ds.get('Columns')} pixels",
                found=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                fix="export the series again, uncompressed",
            ) from exc
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        slices.append(pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    return np.stack(slices)


def _require_single(
    files: Sequence[ScannedFile], keyword: str, what: str, where: str, fix: str
) -> None:
    values: dict[str, Path] = {}
    for f in files:
        values.setdefault(str(f.header.get(keyword, "")), f.path)
    if len(values) > 1:
        listing = ", ".join(f"{v or '<none>'} ({p.name})" for v, p in list(values.items())[:3])
        raise DicomSeriesError(
            what,
            where=where,
            expected=f"one {keyword} for the whole series",
            found=f"{len(values)} values: {listing}",
            fix=fix,
        )
