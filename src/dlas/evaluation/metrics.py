"""Segmentation metrics of one structure: exact, fast, and named by their definition.

Why our own code
----------------
The tools of the field disagree on what "95HD" and "specificity" mean. For the same two masks
3D Slicer / plastimatch report the *mean* of the two directed 95th percentiles (an order
statistic without interpolation), MONAI and DeepMind ``surface-distance`` the *max* of the two,
MedPy the 95th percentile of the *pooled* directed distances (the seed paper's equation 2), and
specificity depends entirely on which true negatives are counted. None of them offers every
variant, a declared true-negative domain, explicit empty-structure rules and the speed to
evaluate a cohort in seconds. This module computes every metric exactly as declared in
``docs/SYSTEM.md`` ("Metric definitions") and names the definition in every output.

Definitions (the text of :meth:`MetricOptions.definitions` is written next to every result)
---------------------------------------------------------------------------------------------
* Masks are boolean arrays indexed (z, y, x) on one grid; ``spacing`` is the voxel size along
  (z, y, x) in mm. Distances are Euclidean in mm between voxel centres. The grid's direction
  (DICOM patient LPS orientation) does not change any distance, so only the spacing is needed.
* **Boundary**: the foreground voxels with at least one of their 6 face neighbours outside the
  mask; voxels outside the image count as outside (a mask touching the image edge has boundary
  voxels on the edge, as in MedPy, MONAI and plastimatch).
* **Directed distances** D→G: for every boundary voxel of D, the distance to the nearest
  boundary voxel of G.
* **95HD** (``hd95_mm``), three variants: ``pooled`` — the 95th percentile of the union of the
  directed distances D→G and G→D, with linear interpolation between order statistics (numpy's
  default; equals MedPy ``hd95``); ``max`` — the larger of the two directed 95th percentiles,
  interpolated likewise (equals MONAI ``compute_hausdorff_distance(percentile=95)``); ``mean``
  — the mean of the two directed 95th percentiles, each the order statistic of 0-based rank
  ``k = floor(0.95 n - 1)`` of the n sorted distances, without interpolation (3D Slicer
  SegmentComparison and plastimatch ``dice --all``, "Percent (0.95) Hausdorff distance
  (boundary)"). For n = 1 that formula gives k = -1, where plastimatch reads outside its array;
  we take k = 0.
* **HD** (``hd_mm``): the largest directed distance in either direction.
* **ASSD** (``assd_mm``): the mean of all directed distances of both directions pooled
  (equals MedPy ``assd`` and MONAI ``compute_average_surface_distance(symmetric=True)``).
* **Surface DSC** (``surface_dsc``): the fraction of the boundary voxels of both masks whose
  directed distance is at most the tolerance (default 2 mm; 1e-9 mm of slack absorbs rounding).
  DeepMind's ``surface-distance`` weights surface elements by their area instead; see the tests.
* **APL** (``apl_mm``, added path length): per axial slice, the in-plane contour pixels of the
  reference (reference pixels with one of their 4 in-plane neighbours outside it) that have no
  in-plane contour pixel of the prediction within the tolerance in the same slice, counted over
  all slices and multiplied by the in-plane pixel size (mean of the row and column spacing):
  the length of contour a clinician would have to draw (Vaassen et al. 2020).
* **Centroid distance** (``centroid_mm``): between the centres of mass of the two masks.
* **DSC** = 2|D∩G| / (|D|+|G|); **sensitivity** TP/(TP+FN); **specificity** TN/(TN+FP) with
  TN and FP counted inside the declared domain: ``reference-bbox`` (default) — the reference
  structure's bounding box grown by ``specificity_margin_mm`` (default 10 mm, rounded up to
  whole voxels per axis, clipped to the image), the same box for every model of a patient;
  ``union-bbox`` — the smallest box holding both masks, no margin (what Slicer most likely
  reports for segments converted from RTSTRUCT); ``body`` — a body mask given by the caller;
  ``image`` — the whole grid.
* **Volumes** in cm³ from voxel counts and spacing; **relative volume error**
  100·(V−V_ref)/V_ref in %.

Empty structures (never a silent number; each case carries a flag)
--------------------------------------------------------------------
* Both masks empty (flag ``both_empty``): every metric is NaN except the two volumes (0).
* Reference empty, prediction not (``reference_empty``): DSC 0, surface DSC 0, every distance
  (95HD, HD, ASSD, centroid) +inf, sensitivity NaN (there are no positives), APL 0 (nothing to
  draw), volume error +inf, specificity as defined by the domain (NaN for ``reference-bbox``,
  which has no box without a reference).
* Prediction empty, reference not (``prediction_empty``): DSC 0, surface DSC 0, sensitivity 0,
  every distance +inf, APL the whole reference contour, volume error -100 %, specificity from
  the domain (1 when it holds negatives).
* A domain without negative voxels gives specificity NaN and the flag
  ``specificity_domain_empty``.

Speed and memory
----------------
Everything happens on the union bounding box of the two masks, padded by the reach of the
neighbourhood search below; no full-volume copy is made (only the two bounding-box passes read
the whole masks). Directed distances are found by an exact local search: the offsets around a
voxel, sorted by length in mm, are tried in order for all boundary voxels at once (vectorised
gathers on the cropped boundary), so each voxel stops at its nearest partner. The few voxels
farther away than the search reach (about 10-15 mm at CT spacing) get their distance from a
``scipy.spatial.cKDTree`` of the partner boundary. Both give exact Euclidean distances; the
directed distances are computed once and shared by 95HD, HD, ASSD and surface DSC. For typical
organs this is several times faster than a distance transform of the crop, whose cost grows with
the crop's volume rather than with its surface.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from dlas.errors import EvaluationError

__all__ = [
    "HD95_VARIANTS",
    "METRIC_COLUMNS",
    "SPECIFICITY_DOMAINS",
    "Hd95Variant",
    "MetricOptions",
    "SegmentationMetrics",
    "SpecificityDomain",
    "SurfaceDistances",
    "compute_metrics",
    "surface_distances",
]

Hd95Variant = Literal["pooled", "max", "mean"]
SpecificityDomain = Literal["reference-bbox", "union-bbox", "body", "image"]

#: The 95HD variants, the default first.
HD95_VARIANTS: tuple[str, ...] = get_args(Hd95Variant)
#: The true-negative domains of specificity, the default first.
SPECIFICITY_DOMAINS: tuple[str, ...] = get_args(SpecificityDomain)

#: The metric columns of a result, in output order (all floats).
METRIC_COLUMNS: tuple[str, ...] = (
    "dsc",
    "hd95_mm",
    "hd_mm",
    "sensitivity",
    "specificity",
    "volume_cm3",
    "volume_ref_cm3",
    "volume_error_pct",
    "surface_dsc",
    "assd_mm",
    "apl_mm",
    "centroid_mm",
)

_BoolArray = npt.NDArray[np.bool_]
_FloatArray = npt.NDArray[np.float64]
_IntArray = npt.NDArray[np.intp]

#: Number of neighbourhood offsets tried before falling back to the k-d tree (about 10 mm of
#: reach at 1.27 x 1.27 x 5 mm). Timed from 200 to 4000 on the shapes of
#: benchmarks/bench_metrics.py: anything between 500 and 2000 is equally fast.
_SEARCH_OFFSETS = 1000
#: Elements gathered per vectorised step of the local search (bounds the temporary memory).
_GATHER_BUDGET = 1 << 16
#: Slack on distance comparisons with a tolerance, in mm (absorbs floating-point rounding).
_TOLERANCE_SLACK_MM = 1e-9


@dataclass(frozen=True)
class MetricOptions:
    """How the metrics are defined; recorded with every result.

    Parameters
    ----------
    hd95
        The 95HD variant: ``"pooled"`` (default, the seed paper's equation), ``"max"`` (MONAI,
        DeepMind) or ``"mean"`` (3D Slicer / plastimatch).
    specificity_domain
        Where true negatives are counted: ``"reference-bbox"`` (default), ``"union-bbox"``,
        ``"body"`` or ``"image"``.
    specificity_margin_mm
        Growth of the reference bounding box for ``"reference-bbox"``, in mm per side (default
        10 mm, rounded up to whole voxels along each axis).
    tolerance_mm
        Tolerance of the surface DSC and of the added path length, in mm (default 2 mm).
    """

    hd95: Hd95Variant = "pooled"
    specificity_domain: SpecificityDomain = "reference-bbox"
    specificity_margin_mm: float = 10.0
    tolerance_mm: float = 2.0

    def __post_init__(self) -> None:
        if self.hd95 not in HD95_VARIANTS:
            raise EvaluationError(
                "unknown 95HD variant",
                where="metric options (hd95)",
                expected=" or ".join(HD95_VARIANTS),
                found=repr(self.hd95),
                fix="choose one of the variants named in docs/SYSTEM.md",
            )
        if self.specificity_domain not in SPECIFICITY_DOMAINS:
            raise EvaluationError(
                "unknown specificity domain",
                where="metric options (specificity_domain)",
                expected=" or ".join(SPECIFICITY_DOMAINS),
                found=repr(self.specificity_domain),
                fix="choose one of the domains named in docs/SYSTEM.md",
            )
        for name in ("specificity_margin_mm", "tolerance_mm"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise EvaluationError(
                    f"invalid {name.replace('_', ' ')}",
                    where=f"metric options ({name})",
                    expected="a finite number of millimetres, zero or more",
                    found=repr(value),
                    fix="pass a non-negative distance in mm",
                )

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)

    def definitions(self) -> dict[str, str]:
        """One sentence per output column saying exactly what was computed."""
        hd95 = {
            "pooled": "95th percentile (linear interpolation) of the pooled directed distances "
            "reference→prediction and prediction→reference (the seed paper's equation; "
            "MedPy hd95)",
            "max": "larger of the two directed 95th percentiles, each with linear "
            "interpolation (MONAI compute_hausdorff_distance(percentile=95), DeepMind style)",
            "mean": "mean of the two directed 95th percentiles, each the order statistic of "
            "0-based rank floor(0.95·n − 1) without interpolation (3D Slicer / plastimatch)",
        }[self.hd95]
        domain = {
            "reference-bbox": "the reference structure's bounding box grown by "
            f"{self.specificity_margin_mm:g} mm per side (rounded up to whole voxels, clipped "
            "to the image)",
            "union-bbox": "the smallest box holding both masks (no margin)",
            "body": "the body mask",
            "image": "the whole image grid",
        }[self.specificity_domain]
        tol = f"{self.tolerance_mm:g} mm"
        return {
            "surface": "boundary voxels: foreground voxels with a 6-neighbour outside the mask "
            "(outside the image counts as outside); distances Euclidean in mm between voxel "
            "centres; directed distance = to the nearest boundary voxel of the other mask",
            "dsc": "2|P∩R| / (|P|+|R|); 0 when exactly one mask is empty",
            "hd95_mm": hd95,
            "hd_mm": "largest directed distance in either direction",
            "sensitivity": "TP / (TP + FN); NaN when the reference is empty",
            "specificity": f"TN / (TN + FP) with TN and FP counted inside {domain}",
            "volume_cm3": "prediction voxel count × voxel volume / 1000",
            "volume_ref_cm3": "reference voxel count × voxel volume / 1000",
            "volume_error_pct": "100 · (V_prediction − V_reference) / V_reference",
            "surface_dsc": f"fraction of the boundary voxels of both masks within {tol} of the "
            "other mask's boundary",
            "assd_mm": "mean of all directed distances of both directions pooled",
            "apl_mm": "added path length: reference in-plane contour pixels (4-neighbour, per "
            f"axial slice) farther than {tol} from the prediction's in-plane contour in the "
            "same slice, times the in-plane pixel size (mean of row and column spacing)",
            "centroid_mm": "distance between the centres of mass of the two masks",
            "empty": "both masks empty: all metrics NaN except volumes (flag both_empty); one "
            "empty: DSC and surface DSC 0, distances inf (flags reference_empty / "
            "prediction_empty)",
        }


@dataclass(frozen=True)
class SegmentationMetrics:
    """The metrics of one structure of one prediction against its reference.

    Distances are in mm, volumes in cm³, the volume error in %. NaN means undefined (see the
    module documentation for when), +inf a distance to a structure that does not exist.
    ``flags`` name every special case met (``both_empty``, ``reference_empty``,
    ``prediction_empty``, ``specificity_domain_empty``).
    """

    dsc: float
    hd95_mm: float
    hd_mm: float
    sensitivity: float
    specificity: float
    volume_cm3: float
    volume_ref_cm3: float
    volume_error_pct: float
    surface_dsc: float
    assd_mm: float
    apl_mm: float
    centroid_mm: float
    flags: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float | str]:
        """The metric columns by name, with ``flags`` joined by ``;``."""
        out: dict[str, float | str] = {name: getattr(self, name) for name in METRIC_COLUMNS}
        out["flags"] = ";".join(self.flags)
        return out


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed surface distances in mm, one per boundary voxel, in C order of the voxels.

    ``reference_to_prediction[i]`` is the distance from the i-th boundary voxel of the reference
    (in (z, y, x) C order) to the nearest boundary voxel of the prediction, and vice versa.
    """

    reference_to_prediction: _FloatArray
    prediction_to_reference: _FloatArray


