"""Label tables (TotalSegmentator, nnU-Net, CSV) and NIfTI label maps onto a reference grid:
exact reindexing of flipped or permuted maps, resampling only when asked, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dlas.errors import NiftiError, StructureSetError
from dlas.io import (
    LabelMapData,
    Volume,
    read_ct_series,
    read_label_map,
    read_label_table,
    scan_dicom,
    write_nifti,
)

SHAPE = (6, 10, 12)
SPACING = (2.5, 1.2, 1.0)
ORIGIN = (-5.5, 20.0, -7.5)


# ------------------------------------------------------------------------------ label tables


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_totalsegmentator_style_json(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "classes.json",
        json.dumps({"5": "liver", "0": "background", "1": "spleen", "52": "aorta"}),
    )
    assert read_label_table(path) == {1: "spleen", 5: "liver", 52: "aorta"}  # sorted by id


@pytest.mark.realdata
def test_real_totalsegmentator_classes_json(shared_data) -> None:
    path = shared_data("ts-abdomen-dicom") / "classes.json"
    table = read_label_table(path)
    raw = json.loads(path.read_text())
    assert table == {int(k): v for k, v in raw.items()}
    assert table[1] == "spleen" and table[5] == "liver" and len(table) == 31


def test_nnunet_v2_dataset_json(tmp_path: Path) -> None:
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "rectum": 1, "bladder": 2, "femur_left": 3},
        "numTraining": 40,
        "file_ending": ".nii.gz",
    }
    path = _write(tmp_path / "dataset.json", json.dumps(dataset, indent=2))
    assert read_label_table(path) == {1: "rectum", 2: "bladder", 3: "femur_left"}


def test_nnunet_v1_dataset_json(tmp_path: Path) -> None:
    dataset = {"name": "Task01", "labels": {"0": "background", "1": "prostate", "2": "rectum"}}
    path = _write(tmp_path / "dataset.json", json.dumps(dataset))
    assert read_label_table(path) == {1: "prostate", 2: "rectum"}


@pytest.mark.parametrize("id_header", ["label", "value", "Label"])
def test_csv_table_with_label_or_value_header(tmp_path: Path, id_header: str) -> None:
    text = f"\ufeff{id_header},name,colour\n0,background,\n2, Bladder ,yellow\n1,Rectum,brown\n\n"
    path = _write(tmp_path / "labels.csv", text)
    assert read_label_table(path) == {1: "Rectum", 2: "Bladder"}


def test_region_based_nnunet_labels_are_refused(tmp_path: Path) -> None:
    dataset = {
        "labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3]},
        "regions_class_order": [1, 2],
    }
    path = _write(tmp_path / "dataset.json", json.dumps(dataset))
    with pytest.raises(
        StructureSetError,
        match=r"region-based label sets are not supported; expected one integer label per "
        r"structure.*found label 'whole_tumor' = \[1, 2, 3\]",
    ):
        read_label_table(path)


def test_label_table_duplicate_names_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "classes.json", json.dumps({"1": "Liver", "2": "liver "}))
    with pytest.raises(StructureSetError, match=r"name listed twice.*'liver' for labels 1 and 2"):
        read_label_table(path)


def test_label_table_duplicate_json_ids_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "classes.json", '{"1": "spleen", "1": "liver"}')
    with pytest.raises(StructureSetError, match=r"key listed twice in JSON.*'1' twice"):
        read_label_table(path)


def test_label_table_same_id_spelled_twice_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "classes.json", '{"1": "spleen", "01": "liver"}')
    with pytest.raises(StructureSetError, match=r"label id listed twice.*label 1 as 'spleen'"):
        read_label_table(path)


def test_label_table_duplicate_csv_ids_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels.csv", "label,name\n1,spleen\n1,liver\n")
    with pytest.raises(StructureSetError, match="label id listed twice"):
        read_label_table(path)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('{"1.5": "spleen"}', "key '1.5'"),
        ('{"spleen": 1}', "key 'spleen'"),
        ('{"labels": {"background": 0, "spleen": 1.0}}', "1.0"),
        ('{"labels": {"background": 0, "spleen": -2}}', "-2"),
        ('{"labels": {"background": 0, "spleen": true}}', "True"),
    ],
)
def test_label_table_non_integer_ids_are_refused(tmp_path: Path, text: str, found: str) -> None:
    path = _write(tmp_path / "classes.json", text)
    with pytest.raises(StructureSetError, match=rf"not a non-negative integer.*{found}"):
        read_label_table(path)


def test_csv_non_integer_id_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels.csv", "label,name\n1,spleen\nliver,5\n")
    with pytest.raises(StructureSetError, match=r"not a non-negative integer.*'liver' \(row 3\)"):
        read_label_table(path)


@pytest.mark.parametrize("header", ["id;name", "structure,name", "label,value,name", "label,roi"])
def test_csv_without_the_expected_header_is_refused(tmp_path: Path, header: str) -> None:
    path = _write(tmp_path / "labels.csv", f"{header}\n1,spleen\n")
    with pytest.raises(
        StructureSetError, match=r"without the expected header.*'label' \(or 'value'\) and 'name'"
    ):
        read_label_table(path)


def test_label_table_of_other_format_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels.txt", "1 spleen\n")
    with pytest.raises(StructureSetError, match=r"unsupported label table format.*\.txt"):
        read_label_table(path)


def test_label_table_with_broken_json_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "classes.json", '{"1": "spleen",}')
    with pytest.raises(StructureSetError, match=r"not valid JSON.*line 1"):
        read_label_table(path)


def test_label_table_with_background_only_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "classes.json", '{"0": "background"}')
    with pytest.raises(StructureSetError, match="lists no structure"):
        read_label_table(path)


# -------------------------------------------------------------------------------- label maps


@pytest.fixture
def reference() -> Volume:
    return Volume(np.zeros(SHAPE, dtype=np.float32), spacing=SPACING, origin=ORIGIN)


def _labels() -> np.ndarray:
    """Labels 1 and 2 (asymmetric, so any wrong flip shows), 7 (not in the table)."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1:4, 2:5, 1:8] = 1
    labels[4, 6:9, 9:11] = 2
    labels[0, 0, 0] = 2  # a corner voxel: caught by any flip
    labels[5, 9, 3] = 7
    return labels


