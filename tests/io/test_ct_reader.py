"""The CT series reader: correct volumes, and a clear refusal for every defect."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dlas.errors import DicomSeriesError
from dlas.io import read_ct_series, scan_dicom
from dlas.io.ct_writer import make_uid


def _edit(path: Path, **changes: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def test_volume_hu_spacing_and_origin(synthetic_ct) -> None:
    folder, _, volume = synthetic_ct(shape=(6, 20, 24), spacing=(3.0, 0.9, 1.1))
    ct = read_ct_series(folder)
    np.testing.assert_array_equal(ct.volume.array, volume.array)
    np.testing.assert_allclose(ct.volume.spacing, [3.0, 0.9, 1.1])
    np.testing.assert_allclose(ct.volume.origin, volume.origin)
    assert ct.volume.array.dtype == np.float32
    assert len(ct.sop_instance_uids) == 6


def test_file_order_does_not_matter(synthetic_ct, tmp_path: Path) -> None:
    folder, files, _ = synthetic_ct()
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    order = list(range(len(files)))
    random.Random(1).shuffle(order)
    for rank, index in enumerate(order):
        # names sort in a different order than positions; InstanceNumber also scrambled
        target = shuffled / f"IM{rank:03d}"
        shutil.copy(files[index], target)
        _edit(target, InstanceNumber=len(files) - rank)
    a = read_ct_series(folder)
    b = read_ct_series(shuffled)
    np.testing.assert_array_equal(a.volume.array, b.volume.array)
    assert a.sop_instance_uids == b.sop_instance_uids


def test_rescale_slope_and_intercept_are_applied(synthetic_ct) -> None:
    folder, files, volume = synthetic_ct()
    for f in files:
        ds = pydicom.dcmread(f)
        stored = ds.pixel_array.astype(np.int32)
        # re-encode as stored = (HU + 1000) / 2 with slope 2, intercept -1000
        hu = stored - 1024
        new = ((hu + 1000) // 2).astype(np.uint16)
        ds.PixelData = new.tobytes()
        ds.RescaleSlope = "2"
        ds.RescaleIntercept = "-1000"
        ds.save_as(f)
    ct = read_ct_series(folder)
    expected = ((volume.array + 1000) // 2) * 2 - 1000
    np.testing.assert_array_equal(ct.volume.array, expected)


def test_flipped_rows_and_columns_are_canonicalised(synthetic_ct) -> None:
    folder, files, volume = synthetic_ct(shape=(4, 10, 12), spacing=(2.0, 1.0, 1.5))
    for f in files:
        ds = pydicom.dcmread(f)
        pixels = ds.pixel_array[::-1, ::-1].copy()  # store with rows and columns reversed
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0] + 11 * 1.5, ipp[1] + 9 * 1.0, ipp[2]]
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
        ds.PixelData = pixels.tobytes()
        ds.save_as(f)
    ct = read_ct_series(folder)
    np.testing.assert_array_equal(ct.volume.array, volume.array)
    np.testing.assert_allclose(ct.volume.origin, volume.origin)
    assert ct.original_orientation == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def test_truncated_file_is_refused(synthetic_ct) -> None:
    folder, files, _ = synthetic_ct()
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 200])
    with pytest.raises(DicomSeriesError, match=r"cannot decode pixel data|truncated"):
        read_ct_series(folder)


def test_file_that_is_not_dicom_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DicomSeriesError, match=r"no CT series found.*not a DICOM file"):
        read_ct_series(tmp_path)
    with pytest.raises(DicomSeriesError, match="not a DICOM file"):
        read_ct_series([tmp_path / "notes.txt"])


def test_empty_source_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DicomSeriesError, match=r"no CT series found.*no files"):
        read_ct_series(tmp_path)


def test_non_ct_modality_is_refused(synthetic_ct) -> None:
    _, files, _ = synthetic_ct()
    for f in files:
        _edit(f, Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4")
    with pytest.raises(DicomSeriesError, match=r"not a CT image.*found Modality MR"):
        read_ct_series(files)


def test_two_series_in_one_folder_are_refused_when_ambiguous(synthetic_ct, tmp_path) -> None:
    a, _, _ = synthetic_ct(name="a")
    b, _, _ = synthetic_ct(name="b", patient_id="OTHER")
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed / "a")
    shutil.copytree(b, mixed / "b")
    with pytest.raises(DicomSeriesError, match="folder holds several CT series"):
        read_ct_series(mixed)
    # each can still be chosen by UID
    scan = scan_dicom(mixed)
    assert len(scan.ct_series) == 2
    for uid in scan.ct_series:
        assert read_ct_series(mixed, series_uid=uid).series_instance_uid == uid


def test_files_of_two_series_passed_together_are_refused(synthetic_ct) -> None:
    _, files_a, _ = synthetic_ct(name="a")
    _, files_b, _ = synthetic_ct(name="b")
    with pytest.raises(DicomSeriesError, match="several series mixed together"):
        read_ct_series(files_a[:3] + files_b[3:])


def test_mixed_frame_of_reference_is_refused(synthetic_ct) -> None:
    folder, files, _ = synthetic_ct()
    _edit(files[2], FrameOfReferenceUID=make_uid("another frame"))
    with pytest.raises(DicomSeriesError, match="mixed frames of reference"):
        read_ct_series(folder)


def test_duplicate_slice_position_is_refused(synthetic_ct) -> None:
    folder, files, _ = synthetic_ct()
    copy = folder / "CT_copy.dcm"
    shutil.copy(files[4], copy)
    _edit(copy, SOPInstanceUID=make_uid("dup"))
    with pytest.raises(DicomSeriesError, match=r"duplicate slice position.*z = -2\.50 mm"):
        read_ct_series(folder)


def test_missing_slice_is_refused(synthetic_ct) -> None:
    folder, files, _ = synthetic_ct()
    files[5].unlink()
    with pytest.raises(DicomSeriesError, match=r"missing slice.*gap of 5 mm.*1 slice\(s\) missing"):
        read_ct_series(folder)


def test_irregular_spacing_is_refused(synthetic_ct) -> None:
    folder, files, _ = synthetic_ct()
    ds = pydicom.dcmread(files[5])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    _edit(files[5], ImagePositionPatient=[x, y, z + 0.8])
    with pytest.raises(DicomSeriesError, match="irregular slice spacing"):
        read_ct_series(folder)


def test_gantry_tilt_is_refused(synthetic_ct) -> None:
    folder, files, _ = synthetic_ct()
    for f in files:
        _edit(f, GantryDetectorTilt="15")
    with pytest.raises(DicomSeriesError, match=r"gantry tilt.*\[15\.0\]"):
        read_ct_series(folder)


def test_tilted_stack_without_tilt_tag_is_refused(synthetic_ct) -> None:
    folder, files, _ = synthetic_ct()
    for k, f in enumerate(sorted(files)):
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        _edit(f, ImagePositionPatient=[str(x), f"{y + 0.7 * k:.2f}", str(z)])  # slide along y
    with pytest.raises(DicomSeriesError, match="tilted acquisition"):
        read_ct_series(folder)


def test_non_axial_orientation_is_refused(synthetic_ct) -> None:
    folder, files, _ = synthetic_ct()
    for f in files:
        _edit(f, ImageOrientationPatient=[0, 1, 0, 0, 0, -1])  # sagittal
    with pytest.raises(DicomSeriesError, match="non-axial or rotated orientation"):
        read_ct_series(folder)


def test_mixed_orientations_are_refused(synthetic_ct) -> None:
    folder, files, _ = synthetic_ct()
    _edit(files[1], ImageOrientationPatient=[1, 0, 0, 0, 0.8, 0.6])
    with pytest.raises(DicomSeriesError, match="mixed orientations"):
        read_ct_series(folder)


def test_localizer_in_series_is_refused(synthetic_ct) -> None:
    folder, files, _ = synthetic_ct()
    _edit(files[0], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    with pytest.raises(DicomSeriesError, match="localizer"):
        read_ct_series(folder)


def test_scan_reports_every_unused_file(synthetic_ct, tmp_path: Path) -> None:
    folder, _, _ = synthetic_ct()
    (folder / "README.txt").write_text("hello")
    (folder / "DICOMDIR").write_bytes(b"x")
    scan = scan_dicom(folder)
    reasons = sorted(s.reason for s in scan.skipped)
    assert reasons[0].startswith("DICOMDIR")
    assert "not a DICOM file" in reasons
    assert scan.n_files == 12


def test_rle_compressed_series_decodes_like_the_uncompressed_one(synthetic_ct) -> None:
    from pydicom.uid import RLELossless

    folder, files, volume = synthetic_ct()
    for path in files:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    np.testing.assert_allclose(read_ct_series(folder).volume.array, volume.array, atol=0.5)


def test_series_without_an_installed_decoder_names_the_extra(
    synthetic_ct, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JPEG Lossless series (the usual CT compression) whose decoder, the GPL-licensed
    pylibjpeg-libjpeg of the dlas[jpeg] extra, is not installed."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    folder, files, _ = synthetic_ct()
    ds = pydicom.dcmread(files[3])
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8 not really a JPEG \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(files[3], enforce_file_format=True)
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})
    with pytest.raises(DicomSeriesError) as info:
        read_ct_series(folder)
    assert info.value.what == "no decoder installed for the image compression"
    assert "JPEG Lossless" in str(info.value.expected)
    assert "pip install 'dlas[jpeg]'" in str(info.value.fix)
    monkeypatch.undo()
    with pytest.raises(DicomSeriesError, match="cannot decode pixel data"):
        read_ct_series(folder)  # with the decoder: these bytes are no JPEG