# ---------------------------------------------------------------------------------- public API
def compute_metrics(
    reference_mask: npt.ArrayLike,
    prediction_mask: npt.ArrayLike,
    spacing: npt.ArrayLike,
    options: MetricOptions | None = None,
    *,
    hd95: Hd95Variant | None = None,
    specificity_domain: SpecificityDomain | None = None,
    specificity_margin_mm: float | None = None,
    tolerance_mm: float | None = None,
    body_mask: npt.ArrayLike | None = None,
) -> SegmentationMetrics:
    """All metrics of one structure: a prediction against its reference on the same grid.

    Parameters
    ----------
    reference_mask, prediction_mask
        3-D masks of the same shape, indexed (z, y, x); any non-zero voxel is inside.
    spacing
        Voxel size along (z, y, x) in mm.
    options
        The metric definitions (defaults: :class:`MetricOptions`). The keyword arguments
        ``hd95``, ``specificity_domain``, ``specificity_margin_mm`` and ``tolerance_mm``
        override single fields of it.
    body_mask
        Body mask on the same grid; required for ``specificity_domain="body"``, ignored
        otherwise.

    Returns
    -------
    SegmentationMetrics
        Distances in mm, volumes in cm³; empty structures give NaN or inf and a flag as
        documented in this module.

    Raises
    ------
    EvaluationError
        If the masks are not 3-D arrays of one shape, the spacing is not three positive
        numbers, an option is invalid, or the body mask is missing or of another shape.
    """
    opts = _resolve_options(
        options,
        hd95=hd95,
        specificity_domain=specificity_domain,
        specificity_margin_mm=specificity_margin_mm,
        tolerance_mm=tolerance_mm,
    )
    ref, pred, sp = _validate(reference_mask, prediction_mask, spacing)
    body = _body_domain(body_mask, ref.shape) if opts.specificity_domain == "body" else None
    voxel_mm3 = float(np.prod(sp))
    ref_box = _bbox(ref)
    pred_box = _bbox(pred)
    if ref_box is None and pred_box is None:
        return _both_empty()
    frame = _Frame.build(ref, pred, ref_box, pred_box, sp, opts)
    n_ref, n_pred, n_tp = frame.counts()
    specificity, domain_empty = _specificity(frame, ref, ref_box, body, opts)
    flags: list[str] = []
    if ref_box is None:
        flags.append("reference_empty")
    elif pred_box is None:
        flags.append("prediction_empty")
    if domain_empty:
        flags.append("specificity_domain_empty")
    volume = n_pred * voxel_mm3 / 1000.0
    volume_ref = n_ref * voxel_mm3 / 1000.0
    apl = frame.added_path_length(opts.tolerance_mm)
    if ref_box is None or pred_box is None:
        return _one_empty(n_ref, specificity, volume, volume_ref, apl, flags)
    d_rp, d_pr = frame.directed_distances()
    return SegmentationMetrics(
        dsc=2.0 * n_tp / (n_ref + n_pred),
        hd95_mm=_hd95(d_rp, d_pr, opts.hd95),
        hd_mm=float(max(d_rp.max(), d_pr.max())),
        sensitivity=n_tp / n_ref,
        specificity=specificity,
        volume_cm3=volume,
        volume_ref_cm3=volume_ref,
        volume_error_pct=100.0 * (n_pred - n_ref) / n_ref,
        surface_dsc=_surface_dsc(d_rp, d_pr, opts.tolerance_mm),
        assd_mm=float((d_rp.sum() + d_pr.sum()) / (d_rp.size + d_pr.size)),
        apl_mm=apl,
        centroid_mm=frame.centroid_distance(),
        flags=tuple(flags),
    )


