"""The summary is written from the numbers: significance, direction, test and correction."""

from __future__ import annotations

import math

import pandas as pd

from dlas.evaluation import COMPARISON_COLUMNS
from dlas.evaluation.metric_info import format_mean_sd, format_number, format_p
from dlas.report import summarize


def _row(
    structure: str,
    metric: str,
    mean_a: float,
    mean_b: float,
    p: float,
    correction: str = "none",
    p_adjusted: float | None = None,
) -> dict[str, object]:
    adjusted = p if p_adjusted is None else p_adjusted
    row: dict[str, object] = {c: math.nan for c in COMPARISON_COLUMNS}
    row.update(
        {
            "cohort": "ExVal",
            "structure": structure,
            "metric": metric,
            "model_a": "VPM",
            "model_b": "LFT",
            "n_pairs": 30,
            "mean_a": mean_a,
            "mean_b": mean_b,
            "p_value": p,
            "p_adjusted": adjusted,
            "correction": correction,
            "significant": (adjusted if correction != "none" else p) < 0.05,
            "test": "wilcoxon",
            "zero_method": "wilcox",
        }
    )
    return row


def _metrics() -> pd.DataFrame:
    rows = []
    for i in range(30):
        for model, err in (("VPM", 18.0 + (i % 3)), ("LFT", -1.0 + (i % 3))):
            rows.append(
                {
                    "case_id": f"C{i:02d}",
                    "cohort": "ExVal",
                    "model": model,
                    "structure": "CTV",
                    "dsc": 0.8,
                    "hd95_mm": 5.0,
                    "volume_error_pct": err,
                    "flags": "",
                }
            )
    return pd.DataFrame(rows)


def test_summary_states_direction_test_and_counts() -> None:
    comparison = pd.DataFrame(
        [
            _row("CTV", "dsc", 0.790, 0.879, 0.0001),
            _row("CTV", "hd95_mm", 15.2, 8.1, 0.002),
            _row("Bladder", "dsc", 0.967, 0.961, 0.004),
            _row("CTV", "volume_cm3", 720.3, 606.4, 0.001),
            _row("CTV", "sensitivity", 0.90, 0.91, 0.40),
        ]
    )
    summary = summarize(
        comparison, _metrics(), pairs=[("VPM", "LFT")], cohorts=["ExVal"], volume_structure="CTV"
    )
    text = " ".join(summary.paragraphs())
    assert "Wilcoxon signed-rank test" in summary.method
    assert "without correction for multiple testing" in summary.method
    cohort = summary.cohorts[0].sentence()
    assert cohort.startswith("ExVal (n = 30):")
    assert (
        "LFT was significantly better than VPM in 2 of 5 tests: CTV DSC 0.790 → 0.879 "
        "(p < 0.01); CTV 95HD 15.20 → 8.10 mm (p < 0.01)"
    ) in cohort
    assert "significantly worse than VPM in 1 of 5 tests: Bladder DSC 0.967 → 0.961" in cohort
    assert "significantly smaller than VPM in 1 of 5 tests: CTV volume 720.3 → 606.4 cm³" in cohort
    assert "The other difference was not significant." in cohort
    assert "sensitivity" not in cohort
    assert "CTV volume against GT in ExVal" in text
    assert "VPM +19.0 ± 0.8 %, LFT 0.0 ± 0.8 %" in text


def test_summary_uses_adjusted_p_with_a_correction() -> None:
    comparison = pd.DataFrame(
        [
            _row("CTV", "dsc", 0.79, 0.88, 0.01, correction="holm", p_adjusted=0.04),
            _row("CTV", "specificity", 0.95, 0.97, 0.03, correction="holm", p_adjusted=0.06),
        ]
    )
    summary = summarize(
        comparison, _metrics(), pairs=[("VPM", "LFT")], cohorts=["ExVal"], volume_structure=None
    )
    assert "with Holm correction across the family of 2 tests" in summary.method
    sentence = summary.cohorts[0].sentence()
    assert "CTV DSC 0.790 → 0.880 (p = 0.040)" in sentence
    assert "specificity" not in sentence


def test_summary_adds_decimals_to_differences_too_small_to_print() -> None:
    comparison = pd.DataFrame([_row("Bowel_Small", "specificity", 0.99991, 0.99962, 0.01)])
    sentence = (
        summarize(
            comparison, _metrics(), pairs=[("VPM", "LFT")], cohorts=["ExVal"], volume_structure=None
        )
        .cohorts[0]
        .sentence()
    )
    assert "Bowel_Small specificity 0.9999 → 0.9996 (p = 0.010)" in sentence


def test_summary_without_significant_difference_says_so() -> None:
    comparison = pd.DataFrame([_row("Bladder", "dsc", 0.96, 0.961, 0.7)])
    summary = summarize(
        comparison, _metrics(), pairs=[("VPM", "LFT")], cohorts=["ExVal"], volume_structure=None
    )
    assert summary.cohorts[0].sentence() == (
        "ExVal (n = 30): no difference between LFT and VPM was significant (1 test)."
    )


def test_summary_counts_undefined_and_infinite_values() -> None:
    metrics = _metrics()
    metrics.loc[0, "dsc"] = math.nan
    metrics.loc[0, "flags"] = "both_empty"
    metrics.loc[1, "hd95_mm"] = math.inf
    metrics.loc[1, "flags"] = "prediction_empty"
    comparison = pd.DataFrame([_row("CTV", "dsc", 0.79, 0.88, 0.01)])
    notes = summarize(
        comparison, metrics, pairs=[("VPM", "LFT")], cohorts=["ExVal"], volume_structure=None
    ).notes
    assert any("1 case/model/structure rows have an undefined DSC" in n for n in notes)
    assert any("1 rows have an infinite 95HD" in n for n in notes)
    assert "Flags in the metrics table: both_empty × 1, prediction_empty × 1." in notes


def test_number_formats_follow_the_paper() -> None:
    assert format_mean_sd(0.9671, 0.0131, 3) == "0.967 ± 0.013"
    assert format_mean_sd(-1.281, 5.655, 1) == "−1.3 ± 5.7"
    assert format_number(-0.0001, 2) == "0.00"
    assert format_number(math.inf, 2) == "∞"
    assert format_number(math.nan, 2) == "n/a"
    assert format_p(0.004) == "< 0.01"
    assert format_p(0.046) == "0.046"
    assert format_p(0.32) == "0.32"
