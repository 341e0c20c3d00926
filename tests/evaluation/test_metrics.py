"""Metrics against shapes with known answers and against a brute-force reference."""

from __future__ import annotations

import math
from fractions import Fraction
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import cdist

from dlas.evaluation import (
    EvaluationError,
    MetricOptions,
    compute_metrics,
    surface_distances,
)
from dlas.evaluation import metrics as metrics_module


# ------------------------------------------------------------------------- brute force
def _boundary(mask: np.ndarray) -> np.ndarray:
    """6-neighbour boundary by scipy's erosion; outside the image counts as outside."""
    eroded = ndimage.binary_erosion(
        mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0
    )
    return mask & ~eroded


def _brute_directed(src: np.ndarray, dst: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """All pairs of boundary voxels: the distance of each src boundary voxel to dst's."""
    a = np.argwhere(_boundary(src)) * spacing
    b = np.argwhere(_boundary(dst)) * spacing
    return cdist(a, b).min(axis=1)


def _brute_apl(ref: np.ndarray, pred: np.ndarray, spacing: np.ndarray, tol: float) -> float:
    """Per slice, every reference contour pixel against every prediction contour pixel."""
    four = ndimage.generate_binary_structure(2, 1)
    added = 0
    for k in range(ref.shape[0]):
        r = ref[k] & ~ndimage.binary_erosion(ref[k], four, border_value=0)
        p = pred[k] & ~ndimage.binary_erosion(pred[k], four, border_value=0)
        rp = np.argwhere(r) * spacing[1:]
        if rp.size == 0:
            continue
        pp = np.argwhere(p) * spacing[1:]
        if pp.size == 0:
            added += len(rp)
            continue
        added += int(np.count_nonzero(cdist(rp, pp).min(axis=1) > tol + 1e-9))
    return added * 0.5 * float(spacing[1] + spacing[2])


def _domain(
    ref: np.ndarray,
    pred: np.ndarray,
    opts: MetricOptions,
    spacing: np.ndarray,
    body: np.ndarray | None,
) -> np.ndarray:
    """The true-negative domain as an explicit boolean image."""
    out = np.zeros(ref.shape, dtype=bool)
    if opts.specificity_domain == "image":
        out[:] = True
    elif opts.specificity_domain == "body":
        assert body is not None
        out[:] = body
    else:
        source = ref if opts.specificity_domain == "reference-bbox" else (ref | pred)
        idx = np.argwhere(source)
        if idx.size == 0:
            return out
        lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
        if opts.specificity_domain == "reference-bbox":
            margin = np.ceil(opts.specificity_margin_mm / spacing - 1e-9).astype(int)
            lo = np.maximum(lo - margin, 0)
            hi = np.minimum(hi + margin, ref.shape)
        out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return out


def _brute_metrics(
    ref: np.ndarray,
    pred: np.ndarray,
    spacing: np.ndarray,
    opts: MetricOptions,
    body: np.ndarray | None = None,
) -> dict[str, float]:
    """Every metric by the most direct computation; both masks non-empty."""
    d_rp = _brute_directed(ref, pred, spacing)
    d_pr = _brute_directed(pred, ref, spacing)
    both = np.concatenate([d_rp, d_pr])
    if opts.hd95 == "pooled":
        hd95 = float(np.percentile(both, 95))
    elif opts.hd95 == "max":
        hd95 = float(max(np.percentile(d_rp, 95), np.percentile(d_pr, 95)))
    else:

        def order_stat(d: np.ndarray) -> float:
            k = min(max(math.floor(0.95 * len(d) - 1 + 1e-12), 0), len(d) - 1)
            return float(np.sort(d)[k])

        hd95 = 0.5 * (order_stat(d_rp) + order_stat(d_pr))
    domain = _domain(ref, pred, opts, spacing, body)
    tn = np.count_nonzero(domain & ~ref & ~pred)
    fp = np.count_nonzero(domain & ~ref & pred)
    tol = opts.tolerance_mm + 1e-9
    centre_r = np.argwhere(ref).mean(axis=0) * spacing
    centre_p = np.argwhere(pred).mean(axis=0) * spacing
    v = np.prod(spacing) / 1000.0
    return {
        "dsc": 2 * np.count_nonzero(ref & pred) / (ref.sum() + pred.sum()),
        "hd95_mm": hd95,
        "hd_mm": float(both.max()),
        "sensitivity": np.count_nonzero(ref & pred) / ref.sum(),
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "volume_cm3": pred.sum() * v,
        "volume_ref_cm3": ref.sum() * v,
        "volume_error_pct": 100.0 * (pred.sum() - ref.sum()) / ref.sum(),
        "surface_dsc": (np.count_nonzero(d_rp <= tol) + np.count_nonzero(d_pr <= tol)) / both.size,
        "assd_mm": float(both.mean()),
        "apl_mm": _brute_apl(ref, pred, spacing, opts.tolerance_mm),
        "centroid_mm": float(np.linalg.norm(centre_r - centre_p)),
    }


def _assert_matches(ours: dict[str, float | str], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        got = ours[name]
        assert isinstance(got, float)
        if math.isnan(value):
            assert math.isnan(got), name
        else:
            assert got == pytest.approx(value, rel=1e-9, abs=1e-9), name


# ------------------------------------------------------------------------- known answers
def _box(
    shape: tuple[int, int, int], lo: tuple[int, int, int], hi: tuple[int, int, int]
) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return out


def test_concentric_cubes_have_analytic_metrics() -> None:
    # Reference: a cube of side m = 12 voxels; prediction: the cube of side n = 8 inside it,
    # k = 2 voxels from every face; spacing 1.5 mm isotropic.
    s, n, k = 1.5, 8, 2
    m = n + 2 * k
    ref = _box((16, 16, 16), (2, 2, 2), (2 + m, 2 + m, 2 + m))
    pred = _box((16, 16, 16), (2 + k, 2 + k, 2 + k), (2 + k + n, 2 + k + n, 2 + k + n))
    result = compute_metrics(ref, pred, (s, s, s), tolerance_mm=1.0, specificity_domain="image")
    d = surface_distances(ref, pred, (s, s, s))
    # Every inner boundary voxel lies k voxels from the nearest outer face ...
    np.testing.assert_allclose(d.prediction_to_reference, k * s)
    # ... and the outer corners are k·√3 from the inner corners: the Hausdorff distance.
    assert result.hd_mm == pytest.approx(k * s * math.sqrt(3))
    assert result.dsc == pytest.approx(2 * n**3 / (n**3 + m**3))
    assert result.sensitivity == pytest.approx(n**3 / m**3)
    assert result.specificity == 1.0  # no false positive anywhere
    assert result.volume_error_pct == pytest.approx(100 * (n**3 - m**3) / m**3)
    assert result.centroid_mm == pytest.approx(0.0, abs=1e-12)
    # No boundary voxel is within 1 mm of the other boundary (the gap is 3 mm).
    assert result.surface_dsc == 0.0
    # Every outer contour pixel (a square ring of 4(m-1) pixels per slice, m slices) is added.
    assert result.apl_mm == pytest.approx(4 * (m - 1) * m * s)
    assert result.flags == ()


def test_concentric_spheres_distance_close_to_radius_difference() -> None:
    spacing = np.array([1.0, 1.0, 1.0])
    z, y, x = np.ogrid[:41, :41, :41]
    r2 = (z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2
    ref = r2 <= 15**2
    pred = r2 <= 11**2
    result = compute_metrics(ref, pred, spacing)
    # Digitised spheres: the surfaces are 4 mm apart within a voxel's rounding.
    assert result.assd_mm == pytest.approx(4.0, abs=0.5)
    assert 4.0 <= result.hd_mm <= 5.0
    assert result.centroid_mm == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (5.0, 1.27, 0.9), (2.5, 0.7, 1.3)])
def test_shifted_box_hausdorff_equals_shift(spacing: tuple[float, float, float]) -> None:
    # A box moved by d slices: every boundary voxel's nearest partner is d slices away
    # (the faces are wide compared with d·sz), so HD = d·sz exactly.
    sz, sy, sx = spacing
    d = 2
    ref = _box((20, 60, 60), (5, 10, 10), (12, 50, 50))
    pred = np.roll(ref, d, axis=0)
    result = compute_metrics(ref, pred, spacing, hd95="max")
    assert result.hd_mm == pytest.approx(d * sz)
    assert result.centroid_mm == pytest.approx(d * sz)
    # The translation leaves the volume unchanged.
    assert result.volume_error_pct == 0.0
    assert result.volume_cm3 == pytest.approx(7 * 40 * 40 * sz * sy * sx / 1000)


@pytest.mark.parametrize("variant", ["pooled", "max", "mean"])
def test_single_voxels_give_their_distance_for_every_distance_metric(variant: str) -> None:
    spacing = (5.0, 1.27, 0.9)
    ref = np.zeros((6, 7, 8), dtype=bool)
    pred = np.zeros_like(ref)
    ref[1, 2, 3] = True
    pred[3, 5, 1] = True
    expected = math.dist((5.0, 2 * 1.27, 3 * 0.9), (15.0, 5 * 1.27, 0.9))
    result = compute_metrics(ref, pred, spacing, hd95=variant)  # type: ignore[arg-type]
    assert result.dsc == 0.0
    for value in (result.hd95_mm, result.hd_mm, result.assd_mm, result.centroid_mm):
        assert value == pytest.approx(expected)
    same = compute_metrics(ref, ref, spacing, hd95=variant)  # type: ignore[arg-type]
    assert (same.dsc, same.hd95_mm, same.hd_mm, same.surface_dsc) == (1.0, 0.0, 0.0, 1.0)


def test_mean_variant_uses_the_order_statistic_not_interpolation() -> None:
    # 20 directed distances 0..19 mm one way: Slicer picks sorted[floor(0.95*20 - 1)] = 18,
    # numpy's interpolated 95th percentile would be 18.05.
    d = np.arange(20, dtype=float)
    assert metrics_module._order_statistic_95(d) == 18.0
    assert np.percentile(d, 95) == pytest.approx(18.05)
    assert metrics_module._order_statistic_95(np.array([7.0])) == 7.0  # n = 1: k clamped to 0


def test_order_statistic_rank_is_floor_of_095n_minus_1() -> None:
    for n in range(1, 250):
        expected = max(math.floor(Fraction(95, 100) * n - 1), 0)
        shuffled = np.random.default_rng(n).permutation(n).astype(float)
        assert metrics_module._order_statistic_95(shuffled) == expected, n


def test_mask_touching_the_image_edge_has_edge_boundary() -> None:
    ref = np.ones((3, 4, 4), dtype=bool)  # fills the image: every voxel is on the boundary
    d = surface_distances(ref, ref, (1.0, 1.0, 1.0))
    assert d.reference_to_prediction.size == ref.size - 2 * 2 * 1


def test_far_false_positive_island_is_found_by_the_tree_fallback() -> None:
    # An island 60 voxels away is far beyond the local search: the k-d tree must answer it.
    spacing = np.array([1.0, 1.0, 1.0])
    ref = _box((10, 10, 90), (2, 2, 2), (8, 8, 8))
    pred = ref.copy()
    pred[5, 5, 80] = True
    result = compute_metrics(ref, pred, spacing)
    assert result.hd_mm == pytest.approx(80 - 7)
    np.testing.assert_allclose(
        surface_distances(ref, pred, spacing).prediction_to_reference,
        _brute_directed(pred, ref, spacing),
    )


def test_integer_masks_equal_boolean_masks() -> None:
    ref = _box((8, 9, 10), (1, 2, 3), (6, 7, 8))
    pred = _box((8, 9, 10), (2, 2, 2), (7, 8, 9))
    a = compute_metrics(ref, pred, (2.0, 1.0, 1.0))
    b = compute_metrics(ref.astype(np.uint8) * 3, pred.astype(np.int16), (2.0, 1.0, 1.0))
    assert a == b


# ------------------------------------------------------------------------- empty structures
def test_both_empty_gives_nan_and_flag() -> None:
    empty = np.zeros((4, 5, 6), dtype=bool)
    result = compute_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert result.flags == ("both_empty",)
    assert (result.volume_cm3, result.volume_ref_cm3) == (0.0, 0.0)
    for name in (
        "dsc",
        "hd95_mm",
        "hd_mm",
        "sensitivity",
        "specificity",
        "volume_error_pct",
        "surface_dsc",
        "assd_mm",
        "apl_mm",
        "centroid_mm",
    ):
        assert math.isnan(getattr(result, name)), name


def test_empty_prediction_gives_zero_dsc_infinite_distances_and_flag() -> None:
    ref = _box((6, 8, 8), (1, 2, 2), (4, 6, 6))
    result = compute_metrics(ref, np.zeros_like(ref), (2.0, 1.0, 1.0))
    assert result.flags == ("prediction_empty",)
    assert (result.dsc, result.surface_dsc, result.sensitivity) == (0.0, 0.0, 0.0)
    assert result.hd95_mm == result.hd_mm == result.assd_mm == result.centroid_mm == math.inf
    assert result.specificity == 1.0
    assert result.volume_error_pct == -100.0
    # The whole reference contour must be drawn: 3 slices of a 4x4 ring of 12 pixels.
    assert result.apl_mm == pytest.approx(3 * 12 * 1.0)


def test_empty_reference_gives_zero_dsc_infinite_distances_and_flag() -> None:
    pred = _box((6, 8, 8), (1, 2, 2), (4, 6, 6))
    result = compute_metrics(np.zeros_like(pred), pred, (2.0, 1.0, 1.0))
    assert result.flags == ("reference_empty",)
    assert (result.dsc, result.surface_dsc, result.apl_mm) == (0.0, 0.0, 0.0)
    assert result.hd95_mm == result.hd_mm == result.assd_mm == result.centroid_mm == math.inf
    assert math.isnan(result.sensitivity)
    assert math.isnan(result.specificity)  # reference-bbox: no reference, no box
    assert result.volume_error_pct == math.inf
    image = compute_metrics(np.zeros_like(pred), pred, (2.0, 1.0, 1.0), specificity_domain="image")
    assert image.specificity == pytest.approx(1 - pred.sum() / pred.size)


def test_empty_surface_distances_are_infinite_or_absent() -> None:
    ref = _box((6, 8, 8), (1, 2, 2), (4, 6, 6))
    empty = np.zeros_like(ref)
    one = surface_distances(ref, empty, (1.0, 1.0, 1.0))
    assert one.prediction_to_reference.size == 0
    assert np.all(np.isinf(one.reference_to_prediction))
    none = surface_distances(empty, empty, (1.0, 1.0, 1.0))
    assert none.reference_to_prediction.size == none.prediction_to_reference.size == 0


def test_specificity_domain_without_negatives_is_flagged() -> None:
    ref = np.ones((3, 3, 3), dtype=bool)
    result = compute_metrics(ref, ref, (1.0, 1.0, 1.0), specificity_domain="union-bbox")
    assert math.isnan(result.specificity)
    assert result.flags == ("specificity_domain_empty",)


# ------------------------------------------------------------------------- specificity domains
def test_reference_bbox_margin_is_rounded_up_per_axis_and_clipped() -> None:
    spacing = np.array([5.0, 1.27, 1.27])
    ref = _box((20, 40, 40), (8, 15, 15), (12, 25, 25))
    pred = ref.copy()
    pred[8:12, 25:27, 15:25] = True  # 2 rows of false positives just outside the reference
    pred[0, 0, 0] = True  # a far island outside the grown box: not counted
    result = compute_metrics(ref, pred, spacing, specificity_margin_mm=10.0)
    # 10 mm → 2 slices along z, ceil(10/1.27) = 8 pixels in-plane.
    box = (4 + 2 + 2) * (10 + 16) * (10 + 16)
    negatives = box - ref.sum()
    assert result.specificity == pytest.approx((negatives - 2 * 10 * 4) / negatives)


def test_body_domain_counts_only_inside_the_body() -> None:
    ref = _box((6, 10, 10), (2, 3, 3), (4, 7, 7))
    pred = _box((6, 10, 10), (2, 3, 3), (4, 8, 7))
    body = _box((6, 10, 10), (0, 1, 1), (6, 9, 9))
    result = compute_metrics(ref, pred, (1.0, 1.0, 1.0), specificity_domain="body", body_mask=body)
    fp = 2 * 1 * 4
    negatives = body.sum() - ref.sum()
    assert result.specificity == pytest.approx((negatives - fp) / negatives)


# ------------------------------------------------------------------------- against brute force
@st.composite
def _mask_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    shape = tuple(draw(st.integers(2, 9)) for _ in range(3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.floats(0.05, 0.95))
    smooth = draw(st.booleans())
    masks = []
    for _ in range(3):
        field = rng.random(shape)
        if smooth:
            field = ndimage.uniform_filter(field, 2)
            cut = np.quantile(field, 1 - density)
            masks.append(field >= cut)
        else:
            masks.append(field < density)
    spacing = np.array([draw(st.sampled_from([0.5, 0.9, 1.0, 1.27, 2.5, 5.0])) for _ in range(3)])
    return masks[0], masks[1], masks[2], spacing


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=_mask_pairs(),
    hd95=st.sampled_from(["pooled", "max", "mean"]),
    domain=st.sampled_from(["reference-bbox", "union-bbox", "body", "image"]),
    margin=st.sampled_from([0.0, 1.0, 4.0]),
    tolerance=st.sampled_from([0.0, 1.0, 2.0, 3.3]),
    search=st.sampled_from([1, 7, 1000]),
)
def test_every_metric_equals_brute_force(
    pair: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    hd95: str,
    domain: str,
    margin: float,
    tolerance: float,
    search: int,
) -> None:
    ref, pred, body, spacing = pair
    if not ref.any() or not pred.any():
        return
    opts = MetricOptions(
        hd95=hd95,
        specificity_domain=domain,  # type: ignore[arg-type]
        specificity_margin_mm=margin,
        tolerance_mm=tolerance,
    )
    # `search` = how many neighbourhood offsets the local search tries before the k-d tree
    # takes over: 1 sends every non-coincident voxel to the tree, 1000 almost none.
    with mock.patch.object(metrics_module, "_SEARCH_OFFSETS", search):
        ours = compute_metrics(ref, pred, spacing, opts, body_mask=body).as_dict()
        distances = surface_distances(ref, pred, spacing)
    _assert_matches(ours, _brute_metrics(ref, pred, spacing, opts, body))
    np.testing.assert_allclose(
        distances.reference_to_prediction, _brute_directed(ref, pred, spacing), rtol=1e-12
    )
    np.testing.assert_allclose(
        distances.prediction_to_reference, _brute_directed(pred, ref, spacing), rtol=1e-12
    )


# ------------------------------------------------------------------------- refused input
def test_masks_of_different_shapes_are_refused() -> None:
    with pytest.raises(EvaluationError, match="mask shapes differ"):
        compute_metrics(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), (1, 1, 1))


