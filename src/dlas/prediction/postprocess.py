"""Clean-up of predicted masks, as each structure's ``postprocess`` in the structure set asks.

* ``largest_component``: keep the largest 3-D connected component (26-connectivity, so that
  voxels touching at an edge or corner stay together as they do in a contour stack). For organs
  that are one piece (bladder, each femoral head), stray islands are always errors.
* ``fill_holes``: fill every hole enclosed within an axial slice (2-D, per slice), which is how
  a planning system draws such organs; holes open to the outside of the slice are left alone.

Both work on the mask's bounding box (grown by one voxel) to stay fast on 512x512 grids.
Arrays are (z, y, x).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from dlas.structures import Postprocess

__all__ = ["fill_holes_per_slice", "keep_largest_component", "postprocess_mask"]


def _bbox(mask: npt.NDArray[np.bool_]) -> tuple[slice, ...]:
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        slices.append(slice(max(0, int(idx[0]) - 1), min(mask.shape[axis], int(idx[-1]) + 2)))
    return tuple(slices)


def keep_largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The largest 26-connected component of a 3-D mask (an empty mask stays empty)."""
    from scipy import ndimage

    if not mask.any():
        return mask.copy()
    box = _bbox(mask)
    crop = mask[box]
    labels, n = ndimage.label(crop, structure=np.ones((3, 3, 3), dtype=bool))
    out = np.zeros_like(mask)
    if n <= 1:
        out[box] = crop
        return out
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out[box] = labels == int(sizes.argmax())
    return out


def fill_holes_per_slice(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Fill holes enclosed within each axial slice of a (z, y, x) mask."""
    from scipy import ndimage

    out = mask.copy()
    if not mask.any():
        return out
    box = _bbox(mask)
    for k in range(box[0].start, box[0].stop):
        plane = mask[k, box[1], box[2]]
        if plane.any():
            out[k, box[1], box[2]] = ndimage.binary_fill_holes(plane)
    return out


def postprocess_mask(mask: npt.NDArray[np.bool_], rule: Postprocess) -> npt.NDArray[np.bool_]:
    """Apply a structure's post-processing (largest component first, then hole filling)."""
    out = np.asarray(mask, dtype=bool)
    if rule.largest_component:
        out = keep_largest_component(out)
    if rule.fill_holes:
        out = fill_holes_per_slice(out)
    return out
