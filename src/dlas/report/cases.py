"""Loading a case's CT with the ground truth and every model's masks, and choosing cases and
slices to show.

Images in the report and the viewer are axial slices of the data set's canonical grid: array
axes (z, y, x), z from inferior to superior, rows towards patient posterior, columns towards
patient left (DICOM LPS), so a slice shown with row 0 at the top and column 0 at the left is in
the radiological convention (patient's left on the viewer's right).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from dlas.errors import ReportError
from dlas.io.nifti import read_mask
from dlas.report.palette import GROUND_TRUTH

if TYPE_CHECKING:
    import pandas as pd

    from dlas.report.inputs import ReportInputs

__all__ = [
    "CaseImages",
    "choose_cases",
    "choose_slices",
    "load_case_images",
]

log = logging.getLogger(__name__)

_Scalar = TypeVar("_Scalar", bound=np.generic)


@dataclass
class CaseImages:
    """A case cropped to the slices and in-plane box worth showing.

    Attributes
    ----------
    case_id, cohort
        The case.
    ct
        CT in HU, shape (nz, ny, nx) of the crop, float32.
    spacing
        Voxel size (z, y, x) in mm.
    z_mm
        Position of each slice of the crop along the patient axis (LPS z, mm).
    masks
        Source (``GT`` or a model) → structure → boolean array of the crop's shape.
    """

    case_id: str
    cohort: str
    ct: npt.NDArray[np.float32]
    spacing: tuple[float, float, float]
    z_mm: npt.NDArray[np.float64]
    masks: dict[str, dict[str, npt.NDArray[np.bool_]]]

    def mask_bbox(self) -> tuple[int, int, int, int] | None:
        """In-plane box (row0, row1, col0, col1), end exclusive, of every mask of every source;
        None when all masks are empty."""
        union = np.zeros(self.ct.shape[1:], dtype=bool)
        for masks in self.masks.values():
            for mask in masks.values():
                union |= np.any(mask, axis=0)
        if not union.any():
            return None
        rows = np.flatnonzero(union.any(axis=1))
        cols = np.flatnonzero(union.any(axis=0))
        return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _body_box(ct: npt.NDArray[np.floating], margin: int) -> tuple[slice, slice]:
    """In-plane box of the voxels denser than air (> -500 HU) on any slice, plus a margin;
    drops the air around the patient (the couch stays: it is part of the image)."""
    dense: npt.NDArray[np.bool_] = np.any(ct > -500, axis=0)
    if not dense.any():
        return slice(0, ct.shape[1]), slice(0, ct.shape[2])
    rows = np.flatnonzero(np.any(dense, axis=1))
    cols = np.flatnonzero(np.any(dense, axis=0))
    return (
        slice(max(0, int(rows[0]) - margin), min(ct.shape[1], int(rows[-1]) + 1 + margin)),
        slice(max(0, int(cols[0]) - margin), min(ct.shape[2], int(cols[-1]) + 1 + margin)),
    )


def load_case_images(
    inputs: ReportInputs,
    case_id: str,
    structures: Sequence[str],
    *,
    z_margin: int = 2,
) -> CaseImages:
    """Read a case's CT, GT and model masks, cropped to where any mask is (± ``z_margin``
    slices) and to the body in-plane.

    A model's mask file may be absent only where the metrics table says that model predicted
    nothing for the structure (volume 0); otherwise the prediction folder is incomplete.

    Raises
    ------
    ReportError
        If a prediction the metrics table counts is missing.
    NiftiError
        If a mask is unreadable or lies on another grid than the CT.
    """
    dataset = inputs.dataset
    case = dataset.load_case(case_id, list(structures), contour_set=inputs.reference_set)
    ct = case.ct
    # Crop in-plane to the body first so that no full-size mask is kept: a 512x512x100 case
    # with three sources of five structures would otherwise hold 400 MB of masks.
    ys, xs = _body_box(np.asarray(ct.array), margin=4)
    full: dict[str, dict[str, npt.NDArray[np.bool_]]] = {
        GROUND_TRUTH: {
            n: np.ascontiguousarray(np.asarray(v.array, dtype=bool)[:, ys, xs])
            for n, v in case.structures.items()
        }
    }
    rows = inputs.metrics[inputs.metrics["case_id"] == case_id]
    for model, source in inputs.predictions.items():
        full[model] = {}
        for name in structures:
            path = source.mask_path(case_id, name)
            if path.is_file():
                mask = read_mask(path, reference=ct).array
                full[model][name] = np.ascontiguousarray(np.asarray(mask, dtype=bool)[:, ys, xs])
                continue
            counted = rows[(rows["model"] == model) & (rows["structure"] == name)]
            volume = float(counted["volume_cm3"].iloc[0]) if not counted.empty else 0.0
            if volume > 0:
                raise ReportError(
                    "prediction mask missing",
                    where=str(path),
                    expected=f"the {name} mask of model {model} (the metrics table counts "
                    f"{volume:.1f} cm³)",
                    found="no such file",
                    fix="give the prediction folder the metrics were computed from",
                )
    any_mask = np.zeros(ct.shape[0], dtype=bool)
    for by_name in full.values():
        for mask in by_name.values():
            any_mask |= mask.any(axis=(1, 2))
    if any_mask.any():
        ks = np.flatnonzero(any_mask)
        z0, z1 = max(0, int(ks[0]) - z_margin), min(ct.shape[0], int(ks[-1]) + 1 + z_margin)
    else:
        z0, z1 = 0, ct.shape[0]
    shape = (z1 - z0, ys.stop - ys.start, xs.stop - xs.start)
    masks: dict[str, dict[str, npt.NDArray[np.bool_]]] = {
        source: {
            name: np.ascontiguousarray(by_name[name][z0:z1])
            if name in by_name
            else np.zeros(shape, dtype=bool)
            for name in structures
        }
        for source, by_name in full.items()
    }
    crop = (slice(z0, z1), ys, xs)
    z_mm = np.array([ct.index_to_physical((k, 0, 0))[2] for k in range(z0, z1)])
    sz, sy, sx = (float(v) for v in ct.spacing)
    return CaseImages(
        case_id=case_id,
        cohort=case.cohort,
        ct=np.ascontiguousarray(ct.array[crop], dtype=np.float32),
        spacing=(sz, sy, sx),
        z_mm=z_mm,
        masks=masks,
    )


def choose_cases(
    metrics: pd.DataFrame,
    cohort: str,
    *,
    rule: str,
    structure: str,
    n: int = 1,
) -> list[str]:
    """Cases of ``cohort`` to show: ``median`` — the ``n`` whose DSC of ``structure`` (mean over
    the models) is closest to the cohort's median; ``worst`` — the ``n`` lowest.

    Cases whose DSC is undefined (both masks empty) are never chosen; ties go to the smaller
    case id, so the choice is deterministic.

    Raises
    ------
    ReportError
        If the rule is unknown or the cohort has no case with a defined DSC for ``structure``.
    """
    if rule not in ("median", "worst"):
        raise ReportError(
            "unknown case-selection rule",
            where="--cases",
            expected="median, worst, or case ids separated by commas",
            found=repr(rule),
            fix="use --cases median, --cases worst, or --cases ID1,ID2",
        )
    part = metrics[(metrics["cohort"] == cohort) & (metrics["structure"] == structure)]
    score = part.groupby("case_id")["dsc"].mean().dropna()
    if score.empty:
        raise ReportError(
            "no case to show",
            where=f"cohort {cohort}",
            expected=f"at least one case with a defined DSC for {structure}",
            found="none",
            fix="choose another structure with --slices-structure, or cases by id with --cases",
        )
    key = (score - float(score.median())).abs() if rule == "median" else score
    ordered = sorted(score.index, key=lambda cid: (float(key[cid]), str(cid)))
    return [str(c) for c in ordered[:n]]


def choose_slices(
    gt: dict[str, npt.NDArray[np.bool_]], n: int, structures: Sequence[str]
) -> list[int]:
    """Up to ``n`` slice indices that together show as many structures as possible.

    Candidates are, for each structure, the slice where its GT area is largest. Greedily the
    candidate showing the most structures not yet shown is taken (ties: larger total GT area,
    then lower index); once every structure is shown, the remaining candidates follow by GT
    area. Fewer than ``n`` are returned only when there are fewer candidates. Returned from
    superior to inferior, the order of the paper's panels.
    """
    names = [s for s in structures if s in gt and gt[s].any()]
    if not names:
        depth = next(iter(gt.values())).shape[0] if gt else 1
        return [depth // 2]
    area = {s: gt[s].sum(axis=(1, 2)) for s in names}
    candidates = sorted({int(np.argmax(area[s])) for s in names})
    present = {k: {s for s in names if area[s][k] > 0} for k in candidates}
    total = {k: sum(int(area[s][k]) for s in names) for k in candidates}
    chosen: list[int] = []
    shown: set[str] = set()
    while len(chosen) < n and len(chosen) < len(candidates):
        best = max(
            (k for k in candidates if k not in chosen),
            key=lambda k: (len(present[k] - shown), total[k], -k),
        )
        chosen.append(best)
        shown |= present[best]
    return sorted(chosen, reverse=True)


def square_window(
    bbox: tuple[int, int, int, int] | None,
    shape: tuple[int, int],
    spacing_yx: tuple[float, float],
    margin_mm: float,
) -> tuple[int, int, int, int]:
    """A square (in mm) window (row0, row1, col0, col1) around ``bbox`` grown by ``margin_mm``;
    it may reach outside the image (the caller pads). Without a box: the whole slice."""
    sy, sx = spacing_yx
    if bbox is None:
        r0, r1, c0, c1 = 0, shape[0], 0, shape[1]
    else:
        r0, r1, c0, c1 = bbox
    cy, cx = (r0 + r1) / 2 * sy, (c0 + c1) / 2 * sx
    side = max((r1 - r0) * sy, (c1 - c0) * sx) + 2 * margin_mm
    return (
        math.floor((cy - side / 2) / sy),
        math.ceil((cy + side / 2) / sy),
        math.floor((cx - side / 2) / sx),
        math.ceil((cx + side / 2) / sx),
    )


def crop_pad(
    image: npt.NDArray[_Scalar], window: tuple[int, int, int, int], fill: float
) -> npt.NDArray[_Scalar]:
    """The 2-D ``image`` cut to ``window`` (row0, row1, col0, col1), padded with ``fill`` where
    the window leaves the image."""
    r0, r1, c0, c1 = window
    ny, nx = image.shape
    out = np.full((r1 - r0, c1 - c0), fill, dtype=image.dtype)
    sr0, sr1, sc0, sc1 = max(r0, 0), min(r1, ny), max(c0, 0), min(c1, nx)
    if sr0 < sr1 and sc0 < sc1:
        out[sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = image[sr0:sr1, sc0:sc1]
    return out