def _body_domain(body_mask: npt.ArrayLike | None, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """The body mask of specificity domain ``body``: required, and on the grid of the masks."""
    if body_mask is None:
        raise EvaluationError(
            "specificity domain 'body' needs a body mask",
            where="compute_metrics",
            expected="body_mask on the grid of the masks",
            found="no body mask",
            fix="pass body_mask, or choose another specificity domain",
        )
    body = np.asarray(body_mask)
    if body.shape != shape:
        raise EvaluationError(
            "body mask shape differs from the masks",
            where="compute_metrics",
            expected=f"shape {shape} (z, y, x)",
            found=f"shape {body.shape}",
            fix="resample the body mask onto the grid of the structure masks",
        )
    return body


def _one_empty(
    n_ref: int,
    specificity: float,
    volume: float,
    volume_ref: float,
    apl: float,
    flags: list[str],
) -> SegmentationMetrics:
    """The metrics when exactly one mask is empty: DSC and surface DSC 0, distances inf,
    sensitivity 0 (NaN without a reference), volume error −100 % (inf without a reference)."""
    return SegmentationMetrics(
        dsc=0.0,
        hd95_mm=math.inf,
        hd_mm=math.inf,
        sensitivity=0.0 if n_ref else math.nan,
        specificity=specificity,
        volume_cm3=volume,
        volume_ref_cm3=volume_ref,
        volume_error_pct=-100.0 if n_ref else math.inf,
        surface_dsc=0.0,
        assd_mm=math.inf,
        apl_mm=apl,
        centroid_mm=math.inf,
        flags=tuple(flags),
    )


def surface_distances(
    reference_mask: npt.ArrayLike, prediction_mask: npt.ArrayLike, spacing: npt.ArrayLike
) -> SurfaceDistances:
    """Directed surface distances (mm) between the boundaries of two masks, both ways.

    Parameters
    ----------
    reference_mask, prediction_mask
        3-D masks of one shape indexed (z, y, x); any non-zero voxel is inside.
    spacing
        Voxel size along (z, y, x) in mm.

    Returns
    -------
    SurfaceDistances
        One distance per boundary voxel (6-neighbour boundary, voxels in C order). When one
        mask is empty, the distances of the other's boundary voxels are +inf; when both are
        empty, both arrays are empty.
    """
    ref, pred, sp = _validate(reference_mask, prediction_mask, spacing)
    ref_box, pred_box = _bbox(ref), _bbox(pred)
    if ref_box is None and pred_box is None:
        empty = np.empty(0, dtype=np.float64)
        return SurfaceDistances(empty, empty.copy())
    frame = _Frame.build(ref, pred, ref_box, pred_box, sp, MetricOptions())
    if ref_box is None or pred_box is None:
        n_r = int(np.count_nonzero(frame.boundary(frame.ref)))
        n_p = int(np.count_nonzero(frame.boundary(frame.pred)))
        return SurfaceDistances(np.full(n_r, np.inf), np.full(n_p, np.inf))
    d_rp, d_pr = frame.directed_distances()
    return SurfaceDistances(d_rp, d_pr)


# ---------------------------------------------------------------------------------- internals
def _resolve_options(options: MetricOptions | None, **overrides: Any) -> MetricOptions:
    opts = options if options is not None else MetricOptions()
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(opts, **changes) if changes else opts


def _validate(
    reference_mask: npt.ArrayLike, prediction_mask: npt.ArrayLike, spacing: npt.ArrayLike
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], _FloatArray]:
    ref = np.asarray(reference_mask)
    pred = np.asarray(prediction_mask)
    for name, arr in (("reference", ref), ("prediction", pred)):
        if arr.ndim != 3:
            raise EvaluationError(
                f"{name} mask is not 3-D",
                where="compute_metrics",
                expected="a 3-D array indexed (z, y, x)",
                found=f"{arr.ndim}-D array of shape {arr.shape}",
                fix="pass one 3-D mask per structure",
            )
        if arr.dtype.kind not in "biuf":
            raise EvaluationError(
                f"{name} mask is not numeric",
                where="compute_metrics",
                expected="a boolean or numeric array (non-zero = inside)",
                found=f"dtype {arr.dtype}",
                fix="convert the mask to bool",
            )
    if ref.shape != pred.shape:
        raise EvaluationError(
            "mask shapes differ",
            where="compute_metrics",
            expected=f"the prediction on the reference grid, shape {ref.shape} (z, y, x)",
            found=f"prediction shape {pred.shape}",
            fix="resample the prediction onto the reference grid (nearest neighbour)",
        )
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise EvaluationError(
            "invalid voxel spacing",
            where="compute_metrics",
            expected="three positive voxel sizes in mm, ordered (z, y, x)",
            found=repr(np.asarray(spacing).tolist()),
            fix="pass Volume.spacing of the reference grid",
        )
    return ref, pred, sp


