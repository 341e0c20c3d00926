"""The report's tables: known values, and renderings compared with checked-in files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dlas.report import Table, cohort_table, load_study, volume_table
from dlas.report.tables import table2, table2_display

from .conftest import StudyFixture

EXPECTED = Path(__file__).parent / "expected"


def _volume(study: StudyFixture) -> Table:
    inputs = load_study(study.root)
    return volume_table(
        inputs.metrics,
        "CTV",
        ["VPM", "LFT"],
        ["ExVal", "GenEva"],
        inputs.comparison,
        ("VPM", "LFT"),
    )


def test_cohort_table_describes_each_cohort(study: StudyFixture) -> None:
    inputs = load_study(study.root)
    table = cohort_table(inputs.dataset, ["ExVal", "GenEva"])
    assert [r[0] for r in table.rows] == ["training", "ExVal", "GenEva"]
    training, exval, geneva = table.rows
    # Fixture: every third case female, ages 50 + 3 i, 64 columns of 2.5 mm (FOV 16 cm).
    assert exval[1:4] == ["6", "2/4", "50–65, 57.5"]
    assert training[2] == "1/1"
    assert exval[4] == "SIEMENS Sensation Open"
    assert geneva[4] == "Philips Big Bore"
    assert exval[5:] == ["120", "16", "2.5×2.5×5"]
    assert table.data is not None
    assert table.data.loc[table.data["cohort"] == "GenEva", "evaluated"].item()
    assert not table.data.loc[table.data["cohort"] == "training", "evaluated"].item()


def test_cohort_table_rendering_matches_expected(study: StudyFixture) -> None:
    table = cohort_table(load_study(study.root).dataset, ["ExVal", "GenEva"])
    assert table.to_markdown() == (EXPECTED / "table1_cohorts.md").read_text(encoding="utf-8")
    assert table.to_latex() == (EXPECTED / "table1_cohorts.tex").read_text(encoding="utf-8")


def test_volume_table_numbers_are_the_metrics_means(study: StudyFixture) -> None:
    table = _volume(study)
    metrics = pd.read_csv(study.metrics)
    ctv = metrics[(metrics["structure"] == "CTV") & (metrics["cohort"] == "ExVal")]
    data = table.data
    assert data is not None
    row = data[data["cohort"] == "ExVal"].iloc[0]
    vpm = ctv[ctv["model"] == "VPM"]
    assert row["VPM_mean_cm3"] == pytest.approx(vpm["volume_cm3"].mean())
    assert row["VPM_error_sd_pct"] == pytest.approx(vpm["volume_error_pct"].std(ddof=1))
    assert row["gt_mean_cm3"] == pytest.approx(vpm["volume_ref_cm3"].mean())
    # The vendor model of the fixture over-contours the CTV by about 20 %.
    assert 15 < row["VPM_error_mean_pct"] < 30
    assert abs(row["LFT_error_mean_pct"]) < 3


def test_volume_table_rendering_matches_expected(study: StudyFixture) -> None:
    table = _volume(study)
    assert table.to_markdown() == (EXPECTED / "volume_CTV.md").read_text(encoding="utf-8")
    assert table.to_latex() == (EXPECTED / "volume_CTV.tex").read_text(encoding="utf-8")


def test_section_rows_render_in_every_format() -> None:
    table = Table(
        "T", ["", "a", "b"], [["Bladder"], ["VPM", "0.9 ± 0.1", "< 0.01"]], notes=["n = 3"]
    )
    assert "| **Bladder** |  |  |" in table.to_markdown()
    assert "\\multicolumn{3}{l}{\\textbf{Bladder}} \\\\" in table.to_latex()
    assert "0.9 $\\pm$ 0.1 & $<$ 0.01" in table.to_latex()
    html = table.to_html("t")
    assert '<tr class="section"><th colspan="3">Bladder</th></tr>' in html
    assert "<td>&lt; 0.01</td>" in html
    assert table.to_csv().splitlines() == [",a,b", "Bladder,,", "VPM,0.9 ± 0.1,< 0.01"]


def test_table2_csv_becomes_a_table_with_a_section_per_structure(study: StudyFixture) -> None:
    comparison = load_study(study.root).comparison
    assert comparison is not None
    table = table2_display(table2(comparison, "csv", ["ExVal", "GenEva"]), "Table 2")
    assert table.columns[:3] == ["", "DSC ExVal", "DSC GenEva"]
    assert table.rows[0] == ["CTV"]
    assert [r[0] for r in table.rows[1:4]] == ["VPM", "LFT", "p-value"]
    assert table.rows[1][1] == "0.897 ± 0.004"
    assert [r[0] for r in table.rows if len(r) == 1] == [
        "CTV",
        "Bladder",
        "Femur_Head_L",
        "Femur_Head_R",
        "Bowel_Small",
    ]


def test_table2_html_matches_expected(study: StudyFixture) -> None:
    """The report's HTML Table 2 (the evaluation's layout, converted by the report)."""
    comparison = load_study(study.root).comparison
    assert comparison is not None
    table = table2_display(table2(comparison, "csv", ["ExVal", "GenEva"]), "Table 2")
    expected = (EXPECTED / "table2.html").read_text(encoding="utf-8")
    assert table.to_html("table2") + "\n" == expected


def test_unknown_volume_structure_is_refused(study: StudyFixture) -> None:
    from dlas.report import ReportError

    inputs = load_study(study.root)
    with pytest.raises(ReportError, match=r"structure not in the metrics table.*'Prostate'"):
        volume_table(inputs.metrics, "Prostate", ["VPM"], ["ExVal"], None, None)
