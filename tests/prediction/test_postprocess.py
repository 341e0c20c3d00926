"""Post-processing of predicted masks: largest component, hole filling per slice."""

from __future__ import annotations

import numpy as np

from dlas.prediction import fill_holes_per_slice, keep_largest_component, postprocess_mask
from dlas.structures import Postprocess


def test_largest_component_drops_islands_and_keeps_diagonal_neighbours() -> None:
    mask = np.zeros((5, 10, 10), dtype=bool)
    mask[1:4, 2:6, 2:6] = True  # 48 voxels
    mask[4, 6, 6] = True  # touches the block at a corner only: same component (26-connected)
    mask[0, 9, 9] = True  # island
    out = keep_largest_component(mask)
    assert out.sum() == 49
    assert not out[0, 9, 9] and out[4, 6, 6]


def test_largest_component_of_an_empty_mask_is_empty() -> None:
    assert not keep_largest_component(np.zeros((3, 4, 4), dtype=bool)).any()


def test_holes_are_filled_within_each_slice_only() -> None:
    mask = np.zeros((3, 9, 9), dtype=bool)
    mask[1, 2:7, 2:7] = True
    mask[1, 4, 4] = False  # enclosed hole
    mask[2, 2:7, 2:7] = True
    mask[2, 4, 2:5] = False  # a notch open to the outside of the slice
    out = fill_holes_per_slice(mask)
    assert out[1, 4, 4]
    assert not out[2, 4, 2]
    assert out.sum() == mask.sum() + 1


def test_postprocess_follows_the_structure_rule() -> None:
    mask = np.zeros((3, 9, 9), dtype=bool)
    mask[1, 2:7, 2:7] = True
    mask[1, 4, 4] = False
    mask[0, 0, 0] = True
    assert np.array_equal(postprocess_mask(mask, Postprocess()), mask)
    both = postprocess_mask(mask, Postprocess(largest_component=True, fill_holes=True))
    assert both.sum() == 25 and not both[0, 0, 0]
