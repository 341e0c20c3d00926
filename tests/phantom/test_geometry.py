"""Signed distance fields on grids: exact where they must be, the same at every resolution."""

from __future__ import annotations

import numpy as np
import pytest

from dlas.phantom.geometry import (
    Capsule,
    Cuboid,
    Difference,
    Displace,
    Ellipsoid,
    Grid,
    HalfSpace,
    Intersection,
    Loft,
    Offset,
    Shell,
    SmoothField,
    Tube,
    Union,
)


def _grid(step: float = 2.0, n: int = 40) -> Grid:
    origin = -(n - 1) / 2 * step
    return Grid((n, n, n), (step, step, step), (origin, origin, origin))


def _points(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return grid.coords(grid.full)


def test_sphere_sdf_is_the_euclidean_distance() -> None:
    grid = _grid()
    x, y, z = _points(grid)
    sphere = Ellipsoid((3.0, -2.0, 1.0), (15.0, 15.0, 15.0))
    expected = np.sqrt((x - 3) ** 2 + (y + 2) ** 2 + (z - 1) ** 2) - 15.0
    patch = sphere.evaluate(grid, pad=10.0)
    assert patch.box is not None
    got = patch.values(grid.full)
    np.testing.assert_allclose(got, np.clip(expected, -10, 10), atol=1e-4)


def test_ellipsoid_surface_and_inside_are_exact() -> None:
    e = Ellipsoid((0.0, 0.0, 0.0), (20.0, 10.0, 5.0))
    on_surface = e.sdf(
        np.array([20.0, 0.0, 0.0]), np.array([0.0, 10.0, 0.0]), np.array([0.0, 0.0, 5.0])
    )
    np.testing.assert_allclose(on_surface, 0.0, atol=1e-5)
    # Near the surface the approximation is within a few per cent of the true distance.
    assert float(e.sdf(np.array([22.0]), np.array([0.0]), np.array([0.0]))[0]) == pytest.approx(
        2.0, rel=0.05
    )
    assert e.contains(np.array([[0.0, 0.0, 0.0]]))[0]


def test_rotated_ellipsoid_bounds_enclose_the_solid() -> None:
    angle = np.radians(30)
    axes = np.array(
        [[np.cos(angle), np.sin(angle), 0], [-np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    e = Ellipsoid((5.0, 5.0, 0.0), (25.0, 6.0, 6.0), axes)
    grid = _grid(1.5, 60)
    inside = e.evaluate(grid, pad=3.0).inside(grid.shape)
    x, y, z = _points(grid)
    xb, yb, _ = np.broadcast_arrays(x, y, z)
    assert inside.sum() > 0
    assert xb[inside].min() >= e.lo[0] and xb[inside].max() <= e.hi[0]
    assert yb[inside].min() >= e.lo[1] and yb[inside].max() <= e.hi[1]


def test_capsule_and_tube_distances() -> None:
    cap = Capsule((0.0, 0.0, -10.0), (0.0, 0.0, 10.0), 5.0)
    d = cap.sdf(np.array([8.0, 0.0]), np.array([0.0, 0.0]), np.array([0.0, 20.0]))
    np.testing.assert_allclose(d, [3.0, 5.0], atol=1e-5)
    tube = Tube(np.array([[0.0, 0, 0], [20, 0, 0], [20, 20, 0]]), 4.0)
    assert float(tube.sdf(np.array([20.0]), np.array([10.0]), np.array([0.0]))[0]) == (
        pytest.approx(-4.0)
    )
    grid = _grid()
    np.testing.assert_allclose(
        tube.evaluate(grid, 6.0).values(grid.full),
        np.clip(np.broadcast_to(tube.sdf(*_points(grid)), grid.shape), -6, 6),
        atol=1e-4,
    )


def test_loft_interpolates_ellipses_along_z() -> None:
    loft = Loft([0.0, 20.0], [0.0, 10.0], [0.0, 0.0], [10.0, 20.0], [10.0, 10.0])
    # At z = 10 the centre is x = 5 and the semi-axes are (15, 10).
    d = loft.sdf(np.array([20.0, 5.0]), np.array([0.0, 10.0]), np.array([10.0, 10.0]))
    np.testing.assert_allclose(d, [0.0, 0.0], atol=1e-4)
    assert float(loft.sdf(np.array([0.0]), np.array([0.0]), np.array([25.0]))[0]) == (
        pytest.approx(5.0)
    )


def test_cuboid_and_half_space() -> None:
    box = Cuboid((-5.0, -5.0, -5.0), (5.0, 5.0, 5.0))
    d = box.sdf(np.array([0.0, 8.0, 8.0]), np.array([0.0, 0.0, 9.0]), np.array([0.0, 0.0, 0.0]))
    np.testing.assert_allclose(d, [-5.0, 3.0, 5.0], atol=1e-5)
    half = HalfSpace((0.0, 0.0, 2.0), 10.0)  # z <= 5
    assert float(half.sdf(np.array([0.0]), np.array([0.0]), np.array([7.0]))[0]) == (
        pytest.approx(2.0)
    )


def test_boolean_patches_equal_the_direct_formula() -> None:
    a = Ellipsoid((0.0, 0.0, 0.0), (20.0, 15.0, 12.0))
    b = Ellipsoid((12.0, 0.0, 0.0), (10.0, 10.0, 10.0))
    c = Capsule((-30.0, 0.0, 0.0), (30.0, 0.0, 0.0), 4.0)
    grid = _grid()
    pad = 5.0
    for shape in (
        Union([a, b]),
        Intersection([a, b]),
        Difference(a, [b]),
        Offset(Union([a, c]), 3.0),
        Offset(a, -2.0),
        Shell(a, 3.0),
        Intersection([a, HalfSpace((1.0, 0.0, 0.0), 5.0)]),
    ):
        direct = np.clip(np.broadcast_to(shape.sdf(*_points(grid)), grid.shape), -pad, pad)
        patched = shape.evaluate(grid, pad).values(grid.full)
        np.testing.assert_allclose(patched, direct, atol=1e-4, err_msg=type(shape).__name__)


def test_empty_patch_when_the_shape_misses_the_grid() -> None:
    grid = _grid()
    patch = Ellipsoid((500.0, 0.0, 0.0), (5.0, 5.0, 5.0)).evaluate(grid, 2.0)
    assert patch.box is None
    assert not patch.inside(grid.shape).any()


def test_smooth_field_grid_evaluation_equals_point_evaluation() -> None:
    field = SmoothField(np.random.default_rng(3), 12.0)
    grid = Grid((9, 20, 24), (5.0, 3.0, 2.5), (-30.0, -25.0, -20.0))
    on_grid = field.on_box(grid, grid.full)
    x, y, z = np.broadcast_arrays(*grid.coords(grid.full))
    points = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    np.testing.assert_allclose(on_grid.ravel(), field.at(points), atol=1e-4)


def test_smooth_field_is_resolution_independent_and_about_unit_variance() -> None:
    field = SmoothField(np.random.default_rng(0), 10.0)
    coarse = Grid((11, 31, 31), (8.0, 6.0, 6.0), (-90.0, -90.0, -40.0))
    fine = Grid((41, 91, 91), (2.0, 2.0, 2.0), (-90.0, -90.0, -40.0))
    a = field.on_box(coarse, coarse.full)
    b = field.on_box(fine, fine.full)
    # Coarse voxel centres are fine voxel centres: the field agrees there.
    np.testing.assert_allclose(a, b[::4, ::3, ::3], atol=1e-4)
    assert 0.6 < float(b.std()) < 1.4


def test_displace_moves_the_surface_by_the_field() -> None:
    field = SmoothField(np.random.default_rng(1), 20.0)
    sphere = Ellipsoid((0.0, 0.0, 0.0), (20.0, 20.0, 20.0))
    moved = Displace(sphere, field, 2.0)
    p = np.array([[20.0, 0.0, 0.0]])
    expected = -2.0 * float(np.clip(field.at(p)[0], -3, 3))
    assert float(moved.sdf(p[:, 0], p[:, 1], p[:, 2])[0]) == pytest.approx(expected, abs=1e-4)
    grid = _grid()
    direct = np.clip(np.broadcast_to(moved.sdf(*_points(grid)), grid.shape), -4, 4)
    np.testing.assert_allclose(moved.evaluate(grid, 4.0).values(grid.full), direct, atol=1e-3)


def test_grid_box_for_selects_voxel_centres_inside() -> None:
    grid = Grid((10, 10, 10), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    box = grid.box_for((2.0, 3.5, 4.0), (5.0, 6.0, 9.0))
    assert box is not None
    assert box.lo == (2, 4, 2) and box.hi == (5, 7, 6)
    assert grid.box_for((20.0, 0.0, 0.0), (30.0, 1.0, 1.0)) is None
