"""Reading and writing NIfTI images as :class:`~dlas.io.volume.Volume` objects (via SimpleITK).

SimpleITK converts NIfTI's RAS orientation to DICOM's LPS on reading and back on writing, so a
Volume keeps its patient coordinates through a round trip. NIfTI stores the geometry in 32-bit
floats: positions survive to about 1e-4 mm, voxel values exactly.

CT volumes are written as int16 when every value is an integer Hounsfield unit within range
(the usual case) and as float32 otherwise; masks are written as uint8 (0/1).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dlas.errors import NiftiError
from dlas.io.atomic import atomic_path
from dlas.io.volume import Volume

__all__ = ["read_mask", "read_nifti", "write_mask", "write_nifti"]

_INT16 = np.iinfo(np.int16)


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """Read a 3-D NIfTI image.

    Raises
    ------
    NiftiError
        If the file is missing or unreadable, not 3-D, or holds NaN or infinite values.
    """
    import SimpleITK as sitk

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
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise NiftiError(
            "cannot read NIfTI image",
            where=str(p),
            expected="a valid NIfTI-1/2 file",
            found=first,
            fix="re-export the image; the file may be truncated",
        ) from exc
    try:
        volume = Volume.from_sitk(image)
    except NiftiError as exc:
        raise NiftiError(
            exc.what, where=str(p), expected=exc.expected, found=exc.found, fix=exc.fix
        ) from None
    if volume.array.dtype.kind == "f":
        bad = ~np.isfinite(volume.array)
        if bad.any():
            k, j, i = (int(v) for v in np.argwhere(bad)[0])
            raise NiftiError(
                "image holds NaN or infinite values",
                where=str(p),
                expected="finite voxel values",
                found=f"{int(bad.sum())} non-finite voxels, the first at (z, y, x) = ({k}, {j}, {i})",
                fix="fill the missing voxels (e.g. with -1024 HU for air) before import",
            )
    return volume


def read_mask(path: str | os.PathLike[str], reference: Volume | None = None) -> Volume:
    """Read a binary mask (any non-zero voxel is inside) as a boolean Volume.

    Parameters
    ----------
    reference
        When given, the mask must lie on the same grid; a different grid is an error.
    """
    volume = read_nifti(path)
    mask = volume.with_array(volume.array != 0)
    if reference is not None and not mask.same_grid(reference):
        raise NiftiError(
            "mask grid differs from the CT grid",
            where=str(path),
            expected=reference.grid_description(),
            found=mask.grid_description(),
            fix="resample the mask onto the CT grid (nearest neighbour) or export it with the CT",
        )
    return mask


def write_nifti(volume: Volume, path: str | os.PathLike[str]) -> None:
    """Write ``volume`` to ``path`` (``.nii`` or ``.nii.gz``) atomically.

    Integer-valued floating-point data within the int16 range are stored as int16.
    """
    import SimpleITK as sitk

    array = volume.array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype.kind == "f":
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
            array = array.astype(np.int16)
        else:
            array = array.astype(np.float32)
    image = volume.with_array(array).to_sitk()
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=str(path).endswith(".gz"))


def write_mask(mask: Volume, path: str | os.PathLike[str]) -> None:
    """Write a mask as uint8 (0/1) NIfTI atomically."""
    write_nifti(mask.with_array(np.asarray(mask.array) != 0), path)
