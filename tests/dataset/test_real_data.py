"""Real DICOM and NIfTI data from ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dlas.dataset import CaseDataset, ImportOptions, import_source
from dlas.io import read_ct_series, read_nifti, read_rtstruct
from dlas.structures import StructureSet

pytestmark = pytest.mark.realdata


def test_siemens_series_loads_with_its_geometry_and_hu(shared_data) -> None:
    root = shared_data("ts-abdomen-dicom")
    ct = read_ct_series(root / "ct")
    assert ct.volume.shape == (20, 512, 512)
    np.testing.assert_allclose(ct.volume.spacing, [2.0, 0.977, 0.977], atol=1e-3)
    assert ct.scanner()["Manufacturer"] == "SIEMENS"
    assert -1100 <= ct.volume.array.min() <= -900  # air
    # TotalSegmentator's label map (stored y-flipped) lines up in physical space:
    labels = read_nifti(root / "labels.nii.gz")
    names = {int(k): v for k, v in json.loads((root / "classes.json").read_text()).items()}
    liver = next(k for k, v in names.items() if v == "liver")
    idx = np.argwhere(labels.array == liver)
    points = labels.index_to_physical(idx)
    k, j, i = np.rint(ct.volume.physical_to_index(points)).astype(int).T
    inside = (k >= 0) & (k < 20) & (j >= 0) & (j < 512) & (i >= 0) & (i < 512)
    assert inside.mean() > 0.99
    hu = ct.volume.array[k[inside], j[inside], i[inside]]
    assert 40 <= float(np.median(hu)) <= 120  # liver parenchyma, soft tissue
    # the label map's rows run the other way: only its geometry, not its array order, aligns
    np.testing.assert_array_equal(j[inside], 511 - idx[inside, 1])
    np.testing.assert_array_equal(i[inside], idx[inside, 2])


def test_aria_export_imports_body_and_spinal_cord(shared_data, tmp_path: Path) -> None:
    root = shared_data("vhm-neck-aria")
    report = import_source(
        root,
        tmp_path / "ds",
        ImportOptions(structure_set=StructureSet.builtin(), keep_unmapped=True),
    )
    (item,) = report.imported
    assert sorted(item.unmatched) == ["BODY", "SpinalCord"]
    folder = tmp_path / "ds" / "cases" / item.case_id / "structures"
    assert sorted(p.name for p in folder.iterdir()) == ["BODY.nii.gz", "SpinalCord.nii.gz"]
    info = CaseDataset.open(tmp_path / "ds").case_info(item.case_id)
    body, cord = info["extra_structures"]["BODY"], info["extra_structures"]["SpinalCord"]
    assert body["volume_cm3"] > 20 * cord["volume_cm3"] > 0
    assert not any(w["code"].startswith("contour") for w in info["warnings"])


def test_aria_rtstruct_rasterises_like_an_independent_reader(shared_data) -> None:
    from matplotlib.path import Path as MplPath

    root = shared_data("vhm-neck-aria")
    ct = read_ct_series(root)
    rs_path = next(root.glob("RS*.dcm"))
    data = read_rtstruct(rs_path, ct)
    import pydicom

    ds = pydicom.dcmread(rs_path)
    _, ny, nx = ct.volume.shape
    jj, ii = np.mgrid[:ny, :nx]
    centres = np.column_stack(
        [
            ct.volume.origin[0] + ii.ravel() * ct.volume.spacing[2],
            ct.volume.origin[1] + jj.ravel() * ct.volume.spacing[1],
        ]
    )
    for item in ds.ROIContourSequence:
        theirs = np.zeros(ct.volume.shape, dtype=bool)
        for contour in item.ContourSequence:
            xyz = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
            k = round((xyz[0, 2] - ct.volume.origin[2]) / ct.volume.spacing[0])
            theirs[k] ^= MplPath(xyz[:, :2]).contains_points(centres).reshape(ny, nx)
        ours = data.rois[int(item.ReferencedROINumber)].mask
        dsc = 2 * (ours & theirs).sum() / (ours.sum() + theirs.sum())
        assert dsc > 0.995


def test_ibsi_lung_gtv_rasterises_to_its_reference_volume(shared_data) -> None:
    root = shared_data("ibsi1-lung/image")
    ct = read_ct_series(root)
    data = read_rtstruct(root / "DCM_RS_00060.dcm", ct)
    (gtv,) = [roi for roi in data.rois.values() if roi.name == "GTV-1"]
    volume_mm3 = gtv.mask.sum() * ct.volume.voxel_volume_mm3
    # IBSI 1 reference (configuration A), approximate volume by voxel counting: 3.59e5 mm³
    assert volume_mm3 == pytest.approx(3.59e5, rel=0.02)
    assert not [w for w in data.warnings if w.code != "duplicate-name"]


def test_openkbp_imports_as_nifti_cases(shared_data, tmp_path: Path) -> None:
    root = shared_data("openkbp-hn")
    subset = tmp_path / "subset"
    subset.mkdir()
    for name in ("pt_1", "pt_2", "pt_4"):
        (subset / name).symlink_to(root / name, target_is_directory=True)
    structure_set = StructureSet.from_data(
        {
            "name": "hn",
            "structures": [
                {"name": "Mandible", "synonyms": ["Mandible_Bone"]},
                {"name": "SpinalCord", "synonyms": ["Spinal_Cord", "Cord"]},
                {"name": "Parotid_L", "synonyms": ["LeftParotid", "Parotid_Lt"]},
                {"name": "Parotid_R", "synonyms": ["RightParotid"]},
            ],
        }
    )
    report = import_source(
        subset, tmp_path / "ds", ImportOptions(structure_set=structure_set, keep_ids=True)
    )
    assert [i.case_id for i in report.imported] == ["pt_1", "pt_2", "pt_4"]
    dataset = CaseDataset.open(tmp_path / "ds")
    case = dataset.load_case("pt_1")
    assert set(case.structures) == {"Mandible", "SpinalCord", "Parotid_L", "Parotid_R"}
    assert case.ct.shape == (128, 128, 128)
    bone = case.ct.array[case.structures["Mandible"].array]
    assert np.median(bone) > 300  # the mandible is bone on the CT it came with
    assert "PTV70" in case.info["unmatched"]


def test_real_rtstruct_and_a_vendor_seg_of_the_same_ct_become_two_sets(
    shared_data, tmp_path: Path
) -> None:
    """The IBSI lung CT with its clinical RTSTRUCT, plus a "vendor" SEG of the GTV grown by one
    voxel (written by the project's SEG writer onto the real series): imported as two contour
    sets, and the vendor set evaluated against the clinical one equals the metric kernel on the
    two masks."""
    from scipy import ndimage

    from dlas.dataset import ContourSetRules
    from dlas.evaluation import compute_metrics, evaluate, parse_prediction
    from dlas.io import write_seg

    root = shared_data("ibsi1-lung/image")
    export = tmp_path / "export"
    export.mkdir()
    for path in root.glob("*.dcm"):
        (export / path.name).symlink_to(path)
    ct = read_ct_series(sorted(root.glob("DCM_IMG_*.dcm")))
    gtv = next(
        r for r in read_rtstruct(root / "DCM_RS_00060.dcm", ct).rois.values() if r.name == "GTV-1"
    )
    grown = ndimage.binary_dilation(gtv.mask)
    lung = StructureSet.from_data(
        {
            "schema_version": 1,
            "name": "lung",
            "structures": [{"name": "GTV", "synonyms": ["GTV-1"]}],
        }
    )
    write_seg(
        {"GTV": grown},
        ct,
        export / "SEG_vendor.dcm",
        generation="MANUAL",
        algorithm=None,
        structure_set=lung,
        uid_seed="vendor",
    )
    rules = ContourSetRules.from_options(["clinical=kind:rtstruct", "VPM=kind:seg"], "clinical")
    report = import_source(
        export, tmp_path / "ds", ImportOptions(structure_set=lung, contour_sets=rules)
    )
    (item,) = report.imported
    assert item.contour_sets["clinical"]["object"]["manufacturer"]  # the TPS that wrote it
    dataset = CaseDataset.open(tmp_path / "ds")
    vendor = dataset.load_case(item.case_id, contour_set="VPM").structures["GTV"].array
    np.testing.assert_array_equal(vendor, grown)
    table = evaluate(dataset, [parse_prediction("VPM", dataset)]).table
    expected = compute_metrics(gtv.mask, grown, ct.volume.spacing)
    assert table["dsc"].iloc[0] == pytest.approx(expected.dsc)
    assert table["hd95_mm"].iloc[0] == pytest.approx(expected.hd95_mm)
    assert table["sensitivity"].iloc[0] == pytest.approx(1.0)
