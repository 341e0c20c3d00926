"""Reading and writing NIfTI images as :class:`~dlas.io.volume.Volume` objects (via nibabel).

NIfTI stores patient coordinates as RAS; a Volume uses DICOM's LPS, so x and y change sign on the
way in and out, and the array is transposed between NIfTI's (i, j, k) and our (z, y, x) order.
The geometry is stored in 32-bit floats (qform and sform): positions survive to about 1e-4 mm,
voxel values exactly.

Why nibabel and not SimpleITK here: in our tests SimpleITK 2.5 read NaN voxels as 0 and read a
truncated ``.nii`` without complaint, filling the missing voxels with zeros — both would turn a
broken file into silently wrong data. nibabel reports both.

CT volumes are written as int16 when every value is an integer Hounsfield unit within range
(the usual case) and as float32 otherwise; masks are written as uint8 (0/1). Compressed files
are written without a time stamp, so equal volumes give equal files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dlas.errors import NiftiError
from dlas.io.atomic import atomic_path
from dlas.io.volume import Volume

__all__ = ["read_mask", "read_nifti", "write_mask", "write_nifti"]

_INT16 = np.iinfo(np.int16)
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """Read a 3-D NIfTI image.

    Raises
    ------
    NiftiError
        If the file is missing, unreadable or truncated, not 3-D, has a sheared grid, or holds
        NaN or infinite values.
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise NiftiError(
            "NIfTI file not found",
            where=str(p),
            expected="an existing .nii or .nii.gz file",
            found="nothing at that path",
            fix="check the path",
        )
    try:
        image: Any = nib.load(str(p))
        data = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:
        raise NiftiError(
            "cannot read NIfTI image",
            where=str(p),
            expected="a complete NIfTI-1/2 file",
            found=_first_line(exc),
            fix="export the image again; the file may be truncated",
        ) from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiError(
            "image is not 3-D",
            where=str(p),
            expected="a 3-D image",
            found=f"{data.ndim}-D image of shape {data.shape}",
            fix="export one 3-D volume per file",
        )
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            i, j, k = (int(v) for v in np.argwhere(bad)[0])
            raise NiftiError(
                "image holds NaN or infinite values",
                where=str(p),
                expected="finite voxel values",
                found=f"{int(bad.sum())} non-finite voxels, "
                f"the first at (z, y, x) = ({k}, {j}, {i})",
                fix="fill the missing voxels (e.g. with -1024 HU for air) before import",
            )
    lps = _RAS_TO_LPS @ affine
    columns = lps[:3, :3]
    spacing_xyz = np.linalg.norm(columns, axis=0)
    if np.any(spacing_xyz <= 0):
        raise NiftiError(
            "degenerate voxel size",
            where=str(p),
            expected="positive voxel sizes",
            found=f"{spacing_xyz.tolist()}",
            fix="repair the image header",
        )
    direction = (columns / spacing_xyz).T[::-1]
    try:
        return Volume(
            np.ascontiguousarray(data.transpose(2, 1, 0)),
            spacing=spacing_xyz[::-1],
            origin=lps[:3, 3],
            direction=direction,
        )
    except ValueError as exc:
        raise NiftiError(
            "sheared or invalid grid",
            where=str(p),
            expected="an orthogonal voxel grid",
            found=_first_line(exc),
            fix="resample the image onto an orthogonal grid",
        ) from exc


def read_mask(path: str | os.PathLike[str], reference: Volume | None = None) -> Volume:
    """Read a binary mask (any non-zero voxel is inside) as a boolean Volume.

    Parameters
    ----------
    reference
        When given, the mask must lie on the same grid; a different grid is an error.
    """
    volume = read_nifti(path)
    mask = volume.with_array(volume.array != 0)
    if reference is not None and not mask.same_grid(reference, atol_mm=1e-3):
        raise NiftiError(
            "mask grid differs from the CT grid",
            where=str(path),
            expected=reference.grid_description(),
            found=mask.grid_description(),
            fix="resample the mask onto the CT grid (nearest neighbour) or export it with the CT",
        )
    return mask


def _storage_array(volume: Volume, path: str | os.PathLike[str]) -> npt.NDArray[np.generic]:
    array = volume.array
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise NiftiError(
                "refusing to write NaN or infinite values",
                where=str(path),
                expected="finite voxel values",
                found=f"{int((~np.isfinite(array)).sum())} non-finite voxels",
                fix="this is a bug in the step that produced the image; please report it",
            )
        if (
            array.size
            and array.min() >= _INT16.min
            and array.max() <= _INT16.max
            and np.array_equal(array, np.round(array))
        ):
            return array.astype(np.int16)
        return array.astype(np.float32)
    return array


def write_nifti(volume: Volume, path: str | os.PathLike[str]) -> None:
    """Write ``volume`` to ``path`` (``.nii`` or ``.nii.gz``) atomically.

    Integer-valued floating-point data within the int16 range are stored as int16.
    """
    import nibabel as nib

    array = _storage_array(volume, path)
    lps = np.eye(4)
    lps[:3, :3] = (volume.direction[::-1] * volume.spacing[::-1, None]).T
    lps[:3, 3] = volume.origin
    ras = _RAS_TO_LPS @ lps
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), ras)
    image.set_qform(ras, code=1)
    image.set_sform(ras, code=1)
    image.header.set_xyzt_units(xyz="mm")
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))


def write_mask(mask: Volume, path: str | os.PathLike[str]) -> None:
    """Write a mask as uint8 (0/1) NIfTI atomically."""
    write_nifti(mask.with_array(np.asarray(mask.array) != 0), path)
