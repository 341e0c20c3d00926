"""Reading and checking a report's inputs: study folders, metrics CSVs, comparisons."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from dlas.errors import EvaluationError
from dlas.evaluation import COLUMNS, COMPARISON_COLUMNS, LATER_COMPARISON_COLUMNS
from dlas.report import (
    ReportError,
    load_inputs,
    load_study,
    read_comparison,
    read_metrics,
    resolve_inputs,
)

from .conftest import MODELS, StudyFixture


def test_study_folder_gives_every_input(study: StudyFixture) -> None:
    inputs = load_study(study.root)
    assert inputs.model_names == list(MODELS)
    assert inputs.cohort_names == ["ExVal", "GenEva"]
    assert inputs.structure_names == [
        "CTV",
        "Bladder",
        "Femur_Head_L",
        "Femur_Head_R",
        "Bowel_Small",
    ]
    assert set(inputs.predictions) == set(MODELS)
    assert inputs.comparison is not None and len(inputs.comparison) > 0
    assert [m["name"] for m in inputs.models] == ["LFT", "VPM"]
    assert inputs.models[0]["sha256"].startswith("lft")
    assert inputs.config is not None and len(inputs.config["sha256"]) == 64
    assert inputs.metrics_meta["options"]["hd95"] == "pooled"


def test_metrics_csv_with_explicit_inputs(study: StudyFixture) -> None:
    inputs = resolve_inputs(
        study.metrics,
        dataset=study.dataset,
        predictions=study.predictions,
        comparison=study.comparison,
    )
    assert inputs.config is None
    assert len(inputs.metrics) == 12 * 2 * 5
    # the evaluation's schema, in order: every metric, flags and qa; the comparison with the
    # counts of non-finite values and misses that Table 2's marks and footnotes need
    assert list(inputs.metrics.columns) == list(COLUMNS)
    assert list(inputs.comparison.columns) == list(COMPARISON_COLUMNS)
    assert inputs.comparison["significant"].dtype == bool


def test_comparison_of_an_earlier_version_still_reads(tmp_path: Path, study: StudyFixture) -> None:
    """A comparison.csv written before the non-finite counts existed: the required columns
    suffice, and Table 2 renders without marks."""
    from dlas.evaluation import render_table2
    from dlas.report import read_comparison

    table = pd.read_csv(Path(study.comparison) / "comparison.csv")
    old = tmp_path / "comparison.csv"
    earlier = [c for c in COMPARISON_COLUMNS if c not in LATER_COMPARISON_COLUMNS]
    table[earlier].to_csv(old, index=False)
    comparison, _ = read_comparison(old)
    assert list(comparison.columns) == earlier
    assert "†" not in render_table2(comparison, "markdown")


def test_nan_and_inf_are_read_as_floats(tmp_path: Path, study: StudyFixture) -> None:
    table = pd.read_csv(study.metrics, dtype={"flags": str}, keep_default_na=False)
    table = table.astype({"hd95_mm": str, "dsc": str})
    table.loc[0, "hd95_mm"] = "inf"
    table.loc[1, "dsc"] = "nan"
    path = tmp_path / "metrics.csv"
    table.to_csv(path, index=False)
    metrics = read_metrics(path)
    assert math.isinf(metrics.loc[0, "hd95_mm"])
    assert math.isnan(metrics.loc[1, "dsc"])
    assert metrics.loc[0, "flags"] == ""


def test_missing_metrics_csv_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match=r"metrics CSV not found.*dlas evaluate"):
        read_metrics(tmp_path / "metrics.csv")


def test_metrics_csv_missing_columns_is_refused(tmp_path: Path, study: StudyFixture) -> None:
    path = tmp_path / "metrics.csv"
    pd.read_csv(study.metrics).drop(columns=["hd95_mm", "specificity"]).to_csv(path, index=False)
    with pytest.raises(EvaluationError, match=r"lacks columns.*found no hd95_mm, specificity"):
        read_metrics(path)


def test_metrics_csv_without_rows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(EvaluationError, match=r"has no rows"):
        read_metrics(path)


def test_metrics_csv_non_number_is_refused(tmp_path: Path, study: StudyFixture) -> None:
    table = pd.read_csv(study.metrics, dtype={"flags": str}, keep_default_na=False)
    table = table.astype({"dsc": str})
    table.loc[3, "dsc"] = "high"
    path = tmp_path / "metrics.csv"
    table.to_csv(path, index=False)
    with pytest.raises(EvaluationError, match=r"row 5, column dsc: .*non-number.*'high'"):
        read_metrics(path)


def test_metrics_csv_duplicate_rows_are_refused(tmp_path: Path, study: StudyFixture) -> None:
    table = pd.read_csv(study.metrics)
    path = tmp_path / "metrics.csv"
    pd.concat([table, table.iloc[[0]]]).to_csv(path, index=False)
    with pytest.raises(EvaluationError, match=r"lists a case twice.*case EX001, model VPM"):
        read_metrics(path)


def test_comparison_missing_columns_is_refused(tmp_path: Path, study: StudyFixture) -> None:
    folder = tmp_path / "comparison"
    folder.mkdir()
    table = pd.read_csv(study.comparison / "comparison.csv").drop(columns=["p_value"])
    table.to_csv(folder / "comparison.csv", index=False)
    with pytest.raises(EvaluationError, match=r"comparison CSV lacks columns.*no p_value"):
        read_comparison(folder)


def test_prediction_missing_for_a_model_is_refused(study: StudyFixture) -> None:
    with pytest.raises(ReportError, match=r"no prediction folder.*none for LFT.*--prediction"):
        load_inputs(
            study.metrics, dataset=study.dataset, predictions={"VPM": study.predictions["VPM"]}
        )


def test_prediction_of_unknown_model_is_refused(study: StudyFixture) -> None:
    predictions = {**study.predictions, "Other": study.predictions["VPM"]}
    with pytest.raises(ReportError, match=r"does not hold.*found Other"):
        load_inputs(study.metrics, dataset=study.dataset, predictions=predictions)


def test_missing_prediction_folder_is_refused(study: StudyFixture, tmp_path: Path) -> None:
    predictions = {**study.predictions, "LFT": tmp_path / "nowhere"}
    with pytest.raises(ReportError, match=r"prediction folder not found.*model LFT"):
        load_inputs(study.metrics, dataset=study.dataset, predictions=predictions)


def test_cases_missing_from_dataset_are_refused(study: StudyFixture, tmp_path: Path) -> None:
    table = pd.read_csv(study.metrics, dtype={"flags": str}, keep_default_na=False)
    table.loc[table["case_id"] == "EX001", "case_id"] = "ZZ999"
    path = tmp_path / "metrics.csv"
    table.to_csv(path, index=False)
    with pytest.raises(ReportError, match=r"cases that the data set lacks.*ZZ999"):
        load_inputs(path, dataset=study.dataset, predictions=study.predictions)


def test_comparison_of_unknown_model_is_refused(study: StudyFixture, tmp_path: Path) -> None:
    folder = tmp_path / "comparison"
    folder.mkdir()
    table = pd.read_csv(study.comparison / "comparison.csv")
    table["model_b"] = "Other"
    table.to_csv(folder / "comparison.csv", index=False)
    with pytest.raises(ReportError, match=r"comparison names a model.*found Other"):
        load_inputs(
            study.metrics, dataset=study.dataset, predictions=study.predictions, comparison=folder
        )


def test_metrics_csv_without_dataset_is_refused(study: StudyFixture) -> None:
    with pytest.raises(ReportError, match=r"needs its data set.*--dataset"):
        resolve_inputs(study.metrics)


def test_folder_that_is_not_a_study_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"needs its data set"):
        resolve_inputs(tmp_path)
    with pytest.raises(ReportError, match=r"not a study folder.*no study.yaml"):
        load_study(tmp_path)


def test_study_folder_with_explicit_inputs_is_refused(study: StudyFixture) -> None:
    with pytest.raises(ReportError, match=r"already names its data set"):
        resolve_inputs(study.root, dataset=study.dataset)


def test_study_without_metrics_is_refused(copy_study: Callable[[], StudyFixture]) -> None:
    copy = copy_study()
    copy.metrics.unlink()
    with pytest.raises(EvaluationError, match=r"metrics CSV not found"):
        load_study(copy.root)


def test_study_without_comparison_leaves_it_to_compute(
    copy_study: Callable[[], StudyFixture],
) -> None:
    copy = copy_study()
    shutil.rmtree(copy.comparison)
    assert load_study(copy.root).comparison is None
