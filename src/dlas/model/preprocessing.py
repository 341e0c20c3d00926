"""From a CT volume to network input on the model grid, and from predictions back to the CT grid.

The model works on axial slices with a fixed in-plane pixel size (``Preprocessing.spacing_mm``);
slices are never resampled along z. For each CT:

1. the volume is brought to the canonical axial orientation (a lossless permutation/flip through
   SimpleITK's ``DICOMOrient``; oblique volumes are refused);
2. the body is found (HU above ``body_threshold_hu``, largest 3-D connected component) and its
   in-plane bounding box, grown by ``body_margin_mm``, is the region the model sees;
3. a :class:`SliceGrid` places the model's pixel grid over that region, centred, at the model
   spacing, with a size that is a multiple of the network's ``size_multiple`` (extra pixels are
   air, i.e. ``hu_min``);
4. HU are clipped to the window and normalised (``Preprocessing.intensity``: mapped to [-1, 1],
   or standardised with fitted statistics); the slices are resampled bilinearly onto the model
   grid (labels: nearest neighbour).

Predictions (class probabilities per model pixel) go back the same way: bilinear resampling of the
probabilities onto the CT pixels inside the region, argmax there, background elsewhere. So a
prediction always lies exactly on the grid of the CT it was made from.

Why our own code: the resampling must be invertible in exactly the way described above, batched
on the device that runs the network (``torch.nn.functional.grid_sample``), and identical in
training and prediction; no library offers that pairing with the body crop. Geometry follows
:class:`dlas.io.Volume`: arrays (z, y, x), spacing in mm, DICOM patient coordinates (LPS).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from dlas.errors import NiftiError
from dlas.io.volume import AXIAL_DIRECTION, Volume
from dlas.model.config import Preprocessing

if TYPE_CHECKING:
    import torch

__all__ = [
    "SliceGrid",
    "body_box",
    "canonical_axial",
    "context_indices",
    "normalise_hu",
    "plan_grid",
    "resample_to_ct",
    "resample_to_model",
]

log = logging.getLogger(__name__)


def canonical_axial(volume: Volume, *, where: str = "CT") -> Volume:
    """The volume in canonical axial orientation (direction :data:`AXIAL_DIRECTION`).

    Axis permutations and flips are undone losslessly; voxel centres keep their LPS positions.

    Raises
    ------
    NiftiError
        If the volume is oblique (its axes are not aligned with the patient axes).
    """
    if np.allclose(volume.direction, AXIAL_DIRECTION, atol=1e-4):
        return volume
    if not np.allclose(np.abs(volume.direction).max(axis=1), 1.0, atol=1e-4):
        raise NiftiError(
            "oblique image orientation",
            where=where,
            expected="image axes along the patient axes (axial, coronal or sagittal stacks)",
            found=f"direction rows {np.round(volume.direction, 4).tolist()}",
            fix="resample the CT to an axial grid before prediction or training",
        )
    import SimpleITK as sitk

    oriented = Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), "LPS"))
    if volume.array.dtype == bool:
        oriented = oriented.with_array(oriented.array != 0)
    return oriented


def normalise_hu(hu: npt.NDArray[np.floating], pre: Preprocessing) -> npt.NDArray[np.float32]:
    """HU clipped to ``[hu_min, hu_max]`` and normalised as ``pre.intensity`` says (float32):
    mapped linearly to [-1, 1] (``window``) or standardised (``percentile``)."""
    scale, air = pre.intensity_affine()
    clipped = np.clip(hu.astype(np.float32, copy=False), pre.hu_min, pre.hu_max)
    out: npt.NDArray[np.float32] = ((clipped - pre.hu_min) * scale + air).astype(np.float32)
    return out


def body_box(ct: Volume, pre: Preprocessing) -> tuple[int, int, int, int]:
    """In-plane bounding box ``(y0, y1, x0, x1)`` (half-open, voxel indices) of the body.

    The body is the largest 3-D connected component above ``body_threshold_hu``; the box is grown
    by ``body_margin_mm`` and clipped to the image. The whole image when cropping is off or no
    voxel exceeds the threshold.
    """
    _, ny, nx = ct.shape
    if not pre.crop_to_body:
        return (0, ny, 0, nx)
    from scipy import ndimage

    above = ct.array > pre.body_threshold_hu
    if not above.any():
        log.debug("no voxel above %s HU; using the whole image", pre.body_threshold_hu)
        return (0, ny, 0, nx)
    labels, n = ndimage.label(above)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        above = labels == int(sizes.argmax())
    rows = np.flatnonzero(above.any(axis=(0, 2)))
    cols = np.flatnonzero(above.any(axis=(0, 1)))
    my = math.ceil(pre.body_margin_mm / float(ct.spacing[1]))
    mx = math.ceil(pre.body_margin_mm / float(ct.spacing[2]))
    return (
        max(0, int(rows[0]) - my),
        min(ny, int(rows[-1]) + 1 + my),
        max(0, int(cols[0]) - mx),
        min(nx, int(cols[-1]) + 1 + mx),
    )


@dataclass(frozen=True)
class SliceGrid:
    """Where the model's pixel grid lies on a CT's slices.

    Model pixel ``(r, c)`` has its centre at the continuous CT index
    ``(y, x) = (origin_y + r * step_y, origin_x + c * step_x)``; ``step = model spacing / CT
    spacing``. ``box`` is the CT region ``(y0, y1, x0, x1)`` that predictions are written to.
    """

    shape: tuple[int, int]
    origin_yx: tuple[float, float]
    step_yx: tuple[float, float]
    box: tuple[int, int, int, int]
    ct_shape_yx: tuple[int, int]


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def plan_grid(
    ct: Volume,
    pre: Preprocessing,
    size_multiple: int,
    *,
    box: tuple[int, int, int, int] | None = None,
    shape: tuple[int, int] | None = None,
) -> SliceGrid:
    """The model grid over the body region of ``ct`` (canonical axial).

    Parameters
    ----------
    ct
        CT in canonical axial orientation; only its geometry and (for the body) HU are used.
    pre
        Preprocessing with a resolved ``spacing_mm``.
    size_multiple
        The network's size multiple.
    box
        The region; default :func:`body_box`.
    shape
        Force the model grid to this (larger or equal) shape. Otherwise the grid is the size
        the region needs, but at least ``pre.canvas``.
    """
    if pre.spacing_mm is None:
        raise ValueError("preprocessing spacing_mm must be resolved before planning a grid")
    region = box if box is not None else body_box(ct, pre)
    y0, y1, x0, x1 = region
    sy, sx = float(ct.spacing[1]), float(ct.spacing[2])
    step_y, step_x = pre.spacing_mm / sy, pre.spacing_mm / sx
    need_h = max(1, math.ceil((y1 - y0) / step_y - 1e-6))
    need_w = max(1, math.ceil((x1 - x0) / step_x - 1e-6))
    h, w = _round_up(need_h, size_multiple), _round_up(need_w, size_multiple)
    if shape is None and pre.canvas is not None:
        h, w = max(h, pre.canvas[0]), max(w, pre.canvas[1])
    if shape is not None:
        if shape[0] < h or shape[1] < w:
            raise ValueError(f"grid shape {shape} is smaller than the {h}x{w} the region needs")
        h, w = shape
    centre_y, centre_x = (y0 + y1 - 1) / 2.0, (x0 + x1 - 1) / 2.0
    origin = (centre_y - (h - 1) / 2.0 * step_y, centre_x - (w - 1) / 2.0 * step_x)
    return SliceGrid(
        shape=(h, w),
        origin_yx=origin,
        step_yx=(step_y, step_x),
        box=region,
        ct_shape_yx=(int(ct.shape[1]), int(ct.shape[2])),
    )


def _normalised(positions: torch.Tensor, size: int) -> torch.Tensor:
    # grid_sample with align_corners=True: -1 and +1 are the centres of the first and last pixel.
    if size == 1:
        return positions * 0.0
    return positions * (2.0 / (size - 1)) - 1.0


def _sampling_grid(rows: torch.Tensor, cols: torch.Tensor, src_h: int, src_w: int) -> torch.Tensor:
    import torch

    gy = _normalised(rows, src_h)
    gx = _normalised(cols, src_w)
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")
    return torch.stack([xx, yy], dim=-1)[None]


def resample_to_model(
    slices: torch.Tensor, grid: SliceGrid, *, mode: str = "bilinear"
) -> torch.Tensor:
    """Resample CT slices ``(N, C, ny, nx)`` onto the model grid ``(N, C, h, w)``.

    Samples outside the CT are 0: pass HU shifted so that 0 means air (``hu - hu_min`` after
    clipping), or labels where 0 is background. ``mode`` is ``bilinear`` (images) or
    ``nearest`` (labels, given as float).
    """
    import torch
    import torch.nn.functional as tnf

    h, w = grid.shape
    ny, nx = grid.ct_shape_yx
    dev = slices.device
    rows = grid.origin_yx[0] + grid.step_yx[0] * torch.arange(h, device=dev, dtype=torch.float64)
    cols = grid.origin_yx[1] + grid.step_yx[1] * torch.arange(w, device=dev, dtype=torch.float64)
    sample = _sampling_grid(rows, cols, ny, nx).to(slices.dtype)
    sample = sample.expand(slices.shape[0], -1, -1, -1)
    return tnf.grid_sample(slices, sample, mode=mode, padding_mode="zeros", align_corners=True)


def resample_to_ct(values: torch.Tensor, grid: SliceGrid) -> torch.Tensor:
    """Resample model-grid maps ``(N, C, h, w)`` (e.g. class probabilities) bilinearly onto the
    CT pixels of ``grid.box``: returns ``(N, C, y1 - y0, x1 - x0)``."""
    import torch
    import torch.nn.functional as tnf

    y0, y1, x0, x1 = grid.box
    h, w = grid.shape
    dev = values.device
    ys = torch.arange(y0, y1, device=dev, dtype=torch.float64)
    xs = torch.arange(x0, x1, device=dev, dtype=torch.float64)
    rows = (ys - grid.origin_yx[0]) / grid.step_yx[0]
    cols = (xs - grid.origin_yx[1]) / grid.step_yx[1]
    sample = _sampling_grid(rows, cols, h, w).to(values.dtype)
    sample = sample.expand(values.shape[0], -1, -1, -1)
    return tnf.grid_sample(
        values, sample, mode="bilinear", padding_mode="border", align_corners=True
    )


def context_indices(z: int, nz: int, in_slices: int) -> list[int]:
    """Slice indices fed as channels for slice ``z``: ``z - h … z + h`` with ``h = in_slices // 2``,
    repeating the first/last slice beyond the volume's ends."""
    half = in_slices // 2
    return [min(max(z + d, 0), nz - 1) for d in range(-half, half + 1)]