def _as_bool(arr: npt.NDArray[Any]) -> _BoolArray:
    return arr if arr.dtype == np.bool_ else arr != 0


def _bbox(mask: npt.NDArray[Any]) -> tuple[_IntArray, _IntArray] | None:
    """Lowest and one-past-highest (z, y, x) index of the non-zero voxels, or None if empty."""
    nz = mask.shape[0]
    rows = mask.reshape(nz, -1).any(axis=1)
    z = np.flatnonzero(rows)
    if z.size == 0:
        return None
    z0, z1 = int(z[0]), int(z[-1]) + 1
    plane: npt.NDArray[np.bool_] = np.any(mask[z0:z1], axis=0)
    y = np.flatnonzero(plane.any(axis=1))
    x = np.flatnonzero(plane.any(axis=0))
    lo = np.array([z0, y[0], x[0]], dtype=np.intp)
    hi = np.array([z1, y[-1] + 1, x[-1] + 1], dtype=np.intp)
    return lo, hi


@functools.lru_cache(maxsize=64)
def _search_offsets(
    spacing: tuple[float, float, float], count: int
) -> tuple[_IntArray, _FloatArray]:
    """The ``count`` (or a few more, completing the last shell) shortest voxel offsets.

    Returns the offsets (K, 3) in voxels along (z, y, x) and their lengths in mm, sorted by
    length (ties in C order), starting with (0, 0, 0).
    """
    sp = np.asarray(spacing)
    radius = float(sp.min())
    while True:
        half = np.floor(radius / sp + 1e-9).astype(np.intp)
        axes = [np.arange(-h, h + 1) for h in half]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        lengths = np.sqrt(((grid * sp) ** 2).sum(axis=1))
        inside = lengths <= radius + 1e-9
        if np.count_nonzero(inside) >= count:
            break
        radius *= 1.5
    order = np.argsort(lengths, kind="stable")
    lengths = lengths[order]
    grid = grid[order]
    cut = lengths[count - 1] + 1e-9
    keep = lengths <= cut
    return grid[keep].astype(np.intp), lengths[keep]


