"""The study's figures, drawn with matplotlib (Agg backend) in one journal style.

- :func:`representative_slices` — axial CT slices with GT and model contours, a row per chosen
  case (the paper's Fig. 3);
- :func:`volume_profile` — per-case volumes of one structure, cases sorted by GT volume, with
  each model's relative volume error as bars (Fig. 4);
- :func:`metric_distributions` — box plots of each metric per model and cohort with the cases
  and the paired test's p-value (Fig. 5), one figure per structure;
- :func:`bland_altman` — model volume minus GT volume against their mean;
- :func:`dsc_heatmap` — DSC of every structure and case, per model.

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes PNG and
SVG atomically with fixed metadata, so the same inputs give the same files. Colours come from a
:class:`~dlas.report.palette.Palette` (GT red, VPM blue, LFT green by default).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from dlas.evaluation.metric_info import format_p, metric_info
from dlas.io.atomic import atomic_path
from dlas.report.cases import CaseImages, choose_slices, crop_pad, square_window
from dlas.report.palette import GROUND_TRUTH

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "CT_WINDOW",
    "bland_altman",
    "dsc_heatmap",
    "metric_distributions",
    "representative_slices",
    "save_figure",
    "slice_contours",
    "volume_profile",
]

log = logging.getLogger(__name__)

#: Soft-tissue window (level, width) in HU for CT images.
CT_WINDOW = (40.0, 400.0)

#: Width of a double-column journal figure, inches.
_FULL_WIDTH = 7.2

_STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 7.5,
    "axes.titlesize": 8,
    "axes.labelsize": 7.5,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "lines.linewidth": 1.0,
    "savefig.dpi": 300,
    "svg.hashsalt": "dlas-report",
    "svg.fonttype": "path",
    "figure.dpi": 100,
}


@contextlib.contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(cast(Any, _STYLE)):
        yield


def _new_figure(width: float, height: float, *, tight: bool = False) -> Figure:
    """A figure with constrained layout (``tight``: almost no space between panels)."""
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    engine = (
        ConstrainedLayoutEngine(w_pad=0.01, h_pad=0.01, wspace=0.01, hspace=0.01)
        if tight
        else ConstrainedLayoutEngine()
    )
    # A Figure not registered with pyplot: nothing global to leak or close.
    return Figure(figsize=(width, height), layout=engine)


def save_figure(fig: Figure, stem: Path, *, dpi: int = 300) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` atomically; returns both paths.

    Metadata are fixed (no creation date) so that the files depend only on the inputs.
    """
    paths = []
    with _style():
        for ext, metadata in (
            ("png", {"Software": "dlas (matplotlib)"}),
            ("svg", {"Date": None, "Creator": "dlas (matplotlib)"}),
        ):
            path = stem.with_suffix(f".{ext}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext, dpi=dpi, metadata=metadata, facecolor="white")
            paths.append(path)
    return paths


def _panel_letter(ax: Axes, index: int, *, inside: bool = False, colour: str = "black") -> None:
    letter = f"({chr(ord('a') + index)})" if index < 26 else f"({index + 1})"
    if inside:
        ax.text(
            0.03,
            0.97,
            letter,
            transform=ax.transAxes,
            ha="left",
            va="top",
            color=colour,
            fontsize=8,
            fontweight="bold",
        )
    else:
        ax.set_title(letter, loc="left", fontsize=8, fontweight="bold")


# ---------------------------------------------------------------------- Fig. 3
def slice_contours(mask: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.float64]]:
    """Outlines of a 2-D mask as (row, col) polylines in pixel units, at the 0.5 iso-line
    between voxel centres (the boundary a planning system draws)."""
    from skimage import measure

    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(mask.any(axis=0))
    r0, c0 = int(rows[0]), int(cols[0])
    # Trace only the mask's bounding box; the one-pixel pad closes outlines at the edge.
    crop = np.pad(mask[r0 : int(rows[-1]) + 1, c0 : int(cols[-1]) + 1].astype(np.float32), 1)
    offset = np.array([r0 - 1.0, c0 - 1.0])
    return [c + offset for c in measure.find_contours(crop, 0.5)]


