"""The contour viewer: a static HTML page per cohort to scroll through every case's slices with
the ground truth and each model's contours.

Why a page of our own rather than a DICOM viewer: a reviewer or a committee member must be able
to open it from an e-mail attachment or a USB stick, offline, with nothing installed. So the
page is one file that works from ``file://``: each axial slice is a small image (the CT in a
soft-tissue window, cropped to the body and down-sampled, as a WebP, PNG or JPEG data URI) and
each contour an SVG polyline in millimetres over it. Only the current slice's image is decoded
and only its contours are in the DOM, so a cohort of 30 cases stays responsive. Toggling a model
or a structure hides its SVG group; the slider and the arrow keys move through the slices.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from dlas import __version__
from dlas.errors import ReportError
from dlas.evaluation.metric_info import format_number, metric_info
from dlas.report.cases import CaseImages
from dlas.report.figures import CT_WINDOW, slice_contours
from dlas.report.palette import GROUND_TRUTH

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["IMAGE_FORMATS", "case_payload", "render_viewer"]

log = logging.getLogger(__name__)

#: Image formats of the slices: MIME type and Pillow's format name.
IMAGE_FORMATS = {
    "webp": ("image/webp", "WEBP"),
    "png": ("image/png", "PNG"),
    "jpeg": ("image/jpeg", "JPEG"),
}

#: Metrics shown beside the image, per model and structure.
VIEWER_METRICS = ("dsc", "hd95_mm", "sensitivity", "specificity", "volume_error_pct")
#: Their column headings (short: the table sits beside the image).
VIEWER_LABELS = ("DSC", "95HD (mm)", "Sens.", "Spec.", "ΔV (%)")


def _encode_slice(image: npt.NDArray[np.floating], size: tuple[int, int], fmt: str) -> str:
    """A CT slice in the soft-tissue window as a data URI of ``size`` (width, height) pixels."""
    from PIL import Image

    level, width = CT_WINDOW
    grey = np.clip((image - (level - width / 2)) / width * 255.0 + 0.5, 0, 255).astype(np.uint8)
    picture = Image.fromarray(grey, mode="L")
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    mime, pil_format = IMAGE_FORMATS[fmt]
    buffer = io.BytesIO()
    if fmt == "webp":
        picture.save(buffer, format=pil_format, quality=70, method=4)
    elif fmt == "jpeg":
        picture.save(buffer, format=pil_format, quality=85, optimize=True)
    else:
        picture.save(buffer, format=pil_format, optimize=True)
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _drop_collinear(line: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The polyline without its interior points that lie on a straight run (exactly: the
    outline drawn is unchanged; a mask's outline is mostly such runs)."""
    if len(line) < 3:
        return line
    before = line[1:-1] - line[:-2]
    after = line[2:] - line[1:-1]
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    same_way = (before * after).sum(axis=1) > 0
    keep = np.ones(len(line), dtype=bool)
    keep[1:-1] = ~((np.abs(cross) < 1e-9) & same_way)
    return line[keep]