@functools.lru_cache(maxsize=64)
def _plane_offsets(spacing_yx: tuple[float, float], tolerance_mm: float) -> _IntArray:
    """In-plane offsets (K, 2) along (y, x) within the tolerance, shortest first."""
    sy, sx = spacing_yx
    hy = math.floor(tolerance_mm / sy + 1e-9)
    hx = math.floor(tolerance_mm / sx + 1e-9)
    dy, dx = np.meshgrid(np.arange(-hy, hy + 1), np.arange(-hx, hx + 1), indexing="ij")
    grid = np.stack([dy.ravel(), dx.ravel()], axis=1)
    lengths = np.sqrt((grid[:, 0] * sy) ** 2 + (grid[:, 1] * sx) ** 2)
    keep = lengths <= tolerance_mm + _TOLERANCE_SLACK_MM
    order = np.argsort(lengths[keep], kind="stable")
    return grid[keep][order].astype(np.intp)


class _Frame:
    """Both masks cropped to their union bounding box, zero-padded by the search reach."""

    def __init__(
        self,
        ref: _BoolArray,
        pred: _BoolArray,
        origin: _IntArray,
        pad: _IntArray,
        spacing: _FloatArray,
        offsets: _IntArray,
        offset_mm: _FloatArray,
    ) -> None:
        self.ref = ref
        self.pred = pred
        self.origin = origin  # image index of the first voxel of the padded frame (may be < 0)
        self.pad = pad
        self.spacing = spacing
        self.offsets = offsets
        self.offset_mm = offset_mm
        self.shape = ref.shape
        self.inner_shape = np.array(self.shape, dtype=np.intp) - 2 * pad
        self.strides = np.array([self.shape[1] * self.shape[2], self.shape[2], 1], dtype=np.intp)

    @classmethod
    def build(
        cls,
        ref: npt.NDArray[Any],
        pred: npt.NDArray[Any],
        ref_box: tuple[_IntArray, _IntArray] | None,
        pred_box: tuple[_IntArray, _IntArray] | None,
        spacing: _FloatArray,
        options: MetricOptions,
    ) -> _Frame:
        boxes = [b for b in (ref_box, pred_box) if b is not None]
        lo = np.min([b[0] for b in boxes], axis=0)
        hi = np.max([b[1] for b in boxes], axis=0)
        offsets, offset_mm = _search_offsets(tuple(float(v) for v in spacing), _SEARCH_OFFSETS)
        reach = np.abs(offsets).max(axis=0)
        plane = _plane_offsets((float(spacing[1]), float(spacing[2])), options.tolerance_mm)
        reach[1:] = np.maximum(reach[1:], np.abs(plane).max(axis=0))
        pad = np.maximum(reach, 1)
        crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        shape = tuple(int(v) for v in (hi - lo + 2 * pad))
        inner = tuple(slice(int(p), int(p + (b - a))) for p, a, b in zip(pad, lo, hi, strict=True))
        padded_ref = np.zeros(shape, dtype=bool)
        padded_pred = np.zeros(shape, dtype=bool)
        padded_ref[inner] = _as_bool(ref[crop])
        padded_pred[inner] = _as_bool(pred[crop])
        return cls(padded_ref, padded_pred, lo - pad, pad, spacing, offsets, offset_mm)

    # ------------------------------------------------------------------ counts and shapes
    def counts(self) -> tuple[int, int, int]:
        """Voxels of the reference, of the prediction, and of both."""
        n_ref = int(np.count_nonzero(self.ref))
        n_pred = int(np.count_nonzero(self.pred))
        n_tp = int(np.count_nonzero(self.ref & self.pred))
        return n_ref, n_pred, n_tp

    def boundary(self, mask: _BoolArray) -> _BoolArray:
        """6-neighbour boundary of a padded mask (the padding is outside)."""
        return self._edge(mask, ((1, 0, 0), (0, 1, 0), (0, 0, 1)))

    def contour(self, mask: _BoolArray) -> _BoolArray:
        """In-plane 4-neighbour contour of a padded mask, slice by slice."""
        return self._edge(mask, ((0, 1, 0), (0, 0, 1)))

    def _edge(self, mask: _BoolArray, axes: tuple[tuple[int, int, int], ...]) -> _BoolArray:
        # Work on the unpadded crop only (the padding is empty); its neighbours exist because
        # the padding is at least one voxel wide.
        lo = self.pad
        hi = self.pad + self.inner_shape
        core = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        interior = mask[core].copy()
        for step in axes:
            for sign in (-1, 1):
                shifted = tuple(
                    slice(int(a + sign * d), int(b + sign * d))
                    for a, b, d in zip(lo, hi, step, strict=True)
                )
                interior &= mask[shifted]
        out = np.zeros(mask.shape, dtype=bool)  # calloc: untouched pages cost nothing
        out[core] = mask[core] ^ interior  # interior ⊂ mask, so XOR = mask and not interior
        return out

    # ------------------------------------------------------------------ distances
    def directed_distances(self) -> tuple[_FloatArray, _FloatArray]:
        """Reference→prediction and prediction→reference boundary distances (mm)."""
        b_ref = self.boundary(self.ref)
        b_pred = self.boundary(self.pred)
        f_ref = np.flatnonzero(b_ref)
        f_pred = np.flatnonzero(b_pred)
        flat_offsets = self.offsets @ self.strides
        d_rp = self._directed(f_ref, b_pred.reshape(-1), f_pred, flat_offsets)
        d_pr = self._directed(f_pred, b_ref.reshape(-1), f_ref, flat_offsets)
        return d_rp, d_pr

    def _directed(
        self,
        source: _IntArray,
        target: _BoolArray,
        target_index: _IntArray,
        flat_offsets: _IntArray,
    ) -> _FloatArray:
        out = np.empty(source.size, dtype=np.float64)
        todo = np.arange(source.size)
        position = source
        i, k = 0, flat_offsets.size
        while i < k and todo.size:
            # Try several offsets per step when few voxels are left: fewer Python iterations,
            # bounded temporary memory. The first hit is the nearest (offsets sorted by length).
            step = max(1, min(k - i, _GATHER_BUDGET // todo.size))
            hits = target[position[:, None] + flat_offsets[None, i : i + step]]
            found = hits.any(axis=1)
            if found.any():
                first = hits.argmax(axis=1)[found]
                out[todo[found]] = self.offset_mm[i + first]
                keep = ~found
                todo = todo[keep]
                position = position[keep]
            i += step
        if todo.size:
            from scipy.spatial import cKDTree

            # Few voxels are farther than the search reach (false-positive islands, missed
            # parts): an exact k-d tree query of the partner boundary answers them.
            tree = cKDTree(
                self._points(target_index), leafsize=32, balanced_tree=False, compact_nodes=False
            )
            distances, _ = tree.query(self._points(position), k=1)
            out[todo] = distances
        return out

    def _points(self, flat_index: _IntArray) -> _FloatArray:
        zyx = np.stack(np.unravel_index(flat_index, self.shape), axis=1)
        points: _FloatArray = zyx * self.spacing
        return points

    # ------------------------------------------------------------------ other metrics
    def added_path_length(self, tolerance_mm: float) -> float:
        """Added path length in mm (see the module documentation)."""
        c_ref = self.contour(self.ref)
        source = np.flatnonzero(c_ref)
        if source.size == 0:
            return 0.0
        target = self.contour(self.pred).reshape(-1)
        plane = _plane_offsets((float(self.spacing[1]), float(self.spacing[2])), tolerance_mm)
        flat_offsets = plane @ self.strides[1:]
        covered = np.zeros(source.size, dtype=bool)
        todo = np.arange(source.size)
        position = source
        i, k = 0, flat_offsets.size
        while i < k and todo.size:
            step = max(1, min(k - i, _GATHER_BUDGET // todo.size))
            found = target[position[:, None] + flat_offsets[None, i : i + step]].any(axis=1)
            covered[todo[found]] = True
            todo = todo[~found]
            position = position[~found]
            i += step
        pixel_mm = 0.5 * float(self.spacing[1] + self.spacing[2])
        return float(np.count_nonzero(~covered)) * pixel_mm

    def centroid_distance(self) -> float:
        """Distance (mm) between the centres of mass of the two (non-empty) masks."""
        return float(np.linalg.norm((_centroid(self.ref) - _centroid(self.pred)) * self.spacing))


def _centroid(mask: _BoolArray) -> _FloatArray:
    """Centre of mass in voxel indices (z, y, x) of the frame."""
    nz = mask.shape[0]
    per_slice = mask.reshape(nz, -1).sum(axis=1, dtype=np.int64)
    plane = mask.sum(axis=0, dtype=np.int64)
    total = float(per_slice.sum())
    z = float(per_slice @ np.arange(nz)) / total
    y = float(plane.sum(axis=1) @ np.arange(plane.shape[0])) / total
    x = float(plane.sum(axis=0) @ np.arange(plane.shape[1])) / total
    return np.array([z, y, x])


def _specificity(
    frame: _Frame,
    ref: npt.NDArray[Any],
    ref_box: tuple[_IntArray, _IntArray] | None,
    body: npt.NDArray[Any] | None,
    options: MetricOptions,
) -> tuple[float, bool]:
    """Specificity in the declared domain, and whether that domain has no negatives."""
    false_pos = frame.pred & ~frame.ref
    n_ref = int(np.count_nonzero(frame.ref))
    domain = options.specificity_domain
    if domain == "reference-bbox":
        if ref_box is None:
            return math.nan, False
        margin = np.ceil(options.specificity_margin_mm / frame.spacing - 1e-9).astype(np.intp)
        lo = np.maximum(ref_box[0] - margin, 0)
        hi = np.minimum(ref_box[1] + margin, np.array(ref.shape, dtype=np.intp))
        size = int(np.prod(hi - lo))
        # The domain in frame coordinates, clipped to the frame (all foreground lies inside).
        f_lo = np.maximum(lo - frame.origin, 0)
        f_hi = np.minimum(hi - frame.origin, np.array(frame.shape, dtype=np.intp))
        window = tuple(slice(int(a), int(max(a, b))) for a, b in zip(f_lo, f_hi, strict=True))
        fp = int(np.count_nonzero(false_pos[window]))
        negatives = size - n_ref
    elif domain == "union-bbox":
        size = int(np.prod(frame.inner_shape))
        fp = int(np.count_nonzero(false_pos))
        negatives = size - n_ref
    elif domain == "image":
        fp = int(np.count_nonzero(false_pos))
        negatives = int(np.prod(ref.shape)) - n_ref
    else:
        assert body is not None  # checked by compute_metrics
        body_frame = _crop_like(frame, body)
        fp = int(np.count_nonzero(false_pos & body_frame))
        negatives = int(np.count_nonzero(body)) - int(np.count_nonzero(frame.ref & body_frame))
    if negatives <= 0:
        return math.nan, True
    return (negatives - fp) / negatives, False


def _crop_like(frame: _Frame, volume: npt.NDArray[Any]) -> _BoolArray:
    """``volume`` (image grid) cut to the padded frame, zero outside the image."""
    out = np.zeros(frame.shape, dtype=bool)
    lo = frame.origin
    hi = lo + np.array(frame.shape, dtype=np.intp)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, np.array(volume.shape, dtype=np.intp))
    src = tuple(slice(int(a), int(b)) for a, b in zip(src_lo, src_hi, strict=True))
    dst = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(src_lo, src_hi, lo, strict=True))
    out[dst] = _as_bool(volume[src])
    return out


def _order_statistic_95(distances: _FloatArray) -> float:
    """Slicer/plastimatch's directed 95th percentile: sorted[floor(0.95 n - 1)], 0-based."""
    n = distances.size
    # Integer arithmetic: floor((95 n - 100) / 100) is exactly floor(0.95 n - 1).
    k = min(max((95 * n - 100) // 100, 0), n - 1)
    return float(np.partition(distances, k)[k])


def _hd95(d_rp: _FloatArray, d_pr: _FloatArray, variant: str) -> float:
    if variant == "pooled":
        return float(np.percentile(np.concatenate([d_rp, d_pr]), 95))
    if variant == "max":
        return float(max(np.percentile(d_rp, 95), np.percentile(d_pr, 95)))
    return 0.5 * (_order_statistic_95(d_rp) + _order_statistic_95(d_pr))


def _surface_dsc(d_rp: _FloatArray, d_pr: _FloatArray, tolerance_mm: float) -> float:
    limit = tolerance_mm + _TOLERANCE_SLACK_MM
    within = np.count_nonzero(d_rp <= limit) + np.count_nonzero(d_pr <= limit)
    return float(within) / float(d_rp.size + d_pr.size)


def _both_empty() -> SegmentationMetrics:
    nan = math.nan
    return SegmentationMetrics(
        dsc=nan,
        hd95_mm=nan,
        hd_mm=nan,
        sensitivity=nan,
        specificity=nan,
        volume_cm3=0.0,
        volume_ref_cm3=0.0,
        volume_error_pct=nan,
        surface_dsc=nan,
        assd_mm=nan,
        apl_mm=nan,
        centroid_mm=nan,
        flags=("both_empty",),
    )