def _window(ct: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    level, width = CT_WINDOW
    return np.clip((np.asarray(ct, dtype=np.float64) - (level - width / 2)) / width, 0.0, 1.0)


def representative_slices(
    cases: Sequence[CaseImages],
    colours: Mapping[str, str],
    *,
    structures: Sequence[str],
    n_slices: int = 3,
    margin_mm: float = 15.0,
) -> Figure:
    """Axial CT slices with the contours of GT and each model, a row per case (Fig. 3).

    The slices of a case are chosen by :func:`~dlas.report.cases.choose_slices` so that they
    show as many structures as possible; each panel is a square window, the same for the whole
    row, around every mask of the case plus ``margin_mm``. CT in a soft-tissue window
    (:data:`CT_WINDOW`), radiological convention, a 5 cm scale bar in the first panel.

    Parameters
    ----------
    cases
        Cases to show, loaded with :func:`~dlas.report.cases.load_case_images`.
    colours
        Source (``GT`` and each model) → colour; sources are drawn in this order.
    """
    from matplotlib.lines import Line2D

    n_cols = max(1, n_slices)
    n_rows = max(1, len(cases))
    panel = _FULL_WIDTH / n_cols
    with _style():
        fig = _new_figure(_FULL_WIDTH, panel * n_rows + 0.35, tight=True)
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        letter = 0
        for r, case in enumerate(cases):
            gt = case.masks.get(GROUND_TRUTH, {})
            ks = choose_slices(gt, n_cols, structures)
            _, sy, sx = case.spacing
            window = square_window(case.mask_bbox(), case.ct.shape[1:], (sy, sx), margin_mm)
            for c in range(n_cols):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if c >= len(ks):
                    ax.set_axis_off()
                    continue
                extent = _slice_panel(ax, case, ks[c], window, colours, structures)
                _panel_letter(ax, letter, inside=True, colour="white")
                letter += 1
                ax.text(
                    0.97,
                    0.97,
                    f"z = {case.z_mm[ks[c]]:.0f} mm",
                    transform=ax.transAxes,
                    ha="right",
                    va="top",
                    color="white",
                    fontsize=6,
                )
                if c == 0:
                    ax.set_ylabel(f"{case.cohort}\n{case.case_id}", fontsize=7.5)
                    _scale_bar(ax, extent)
        handles = [Line2D([], [], color=col, lw=1.5, label=src) for src, col in colours.items()]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
    return fig


def _slice_panel(
    ax: Axes,
    case: CaseImages,
    k: int,
    window: tuple[int, int, int, int],
    colours: Mapping[str, str],
    structures: Sequence[str],
) -> tuple[float, float, float, float]:
    """Slice ``k`` of the case in the soft-tissue window, cropped to ``window`` (rows r0:r1,
    columns c0:c1), with the contours of every source; returns the panel's extent in mm
    (left, right, bottom, top)."""
    _, sy, sx = case.spacing
    r0, r1, c0, c1 = window
    extent = (-0.5 * sx, (c1 - c0 - 0.5) * sx, (r1 - r0 - 0.5) * sy, -0.5 * sy)
    image = crop_pad(case.ct[k], window, fill=-1000.0)
    ax.imshow(
        _window(image),
        cmap="gray",
        vmin=0,
        vmax=1,
        extent=extent,
        interpolation="bilinear",
    )
    for source, colour in colours.items():
        for name in structures:
            mask = case.masks.get(source, {}).get(name)
            if mask is None or not mask[k].any():
                continue
            for line in slice_contours(crop_pad(mask[k], window, fill=False)):
                ax.plot(
                    line[:, 1] * sx,
                    line[:, 0] * sy,
                    color=colour,
                    lw=0.9,
                    solid_joinstyle="round",
                )
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    return extent


def _scale_bar(ax: Axes, extent: tuple[float, float, float, float]) -> None:
    """A 5 cm scale bar in the lower right corner of a panel of the given extent (mm)."""
    x_end = extent[1] - 0.06 * (extent[1] - extent[0])
    y_bar = extent[2] - 0.06 * (extent[2] - extent[3])
    ax.plot(
        [x_end - 50.0, x_end],
        [y_bar, y_bar],
        color="white",
        lw=1.6,
        solid_capstyle="butt",
    )
    ax.text(
        x_end - 25.0,
        y_bar - 0.015 * (extent[2] - extent[3]),
        "5 cm",
        color="white",
        ha="center",
        va="bottom",
        fontsize=6,
    )


# ---------------------------------------------------------------------- Fig. 4
def volume_profile(
    metrics: pd.DataFrame,
    structure: str,
    models: Sequence[str],
    cohorts: Sequence[str],
    colours: Mapping[str, str],
) -> Figure:
    """Per-case volume of ``structure`` for GT and each model, cases sorted by GT volume, with
    each model's relative volume error as bars (the paper's Fig. 4); a column per cohort.

    Upper panels: volumes (cm³) as lines with markers. Lower panels: relative error
    (V − V_GT) / V_GT (%) as grouped bars, the zero line marked. Cases with an empty GT have no
    defined error and show no bar.
    """
    n = max(1, len(cohorts))
    with _style():
        fig = _new_figure(_FULL_WIDTH if n > 1 else _FULL_WIDTH / 1.6, 3.6)
        grid = fig.add_gridspec(2, n, height_ratios=[1.6, 1.0])
        for c, cohort in enumerate(cohorts):
            part = metrics[(metrics["cohort"] == cohort) & (metrics["structure"] == structure)]
            gt = part.drop_duplicates("case_id").set_index("case_id")["volume_ref_cm3"]
            order = gt.sort_values(kind="stable").index.tolist()
            x = np.arange(1, len(order) + 1)
            top = fig.add_subplot(grid[0, c])
            bottom = fig.add_subplot(grid[1, c], sharex=top)
            top.plot(
                x,
                gt.loc[order].to_numpy(),
                color=colours[GROUND_TRUTH],
                marker="o",
                ms=2.5,
                lw=1.2,
                label=GROUND_TRUTH,
            )
            width = 0.8 / max(1, len(models))
            for i, model in enumerate(models):
                m = part[part["model"] == model].set_index("case_id").reindex(order)
                top.plot(
                    x,
                    m["volume_cm3"].to_numpy(),
                    color=colours[model],
                    marker="o",
                    ms=2.5,
                    lw=1.0,
                    label=model,
                )
                err = m["volume_error_pct"].replace([np.inf, -np.inf], np.nan).to_numpy()
                offset = (i - (len(models) - 1) / 2) * width
                bottom.bar(
                    x + offset,
                    np.nan_to_num(err, nan=0.0),
                    width=width,
                    color=colours[model],
                    alpha=0.85,
                    label=model,
                    linewidth=0,
                )
            bottom.axhline(0.0, color="0.3", lw=0.6)
            top.set_title(f"{cohort} (n = {len(order)})", fontsize=8)
            _panel_letter(top, c)
            top.set_ylabel(f"{structure} volume (cm³)")
            bottom.set_ylabel("Relative error (%)")
            bottom.set_xlabel(f"Case (sorted by GT {structure} volume)")
            top.tick_params(labelbottom=False)
            if len(order) <= 40:
                step = 1 if len(order) <= 15 else 5
                ticks = [t for t in x if t == 1 or t % step == 0]
                bottom.set_xticks(ticks)
            top.grid(axis="y", color="0.9", lw=0.5)
            bottom.grid(axis="y", color="0.9", lw=0.5)
            if c == 0:
                top.legend(loc="upper left", ncol=1 + len(models))
        return fig


# ---------------------------------------------------------------------- Fig. 5
def _p_for(
    comparison: pd.DataFrame | None, cohort: str, structure: str, metric: str, a: str, b: str
) -> tuple[float, bool, bool] | None:
    """(p shown, adjusted?, significant?) of one test, or None when it was not done."""
    if comparison is None:
        return None
    hit = comparison[
        (comparison["cohort"] == cohort)
        & (comparison["structure"] == structure)
        & (comparison["metric"] == metric)
        & (comparison["model_a"] == a)
        & (comparison["model_b"] == b)
    ]
    if hit.empty:
        return None
    row = hit.iloc[0]
    adjusted = str(row["correction"]).lower() not in ("none", "", "nan")
    p = float(row["p_adjusted"] if adjusted else row["p_value"])
    return p, adjusted, bool(row["significant"])


def metric_distributions(
    metrics: pd.DataFrame,
    structure: str,
    columns: Sequence[str],
    models: Sequence[str],
    cohorts: Sequence[str],
    colours: Mapping[str, str],
    *,
    comparison: pd.DataFrame | None = None,
    pairs: Sequence[tuple[str, str]] = (),
    seed: int = 0,
) -> Figure:
    """Box plots of each metric of ``structure`` per model, a row per cohort (the paper's
    Fig. 5), with every case as a dot and the paired test's p-value over each compared pair.

    Boxes: median and quartiles, whiskers to 1.5 IQR; dots jittered horizontally with a fixed
    seed. Infinite values (a structure missing in one mask) cannot be placed on the axis: they
    are left out and counted in the panel ("2 × ∞"). The p-value is the adjusted one when the
    comparison used a correction; bold when significant.
    """
    rng = np.random.default_rng(seed)
    n_rows, n_cols = max(1, len(cohorts)), max(1, len(columns))
    with _style():
        fig = _new_figure(_FULL_WIDTH, 1.75 * n_rows + 0.3)
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        for r, cohort in enumerate(cohorts):
            part = metrics[(metrics["cohort"] == cohort) & (metrics["structure"] == structure)]
            for c, column in enumerate(columns):
                ax = axes[r, c]
                info = metric_info(column)
                values = [
                    part.loc[part["model"] == m, column].to_numpy(dtype=float) for m in models
                ]
                finite = [v[np.isfinite(v)] for v in values]
                n_inf = [int(np.isinf(v).sum()) for v in values]
                positions = np.arange(1, len(models) + 1)
                box = ax.boxplot(
                    [f if f.size else np.array([np.nan]) for f in finite],
                    positions=positions,
                    widths=0.55,
                    patch_artist=True,
                    showfliers=False,
                    medianprops={"color": "black", "lw": 1.0},
                    whiskerprops={"lw": 0.7},
                    capprops={"lw": 0.7},
                )
                for patch, model in zip(box["boxes"], models, strict=True):
                    patch.set_facecolor(colours[model])
                    patch.set_alpha(0.35)
                    patch.set_edgecolor(colours[model])
                for pos, model, f in zip(positions, models, finite, strict=True):
                    jitter = rng.uniform(-0.16, 0.16, size=f.size)
                    ax.scatter(
                        pos + jitter,
                        f,
                        s=5,
                        color=colours[model],
                        alpha=0.9,
                        linewidths=0,
                        zorder=3,
                    )
                ax.set_xticks(positions, list(models))
                ax.set_xlim(0.4, len(models) + 0.6)
                ax.set_title(info.label, fontsize=8)
                ax.grid(axis="y", color="0.9", lw=0.5)
                if any(n_inf):
                    ax.text(
                        0.5,
                        0.01,
                        "  ".join(f"{m}: {k} × ∞" for m, k in zip(models, n_inf, strict=True) if k),
                        transform=ax.transAxes,
                        ha="center",
                        va="bottom",
                        fontsize=5.5,
                        color="0.35",
                    )
                _annotate_pairs(
                    ax, part, column, cohort, structure, models, finite, comparison, pairs
                )
                if c == 0:
                    ax.set_ylabel(f"({chr(ord('a') + r)}) {cohort}", fontsize=8, fontweight="bold")
        return fig


def _annotate_pairs(
    ax: Axes,
    part: pd.DataFrame,
    column: str,
    cohort: str,
    structure: str,
    models: Sequence[str],
    finite: Sequence[npt.NDArray[np.float64]],
    comparison: pd.DataFrame | None,
    pairs: Sequence[tuple[str, str]],
) -> None:
    """Brackets with the p-value over each compared pair of models."""
    data = np.concatenate([f for f in finite if f.size]) if any(f.size for f in finite) else None
    if data is None:
        return
    low, high = float(np.min(data)), float(np.max(data))
    span = (high - low) or max(abs(high), 1.0) * 0.1
    level = high + 0.08 * span
    for a, b in pairs:
        if a not in models or b not in models:
            continue
        found = _p_for(comparison, cohort, structure, column, a, b)
        if found is None:
            continue
        p, _adjusted, significant = found
        xa, xb = models.index(a) + 1, models.index(b) + 1
        tick = 0.03 * span
        ax.plot([xa, xa, xb, xb], [level - tick, level, level, level - tick], color="0.2", lw=0.6)
        text = "p " + format_p(p) if format_p(p).startswith("<") else f"p = {format_p(p)}"
        ax.text(
            (xa + xb) / 2,
            level + 0.02 * span,
            text,
            ha="center",
            va="bottom",
            fontsize=6.5,
            fontweight="bold" if significant else "normal",
        )
        level += 0.2 * span
    ax.set_ylim(top=max(ax.get_ylim()[1], level + 0.05 * span))


# ---------------------------------------------------------------------- Bland–Altman
def bland_altman(
    metrics: pd.DataFrame,
    structure: str,
    models: Sequence[str],
    cohorts: Sequence[str],
    colours: Mapping[str, str],
) -> Figure:
    """Bland–Altman plot of each model's volume of ``structure`` against GT, a panel per cohort.

    x: mean of model and GT volume (cm³); y: model − GT (cm³). Per model: the bias (mean
    difference, solid) and the 95 % limits of agreement (bias ± 1.96 SD, dashed).
    """
    n = max(1, len(cohorts))
    with _style():
        fig = _new_figure(min(_FULL_WIDTH, 3.0 * n + 0.4), 2.8)
        axes = fig.subplots(1, n, squeeze=False)[0]
        for c, cohort in enumerate(cohorts):
            ax = axes[c]
            part = metrics[(metrics["cohort"] == cohort) & (metrics["structure"] == structure)]
            ax.axhline(0.0, color="0.5", lw=0.6)
            for model in models:
                m = part[part["model"] == model]
                ref = m["volume_ref_cm3"].to_numpy(dtype=float)
                vol = m["volume_cm3"].to_numpy(dtype=float)
                keep = np.isfinite(ref) & np.isfinite(vol)
                mean, diff = (vol[keep] + ref[keep]) / 2, vol[keep] - ref[keep]
                ax.scatter(
                    mean,
                    diff,
                    s=9,
                    color=colours[model],
                    alpha=0.85,
                    linewidths=0,
                    label=model,
                    zorder=3,
                )
                if diff.size >= 2:
                    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
                    ax.axhline(bias, color=colours[model], lw=1.0)
                    for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
                        ax.axhline(limit, color=colours[model], lw=0.8, ls=(0, (4, 2)))
                    ax.text(
                        1.0,
                        bias,
                        f" {bias:+.1f}",
                        transform=ax.get_yaxis_transform(),
                        color=colours[model],
                        va="center",
                        ha="left",
                        fontsize=6,
                        clip_on=False,
                    )
            ax.set_title(cohort, fontsize=8)
            _panel_letter(ax, c)
            ax.set_xlabel(f"Mean of model and GT {structure} volume (cm³)")
            if c == 0:
                ax.set_ylabel("Model − GT volume (cm³)")
                ax.legend(loc="best")
            ax.grid(color="0.92", lw=0.5)
        return fig


# ---------------------------------------------------------------------- DSC heat map
def dsc_heatmap(
    metrics: pd.DataFrame,
    structures: Sequence[str],
    models: Sequence[str],
    cohorts: Sequence[str],
) -> Figure:
    """DSC of every structure (rows) and case (columns, grouped by cohort), a panel per model.

    Undefined DSC (both masks empty) is grey. The colour scale is shared by all panels and
    starts at the lowest DSC shown (at most 0.5), so differences near 1 remain visible.
    """
    import matplotlib as mpl

    cases: list[tuple[str, str]] = []
    for cohort in cohorts:
        ids = sorted(set(metrics.loc[metrics["cohort"] == cohort, "case_id"]))
        cases += [(cohort, cid) for cid in ids]
    finite = metrics["dsc"].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    vmin = min(0.5, math.floor(float(finite.min()) * 10) / 10) if finite.size else 0.5
    cmap = mpl.colormaps["viridis"].with_extremes(bad="0.8")
    height = 0.35 + len(models) * (0.22 * len(structures) + 0.45)
    with _style():
        fig = _new_figure(_FULL_WIDTH, height)
        axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
        image = None
        for i, model in enumerate(models):
            ax = axes[i]
            sub = metrics[metrics["model"] == model].set_index(["structure", "case_id"])["dsc"]
            grid = np.full((len(structures), len(cases)), np.nan)
            for s, name in enumerate(structures):
                for j, (_cohort, cid) in enumerate(cases):
                    value = sub.get((name, cid))
                    if value is not None:
                        grid[s, j] = float(value)
            image = ax.imshow(
                np.ma.masked_invalid(grid),
                aspect="auto",
                cmap=cmap,
                vmin=vmin,
                vmax=1.0,
                interpolation="nearest",
            )
            ax.set_yticks(range(len(structures)), list(structures))
            ax.set_title(model, loc="left", fontsize=8, fontweight="bold")
            start = 0
            for cohort in cohorts:
                count = sum(1 for c in cases if c[0] == cohort)
                if start:
                    ax.axvline(start - 0.5, color="white", lw=2.0)
                ax.text(start + count / 2 - 0.5, -0.6, cohort, ha="center", va="bottom", fontsize=7)
                start += count
            if len(cases) <= 60:
                ax.set_xticks(range(len(cases)), [c[1] for c in cases], rotation=90, fontsize=5)
            else:
                ax.set_xticks([])
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
        if image is not None:
            fig.colorbar(image, ax=list(axes), label="DSC", shrink=0.9, aspect=30, pad=0.01)
        return fig
