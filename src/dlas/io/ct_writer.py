"""Writing a :class:`~dlas.io.volume.Volume` of HU as a DICOM CT series (CT Image Storage).

Used by the phantom generator (synthetic cohorts are written as real DICOM so that import runs the
same code path as a hospital export) and by the tests, which build defective series from it.

Pixels are stored as unsigned 12-bit values with RescaleIntercept −1024 and RescaleSlope 1, as
most CT scanners do; HU are rounded to integers and clipped to [−1024, 3071].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dlas import __version__
from dlas.errors import DicomSeriesError
from dlas.io.dicom_scan import CT_IMAGE_STORAGE
from dlas.io.volume import AXIAL_DIRECTION, Volume

__all__ = ["CTSeriesSpec", "make_uid", "write_ct_series"]

_INTERCEPT = -1024.0
_MAX_STORED = 4095


def make_uid(*entropy: object) -> str:
    """A UID: random, or derived deterministically from ``entropy`` when given."""
    if entropy:
        return str(generate_uid(entropy_srcs=[repr(e) for e in entropy]))
    return str(generate_uid())


@dataclass
class CTSeriesSpec:
    """Patient, study, series and scanner attributes of a CT series to write.

    The UIDs are generated when left empty (deterministically from ``uid_seed`` if set).
    """

    patient_name: str = "ANONYMOUS"
    patient_id: str = "ANON"
    patient_birth_date: str = ""
    patient_sex: str = ""
    patient_age: str = ""
    study_date: str = "20240101"
    study_time: str = "090000"
    study_description: str = ""
    study_id: str = "1"
    accession_number: str = ""
    series_description: str = "CT"
    series_number: int = 1
    body_part: str = "PELVIS"
    manufacturer: str = "dlas"
    manufacturer_model_name: str = "synthetic"
    station_name: str = ""
    kvp: float = 120.0
    convolution_kernel: str = ""
    institution_name: str = ""
    patient_position: str = "HFS"
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    uid_seed: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def resolve_uids(self) -> None:
        """Fill the empty UIDs."""
        seed = (self.uid_seed,) if self.uid_seed is not None else ()
        if not self.study_instance_uid:
            self.study_instance_uid = make_uid(*seed, "study") if seed else make_uid()
        if not self.series_instance_uid:
            self.series_instance_uid = make_uid(*seed, "series") if seed else make_uid()
        if not self.frame_of_reference_uid:
            self.frame_of_reference_uid = make_uid(*seed, "for") if seed else make_uid()


def write_ct_series(
    volume: Volume,
    folder: str | os.PathLike[str],
    spec: CTSeriesSpec | None = None,
    *,
    file_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``volume`` (HU, canonical axial orientation) as one DICOM file per slice.

    Parameters
    ----------
    volume
        HU values, (z, y, x), direction :data:`~dlas.io.volume.AXIAL_DIRECTION`.
    folder
        Destination folder (created). Files are written complete or not at all.
    spec
        Patient, study, series and scanner attributes.
    file_names
        Names of the slice files; default ``CT0001.dcm``, ``CT0002.dcm``, ...

    Returns
    -------
    list of Path
        The files written, in slice order (inferior to superior).
    """
    from dlas.io.atomic import atomic_path

    if not np.allclose(volume.direction, AXIAL_DIRECTION, atol=1e-6):
        raise DicomSeriesError(
            "only canonical axial volumes can be written as CT",
            expected="direction rows (0,0,1), (0,1,0), (1,0,0)",
            found=str(volume.direction.round(4).tolist()),
            fix="reorient the volume before writing",
        )
    spec = spec or CTSeriesSpec()
    spec.resolve_uids()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = volume.shape
    names = (
        list(file_names) if file_names is not None else [f"CT{k + 1:04d}.dcm" for k in range(nz)]
    )
    if len(names) != nz:
        raise ValueError(f"{len(names)} file names for {nz} slices")
    stored = np.clip(np.rint(volume.array) - _INTERCEPT, 0, _MAX_STORED).astype(np.uint16)
    sz, sy, sx = (float(v) for v in volume.spacing)
    seed = (spec.uid_seed,) if spec.uid_seed is not None else ()
    written: list[Path] = []
    for k in range(nz):
        sop_uid = make_uid(*seed, "sop", k) if seed else make_uid()
        ds = _slice_dataset(spec, sop_uid, k)
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.SliceThickness = _ds(sz)
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        position = volume.index_to_physical([k, 0, 0])
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(position[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = _ds(_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = stored[k].tobytes()
        path = out / names[k]
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        written.append(path)
    return written


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        text = f"{float(value):.10g}"
    return text


def _slice_dataset(spec: CTSeriesSpec, sop_uid: str, k: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"DLAS_{__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = spec.study_date
    ds.SeriesDate = spec.study_date
    ds.ContentDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.SeriesTime = spec.study_time
    ds.ContentTime = spec.study_time
    ds.AccessionNumber = spec.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = spec.manufacturer
    ds.InstitutionName = spec.institution_name
    ds.ReferringPhysicianName = ""
    ds.StationName = spec.station_name
    ds.StudyDescription = spec.study_description
    ds.SeriesDescription = spec.series_description
    ds.ManufacturerModelName = spec.manufacturer_model_name
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.patient_birth_date
    ds.PatientSex = spec.patient_sex
    if spec.patient_age:
        ds.PatientAge = spec.patient_age
    ds.BodyPartExamined = spec.body_part
    ds.KVP = _ds(spec.kvp)
    if spec.convolution_kernel:
        ds.ConvolutionKernel = spec.convolution_kernel
    ds.SoftwareVersions = f"dlas {__version__}"
    ds.PatientPosition = spec.patient_position
    ds.StudyInstanceUID = spec.study_instance_uid
    ds.SeriesInstanceUID = spec.series_instance_uid
    ds.StudyID = spec.study_id
    ds.SeriesNumber = spec.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceCreationDate = spec.study_date
    for keyword, value in spec.extra.items():
        setattr(ds, keyword, value)
    return ds
