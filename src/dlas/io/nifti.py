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

A ``.nii`` or ``.nii.gz`` file is read whole, once: the caller can hash exactly the bytes the
image is decoded from (``digest``) without a second read of the file. A gzip file is inflated in
chunks into one array, by zlib-ng's zlib when it is installed (``pip install dlas[fast]``, about
3x faster) else by the standard :mod:`zlib`; both give the same bytes and check the CRC-32 and
length of every gzip member, so a truncated or damaged file is refused either way. nibabel reads
the header; unscaled voxels are a view into the file's bytes (a mask is made from them without
another copy), scaled ones are nibabel's. Other formats go through :func:`nibabel.load`.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from dlas.errors import NiftiError
from dlas.io.atomic import atomic_path
from dlas.io.volume import Volume

__all__ = ["Digest", "read_mask", "read_nifti", "write_mask", "write_nifti"]

_INT16 = np.iinfo(np.int16)
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Digest(Protocol):
    """What ``digest`` needs of a :mod:`hashlib` object."""

    def update(self, data: bytes | memoryview, /) -> None: ...


@functools.cache
def _zlib() -> ModuleType:
    """zlib-ng's zlib when installed (``pip install dlas[fast]``), else the standard one."""
    try:
        from zlib_ng import zlib_ng
    except ImportError:
        import zlib

        return zlib
    return zlib_ng


_CHUNK = 1 << 20  # bytes decompressed per call: a reused buffer, not a new one per image


def _gunzip(data: bytes) -> npt.NDArray[np.uint8]:
    """The content of a gzip file, every member in turn; zlib checks each member's CRC-32 and
    length. Inflated in chunks into one array sized by the last member's length field (the
    whole size for the usual one-member file). A ``bytes`` result grows by reallocation and
    touches new memory page by page: 43 ms against 4 ms for a 26 MB mask on a 2-core VM."""
    zlib = _zlib()
    out = np.empty(int.from_bytes(data[-4:], "little") if len(data) >= 4 else 0, np.uint8)
    size = 0
    rest = data
    while rest:
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)  # a gzip header and trailer
        while not member.eof:
            piece = member.decompress(rest, _CHUNK)
            rest = member.unconsumed_tail
            if not piece and not rest:
                raise EOFError("compressed file ended before the end-of-stream marker")
            if size + len(piece) > out.size:
                grown = np.empty(max(2 * out.size, size + len(piece)), np.uint8)
                grown[:size] = out[:size]
                out = grown
            out[size : size + len(piece)] = np.frombuffer(piece, np.uint8)
            size += len(piece)
        rest = member.unused_data.lstrip(b"\x00")  # gzip allows zero padding after a member
    return out[:size]


def _read_file(p: Path) -> npt.NDArray[np.uint8]:
    """The bytes of a file, read into a (writable) array."""
    with p.open("rb") as f:
        out = np.empty(os.fstat(f.fileno()).st_size, np.uint8)
        view = out.data
        size = 0
        while size < out.size and (n := f.readinto(view[size:])):
            size += n
    return out[:size]


# sizeof_hdr, the header's first field → the format and position of vox_offset in the header
_VOX_OFFSET = {348: ("f", 108), 540: ("q", 168)}


def _header_size(head: bytes) -> tuple[int, int | None]:
    """sizeof_hdr (348: NIfTI-1, 540: NIfTI-2, 0: neither) and where the voxels start (after
    the header and its extensions, by vox_offset; None if unreadable) of the file starting
    with ``head``."""
    for order in "<>":
        sizeof_hdr = struct.unpack_from(order + "i", head)[0] if len(head) >= 4 else 0
        if sizeof_hdr in _VOX_OFFSET:
            fmt, at = _VOX_OFFSET[sizeof_hdr]
            try:
                offset = int(struct.unpack_from(order + fmt, head, at)[0])
            except (struct.error, ValueError, OverflowError):
                return sizeof_hdr, None
            return sizeof_hdr, max(offset, sizeof_hdr + 4)
    return 0, None


def _load(p: Path, digest: Digest | None) -> tuple[Any, npt.NDArray[Any]]:
    """The nibabel image of ``p`` (for its header and affine) and its voxel array, from one
    read of the file (``digest`` is fed its bytes).

    For ``.nii`` and ``.nii.gz`` the voxel array is a view into the file's bytes when the
    voxels are stored unscaled, else the array nibabel makes (scaled; a file too short for its
    header's shape is refused there).
    """
    import nibabel as nib

    name = p.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        image: Any = nib.load(str(p))
        if digest is not None:
            digest.update(p.read_bytes())
        return image, np.asanyarray(image.dataobj)
    if name.endswith(".gz"):
        compressed = p.read_bytes()
        if digest is not None:
            digest.update(compressed)
        raw = _gunzip(compressed)
    else:
        raw = _read_file(p)
        if digest is not None:
            digest.update(raw.data)
    sizeof_hdr, end = _header_size(raw[:544].tobytes())
    kind = nib.Nifti2Image if sizeof_hdr == 540 else nib.Nifti1Image
    # nibabel is given the header and its extensions only (it reads voxels lazily), unless the
    # header is broken: then all of it, and it says what is wrong.
    image = kind.from_bytes(raw[: raw.size if end is None else end].tobytes())
    proxy: Any = image.dataobj
    dtype = np.dtype(proxy.dtype)
    if (
        proxy.slope == 1
        and proxy.inter == 0
        and proxy.offset + int(np.prod(proxy.shape)) * dtype.itemsize <= raw.size
    ):
        data = np.ndarray(proxy.shape, dtype, raw, proxy.offset, order=proxy.order)
        return image, data if data.flags.aligned else data.copy(order="K")
    return image, np.asanyarray(kind.from_bytes(raw.tobytes()).dataobj)


def read_nifti(path: str | os.PathLike[str], *, digest: Digest | None = None) -> Volume:
    """Read a 3-D NIfTI image.

    Parameters
    ----------
    digest
        A :mod:`hashlib` object (e.g. ``hashlib.sha256()``), updated with the bytes of the file
        as read: its hash is that of exactly the bytes the image was decoded from, without a
        second read of the file.

    Raises
    ------
    NiftiError
        If the file is missing, unreadable or truncated, not 3-D, has a sheared grid, or holds
        NaN or infinite values.
    """
    return _read(Path(path), digest, binary=False)


def _read(p: Path, digest: Digest | None, *, binary: bool) -> Volume:
    """:func:`read_nifti`; with ``binary``, the array is ``voxels != 0`` (made without an
    intermediate copy of the voxels)."""
    if not p.is_file():
        raise NiftiError(
            "NIfTI file not found",
            where=str(p),
            expected="an existing .nii or .nii.gz file",
            found="nothing at that path",
            fix="check the path",
        )
    try:
        image, data = _load(p, digest)
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
    array = data.transpose(2, 1, 0)
    try:
        return Volume(
            np.ascontiguousarray(array != 0 if binary else array),
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


def read_mask(
    path: str | os.PathLike[str],
    reference: Volume | None = None,
    *,
    digest: Digest | None = None,
) -> Volume:
    """Read a binary mask (any non-zero voxel is inside) as a boolean Volume.

    Parameters
    ----------
    reference
        When given, the mask must lie on the same grid; a different grid is an error.
    digest
        Updated with the bytes of the file as read (see :func:`read_nifti`).
    """
    mask = _read(Path(path), digest, binary=True)
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
