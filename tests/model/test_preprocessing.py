"""Preprocessing geometry: orientation, body crop, model grid, resampling both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlas.errors import NiftiError
from dlas.io import AXIAL_DIRECTION, Volume
from dlas.model import (
    Preprocessing,
    body_box,
    canonical_axial,
    context_indices,
    normalise_hu,
    plan_grid,
    resample_to_ct,
    resample_to_model,
)


def _body_ct(shape: tuple[int, int, int] = (4, 40, 50), spacing=(3.0, 1.5, 1.0)) -> Volume:
    nz, ny, nx = shape
    _, yy, xx = np.mgrid[:nz, :ny, :nx]
    body = ((yy - 20) / 12.0) ** 2 + ((xx - 26) / 15.0) ** 2 < 1
    hu = np.where(body, 30.0, -1000.0)
    return Volume(hu.astype(np.float32), spacing=spacing, origin=(-25.0, -30.0, 0.0))


def test_normalise_hu_maps_the_window_to_minus_one_one() -> None:
    pre = Preprocessing(hu_min=-1000, hu_max=1000)
    out = normalise_hu(np.array([-3000.0, -1000.0, 0.0, 1000.0, 2000.0]), pre)
    assert out.tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]


def test_body_box_is_the_body_plus_margin() -> None:
    ct = _body_ct()
    # A speck of "couch" far from the body is not the largest component.
    ct.array[0, 39, 0] = 500.0
    box = body_box(ct, Preprocessing(body_margin_mm=3.0))
    rows = np.flatnonzero((ct.array > -500).any(axis=(0, 2)) & (np.arange(40) < 39))
    cols = np.flatnonzero((ct.array[:, :39] > -500).any(axis=(0, 1)))
    assert box == (rows[0] - 2, rows[-1] + 1 + 2, cols[0] - 3, cols[-1] + 1 + 3)


def test_body_box_is_the_whole_image_without_body_or_cropping() -> None:
    ct = _body_ct()
    assert body_box(ct, Preprocessing(crop_to_body=False)) == (0, 40, 0, 50)
    empty = ct.with_array(np.full(ct.shape, -1000.0, dtype=np.float32))
    assert body_box(empty, Preprocessing()) == (0, 40, 0, 50)


def test_model_grid_at_the_ct_spacing_samples_the_ct_pixels_exactly() -> None:
    ct = _body_ct(spacing=(3.0, 1.0, 1.0))
    pre = Preprocessing(spacing_mm=1.0, crop_to_body=False)
    grid = plan_grid(ct, pre, 8)
    assert grid.shape == (40, 56)  # 50 columns rounded up to a multiple of 8
    values = torch.from_numpy(np.arange(40 * 50, dtype=np.float64).reshape(1, 1, 40, 50))
    model = resample_to_model(values, grid)
    # Columns 3..52 of the model grid are the CT's columns 0..49 (centred padding).
    assert torch.allclose(model[0, 0, :, 3:53], values[0, 0], rtol=0, atol=1e-9)
    assert float(model[0, 0, :, :3].abs().max()) == 0.0
    back = resample_to_ct(model, grid)
    assert torch.allclose(back, values)


def test_resampling_to_a_coarser_grid_and_back_preserves_smooth_images() -> None:
    ct = _body_ct(shape=(2, 64, 64), spacing=(3.0, 1.0, 1.0))
    pre = Preprocessing(spacing_mm=2.0, crop_to_body=False)
    grid = plan_grid(ct, pre, 4)
    assert grid.shape == (32, 32)
    yy, xx = np.mgrid[:64, :64]
    smooth = torch.from_numpy((np.sin(yy / 9.0) + np.cos(xx / 7.0))[None, None])
    back = resample_to_ct(resample_to_model(smooth, grid), grid)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert float((back - smooth)[inner].abs().max()) < 0.02


def test_model_grid_is_centred_on_the_body_box() -> None:
    ct = _body_ct()
    pre = Preprocessing(spacing_mm=2.0, body_margin_mm=0.0)
    grid = plan_grid(ct, pre, 8)
    y0, y1, x0, x1 = grid.box
    h, w = grid.shape
    centre_y = grid.origin_yx[0] + (h - 1) / 2 * grid.step_yx[0]
    centre_x = grid.origin_yx[1] + (w - 1) / 2 * grid.step_yx[1]
    assert centre_y == pytest.approx((y0 + y1 - 1) / 2)
    assert centre_x == pytest.approx((x0 + x1 - 1) / 2)
    assert h * 2.0 >= (y1 - y0) * 1.5 and w * 2.0 >= (x1 - x0) * 1.0
    assert h % 8 == 0 and w % 8 == 0


def test_canonical_axial_undoes_flips_and_permutations_losslessly() -> None:
    ct = _body_ct()
    ct.array[:] += np.arange(ct.array.size, dtype=np.float32).reshape(ct.shape) * 1e-3
    # The same voxels stored with the row axis flipped and the z/x axes swapped.
    flipped_dir = AXIAL_DIRECTION.copy()
    flipped_dir[1] *= -1
    flipped = Volume(
        ct.array[:, ::-1, :].copy(),
        spacing=ct.spacing,
        origin=ct.index_to_physical([0, ct.shape[1] - 1, 0]),
        direction=flipped_dir,
    )
    permuted = Volume(
        np.ascontiguousarray(np.transpose(ct.array, (2, 1, 0))),
        spacing=ct.spacing[::-1],
        origin=ct.origin,
        direction=ct.direction[::-1],
    )
    for other in (flipped, permuted):
        back = canonical_axial(other)
        assert back.same_grid(ct)
        assert np.array_equal(back.array, ct.array)


def test_oblique_ct_is_refused() -> None:
    angle = np.radians(10)
    direction = np.array(
        [[0, 0, 1], [0, np.cos(angle), np.sin(angle)], [1, 0, 0]], dtype=np.float64
    )
    direction[1] /= np.linalg.norm(direction[1])
    direction[0] = np.cross(direction[2], direction[1])
    ct = Volume(np.zeros((2, 4, 4), dtype=np.float32), (1, 1, 1), (0, 0, 0), direction)
    with pytest.raises(NiftiError, match="oblique image orientation"):
        canonical_axial(ct, where="x.nii.gz")


def test_context_indices_repeat_the_end_slices() -> None:
    assert context_indices(0, 5, 3) == [0, 0, 1]
    assert context_indices(4, 5, 3) == [3, 4, 4]
    assert context_indices(2, 5, 5) == [0, 1, 2, 3, 4]
    assert context_indices(0, 1, 1) == [0]
