"""A figure in the manner of the seed study's Fig. 3: representative slices with both contouring
styles over the CT.

Each row is one patient (by default the first of ExVal, scanner A, and the first of GenEva,
scanner B); the columns are four axial slices — upper CTV with small bowel, mid-pelvis, femoral
heads, low pelvis — and a sagittal slice through the midline. The local institution's contours
(the ground truth of ExVal and GenEva) are drawn in red, the vendor's contours of the *same*
anatomy in blue, so the vendor's larger CTV and less complete small bowel can be seen at a
glance. Window: level 40 HU, width 400 HU.

``dlas phantom-preview FIGURE.png --preset demo`` (or ``dlas phantom OUT --preview FIGURE.png``)
draws it; matplotlib is imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dlas.phantom.config import PhantomConfig
from dlas.phantom.generate import PhantomPatient, _cohort_code, make_patient
from dlas.phantom.styles import LOCAL, STRUCTURES, VENDOR

__all__ = ["render_preview"]

_COLOURS = {"local": "#e8202a", "vendor": "#2a6cf0"}


def _nearest(axis: npt.NDArray[np.float32], value: float) -> int:
    return int(np.argmin(np.abs(axis - value)))


def _body(slice_hu: npt.NDArray[np.float32], pixel_mm: float) -> npt.NDArray[np.bool_]:
    """The largest connected region above -400 HU after removing thin parts (the table top
    touches the patient): the patient."""
    from scipy import ndimage

    opened = ndimage.binary_opening(slice_hu > -400, iterations=max(1, round(4.0 / pixel_mm)))
    labels, n = ndimage.label(opened)
    if n == 0:
        return np.ones(slice_hu.shape, dtype=bool)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    return np.asarray(labels == int(np.argmax(sizes)) + 1)


def render_preview(
    config: PhantomConfig,
    path: str | os.PathLike[str],
    *,
    cases: Sequence[tuple[str, int]] = (("ExVal", 0), ("GenEva", 0)),
    dpi: int = 110,
) -> Path:
    """Draw the preview figure of ``cases`` (cohort, index) to ``path`` (PNG, PDF or SVG).

    The patients are generated in memory exactly as :func:`~dlas.phantom.generate.generate`
    makes them; the vendor-style contours come from an observer stream of their own.

    Returns
    -------
    Path
        The file written (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from dlas.io import atomic_path

    rows = [_preview_row(config, cohort, index) for cohort, index in cases]
    n_cols = 5
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(3.3 * n_cols, 3.2 * len(rows)), squeeze=False, facecolor="black"
    )
    for r, row in enumerate(rows):
        _draw_row(axes[r], row)
    handles = [
        Line2D(
            [],
            [],
            color=_COLOURS["local"],
            label="local style (ground truth of training/ExVal/GenEva)",
        ),
        Line2D([], [], color=_COLOURS["vendor"], label="vendor style, same anatomy"),
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=2, frameon=False, labelcolor="white", fontsize=8
    )
    fig.suptitle(
        f"dlas phantom, preset {config.preset}, seed {config.seed}: CTV, bladder, femoral "
        "heads, small bowel",
        color="white",
        fontsize=10,
    )
    fig.tight_layout(rect=(0.02, 0.04, 1.0, 0.96))
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, facecolor="black", format=target.suffix.lstrip(".") or "png")
    plt.close(fig)
    return target


@dataclass
class _PreviewRow:
    """One patient of the figure: the CT (HU, (z, y, x)) and its contours in both styles
    (vendor first, so that where the styles agree the local line is drawn on top)."""

    patient: PhantomPatient
    image: npt.NDArray[np.float32]
    styles: dict[str, dict[str, npt.NDArray[np.bool_]]]


def _preview_row(config: PhantomConfig, cohort: str, index: int) -> _PreviewRow:
    """Generate patient ``index`` of ``cohort`` and contour it in both styles (the other
    style's observer draws from a stream of its own)."""
    patient = make_patient(config, cohort, index)
    image = patient.image()
    other = np.random.default_rng(
        np.random.SeedSequence(config.seed, spawn_key=(_cohort_code(cohort), index, 1))
    )
    # Vendor first, so that where the styles agree the local (red) line is on top.
    styles = {
        "vendor": patient.ground_truth(
            VENDOR, patient.observer_rng if patient.style is VENDOR else other
        ),
        "local": patient.ground_truth(
            LOCAL, patient.observer_rng if patient.style is LOCAL else other
        ),
    }
    return _PreviewRow(patient, image, styles)