def test_two_dimensional_mask_is_refused() -> None:
    with pytest.raises(EvaluationError, match="reference mask is not 3-D"):
        compute_metrics(np.zeros((3, 4)), np.zeros((3, 4)), (1, 1, 1))


def test_non_numeric_mask_is_refused() -> None:
    with pytest.raises(EvaluationError, match="prediction mask is not numeric"):
        compute_metrics(np.zeros((2, 2, 2)), np.full((2, 2, 2), "x"), (1, 1, 1))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, math.nan, 1.0)])
def test_invalid_spacing_is_refused(spacing: tuple[float, ...]) -> None:
    with pytest.raises(EvaluationError, match="invalid voxel spacing"):
        compute_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), spacing)


def test_unknown_hd95_variant_is_refused() -> None:
    with pytest.raises(EvaluationError, match="unknown 95HD variant"):
        MetricOptions(hd95="median")  # type: ignore[arg-type]


def test_unknown_specificity_domain_is_refused() -> None:
    with pytest.raises(EvaluationError, match="unknown specificity domain"):
        compute_metrics(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1, 1, 1), specificity_domain="ct")  # type: ignore[arg-type]


def test_negative_tolerance_is_refused() -> None:
    with pytest.raises(EvaluationError, match="invalid tolerance mm"):
        MetricOptions(tolerance_mm=-1.0)


def test_body_domain_without_body_mask_is_refused() -> None:
    with pytest.raises(EvaluationError, match="needs a body mask"):
        compute_metrics(
            np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1, 1, 1), specificity_domain="body"
        )


def test_body_mask_of_another_shape_is_refused() -> None:
    with pytest.raises(EvaluationError, match="body mask shape differs"):
        compute_metrics(
            np.ones((2, 2, 2)),
            np.ones((2, 2, 2)),
            (1, 1, 1),
            specificity_domain="body",
            body_mask=np.ones((2, 2, 3)),
        )
