"""Volume geometry and lossless conversion to SimpleITK and NIfTI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dlas.errors import NiftiError
from dlas.io import Volume, read_mask, read_nifti, write_mask, write_nifti


def _oblique_volume() -> Volume:
    rng = np.random.default_rng(3)
    angle = np.deg2rad(20)
    rot = np.array(
        [[np.cos(angle), np.sin(angle), 0], [-np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]) @ rot
    return Volume(
        rng.integers(-1000, 2000, size=(7, 11, 13)).astype(np.float32),
        spacing=(3.0, 0.8, 0.9),
        origin=(-120.5, 33.25, 1001.0),
        direction=direction,
    )


def test_index_to_physical_follows_dicom_convention() -> None:
    vol = Volume(np.zeros((4, 5, 6)), spacing=(5.0, 1.27, 1.1), origin=(-10.0, 20.0, 30.0))
    # voxel (k, j, i) = (2, 3, 4): x grows with i, y with j, z with k
    np.testing.assert_allclose(vol.index_to_physical([2, 3, 4]), [-10 + 4 * 1.1, 20 + 3 * 1.27, 40])
    np.testing.assert_allclose(vol.physical_to_index(vol.index_to_physical([2, 3, 4])), [2, 3, 4])
    np.testing.assert_allclose(vol.affine @ [2, 3, 4, 1], [*vol.index_to_physical([2, 3, 4]), 1])


def test_sitk_round_trip_is_lossless_for_oblique_grids() -> None:
    vol = _oblique_volume()
    back = Volume.from_sitk(vol.to_sitk())
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing)
    np.testing.assert_allclose(back.origin, vol.origin)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-12)
    # and SimpleITK agrees on where a voxel is (its index order is x, y, z)
    image = vol.to_sitk()
    np.testing.assert_allclose(
        image.TransformContinuousIndexToPhysicalPoint((4.0, 3.0, 2.0)),
        vol.index_to_physical([2, 3, 4]),
    )


def test_nifti_round_trip_keeps_values_exactly_and_geometry_to_1e4_mm(tmp_path: Path) -> None:
    vol = _oblique_volume()
    write_nifti(vol, tmp_path / "ct.nii.gz")
    back = read_nifti(tmp_path / "ct.nii.gz")
    assert back.array.dtype == np.int16  # integral HU are stored compactly
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_grid(vol, atol_mm=1e-4)


def test_nifti_is_ras_on_disk_as_the_format_requires(tmp_path: Path) -> None:
    # An independent reader (nibabel, RAS) must see the LPS origin with x and y negated.
    vol = Volume(np.zeros((3, 4, 5), dtype=np.float32), spacing=(2, 1, 1), origin=(10, 20, 30))
    write_nifti(vol, tmp_path / "a.nii.gz")
    affine = nib.load(tmp_path / "a.nii.gz").affine
    np.testing.assert_allclose(affine[:3, 3], [-10, -20, 30], atol=1e-4)


def test_non_integer_values_are_stored_as_float(tmp_path: Path) -> None:
    vol = Volume(np.full((2, 3, 4), 0.25, dtype=np.float32), spacing=(1, 1, 1), origin=(0, 0, 0))
    write_nifti(vol, tmp_path / "f.nii.gz")
    assert read_nifti(tmp_path / "f.nii.gz").array.dtype == np.float32


def test_mask_round_trip(tmp_path: Path) -> None:
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[1, 1:3, 2:4] = True
    vol = Volume(mask, spacing=(2, 1, 1), origin=(0, 0, 0))
    write_mask(vol, tmp_path / "m.nii.gz")
    back = read_mask(tmp_path / "m.nii.gz", reference=vol)
    assert back.array.dtype == bool
    np.testing.assert_array_equal(back.array, mask)


def test_nifti_with_nan_is_refused(tmp_path: Path) -> None:
    array = np.zeros((2, 3, 4), dtype=np.float32)
    array[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(NiftiError, match=r"NaN or infinite.*\(z, y, x\) = \(1, 2, 3\)"):
        read_nifti(tmp_path / "nan.nii.gz")


def test_writing_nan_is_refused(tmp_path: Path) -> None:
    vol = Volume(np.full((2, 2, 2), np.nan, dtype=np.float32), spacing=(1, 1, 1), origin=(0, 0, 0))
    with pytest.raises(NiftiError, match="refusing to write NaN"):
        write_nifti(vol, tmp_path / "x.nii.gz")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_mask_grid_different_from_ct_is_refused(tmp_path: Path) -> None:
    ct = Volume(np.zeros((3, 4, 5)), spacing=(2, 1, 1), origin=(0, 0, 0))
    shifted = Volume(np.ones((3, 4, 5), dtype=bool), spacing=(2, 1, 1), origin=(0, 0, 2.5))
    write_mask(shifted, tmp_path / "m.nii.gz")
    with pytest.raises(NiftiError, match="mask grid differs from the CT grid"):
        read_mask(tmp_path / "m.nii.gz", reference=ct)


def test_missing_and_truncated_nifti_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NiftiError, match="NIfTI file not found"):
        read_nifti(tmp_path / "absent.nii.gz")
    vol = Volume(np.zeros((8, 8, 8), dtype=np.int16), spacing=(1, 1, 1), origin=(0, 0, 0))
    write_nifti(vol, tmp_path / "ok.nii")
    data = (tmp_path / "ok.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[: len(data) // 2])
    with pytest.raises(NiftiError, match="cannot read NIfTI image"):
        read_nifti(tmp_path / "cut.nii")


def test_four_dimensional_nifti_is_refused(tmp_path: Path) -> None:
    nib.save(
        nib.Nifti1Image(np.zeros((4, 4, 4, 2), dtype=np.int16), np.eye(4)), tmp_path / "4d.nii.gz"
    )
    with pytest.raises(NiftiError, match="not 3-D"):
        read_nifti(tmp_path / "4d.nii.gz")