def _polylines(mask: npt.NDArray[np.bool_], spacing_yx: tuple[float, float]) -> list[str]:
    """SVG ``points`` strings (x,y in mm from the crop's corner) of a 2-D mask's outlines."""
    sy, sx = spacing_yx
    out = []
    for line in slice_contours(mask):
        simple = _drop_collinear(line)
        # Pixel i covers [i*s, (i+1)*s) on the image, so its centre is at (i + 0.5) * s.
        xs = (simple[:, 1] + 0.5) * sx
        ys = (simple[:, 0] + 0.5) * sy
        out.append(" ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True)))
    return out


def _metrics_rows(
    metrics: pd.DataFrame, case_id: str, models: Sequence[str], structures: Sequence[str]
) -> list[dict[str, Any]]:
    rows = []
    sub = metrics[metrics["case_id"] == case_id].set_index(["model", "structure"])
    for name in structures:
        cells: dict[str, list[str]] = {}
        for model in models:
            values = []
            for column in VIEWER_METRICS:
                key = (model, name)
                value = (
                    float(cast(float, sub.loc[key, column])) if key in sub.index else (float("nan"))
                )
                values.append(format_number(value, metric_info(column).decimals))
            cells[model] = values
        rows.append({"structure": name, "values": cells})
    return rows


def case_payload(
    case: CaseImages,
    metrics: pd.DataFrame,
    *,
    sources: Sequence[str],
    structures: Sequence[str],
    max_px: int,
    image_format: str,
) -> dict[str, Any]:
    """The viewer's data for one case: slice images, contours per source and structure, and
    the case's metrics.

    Parameters
    ----------
    case
        The case, cropped by :func:`~dlas.report.cases.load_case_images`.
    sources
        ``GT`` and the models, in legend order.
    max_px
        Longest side of the slice images in pixels (never up-sampled beyond the CT's pixels).
    image_format
        ``webp``, ``png`` or ``jpeg``.
    """
    _, sy, sx = case.spacing
    ny, nx = case.ct.shape[1:]
    width_mm, height_mm = nx * sx, ny * sy
    scale = min(max_px / max(width_mm, height_mm), 1.0 / min(sx, sy))
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    slices = []
    for k in range(case.ct.shape[0]):
        contours: dict[str, dict[str, list[str]]] = {}
        for source in sources:
            by_name = {}
            for name in structures:
                mask = case.masks.get(source, {}).get(name)
                if mask is not None and mask[k].any():
                    by_name[name] = _polylines(mask[k], (sy, sx))
            if by_name:
                contours[source] = by_name
        slices.append(
            {
                "z": round(float(case.z_mm[k]), 2),
                "img": _encode_slice(case.ct[k], size, image_format),
                "contours": contours,
            }
        )
    gt = case.masks.get(GROUND_TRUTH, {})
    area = sum((m.sum(axis=(1, 2)) for m in gt.values()), np.zeros(case.ct.shape[0]))
    return {
        "id": case.case_id,
        "cohort": case.cohort,
        "width_mm": round(width_mm, 2),
        "height_mm": round(height_mm, 2),
        "initial": int(np.argmax(area)) if np.any(area) else case.ct.shape[0] // 2,
        "slices": slices,
        "metrics": _metrics_rows(
            metrics, case.case_id, [s for s in sources if s != GROUND_TRUTH], structures
        ),
    }


def render_viewer(
    cohort: str,
    cases: Sequence[str],
    load: Callable[[str], CaseImages],
    metrics: pd.DataFrame,
    *,
    colours: Mapping[str, str],
    structures: Sequence[str],
    max_px: int = 320,
    image_format: str = "webp",
    title: str = "",
    progress: Callable[[str], None] | None = None,
) -> str:
    """The viewer page of one cohort as HTML text.

    Parameters
    ----------
    cases
        Case ids in picker order.
    load
        Loads one case (called once per case, so only one case is in memory at a time).
    colours
        Source → colour, in legend order (``GT`` first).
    progress
        Called with each case id when it has been processed.

    Raises
    ------
    ReportError
        If the image format is unknown or the cohort has no case.
    """
    if image_format not in IMAGE_FORMATS:
        raise ReportError(
            "unknown viewer image format",
            where="--viewer-format",
            expected=", ".join(IMAGE_FORMATS),
            found=repr(image_format),
            fix="choose webp (smallest), png (lossless) or jpeg",
        )
    if not cases:
        raise ReportError(
            "cohort has no case to show",
            where=f"cohort {cohort}",
            expected="at least one case in the metrics table",
            found="none",
            fix="evaluate the cohort first",
        )
    from dlas.report.html import environment

    sources = list(colours)
    payload_cases = []
    for case_id in cases:
        payload_cases.append(
            case_payload(
                load(case_id),
                metrics,
                sources=sources,
                structures=structures,
                max_px=max_px,
                image_format=image_format,
            )
        )
        if progress is not None:
            progress(case_id)
    data = {
        "cohort": cohort,
        "sources": [{"name": s, "colour": colours[s]} for s in sources],
        "structures": list(structures),
        "metric_labels": list(VIEWER_LABELS),
        "models": [s for s in sources if s != GROUND_TRUTH],
        "cases": payload_cases,
    }
    # "</" inside a <script> element would end it early; JSON allows the escaped form.
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True).replace("</", "<\\/")
    template = environment().get_template("viewer.html.j2")
    return template.render(
        title=title or f"Contour viewer — {cohort}",
        cohort=cohort,
        data_json=text,
        sources=data["sources"],
        structures=structures,
        version=__version__,
        n_cases=len(cases),
    )
