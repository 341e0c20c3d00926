"""`compare`: paired statistics against scipy and hand-computed answers; Table 2 against a
checked-in expected rendering."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dlas.evaluation import (
    COMPARISON_COLUMNS,
    EvaluationError,
    compare,
    read_metrics,
    render_table2,
    write_comparison,
)
from dlas.evaluation import statistics as statistics_module

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "table2_metrics.csv"


def _table(a: list[float], b: list[float], metric: str = "dsc") -> pd.DataFrame:
    """A minimal metrics table: one cohort, one structure, models A and B on the same cases."""
    rows = []
    for i, (va, vb) in enumerate(zip(a, b, strict=True)):
        rows.append(
            {
                "case_id": f"C{i:03d}",
                "cohort": "X",
                "model": "A",
                "structure": "S",
                metric: va,
                "flags": "",
            }
        )
        rows.append(
            {
                "case_id": f"C{i:03d}",
                "cohort": "X",
                "model": "B",
                "structure": "S",
                metric: vb,
                "flags": "",
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- Wilcoxon
@pytest.mark.parametrize("zero_method", ["wilcox", "pratt", "zsplit"])
@pytest.mark.parametrize(
    ("name", "n", "ties", "zeros", "expected_test"),
    [
        ("small exact", 9, False, False, "wilcoxon-exact"),
        ("exact at 50", 50, False, False, "wilcoxon-exact"),
        ("ties small", 10, True, False, "wilcoxon-permutation"),
        ("zeros small", 12, False, True, "wilcoxon-permutation"),
        ("zeros small, B lower", -12, False, True, "wilcoxon-permutation"),
        ("ties larger", 30, True, True, "wilcoxon-normal"),
        ("large", 80, False, False, "wilcoxon-normal"),
    ],
)
def test_p_values_equal_scipy_on_the_same_pairs(
    zero_method: str, name: str, n: int, ties: bool, zeros: bool, expected_test: str
) -> None:
    # n < 0: the same size, with B tending lower than A (the other tail of the test).
    shift = 0.01 if n > 0 else -0.01
    n = abs(n)
    rng = np.random.default_rng(n + 7 * ties + 3 * zeros)
    a = rng.normal(0.8, 0.05, n)
    b = a + rng.normal(shift, 0.03, n)
    if ties:
        b[:4] = a[:4] + 0.02  # four equal |differences|
    if zeros:
        b[4:6] = a[4:6]  # two zero differences
    row = compare(
        _table(list(a), list(b)),
        "A",
        "B",
        zero_method=zero_method,  # type: ignore[arg-type]
        bootstrap=0,
    ).iloc[0]
    expected = stats.wilcoxon(b, a, zero_method=zero_method)
    assert row["test"] == expected_test
    assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert row["statistic"] == pytest.approx(expected.statistic, rel=1e-12)
    assert row["n_pairs"] == n
    assert row["zero_method"] == zero_method


def test_all_zero_differences_are_not_tested() -> None:
    row = compare(_table([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]), "A", "B").iloc[0]
    assert row["test"] == "none"
    assert math.isnan(row["p_value"]) and math.isnan(row["p_adjusted"])
    assert not row["significant"]
    assert row["mean_diff"] == 0.0


def test_rank_biserial_from_hand_computed_rank_sums() -> None:
    # d = B - A = [1, 2, -3, 4]: ranks 1, 2, 3, 4; T+ = 7, T- = 3; r = (7 - 3) / 10.
    a = [0.0, 0.0, 0.0, 0.0]
    b = [1.0, 2.0, -3.0, 4.0]
    assert compare(_table(a, b), "A", "B", bootstrap=0).iloc[0]["effect_size_rb"] == 0.4
    # With a zero difference: wilcox drops it; zsplit ranks it first and splits its rank.
    a5, b5 = [*a, 0.0], [*b, 0.0]
    assert compare(_table(a5, b5), "A", "B", bootstrap=0).iloc[0]["effect_size_rb"] == 0.4
    # zsplit ranks: 0 → 1, then 2, 3, 4, 5: T+ = 2 + 3 + 5 + 0.5, T- = 4 + 0.5, sum 15.
    zsplit = compare(_table(a5, b5), "A", "B", bootstrap=0, zero_method="zsplit").iloc[0]
    assert zsplit["effect_size_rb"] == pytest.approx((10.5 - 4.5) / 15)


def test_descriptives_equal_numpy() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 11), rng.normal(0.5, 1, 11)
    row = compare(_table(list(a), list(b)), "A", "B", bootstrap=0).iloc[0]
    assert row["mean_a"] == pytest.approx(a.mean())
    assert row["sd_a"] == pytest.approx(a.std(ddof=1))
    assert row["median_b"] == pytest.approx(np.median(b))
    assert (row["q1_b"], row["q3_b"]) == pytest.approx(tuple(np.percentile(b, [25, 75])))
    assert row["mean_diff"] == pytest.approx((b - a).mean())


def test_bootstrap_ci_is_seeded_and_covers_the_mean() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(0.8, 0.05, 20)
    b = a + rng.normal(0.02, 0.02, 20)
    one = compare(_table(list(a), list(b)), "A", "B", bootstrap=2000, seed=1).iloc[0]
    same = compare(_table(list(a), list(b)), "A", "B", bootstrap=2000, seed=1).iloc[0]
    other = compare(_table(list(a), list(b)), "A", "B", bootstrap=2000, seed=2).iloc[0]
    assert (one["ci_low"], one["ci_high"]) == (same["ci_low"], same["ci_high"])
    assert (one["ci_low"], one["ci_high"]) != (other["ci_low"], other["ci_high"])
    assert one["ci_low"] < one["mean_diff"] < one["ci_high"]
    # The percentile bootstrap of a mean is close to the normal interval for n = 20.
    half = 1.96 * (b - a).std(ddof=1) / math.sqrt(20)
    assert one["ci_high"] - one["ci_low"] == pytest.approx(2 * half, rel=0.2)


def test_holm_and_bh_adjustments_match_hand_computation() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005, math.nan])
    # Holm: sorted 0.005·4, 0.01·3, 0.03·2, 0.04·1 → 0.02, 0.03, 0.06, max(0.06, 0.04).
    np.testing.assert_allclose(
        statistics_module._adjust(p, "holm"), [0.03, 0.06, 0.06, 0.02, math.nan]
    )
    # BH: p·m/rank = 0.02, 0.02, 0.04, 0.04, made monotone from the top.
    np.testing.assert_allclose(
        statistics_module._adjust(p, "bh"), [0.02, 0.04, 0.04, 0.02, math.nan]
    )
    np.testing.assert_allclose(statistics_module._adjust(p, "none"), p)


def test_correction_applies_to_the_whole_family_and_sets_significance() -> None:
    table = read_metrics(FIXTURE)
    plain = compare(table, "VPM", "LFT", bootstrap=0)
    holm = compare(table, "VPM", "LFT", bootstrap=0, correction="holm")
    tested = plain["p_value"].notna()
    expected = statistics_module._adjust(plain["p_value"].to_numpy(float), "holm")
    np.testing.assert_allclose(holm["p_adjusted"].to_numpy(float), expected)
    assert (holm["p_adjusted"][tested] >= plain["p_value"][tested]).all()
    assert (holm["significant"] == (holm["p_adjusted"] < 0.05)).all()
    assert set(holm["correction"]) == {"holm"}


def test_unpaired_and_nonfinite_cases_are_reported_and_excluded() -> None:
    table = read_metrics(FIXTURE)
    result = compare(table, "VPM", "LFT", bootstrap=0)
    info = result.attrs["dlas"]
    assert info["unpaired_cases"] == [
        {"cohort": "GenEva", "structure": "Bladder", "only_a": ["GE008"], "only_b": []}
    ]
    assert {
        "cohort": "GenEva",
        "structure": "Bowel_Small",
        "metric": "specificity",
        "nonfinite_a": [],
        "nonfinite_b": ["GE003"],
    } in info["nonfinite_excluded"]
    row = result[
        (result["cohort"] == "GenEva")
        & (result["structure"] == "Bladder")
        & (result["metric"] == "dsc")
    ].iloc[0]
    assert (row["n_a"], row["n_b"], row["n_pairs"]) == (8, 7, 7)
    # The test uses the 7 complete pairs only.
    wide = (
        table[(table["cohort"] == "GenEva") & (table["structure"] == "Bladder")]
        .pivot(index="case_id", columns="model", values="dsc")
        .dropna()
    )
    assert row["p_value"] == pytest.approx(stats.wilcoxon(wide["LFT"], wide["VPM"]).pvalue)
    spec = result[
        (result["cohort"] == "GenEva")
        & (result["structure"] == "Bowel_Small")
        & (result["metric"] == "specificity")
    ].iloc[0]
    assert (spec["n_a"], spec["n_b"], spec["n_pairs"]) == (8, 7, 7)


def test_comparison_has_exactly_the_declared_columns_and_order() -> None:
    result = compare(FIXTURE, "VPM", "LFT", bootstrap=100)
    assert list(result.columns) == list(COMPARISON_COLUMNS)
    assert list(result["cohort"].unique()) == ["ExVal", "GenEva"]
    first = result[result["cohort"] == "ExVal"]
    assert list(first["structure"].unique()) == ["Bladder", "Bowel_Small"]
    assert list(first["metric"].iloc[:3]) == ["dsc", "hd95_mm", "hd_mm"]
    assert (result["model_a"] == "VPM").all() and (result["model_b"] == "LFT").all()


# ---------------------------------------------------------------------------------- Table 2
def _fixture_comparison() -> pd.DataFrame:
    return compare(FIXTURE, "VPM", "LFT", bootstrap=200, seed=1)


@pytest.mark.parametrize(("fmt", "suffix"), [("markdown", "md"), ("latex", "tex"), ("csv", "csv")])
def test_table2_rendering_equals_the_checked_in_file(fmt: str, suffix: str) -> None:
    text = render_table2(_fixture_comparison(), fmt)  # type: ignore[arg-type]
    expected = (DATA / f"table2_expected.{suffix}").read_text(encoding="utf-8")
    assert text == expected


def test_table2_cells_are_the_fixture_statistics() -> None:
    """Independent of the checked-in files: a few cells recomputed from the fixture."""
    table = read_metrics(FIXTURE)
    csv_text = render_table2(_fixture_comparison(), "csv")
    lines = [line.split(",") for line in csv_text.splitlines()]
    header = lines[0]
    assert header[:3] == ["structure", "row", "DSC ExVal"]
    cells = {(r[0], r[1]): dict(zip(header[2:], r[2:], strict=True)) for r in lines[1:]}
    vpm = table[
        (table["model"] == "VPM")
        & (table["structure"] == "Bowel_Small")
        & (table["cohort"] == "ExVal")
    ]["dsc"].to_numpy()
    assert cells[("Bowel_Small", "VPM")]["DSC ExVal"] == (
        f"{vpm.mean():.3f} ± {vpm.std(ddof=1):.3f}"
    )
    wide = table[(table["structure"] == "Bowel_Small") & (table["cohort"] == "ExVal")].pivot(
        index="case_id", columns="model", values="dsc"
    )
    p = stats.wilcoxon(wide["LFT"], wide["VPM"]).pvalue
    shown = cells[("Bowel_Small", "p-value")]["DSC ExVal"]
    assert shown == ("< 0.01" if p < 0.01 else f"{p:.2f}")
    assert any(
        row.get("DSC ExVal") == "< 0.01" or "< 0.01" in row.values() for row in cells.values()
    )


def test_table2_choice_of_metrics_and_cohorts() -> None:
    text = render_table2(
        _fixture_comparison(), "markdown", metrics=["volume_cm3"], cohorts=["GenEva"], caption=False
    )
    assert text.splitlines()[0] == "| | Volume (cm³) GenEva |"
    assert "Mean ± SD" not in text


def test_table2_unknown_metric_is_refused() -> None:
    with pytest.raises(EvaluationError, match=r"unknown metric for Table 2.*rmsd"):
        render_table2(_fixture_comparison(), "markdown", metrics=["rmsd"])


def test_table2_unknown_format_is_refused() -> None:
    with pytest.raises(EvaluationError, match="unknown table format"):
        render_table2(_fixture_comparison(), "html")  # type: ignore[arg-type]


def test_table2_of_two_model_pairs_is_refused() -> None:
    both = pd.concat(
        [_fixture_comparison(), compare(FIXTURE, "LFT", "VPM", bootstrap=0)], ignore_index=True
    )
    with pytest.raises(EvaluationError, match="comparison holds several model pairs"):
        render_table2(both)


# ---------------------------------------------------------------------------------- files
def test_written_files_and_settings(tmp_path: Path) -> None:
    result = compare(FIXTURE, "VPM", "LFT", bootstrap=200, seed=1, correction="bh")
    paths = write_comparison(result, tmp_path / "out", source=FIXTURE)
    back = pd.read_csv(paths["comparison_csv"])
    assert list(back.columns) == list(COMPARISON_COLUMNS)
    assert len(back) == len(result)
    data = json.loads(paths["comparison_json"].read_text())
    assert data["settings"]["correction"] == "bh"
    assert data["settings"]["seed"] == 1
    assert data["input"]["metrics_csv"] == FIXTURE.name
    assert len(data["input"]["metrics_csv_sha256"]) == 64
    assert data["software"]["dlas"]
    assert paths["table2_md"].read_text(encoding="utf-8") == render_table2(result, "markdown")


def test_compare_with_out_writes_the_files(tmp_path: Path) -> None:
    compare(FIXTURE, "VPM", "LFT", bootstrap=0, out=tmp_path / "cmp")
    names = sorted(p.name for p in (tmp_path / "cmp").iterdir())
    assert names == ["comparison.csv", "comparison.json", "table2.csv", "table2.md", "table2.tex"]


# ---------------------------------------------------------------------------------- refusals
def test_model_compared_with_itself_is_refused() -> None:
    with pytest.raises(EvaluationError, match="a model compared with itself"):
        compare(FIXTURE, "VPM", "VPM")


def test_unknown_model_is_refused() -> None:
    with pytest.raises(EvaluationError, match=r"model not in the metrics table.*LFT, VPM"):
        compare(FIXTURE, "VPM", "nnUNet")


def test_unknown_correction_is_refused() -> None:
    with pytest.raises(EvaluationError, match="unknown multiple-testing correction"):
        compare(FIXTURE, "VPM", "LFT", correction="bonferroni")  # type: ignore[arg-type]


def test_unknown_zero_method_is_refused() -> None:
    with pytest.raises(EvaluationError, match="unknown zero method"):
        compare(FIXTURE, "VPM", "LFT", zero_method="drop")  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.05])
def test_invalid_alpha_is_refused(alpha: float) -> None:
    with pytest.raises(EvaluationError, match="invalid significance level"):
        compare(FIXTURE, "VPM", "LFT", alpha=alpha)


def test_negative_bootstrap_is_refused() -> None:
    with pytest.raises(EvaluationError, match="invalid number of bootstrap resamples"):
        compare(FIXTURE, "VPM", "LFT", bootstrap=-1)


def test_duplicated_rows_are_refused() -> None:
    table = read_metrics(FIXTURE)
    doubled = pd.concat([table, table.iloc[[0]]], ignore_index=True)
    with pytest.raises(EvaluationError, match=r"case EX001.*a case appears twice"):
        compare(doubled, "VPM", "LFT")


# ---------------------------------------------------------------------- non-finite values
def test_missed_structure_stays_in_the_test_as_the_largest_difference() -> None:
    # B misses the structure in one case: its 95HD is +inf. That case used to be dropped from
    # the test silently; it is B's worst case and ranks as the largest difference.
    a = [5.0, 6.0, 7.0, 5.5, 6.5, 7.5, 8.0, 4.0, 6.2, 5.8]
    b = [4.0, 5.0, 7.5, 5.0, 6.0, 7.0, 7.0, 3.0, 6.0, math.inf]
    row = compare(_table(a, b, "hd95_mm"), "A", "B", bootstrap=0).iloc[0]
    assert (row["n_pairs"], row["n_pairs_nonfinite"]) == (10, 1)
    assert (row["n_a"], row["n_b"], row["n_nonfinite_a"], row["n_nonfinite_b"]) == (10, 9, 0, 1)
    d = np.array(b) - np.array(a)
    expected = stats.wilcoxon(d)  # scipy ranks the infinite difference above every other
    assert row["p_value"] == pytest.approx(expected.pvalue)
    finite = d[np.isfinite(d)]
    assert row["mean_diff"] == pytest.approx(finite.mean())
    assert row["mean_b"] == pytest.approx(np.mean(b[:9]))
    # Dropping the missed case instead would have made B look better than it is.
    dropped = stats.wilcoxon(finite).pvalue
    assert row["p_value"] != pytest.approx(dropped)


def test_both_models_missing_a_structure_is_a_tie_not_an_exclusion() -> None:
    a = [5.0, 6.0, 7.0, 5.5, 6.5, 7.5, math.inf]
    b = [4.0, 5.0, 7.5, 5.0, 6.0, 7.0, math.inf]
    row = compare(_table(a, b, "hd95_mm"), "A", "B", bootstrap=0, zero_method="pratt").iloc[0]
    assert (row["n_pairs"], row["n_pairs_nonfinite"]) == (7, 1)
    d = np.array(b[:6]) - np.array(a[:6])
    assert row["p_value"] == pytest.approx(
        stats.wilcoxon(np.append(d, 0.0), zero_method="pratt").pvalue
    )


def test_table2_states_n_and_marks_excluded_and_kept_values() -> None:
    a = [5.0, 6.0, 7.0, 5.5, 6.5, 7.5, 8.0, 4.0, 6.2, 5.8]
    b = [4.0, 5.0, 7.5, 5.0, 6.0, 7.0, 7.0, 3.0, 6.0, math.inf]
    text = render_table2(
        compare(_table(a, b, "hd95_mm"), "A", "B", bootstrap=0), "markdown", metrics=["hd95_mm"]
    )
    lines = text.splitlines()
    assert lines[3] == f"| A | {np.mean(a):.3f} ± {np.std(a, ddof=1):.3f} |"
    assert lines[4].endswith(" (n = 9)† |")
    assert lines[5].endswith("‡ |")
    assert "n = cases per cohort (X 10) unless a cell states its own." in text
    assert "† Mean ± SD over the cases with a finite value" in text
    assert "‡ The test keeps the pairs with an infinite value" in text
    latex = render_table2(
        compare(_table(a, b, "hd95_mm"), "A", "B", bootstrap=0), "latex", metrics=["hd95_mm"]
    )
    assert "($n = 9$)$^\\dagger$" in latex and "$^\\ddagger$" in latex


def test_fails_count_the_structures_each_model_missed() -> None:
    table = _table([5.0, 6.0, 7.0, 5.5], [4.0, 5.0, 7.5, math.inf], "hd95_mm")
    table["volume_ref_cm3"] = 100.0
    table["volume_cm3"] = 90.0
    missed = (table["model"] == "B") & (table["case_id"] == "C003")
    table.loc[missed, "volume_cm3"] = 0.0
    result = compare(table, "A", "B", bootstrap=0)
    assert (result["fails_a"] == 0).all() and (result["fails_b"] == 1).all()
    text = render_table2(result, "markdown", metrics=["hd95_mm"])
    assert "Structures missed (empty prediction, reference present): A 0, B 1." in text
    # Without volume columns there is nothing to count and no sentence.
    plain = compare(_table([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]), "A", "B", bootstrap=0)
    assert (plain["fails_b"] == 0).all()
    assert "Structures missed" not in render_table2(plain, "markdown", metrics=["dsc"])
