"""The results schema's one reader (dlas.evaluation.results): what `dlas compare`, the report
and the study read back, checked the same way everywhere."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from dlas.errors import EvaluationError
from dlas.evaluation import (
    COLUMNS,
    COMPARISON_COLUMNS,
    INTEROBSERVER_COLUMNS,
    read_comparison,
    read_interobserver,
    read_metrics,
)
from dlas.evaluation.results import read_sidecar

ID = "case_id,cohort,model,structure"


def _comparison_row(**values: object) -> dict[str, object]:
    row: dict[str, object] = {c: 0.5 for c in COMPARISON_COLUMNS}
    row.update(
        cohort="ExVal",
        structure="CTV",
        metric="dsc",
        model_a="VPM",
        model_b="LFT",
        correction="none",
        test="wilcoxon",
        zero_method="wilcox",
        significant=True,
    )
    row.update(values)
    return row


def test_identifying_columns_suffice_unless_every_metric_is_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(f"{ID},dsc,hd95_mm\nEX1,ExVal,VPM,CTV,0.8,inf\n", encoding="utf-8")
    table = read_metrics(path)
    assert list(table.columns) == [*ID.split(","), "dsc", "hd95_mm", "flags", "qa"]
    assert math.isinf(table.loc[0, "hd95_mm"]) and table.loc[0, "qa"] == ""
    with pytest.raises(
        EvaluationError, match=r"metrics CSV lacks columns.*found no hd_mm, sensitivity"
    ):
        read_metrics(path, every_metric=True)


def test_columns_come_back_in_schema_order_and_unknown_ones_are_dropped(tmp_path: Path) -> None:
    shuffled = ["qa", "dsc", *ID.split(","), "note"]
    path = tmp_path / "m.csv"
    pd.DataFrame([["", 0.9, "007", "A", "M", "CTV", "x"]], columns=shuffled).to_csv(
        path, index=False
    )
    table = read_metrics(path)
    assert list(table.columns) == [c for c in COLUMNS if c in shuffled or c == "flags"]
    assert table.loc[0, "case_id"] == "007"


def test_an_empty_metric_field_is_undefined_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(f"{ID},dsc,specificity\nA,X,M,CTV,,nan\n", encoding="utf-8")
    table = read_metrics(path)
    assert math.isnan(table.loc[0, "dsc"]) and math.isnan(table.loc[0, "specificity"])


def test_numbers_are_parsed_exactly(tmp_path: Path) -> None:
    values = [0.1, 1 / 3, 2.2250738585072014e-308, 0.8331999999999999]
    path = tmp_path / "m.csv"
    rows = "".join(f"C{i},X,M,CTV,{v!r}\n" for i, v in enumerate(values))
    path.write_text(f"{ID},dsc\n" + rows, encoding="utf-8")
    assert read_metrics(path)["dsc"].tolist() == values


def test_a_file_that_is_not_csv_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(EvaluationError, match=r"metrics CSV cannot be parsed"):
        read_metrics(path)
    path.write_text("", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"metrics CSV cannot be parsed.*No columns to parse"):
        read_metrics(path)


def test_a_folder_given_as_the_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match=r"metrics CSV not found.*found a folder"):
        read_metrics(tmp_path)


def test_comparison_reads_its_flag_and_sidecar_and_keeps_schema_order(tmp_path: Path) -> None:
    rows = [_comparison_row(), _comparison_row(structure="Bladder", significant=False)]
    pd.DataFrame(rows)[list(reversed(COMPARISON_COLUMNS))].to_csv(
        tmp_path / "comparison.csv", index=False
    )
    (tmp_path / "comparison.json").write_text('{"alpha": 0.05}', encoding="utf-8")
    table, meta = read_comparison(tmp_path)
    assert list(table.columns) == list(COMPARISON_COLUMNS)
    assert table["significant"].tolist() == [True, False]
    assert meta == {"alpha": 0.05}


def test_comparison_with_a_non_number_names_its_row(tmp_path: Path) -> None:
    rows = [_comparison_row(), _comparison_row(p_value="small")]
    pd.DataFrame(rows).to_csv(tmp_path / "comparison.csv", index=False)
    with pytest.raises(EvaluationError, match=r"row 3, column p_value: comparison CSV holds"):
        read_comparison(tmp_path)


def test_interobserver_table_is_optional_and_read_with_its_within_flag(tmp_path: Path) -> None:
    assert read_interobserver(tmp_path) is None
    rows = [{**_comparison_row(), "within": w} for w in ("True", "False", "")]
    pd.DataFrame(rows).to_csv(tmp_path / "interobserver.csv", index=False)
    table = read_interobserver(tmp_path)
    assert table is not None and list(table.columns) == list(INTEROBSERVER_COLUMNS)
    assert table["within"].tolist()[:2] == [True, False] and math.isnan(table["within"].iloc[2])


def test_sidecar_that_is_not_a_json_object_is_refused(tmp_path: Path) -> None:
    assert read_sidecar(tmp_path / "none.json") == {}
    path = tmp_path / "metrics.json"
    path.write_text("{broken", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"sidecar JSON is not valid JSON.*line 1"):
        read_sidecar(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"sidecar JSON is not an object.*found list"):
        read_sidecar(path)