def _draw_row(axes: Any, row: _PreviewRow) -> None:
    """Four axial slices, the midline sagittal slice and the patient's label, cropped to the
    body (with a 10 mm margin) at the level of the femoral heads."""
    patient, image = row.patient, row.image
    grid = patient.grid
    zs = grid.axis(0)
    a = patient.anatomy
    levels = [
        ("upper CTV", a.promontory_z - 15.0),
        ("mid pelvis", 0.5 * (a.pelvic_floor_z + a.promontory_z)),
        ("femoral heads", 0.0),
        ("low pelvis", a.pelvic_floor_z + 12.0),
    ]
    body = np.argwhere(_body(image[_nearest(zs, 0.0)], grid.pixel_mm))
    (j0, i0), (j1, i1) = body.min(axis=0), body.max(axis=0)
    margin = max(2, int(10.0 / grid.spacing[1]))
    j0, i0 = max(j0 - margin, 0), max(i0 - margin, 0)
    j1, i1 = min(j1 + margin, grid.shape[1] - 1), min(i1 + margin, grid.shape[2] - 1)
    for c, (label, z) in enumerate(levels):
        k = _nearest(zs, z)
        ax = axes[c]
        ax.imshow(
            image[k, j0 : j1 + 1, i0 : i1 + 1],
            cmap="gray",
            vmin=-160,
            vmax=240,
            interpolation="bilinear",
        )
        _contours(ax, row.styles, (k, slice(j0, j1 + 1), slice(i0, i1 + 1)))
        ax.set_title(f"{label} (z = {z:+.0f} mm)", color="white", fontsize=8)
        ax.axis("off")
    _draw_sagittal(axes[len(levels)], row, j0, j1)
    sy, sx = grid.spacing[1], grid.spacing[2]
    axes[0].text(
        -0.08,
        0.5,
        f"{patient.cohort.name} #{patient.index}\nscanner {patient.scanner.key}: "
        f"{patient.scanner.manufacturer} {patient.scanner.model}\n"
        f"{sx:.2f}x{sy:.2f}x{grid.spacing[0]:g} mm, kernel {patient.scanner.kernel}",
        transform=axes[0].transAxes,
        rotation=90,
        ha="right",
        va="center",
        color="white",
        fontsize=7,
    )


def _draw_sagittal(ax: Any, row: _PreviewRow, j0: int, j1: int) -> None:
    """Sagittal slice through the midline, rows ``j0`` to ``j1``, with its true aspect ratio."""
    grid = row.patient.grid
    zs, ys, xs = grid.axis(0), grid.axis(1), grid.axis(2)
    i = _nearest(xs, 0.0)
    extent = (float(ys[j0]), float(ys[j1]), float(zs[0]), float(zs[-1]))
    ax.imshow(
        row.image[:, j0 : j1 + 1, i],
        cmap="gray",
        vmin=-160,
        vmax=240,
        origin="lower",
        extent=extent,
        aspect="equal",
        interpolation="bilinear",
    )
    yy, zz = np.meshgrid(ys[j0 : j1 + 1], zs)
    _contours(ax, row.styles, (slice(None), slice(j0, j1 + 1), i), yy, zz)
    ax.set_title("sagittal, midline", color="white", fontsize=8)
    ax.axis("off")


def _contours(
    ax: Any,
    styles: dict[str, dict[str, npt.NDArray[np.bool_]]],
    cut: tuple[int | slice, ...],
    *coordinates: npt.NDArray[np.float32],
) -> None:
    """Outline every structure of both styles on the 2-D ``cut`` of its mask (at the
    ``coordinates`` of its pixels, when given)."""
    for style, masks in styles.items():
        for name in STRUCTURES:
            sl = masks[name][cut]
            if sl.any():
                ax.contour(
                    *coordinates,
                    sl.astype(np.float32),
                    levels=[0.5],
                    colors=_COLOURS[style],
                    linewidths=0.9,
                )
