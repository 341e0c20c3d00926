"""Finding DICOM CT series, RTSTRUCTs and SEGs in a folder tree, with a reason for each file left.

A hospital export mixes CT series, RTSTRUCTs, plans, doses, registrations, non-DICOM files
(DICOMDIR, text notes, thumbnails) and now and then a truncated file. :func:`scan_dicom` reads
the header of every file at any depth once, sorts the CT images into series by
SeriesInstanceUID, collects the RTSTRUCTs and DICOM Segmentations (SEG), and lists every other
file with the reason it was not used, so that an import can report that nothing was silently
lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError

from dlas.errors import DicomSeriesError

__all__ = [
    "CT_IMAGE_STORAGE",
    "RTSTRUCT_STORAGE",
    "SEG_STORAGE",
    "DicomScan",
    "ScannedFile",
    "SkippedFile",
    "read_header",
    "scan_dicom",
    "series_key",
    "sop_class_of",
    "sop_instance_of",
    "walk_folders",
]

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
#: Prefix of the grouping key of CT images whose SeriesInstanceUID is empty.
UNIDENTIFIED_SERIES = "unidentified-series-"


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ScannedFile:
    """A DICOM file with its header (pixel data not loaded)."""

    path: Path
    header: FileDataset


@dataclass
class DicomScan:
    """What a folder tree holds.

    Attributes
    ----------
    ct_series
        CT images grouped by SeriesInstanceUID (see :func:`series_key` for files without one),
        in the order found.
    rtstructs
        RTSTRUCT files (fully read: their contours are in the header).
    segs
        DICOM Segmentation files (fully read, pixel data included).
    skipped
        Every other file with the reason it was not used.
    """

    root: Path
    ct_series: dict[str, list[ScannedFile]] = field(default_factory=dict)
    rtstructs: list[ScannedFile] = field(default_factory=list)
    segs: list[ScannedFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        """Number of files looked at."""
        return (
            sum(len(v) for v in self.ct_series.values())
            + len(self.rtstructs)
            + len(self.segs)
            + len(self.skipped)
        )


def read_header(path: str | os.PathLike[str], *, pixels: bool = False) -> FileDataset:
    """Read one DICOM file, turning every failure into a one-line :class:`DicomSeriesError`.

    Parameters
    ----------
    pixels
        Also read the pixel data (otherwise reading stops before it).
    """
    p = Path(path)
    try:
        return pydicom.dcmread(p, stop_before_pixels=not pixels)
    except InvalidDicomError as exc:
        raise DicomSeriesError(
            "not a DICOM file",
            where=str(p),
            expected="a DICOM Part 10 file (128-byte preamble and 'DICM')",
            found=str(exc).splitlines()[0] if str(exc) else "no DICOM header",
            fix="remove the file from the folder or export it again as DICOM",
        ) from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise DicomSeriesError(
            "cannot read DICOM file (truncated or corrupt)",
            where=str(p),
            expected="a complete DICOM file",
            found=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            fix="export the file again from the planning system",
        ) from exc


def walk_folders(root: Path) -> Iterable[tuple[str, list[str], list[str]]]:
    """``os.walk`` in sorted order that follows symbolic links but never visits a folder twice."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        yield dirpath, dirnames, sorted(filenames)


def sop_class_of(ds: Dataset) -> str:
    """SOPClassUID of a file, from the data set or, when that is empty, the file meta header.

    Some archives (seen in a real Siemens export) leave the data set's SOPClassUID empty and
    keep the class only in MediaStorageSOPClassUID.
    """
    value = str(ds.get("SOPClassUID", "") or "")
    if not value and getattr(ds, "file_meta", None) is not None:
        value = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return value


def sop_instance_of(ds: Dataset) -> str:
    """SOPInstanceUID of a file, falling back to the file meta header like :func:`sop_class_of`."""
    value = str(ds.get("SOPInstanceUID", "") or "")
    if not value and getattr(ds, "file_meta", None) is not None:
        value = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    return value


def series_key(ds: FileDataset) -> str:
    """The SeriesInstanceUID, or for files whose UID was blanked (over-zealous anonymisers do
    this) a key from the attributes that one series shares: frame of reference, series number
    and description, matrix, pixel spacing, orientation and kernel."""
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if uid:
        return uid
    parts = [
        str(ds.get(k, "") or "")
        for k in (
            "FrameOfReferenceUID",
            "SeriesNumber",
            "SeriesDescription",
            "Rows",
            "Columns",
            "PixelSpacing",
            "ImageOrientationPatient",
            "ConvolutionKernel",
        )
    ]
    return UNIDENTIFIED_SERIES + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _iter_files(root: Path) -> Iterable[Path]:
    for dirpath, _, filenames in walk_folders(root):
        for name in filenames:
            if name.startswith("."):
                continue
            yield Path(dirpath) / name


def scan_dicom(root: str | os.PathLike[str]) -> DicomScan:
    """Scan ``root`` (a folder at any depth, or a single file) for CT series, RTSTRUCTs and SEGs.

    Nothing is refused here: files that cannot be used are listed in ``DicomScan.skipped`` with
    their reason; the callers decide what is fatal.
    """
    root_path = Path(root)
    scan = DicomScan(root=root_path)
    files = [root_path] if root_path.is_file() else list(_iter_files(root_path))
    for path in files:
        if path.name.upper() == "DICOMDIR":
            scan.skipped.append(SkippedFile(path, "DICOMDIR index file (not needed)"))
            continue
        try:
            header = read_header(path)
        except DicomSeriesError as exc:
            scan.skipped.append(SkippedFile(path, exc.what))
            continue
        sop_class = sop_class_of(header)
        modality = str(header.get("Modality", "")).upper()
        is_seg = sop_class in (SEG_STORAGE, LABEL_MAP_SEG_STORAGE) or modality == "SEG"
        if is_seg or sop_class == RTSTRUCT_STORAGE or modality == "RTSTRUCT":
            kind = "SEG" if is_seg else "RTSTRUCT"
            try:
                full = pydicom.dcmread(path)  # contours or segment frames: the whole file
            except Exception as exc:
                scan.skipped.append(
                    SkippedFile(path, f"{kind} unreadable (truncated or corrupt): {exc}")
                )
                continue
            (scan.segs if is_seg else scan.rtstructs).append(ScannedFile(path, full))
        elif sop_class == ENHANCED_CT_IMAGE_STORAGE:
            scan.skipped.append(
                SkippedFile(
                    path,
                    "enhanced multi-frame CT is not supported; export as classic single-frame CT",
                )
            )
        elif sop_class == CT_IMAGE_STORAGE:
            scan.ct_series.setdefault(series_key(header), []).append(ScannedFile(path, header))
        elif modality == "CT":
            scan.skipped.append(
                SkippedFile(path, f"CT object of SOP class {sop_class} is not a CT image")
            )
        else:
            label = modality or "unknown modality"
            scan.skipped.append(
                SkippedFile(path, f"not a CT image, RTSTRUCT or SEG (modality {label}, not used)")
            )
    log.debug(
        "scanned %d files: %d CT series, %d RTSTRUCTs, %d SEGs, %d skipped",
        scan.n_files,
        len(scan.ct_series),
        len(scan.rtstructs),
        len(scan.segs),
        len(scan.skipped),
    )
    return scan
