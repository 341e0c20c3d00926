"""RTSTRUCT reading and writing: exact round trips, an independent reader, and every defect."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from dlas.errors import RTStructError
from dlas.io import (
    AlgorithmIdentification,
    ROIGenerationAlgorithm,
    read_ct_series,
    read_rtstruct,
    summarize_rtstruct,
    write_rtstruct,
)
from dlas.io.ct_writer import make_uid
from dlas.structures import StructureSet

SHAPE = (12, 48, 48)
SPACING = (2.5, 1.0, 1.0)  # 1 cm³ = 400 voxels
ALGO = AlgorithmIdentification(name="dlas test model", version="1.2.3", parameters="sha256:ab")


def _shapes() -> dict[str, np.ndarray]:
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    r = np.sqrt(((zz - 6) * 2.5) ** 2 + (yy - 24.0) ** 2 + (xx - 24.0) ** 2)
    nested = (r < 18) & ~(r < 12) | (r < 6)  # shell with a hole holding an island
    islands = np.zeros(SHAPE, dtype=bool)
    for cz, cy, cx in [(3, 8, 8), (5, 38, 10), (8, 10, 40), (9, 40, 40)]:
        islands |= ((zz - cz) * 2.5) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < 6**2
    thin = np.zeros(SHAPE, dtype=bool)
    thin[2:9, 5:45, 30:32] = True  # 2 voxels wide
    thin[2:9, 20, 10:30] = True  # and a 1-voxel line joined to it
    single = np.zeros(SHAPE, dtype=bool)
    single[7, 14:34, 4:24] = True  # one slice, 400 voxels
    rng = np.random.default_rng(7)
    blobs = ndimage.binary_opening(rng.random(SHAPE) < 0.55) & (r < 22)  # ragged, diagonal touches
    return {"nested": nested, "islands": islands, "thin": thin, "single": single, "blobs": blobs}


@pytest.fixture
def ct(synthetic_ct):
    folder, _, _ = synthetic_ct(shape=SHAPE, spacing=SPACING, origin=(-23.5, -30.0, -10.0))
    return read_ct_series(folder)


def _write(ct, path: Path, masks: dict[str, np.ndarray], **kw) -> Path:
    write_rtstruct(
        masks,
        ct,
        path,
        generation=kw.pop("generation", "AUTOMATIC"),
        algorithm=kw.pop("algorithm", ALGO),
        timestamp=dt.datetime(2024, 5, 6, 7, 8, 9),
        uid_seed="test",
        **kw,
    )
    return path


def test_round_trip_is_exact_with_our_reader(ct, tmp_path: Path) -> None:
    shapes = _shapes()
    data = read_rtstruct(_write(ct, tmp_path / "rs.dcm", shapes), ct)
    assert data.warnings == []
    by_name = {roi.name: roi for roi in data.rois.values()}
    for name, mask in shapes.items():
        assert mask.sum() >= 400, name  # each at least 1 cm³
        np.testing.assert_array_equal(by_name[name].mask, mask, err_msg=name)


def _dicompyler_masks(rs_path: Path, ct) -> dict[str, np.ndarray]:
    """Rasterise with dicompyler-core's contour handling (matplotlib paths, XOR per plane).

    dicompyler-core's DICOM parser no longer imports under pydicom 3, so the polygons are read
    here with plain pydicom; the rasterisation, which is what this test checks, is theirs.
    """
    from dicompylercore import dvhcalc

    ds = pydicom.dcmread(rs_path)
    _, ny, nx = ct.volume.shape
    xs = ct.volume.origin[0] + np.arange(nx) * ct.volume.spacing[2]
    ys = ct.volume.origin[1] + np.arange(ny) * ct.volume.spacing[1]
    gx, gy = np.meshgrid(xs, ys)
    points = np.column_stack([gx.ravel(), gy.ravel()])
    dd = {"lut": [xs, ys], "x_lut_index": 0, "rows": ny, "columns": nx}
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for item in ds.ROIContourSequence:
        number = int(item.ReferencedROINumber)
        mask = np.zeros(ct.volume.shape, dtype=bool)
        for contour in item.get("ContourSequence", []):
            xyz = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
            k = round((xyz[0, 2] - ct.volume.origin[2]) / ct.volume.spacing[0])
            mask[k] ^= dvhcalc.get_contour_mask(dd, number, points, xyz[:, :2].tolist())
        out[names[number]] = mask
    return out


def test_round_trip_with_independent_reader(ct, tmp_path: Path) -> None:
    shapes = _shapes()
    theirs = _dicompyler_masks(_write(ct, tmp_path / "rs.dcm", shapes), ct)
    for name, mask in shapes.items():
        dsc = 2 * (theirs[name] & mask).sum() / (theirs[name].sum() + mask.sum())
        assert dsc >= 0.99, (name, dsc)


def test_written_rtstruct_passes_dciodvfy(ct, tmp_path: Path, dciodvfy) -> None:
    errors = dciodvfy(_write(ct, tmp_path / "rs.dcm", _shapes()))
    assert errors == []


def test_written_rtstruct_references_the_ct_and_names_the_model(ct, tmp_path: Path) -> None:
    ds = pydicom.dcmread(_write(ct, tmp_path / "rs.dcm", {"single": _shapes()["single"]}))
    ref_for = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref_for.FrameOfReferenceUID == ct.frame_of_reference_uid
    study = ref_for.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == ct.study_instance_uid
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.series_instance_uid
    assert [c.ReferencedSOPInstanceUID for c in series.ContourImageSequence] == ct.sop_instance_uids
    roi = ds.StructureSetROISequence[0]
    assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
    assert roi.ROIGenerationDescription == "dlas test model 1.2.3"
    ident = roi.ROIDerivationAlgorithmIdentificationSequence[0]
    assert (ident.AlgorithmName, ident.AlgorithmVersion) == ("dlas test model", "1.2.3")
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == ct.sop_instance_uids[7]
    assert all(len(str(v)) <= 16 for v in contour.ContourData)
    assert ds.PatientID == "PID-0001"  # filed with its images in the planning system


def test_structure_set_supplies_colours_and_types(ct, tmp_path: Path) -> None:
    masks = {"CTV": _shapes()["single"], "Bladder": _shapes()["islands"]}
    path = _write(ct, tmp_path / "rs.dcm", masks, structure_set=StructureSet.builtin())
    ds = pydicom.dcmread(path)
    colours = {int(c.ReferencedROINumber): list(c.ROIDisplayColor) for c in ds.ROIContourSequence}
    assert colours[1] == [255, 140, 0]
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["CTV", "ORGAN"]


def test_automatic_structures_without_algorithm_are_refused(ct, tmp_path: Path) -> None:
    with pytest.raises(RTStructError, match="without algorithm identification"):
        write_rtstruct(
            {"a": _shapes()["single"]},
            ct,
            tmp_path / "rs.dcm",
            generation=ROIGenerationAlgorithm.AUTOMATIC,
        )
    assert not (tmp_path / "rs.dcm").exists()
    with pytest.raises(RTStructError, match="incomplete algorithm identification"):
        AlgorithmIdentification(name="model", version=" ")


def test_mask_of_wrong_shape_is_refused(ct, tmp_path: Path) -> None:
    with pytest.raises(RTStructError, match=r"mask shape differs from the CT"):
        _write(ct, tmp_path / "rs.dcm", {"a": np.ones((3, 4, 5), dtype=bool)})


def test_name_outside_structure_set_is_refused(ct, tmp_path: Path) -> None:
    with pytest.raises(RTStructError, match="structure not in the structure set"):
        _write(
            ct,
            tmp_path / "rs.dcm",
            {"Liver": _shapes()["single"]},
            structure_set=StructureSet.builtin(),
        )


def test_holes_in_holes_follow_the_even_odd_rule(ct, tmp_path: Path) -> None:
    path = _write(ct, tmp_path / "rs.dcm", {"x": _shapes()["single"]})
    ds = pydicom.dcmread(path)
    z = float(ds.ROIContourSequence[0].ContourSequence[0].ContourData[2])
    template = ds.ROIContourSequence[0].ContourSequence[0]
    squares = []
    for half in (20.25, 14.25, 8.25):  # three nested squares around x = 0, y = -6
        pts = [(-half, -6 - half), (half, -6 - half), (half, -6 + half), (-half, -6 + half)]
        contour = pydicom.Dataset()
        contour.ContourImageSequence = template.ContourImageSequence
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = 4
        contour.ContourData = [str(v) for p in pts for v in (p[0], p[1], z)]
        squares.append(contour)
    ds.ROIContourSequence[0].ContourSequence = squares
    ds.save_as(path)
    mask = read_rtstruct(path, ct).rois[1].mask[7]
    # pixel centres: x = -23.5 + i, y = -30 + j; distance from the centre (0, -6) in max norm
    jj, ii = np.mgrid[:48, :48]
    d = np.maximum(np.abs(-23.5 + ii), np.abs(-30 + jj + 6))
    np.testing.assert_array_equal(mask, (d < 20.25) & ~(d < 14.25) | (d < 8.25))


def _edited(ct, tmp_path: Path, edit) -> Path:
    path = _write(ct, tmp_path / "rs.dcm", {"a": _shapes()["single"], "b": _shapes()["islands"]})
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
    return path


def test_rtstruct_other_frame_of_reference_is_refused(ct, tmp_path: Path) -> None:
    other = make_uid("elsewhere")

    def edit(ds):
        ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = other
        for roi in ds.StructureSetROISequence:
            roi.ReferencedFrameOfReferenceUID = other

    with pytest.raises(RTStructError, match="belongs to another frame of reference"):
        read_rtstruct(_edited(ct, tmp_path, edit), ct)


def test_rtstruct_referencing_absent_slices_is_refused(ct, tmp_path: Path) -> None:
    def edit(ds):
        ref = ds.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0]
        ref.ReferencedSOPInstanceUID = make_uid("a slice that is not there")

    with pytest.raises(RTStructError, match="references CT images that are not in the series"):
        read_rtstruct(_edited(ct, tmp_path, edit), ct)


def test_contours_are_matched_by_z_without_image_references(ct, tmp_path: Path) -> None:
    def edit(ds):
        for item in ds.ROIContourSequence:
            for contour in item.ContourSequence:
                del contour.ContourImageSequence

    data = read_rtstruct(_edited(ct, tmp_path, edit), ct)
    np.testing.assert_array_equal(data.rois[1].mask, _shapes()["single"])
    np.testing.assert_array_equal(data.rois[2].mask, _shapes()["islands"])


def test_not_an_rtstruct_is_refused(ct, synthetic_ct) -> None:
    _, files, _ = synthetic_ct(name="other")
    with pytest.raises(RTStructError, match="not an RTSTRUCT"):
        read_rtstruct(files[0], ct)


def test_empty_roi_is_reported(ct, tmp_path: Path) -> None:
    path = _write(
        ct, tmp_path / "rs.dcm", {"a": _shapes()["single"], "empty": np.zeros(SHAPE, dtype=bool)}
    )
    data = read_rtstruct(path, ct)
    assert data.warning_counts() == {"empty-roi": 1}
    assert data.rois[2].empty and data.rois[2].name == "empty"


def _set_points(ds, points: list[tuple[float, float, float]], kind="CLOSED_PLANAR") -> None:
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    contour.ContourGeometricType = kind
    contour.NumberOfContourPoints = len(points)
    contour.ContourData = [f"{v:g}" for p in points for v in p]


def test_contour_with_two_points_is_reported(ct, tmp_path: Path) -> None:
    path = _edited(ct, tmp_path, lambda ds: _set_points(ds, [(0, 0, 7.5), (3, 3, 7.5)]))
    data = read_rtstruct(path, ct)
    assert data.warning_counts() == {"too-few-points": 1, "empty-roi": 1}
    assert "2 point(s)" in data.rois[1].warnings[0].message


def test_open_and_point_contours_are_reported(ct, tmp_path: Path) -> None:
    square = [(-5, -5, 7.5), (5, -5, 7.5), (5, 5, 7.5), (-5, 5, 7.5)]
    data = read_rtstruct(
        _edited(ct, tmp_path, lambda ds: _set_points(ds, square, "OPEN_PLANAR")), ct
    )
    assert data.warning_counts()["non-closed-contour"] == 1
    data = read_rtstruct(
        _edited(ct, tmp_path, lambda ds: _set_points(ds, [(0, 0, 7.5)], "POINT")), ct
    )
    assert data.warning_counts()["non-closed-contour"] == 1


def test_contour_outside_the_image_is_reported(ct, tmp_path: Path) -> None:
    far = [(300, 300, 7.5), (310, 300, 7.5), (310, 310, 7.5)]
    data = read_rtstruct(_edited(ct, tmp_path, lambda ds: _set_points(ds, far)), ct)
    assert data.warning_counts() == {"contour-off-image": 1, "empty-roi": 1}
    above = [(0, 0, 500), (5, 0, 500), (5, 5, 500)]

    def edit(ds):
        _set_points(ds, above)
        del ds.ROIContourSequence[0].ContourSequence[0].ContourImageSequence

    data = read_rtstruct(_edited(ct, tmp_path, edit), ct)
    assert "outside the CT" in data.warnings[0].message


def test_contour_partly_outside_the_image_is_clipped_and_reported(ct, tmp_path: Path) -> None:
    half_out = [(0, -10, 7.5), (40, -10, 7.5), (40, 10, 7.5), (0, 10, 7.5)]
    data = read_rtstruct(_edited(ct, tmp_path, lambda ds: _set_points(ds, half_out)), ct)
    assert data.warning_counts() == {"contour-partly-off-image": 1}
    assert data.rois[1].mask[7].sum() == 20 * 24  # x 0..23.5 inside the image, y 20 rows


def test_contour_between_slices_is_reported(ct, tmp_path: Path) -> None:
    def edit(ds):
        _set_points(ds, [(-5, -5, 8.75), (5, -5, 8.75), (5, 5, 8.75)])  # half-way to the next
        del ds.ROIContourSequence[0].ContourSequence[0].ContourImageSequence

    data = read_rtstruct(_edited(ct, tmp_path, edit), ct)
    assert data.warning_counts() == {"contour-between-slices": 1, "empty-roi": 1}


def test_non_axial_contour_is_reported(ct, tmp_path: Path) -> None:
    tilted = [(-5, -5, 5.0), (5, -5, 7.5), (5, 5, 10.0)]
    data = read_rtstruct(_edited(ct, tmp_path, lambda ds: _set_points(ds, tilted)), ct)
    assert data.warning_counts()["non-axial-contour"] == 1


def test_duplicate_roi_names_are_reported_not_merged(ct, tmp_path: Path) -> None:
    def edit(ds):
        ds.StructureSetROISequence[1].ROIName = "a"

    data = read_rtstruct(_edited(ct, tmp_path, edit), ct)
    assert data.warning_counts() == {"duplicate-name": 1}
    assert len(data.by_name()["a"]) == 2
    np.testing.assert_array_equal(data.rois[2].mask, _shapes()["islands"])


def test_summary_needs_no_ct(ct, tmp_path: Path) -> None:
    rois = summarize_rtstruct(_write(ct, tmp_path / "rs.dcm", _shapes()))
    assert [r.name for r in rois] == ["nested", "islands", "thin", "single", "blobs"]
    assert rois[3].n_contours == 1 and rois[3].geometric_types == {"CLOSED_PLANAR": 1}


def test_institution_spellings_take_colour_and_type_from_the_structure_set(
    ct, tmp_path: Path
) -> None:
    masks = {"CTV_Rectum": _shapes()["single"], "Femoral Head Lt": _shapes()["islands"]}
    path = _write(ct, tmp_path / "rs.dcm", masks, structure_set=StructureSet.builtin())
    ds = pydicom.dcmread(path)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["CTV_Rectum", "Femoral Head Lt"]
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["CTV", "ORGAN"]
    assert list(ds.ROIContourSequence[1].ROIDisplayColor) == [0, 200, 0]
