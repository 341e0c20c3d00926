"""Scan-line even-odd filling and marching-squares tracing against independent references."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from matplotlib.path import Path as MplPath

from dlas.io.contours import drop_collinear, rasterize_polygons, trace_mask


def _even_odd_reference(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixel-by-pixel point-in-polygon with matplotlib, combined by exclusive-or."""
    jj, ii = np.mgrid[: shape[0], : shape[1]]
    centres = np.column_stack([ii.ravel(), jj.ravel()]).astype(float)
    out = np.zeros(shape, dtype=bool)
    for polygon in polygons:
        out ^= MplPath(polygon).contains_points(centres).reshape(shape)
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.floats(-5, 25), st.floats(-5, 25)).map(
                # keep vertices off pixel centres and rows: boundary points are a matter of
                # convention, not of correctness
                lambda p: (round(p[0]) + 0.37, round(p[1] * 3) / 3 + 0.11)
            ),
            min_size=3,
            max_size=9,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fill_equals_point_in_polygon_reference(raw: list[list[tuple[float, float]]]) -> None:
    polygons = [np.array(p) for p in raw]
    ours = rasterize_polygons(polygons, (20, 22))
    reference = _even_odd_reference(polygons, (20, 22))
    # A centre exactly on an edge is inside or outside by convention only: compare the rest.
    decided = _distance_to_edges(polygons, (20, 22)) > 1e-9
    np.testing.assert_array_equal(ours[decided], reference[decided])


def _distance_to_edges(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    jj, ii = np.mgrid[: shape[0], : shape[1]]
    p = np.stack([ii, jj], axis=-1).astype(float)[..., None, :]
    best = np.full(shape, np.inf)
    for polygon in polygons:
        a, b = polygon, np.roll(polygon, -1, axis=0)
        ab = b - a
        t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-300), 0, 1)
        d = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(axis=-1)
        best = np.minimum(best, d)
    return best


@settings(max_examples=150, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 14), st.integers(1, 14))))
def test_trace_then_fill_restores_any_mask(mask: np.ndarray) -> None:
    np.testing.assert_array_equal(rasterize_polygons(trace_mask(mask), mask.shape), mask)


def test_polygons_reaching_beyond_the_image_are_clipped() -> None:
    square = np.array([[-10.0, -10.0], [3.5, -10.0], [3.5, 2.5], [-10.0, 2.5]])
    mask = rasterize_polygons([square], (6, 6))
    expected = np.zeros((6, 6), dtype=bool)
    expected[:3, :4] = True
    np.testing.assert_array_equal(mask, expected)


def test_diagonal_neighbours_are_traced_separately() -> None:
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    polygons = trace_mask(mask)
    assert len(polygons) == 2
    np.testing.assert_array_equal(rasterize_polygons(polygons, mask.shape), mask)


def test_collinear_points_are_dropped_without_changing_the_region() -> None:
    square = np.array([[0, 0], [1, 0], [2, 0], [2, 1], [2, 2], [0, 2], [0, 1]], dtype=float)
    assert len(drop_collinear(square)) == 4
    mask = np.zeros((30, 30), dtype=bool)
    mask[5:25, 3:27] = True
    (polygon,) = trace_mask(mask)
    assert len(polygon) == 8  # a rectangle with its four corners cut
