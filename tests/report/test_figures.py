"""Figures of the report: produced, of the expected size, drawn in the expected colours."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from dlas.report import (
    GROUND_TRUTH,
    ReportError,
    ReportInputs,
    choose_cases,
    choose_slices,
    figures,
    get_palette,
    load_case_images,
    load_study,
)
from dlas.report.cases import crop_pad, square_window

from .conftest import StudyFixture

DPI = 80


def _save(fig: Figure, path: Path) -> np.ndarray:
    png, svg = figures.save_figure(fig, path, dpi=DPI)
    assert svg.stat().st_size > 1000
    assert svg.read_text(encoding="utf-8").lstrip().startswith("<?xml")
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


def _has_colour(pixels: np.ndarray, hex_colour: str, tol: int = 40) -> bool:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(pixels.astype(int) - rgb).max(axis=-1) < tol).any())


@pytest.fixture(scope="module")
def inputs(study: StudyFixture) -> ReportInputs:
    return load_study(study.root)


def test_representative_slices_show_every_source(inputs: ReportInputs, tmp_path: Path) -> None:
    structures = inputs.structure_names
    colours = get_palette("paper").colours(["VPM", "LFT"])
    cases = [load_case_images(inputs, cid, structures) for cid in ("EX001", "GE002")]
    pixels = _save(
        figures.representative_slices(cases, colours, structures=structures), tmp_path / "slices"
    )
    # Full journal width (7.2 in) at the requested resolution; constrained layout may trim
    # nothing from the width.
    assert pixels.shape[1] == round(7.2 * DPI)
    assert pixels.shape[0] > 2 * 7.2 / 3 * DPI
    for colour in colours.values():
        assert _has_colour(pixels, colour), colour
    assert pixels.std() > 20  # an image, not a blank page


def test_colourblind_palette_changes_the_contours(inputs: ReportInputs, tmp_path: Path) -> None:
    structures = inputs.structure_names
    colours = get_palette("colorblind").colours(["VPM", "LFT"])
    assert colours == {GROUND_TRUTH: "#d55e00", "VPM": "#0072b2", "LFT": "#009e73"}
    cases = [load_case_images(inputs, "EX002", structures)]
    pixels = _save(
        figures.representative_slices(cases, colours, structures=structures, n_slices=2),
        tmp_path / "slices",
    )
    assert _has_colour(pixels, "#009e73")
    assert not _has_colour(pixels, get_palette("paper").models[1], tol=10)


@pytest.mark.parametrize("kind", ["volume_profile", "distributions", "bland_altman", "heatmap"])
def test_metric_figures_are_drawn(inputs: ReportInputs, tmp_path: Path, kind: str) -> None:
    models, cohorts = ["VPM", "LFT"], ["ExVal", "GenEva"]
    colours = get_palette("paper").colours(models)
    metrics = inputs.metrics
    if kind == "volume_profile":
        fig = figures.volume_profile(metrics, "CTV", models, cohorts, colours)
    elif kind == "distributions":
        fig = figures.metric_distributions(
            metrics,
            "CTV",
            ["dsc", "hd95_mm"],
            models,
            cohorts,
            colours,
            comparison=inputs.comparison,
            pairs=[("VPM", "LFT")],
        )
    elif kind == "bland_altman":
        fig = figures.bland_altman(metrics, "CTV", models, cohorts, colours)
    else:
        fig = figures.dsc_heatmap(metrics, inputs.structure_names, models, cohorts)
    pixels = _save(fig, tmp_path / kind)
    assert pixels.shape[1] >= 5.5 * DPI
    assert pixels.shape[0] >= 2.5 * DPI
    assert pixels.std() > 10
    if kind != "heatmap":
        assert _has_colour(pixels, colours["VPM"]) and _has_colour(pixels, colours["LFT"])


def test_distributions_annotate_the_p_value(inputs: ReportInputs) -> None:
    models = ["VPM", "LFT"]
    fig = figures.metric_distributions(
        inputs.metrics,
        "CTV",
        ["dsc"],
        models,
        ["ExVal"],
        get_palette("paper").colours(models),
        comparison=inputs.comparison,
        pairs=[("VPM", "LFT")],
    )
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "p = 0.031" in texts  # exact two-sided Wilcoxon, 6 pairs of one sign: 2/64


def test_infinite_distances_are_counted_not_plotted(inputs: ReportInputs) -> None:
    metrics = inputs.metrics.copy()
    metrics.loc[
        (metrics["case_id"] == "EX001")
        & (metrics["model"] == "VPM")
        & (metrics["structure"] == "CTV"),
        "hd95_mm",
    ] = np.inf
    models = ["VPM", "LFT"]
    fig = figures.metric_distributions(
        metrics, "CTV", ["hd95_mm"], models, ["ExVal"], get_palette("paper").colours(models)
    )
    assert "VPM: 1 × ∞" in [t.get_text() for t in fig.axes[0].texts]


def test_figures_are_deterministic(inputs: ReportInputs, tmp_path: Path) -> None:
    models = ["VPM", "LFT"]
    colours = get_palette("paper").colours(models)
    for name in ("a", "b"):
        figures.save_figure(
            figures.bland_altman(inputs.metrics, "CTV", models, ["ExVal"], colours),
            tmp_path / name,
            dpi=DPI,
        )
    for ext in ("png", "svg"):
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()


def test_choose_slices_covers_every_structure() -> None:
    gt = {name: np.zeros((10, 8, 8), dtype=bool) for name in ("A", "B", "C")}
    gt["A"][2:5, 2:6, 2:6] = True  # largest on slices 2-4 (first: 2)
    gt["B"][4, 1:3, 1:3] = True  # only on slice 4, together with A
    gt["C"][8, 3:5, 3:5] = True  # alone on slice 8
    assert choose_slices(gt, 3, ["A", "B", "C"]) == [8, 4, 2]
    assert choose_slices(gt, 2, ["A", "B", "C"]) == [8, 4]
    assert choose_slices({"A": np.zeros((6, 4, 4), dtype=bool)}, 3, ["A"]) == [3]


def test_choose_cases_by_median_and_worst(inputs: ReportInputs) -> None:
    metrics = inputs.metrics
    part = metrics[(metrics["cohort"] == "ExVal") & (metrics["structure"] == "CTV")]
    score = part.groupby("case_id")["dsc"].mean()
    assert choose_cases(metrics, "ExVal", rule="worst", structure="CTV") == [score.idxmin()]
    median = (score - score.median()).abs().sort_values(kind="stable")
    assert choose_cases(metrics, "ExVal", rule="median", structure="CTV", n=2) == sorted(
        median.index[:2], key=lambda c: (median[c], c)
    )


def test_unknown_case_rule_is_refused(inputs: ReportInputs) -> None:
    with pytest.raises(ReportError, match=r"unknown case-selection rule.*'best'"):
        choose_cases(inputs.metrics, "ExVal", rule="best", structure="CTV")


def test_unknown_palette_is_refused() -> None:
    with pytest.raises(ReportError, match=r"unknown colour palette.*paper or colorblind"):
        get_palette("rainbow")


def test_square_window_pads_outside_the_image() -> None:
    window = square_window((0, 4, 0, 2), (10, 10), (1.0, 2.0), margin_mm=2.0)
    r0, r1, c0, c1 = window
    assert (r1 - r0) * 1.0 == pytest.approx((c1 - c0) * 2.0, abs=2.0)  # square in mm
    image = np.arange(100, dtype=float).reshape(10, 10)
    out = crop_pad(image, window, fill=-1.0)
    assert out.shape == (r1 - r0, c1 - c0)
    assert out[0, 0] == -1.0  # above and left of the image
    assert out[-r0, -c0] == image[0, 0]


def test_missing_prediction_mask_is_refused(
    copy_study: Callable[[], StudyFixture],
) -> None:
    copy = copy_study()
    (copy.predictions["LFT"] / "EX001" / "structures" / "CTV.nii.gz").unlink()
    inputs = load_study(copy.root)
    with pytest.raises(ReportError, match=r"prediction mask missing.*CTV mask of model LFT"):
        load_case_images(inputs, "EX001", ["CTV"])