TABLE = {1: "rectum", 2: "bladder", 3: "femur_left"}


def _write_with_nibabel(
    labels: np.ndarray,
    reference: Volume,
    path: Path,
    *,
    flip: tuple[int, ...] = (),
    permute: tuple[int, int, int] = (0, 1, 2),
    dtype: type = np.uint8,
) -> Path:
    """Write ``labels`` (z, y, x on ``reference``) as NIfTI, storing its NIfTI axes (i, j, k)
    flipped and permuted, with the affine that keeps every voxel where it was."""
    data = labels.transpose(2, 1, 0)  # NIfTI (i, j, k) = (x, y, z)
    lps = np.eye(4)
    lps[:3, :3] = reference.affine[:3, [2, 1, 0]]  # columns: steps along x, y, z in LPS mm
    lps[:3, 3] = reference.origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # RAS
    for axis in flip:
        data = np.flip(data, axis)
        affine[:3, 3] += affine[:3, axis] * (data.shape[axis] - 1)
        affine[:3, axis] *= -1
    data = data.transpose(permute)
    affine[:3, :3] = affine[:3, list(permute)]
    image = nib.Nifti1Image(np.ascontiguousarray(data, dtype=dtype), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def _assert_masks(data: LabelMapData, labels: np.ndarray, reference: Volume) -> None:
    assert list(data.labels) == ["rectum", "bladder", "femur_left"]
    for name, label in data.labels.items():
        mask = data.mask(name)
        assert mask.array.dtype == bool and mask.same_grid(reference)
        np.testing.assert_array_equal(mask.array, labels == label, err_msg=name)
        assert data.voxel_counts[name] == int((labels == label).sum())


def test_label_map_on_the_reference_grid(reference, tmp_path: Path) -> None:
    labels = _labels()
    path = _write_with_nibabel(labels, reference, tmp_path / "labels.nii.gz")
    data = read_label_map(path, TABLE, reference)
    _assert_masks(data, labels, reference)
    assert not data.reoriented and not data.resampled
    assert data.mask("femur_left").array.sum() == 0  # in the table, not in the map: found nothing
    assert data.voxel_counts["femur_left"] == 0
    masks = data.masks()
    assert list(masks) == ["rectum", "bladder", "femur_left"]
    json.dumps(data.to_data())


@pytest.mark.parametrize(
    ("flip", "permute"),
    [
        ((1,), (0, 1, 2)),  # rows stored the other way (TotalSegmentator's output)
        ((0,), (0, 1, 2)),
        ((0, 1, 2), (0, 1, 2)),
        ((), (1, 0, 2)),  # x and y swapped
        ((2,), (2, 0, 1)),  # slices first, and flipped
    ],
)
def test_flipped_or_permuted_label_map_reads_back_identical(
    reference, tmp_path: Path, flip, permute
) -> None:
    labels = _labels()
    path = _write_with_nibabel(labels, reference, tmp_path / "l.nii.gz", flip=flip, permute=permute)
    stored = np.asanyarray(nib.load(str(path)).dataobj)
    assert not np.array_equal(stored, labels.transpose(2, 1, 0))  # really stored differently
    data = read_label_map(path, TABLE, reference)
    _assert_masks(data, labels, reference)
    assert data.reoriented and not data.resampled


def test_unlisted_label_is_reported(reference, tmp_path: Path) -> None:
    path = _write_with_nibabel(_labels(), reference, tmp_path / "labels.nii.gz")
    data = read_label_map(path, TABLE, reference)
    assert [(w.code, w.roi_number) for w in data.warnings] == [("unlisted-label", 7)]
    assert "label 7 (1 voxels) is not in the label table" in data.warnings[0].message


def test_table_may_be_given_as_a_file(reference, tmp_path: Path) -> None:
    labels = _labels()
    path = _write_with_nibabel(labels, reference, tmp_path / "labels.nii.gz")
    table = _write(tmp_path / "labels.csv", "value,name\n1,rectum\n2,bladder\n3,femur_left\n")
    _assert_masks(read_label_map(path, table, reference), labels, reference)


def test_label_table_mapping_with_bad_id_is_refused(reference, tmp_path: Path) -> None:
    path = _write_with_nibabel(_labels(), reference, tmp_path / "labels.nii.gz")
    with pytest.raises(StructureSetError, match="not a non-negative integer"):
        read_label_map(path, {"one": "rectum"}, reference)  # type: ignore[dict-item]


def test_float_label_map_with_integer_values_is_read(reference, tmp_path: Path) -> None:
    labels = _labels()
    path = _write_with_nibabel(labels, reference, tmp_path / "l.nii.gz", dtype=np.float32)
    _assert_masks(read_label_map(path, TABLE, reference), labels, reference)


def test_label_map_with_non_integer_values_is_refused(reference, tmp_path: Path) -> None:
    labels = _labels().astype(np.float32)
    labels[2, 3, 4] = 0.5
    path = _write_with_nibabel(labels, reference, tmp_path / "l.nii.gz", dtype=np.float32)
    with pytest.raises(
        NiftiError, match=r"non-integer values.*0.5 at \(z, y, x\) = \(2, 3, 4\).*threshold"
    ):
        read_label_map(path, TABLE, reference)


def test_label_map_with_negative_values_is_refused(reference, tmp_path: Path) -> None:
    labels = _labels().astype(np.int16)
    labels[0, 0, 1] = -1000
    path = _write_with_nibabel(labels, reference, tmp_path / "l.nii.gz", dtype=np.int16)
    with pytest.raises(NiftiError, match=r"negative values.*-1000.*not an image"):
        read_label_map(path, TABLE, reference)


def test_label_map_on_other_grid_is_refused(reference, tmp_path: Path) -> None:
    shifted = Volume(reference.array, spacing=SPACING, origin=(ORIGIN[0] + 0.5, *ORIGIN[1:]))
    path = _write_with_nibabel(_labels(), shifted, tmp_path / "labels.nii.gz")
    with pytest.raises(
        NiftiError,
        match=r"grid differs from the reference grid; expected 12x10x6 voxels.*"
        r"flipped or permuted axes; found.*pass resample=True",
    ):
        read_label_map(path, TABLE, reference)


def test_label_map_within_the_tolerance_is_the_same_grid(reference, tmp_path: Path) -> None:
    labels = _labels()
    nudged = Volume(reference.array, spacing=SPACING, origin=(ORIGIN[0] + 0.05, *ORIGIN[1:]))
    path = _write_with_nibabel(labels, nudged, tmp_path / "labels.nii.gz", flip=(1,))
    data = read_label_map(path, TABLE, reference)  # 0.05 voxel off: the same voxels
    _assert_masks(data, labels, reference)
    with pytest.raises(NiftiError, match="grid differs"):
        read_label_map(path, TABLE, reference, tolerance=0.01)


def test_label_map_on_other_grid_is_resampled_when_asked(reference, tmp_path: Path) -> None:
    """A map three times finer whose central fine voxels sit on the reference's voxel centres:
    nearest neighbour must give back the coarse labels exactly."""
    labels = _labels()
    fine_labels = labels.repeat(3, axis=0).repeat(3, axis=1).repeat(3, axis=2)
    fine_spacing = np.array(SPACING) / 3
    fine = Volume(
        fine_labels,
        spacing=fine_spacing,
        origin=np.array(ORIGIN) - fine_spacing[::-1],  # (x, y, z) origin, steps back one voxel
    )
    path = tmp_path / "fine.nii.gz"
    write_nifti(fine, path)
    with pytest.raises(NiftiError, match="grid differs"):
        read_label_map(path, TABLE, reference)
    data = read_label_map(path, TABLE, reference, resample=True)
    assert data.resampled and not data.reoriented
    _assert_masks(data, labels, reference)
    assert [w.code for w in data.warnings] == ["resampled", "unlisted-label"]


def test_labels_outside_the_reference_are_reported_when_resampling(
    reference, tmp_path: Path
) -> None:
    far = Volume(reference.array, spacing=SPACING, origin=(ORIGIN[0] + 500.0, *ORIGIN[1:]))
    path = _write_with_nibabel(_labels(), far, tmp_path / "labels.nii.gz")
    data = read_label_map(path, TABLE, reference, resample=True)
    assert data.voxel_counts == {"rectum": 0, "bladder": 0, "femur_left": 0}
    codes = [(w.code, w.roi_name) for w in data.warnings]
    assert ("label-lost-in-resampling", "rectum") in codes
    assert ("label-lost-in-resampling", "bladder") in codes


def test_mask_of_a_name_outside_the_table_is_refused(reference, tmp_path: Path) -> None:
    path = _write_with_nibabel(_labels(), reference, tmp_path / "labels.nii.gz")
    data = read_label_map(path, TABLE, reference)
    with pytest.raises(StructureSetError, match=r"not in the label table.*'liver'"):
        data.mask("liver")


# --------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_totalsegmentator_label_map_lands_on_its_dicom_ct(shared_data) -> None:
    """TotalSegmentator stored this map y-flipped relative to the DICOM series; read through
    classes.json onto the CT grid, organs must sit on tissue and bones on bone."""
    root = shared_data("ts-abdomen-dicom")
    scan = scan_dicom(root / "ct")
    (files,) = scan.ct_series.values()
    ct = read_ct_series(files)
    data = read_label_map(root / "labels.nii.gz", root / "classes.json", ct.volume)
    assert data.reoriented and not data.resampled
    assert data.warnings == []
    raw = np.asanyarray(nib.load(str(root / "labels.nii.gz")).dataobj)
    values, counts = np.unique(raw, return_counts=True)
    raw_counts = {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}
    assert {data.labels[n]: c for n, c in data.voxel_counts.items()} == raw_counts  # no loss
    hu = ct.volume.array

    def median_hu(name: str) -> float:
        mask = data.mask(name)
        assert mask.same_grid(ct.volume)
        return float(np.median(hu[mask.array]))

    for organ in ("liver", "spleen"):
        assert 0 <= median_hu(organ) <= 150, organ  # soft tissue
    for bone in ("vertebrae_T12", "humerus_left"):
        assert median_hu(bone) > 150, bone  # bone, not the fat or air a wrong flip would hit
