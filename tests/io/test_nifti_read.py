"""Reading NIfTI from one read of the file: the same arrays as nibabel's, the SHA-256 of the
file's bytes, the same result with either gzip decoder, and damaged files refused."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import dlas.io.nifti as nifti
from dlas.errors import NiftiError
from dlas.io import read_mask, read_nifti


def _nibabel_zyx(path: Path) -> np.ndarray:
    """nibabel's voxels of a 3-D image (or 4-D of one volume), in (z, y, x) order."""
    data = np.asanyarray(nib.load(str(path)).dataobj)
    return data.reshape(data.shape[:3]).transpose(2, 1, 0)


def _images(folder: Path) -> list[Path]:
    """NIfTI files of the kinds found in the field, each written by nibabel."""
    rng = np.random.default_rng(0)
    affine = np.diag([-0.9, -0.8, 3.0, 1.0])
    affine[:3, 3] = (120.0, 90.0, -40.0)
    mask = (rng.random((13, 11, 7)) > 0.6).astype(np.uint8)
    ct = rng.integers(-1024, 2000, (13, 11, 7)).astype(np.int16)
    paths = []

    def save(image: nib.Nifti1Image, name: str) -> None:
        nib.save(image, str(folder / name))
        paths.append(folder / name)

    for suffix in (".nii", ".nii.gz"):
        save(nib.Nifti1Image(mask, affine), f"mask{suffix}")
        save(nib.Nifti1Image(ct, affine), f"ct{suffix}")
        save(nib.Nifti2Image(ct, affine), f"nifti2{suffix}")
        scaled = nib.Nifti1Image(ct, affine)
        scaled.header.set_slope_inter(0.5, -1024.0)  # voxels scaled on reading
        save(scaled, f"scaled{suffix}")
        big = nib.Nifti1Image(ct.astype(">i2"), affine)  # big-endian voxels and header
        save(big, f"big-endian{suffix}")
        extended = nib.Nifti1Image(mask, affine)
        extended.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 100))
        save(extended, f"extension{suffix}")  # voxels after a header extension
        save(nib.Nifti1Image(ct[..., None], affine), f"four-d{suffix}")  # 4-D, one volume
    # Two gzip members (as concatenated .gz files are): one file for every reader.
    whole = (folder / "mask.nii").read_bytes()
    (folder / "members.nii.gz").write_bytes(
        gzip.compress(whole[:1000]) + gzip.compress(whole[1000:])
    )
    paths.append(folder / "members.nii.gz")
    return paths


def test_read_gives_nibabels_arrays_and_the_sha256_of_the_file(tmp_path: Path) -> None:
    for path in _images(tmp_path):
        digest = hashlib.sha256()
        volume = read_nifti(path, digest=digest)
        expected = _nibabel_zyx(path)
        assert volume.array.dtype == expected.dtype, path.name
        np.testing.assert_array_equal(volume.array, expected, err_msg=path.name)
        assert volume.array.flags.c_contiguous and volume.array.flags.writeable, path.name
        assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest(), path.name


def test_read_mask_gives_nibabels_nonzero_voxels_and_the_sha256(tmp_path: Path) -> None:
    for path in _images(tmp_path):
        digest = hashlib.sha256()
        mask = read_mask(path, digest=digest)
        expected = _nibabel_zyx(path) != 0
        assert mask.array.dtype == bool and mask.array.flags.c_contiguous, path.name
        np.testing.assert_array_equal(mask.array, expected, path.name)
        assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest(), path.name


def test_both_gzip_decoders_give_identical_voxels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zlib_ng = pytest.importorskip("zlib_ng.zlib_ng")
    paths = [p for p in _images(tmp_path) if p.name.endswith(".gz")]
    by_decoder = {}
    for decoder in (zlib, zlib_ng):
        monkeypatch.setattr(nifti, "_zlib", lambda decoder=decoder: decoder)
        by_decoder[decoder.__name__] = [read_nifti(p).array for p in paths]
    for a, b, path in zip(*by_decoder.values(), paths, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), path.name


@pytest.mark.parametrize("decoder", ["zlib", "zlib_ng.zlib_ng"])
@pytest.mark.parametrize(
    ("damage", "name"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-8] + bytes(8), "wrong CRC and length"),
        (lambda data: data + b"not gzip", "trailing bytes"),
        (lambda data: gzip.decompress(data), "not compressed"),
    ],
)
def test_damaged_gzip_nifti_is_refused_by_either_decoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoder: str, damage, name: str
) -> None:
    module = pytest.importorskip(decoder)
    monkeypatch.setattr(nifti, "_zlib", lambda: module)
    nib.save(nib.Nifti1Image(np.ones((30, 30, 30), np.int16), np.eye(4)), tmp_path / "ok.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(damage((tmp_path / "ok.nii.gz").read_bytes()))
    with pytest.raises(NiftiError, match="cannot read NIfTI image") as info:
        read_mask(bad)
    assert info.value.where == str(bad), name


def test_nifti_too_short_for_its_header_is_refused(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.uint8), np.eye(4)), tmp_path / "m.nii")
    data = (tmp_path / "m.nii").read_bytes()
    for name, content in (("short.nii", data[:-1]), ("header.nii", data[:200])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(NiftiError, match="cannot read NIfTI image"):
            read_mask(tmp_path / name)
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(content))
        with pytest.raises(NiftiError, match="cannot read NIfTI image"):
            read_nifti(tmp_path / f"{name}.gz")
