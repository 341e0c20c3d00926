"""`evaluate`: the long metrics table, its sidecar, and every refusal by name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dlas import __version__
from dlas.evaluation import (
    COLUMNS,
    EvaluationError,
    MetricOptions,
    compute_metrics,
    evaluate,
    parse_prediction,
    read_metrics,
)
from dlas.io import Volume, read_mask, write_mask

from .conftest import COHORTS, MODELS, SPACING, Study, predicted_masks, reference_masks


def _sources(study: Study) -> dict[str, str]:
    return {name: str(folder) for name, folder in study.predictions.items()}


def test_one_row_per_case_model_and_structure_with_the_declared_columns(study: Study) -> None:
    result = evaluate(study.dataset, _sources(study))
    table = result.table
    assert list(table.columns) == list(COLUMNS)
    # 6 cases x 2 models x 3 structures, less GE003's missing femoral head for both models.
    assert len(table) == 6 * 2 * 3 - 2
    assert not ((table["case_id"] == "GE003") & (table["structure"] == "Femur_Head_L")).any()
    cohorts = dict(zip(table["case_id"], table["cohort"], strict=False))
    assert cohorts == {c: k for k, ids in COHORTS.items() for c in ids}
    # Rows ordered by case, then model, then structure in the structure set's order.
    first = table.iloc[:6]
    assert list(first["model"]) == ["VPM"] * 3 + ["LFT"] * 3
    assert list(first["structure"]) == ["CTV", "Bladder", "Femur_Head_L"] * 2


def test_values_equal_compute_metrics_on_the_files(study: Study) -> None:
    options = MetricOptions(hd95="mean", specificity_domain="union-bbox", tolerance_mm=1.0)
    table = evaluate(study.dataset, _sources(study), options=options).table
    row = table[
        (table["case_id"] == "GE002")
        & (table["model"] == "VPM")
        & (table["structure"] == "Bladder")
    ].iloc[0]
    ref = reference_masks(4)["Bladder"]
    pred = predicted_masks("VPM", reference_masks(4), 4)["Bladder"]
    expected = compute_metrics(ref, pred, SPACING, options).as_dict()
    for name, value in expected.items():
        assert row[name] == value, name


def test_empty_prediction_file_is_evaluated_and_flagged(study: Study) -> None:
    table = evaluate(study.dataset, _sources(study), cases=["EX002"]).table
    row = table[(table["model"] == "LFT") & (table["structure"] == "Bladder")].iloc[0]
    assert row["flags"] == "prediction_empty"
    assert row["dsc"] == 0.0
    assert row["hd95_mm"] == math.inf


def test_workers_give_the_same_table(study: Study) -> None:
    one = evaluate(study.dataset, _sources(study), workers=1).table
    two = evaluate(study.dataset, _sources(study), workers=2).table
    assert one.equals(two)


def test_selection_by_cohort_case_and_structure(study: Study) -> None:
    table = evaluate(
        study.dataset, _sources(study), cohorts=["GenEva"], structures=["Bladder"]
    ).table
    assert set(table["case_id"]) == set(COHORTS["GenEva"])
    assert set(table["structure"]) == {"Bladder"}
    table = evaluate(study.dataset, {"VPM": str(study.predictions["VPM"])}, cases=["EX003"]).table
    assert set(table["case_id"]) == {"EX003"} and set(table["model"]) == {"VPM"}


def test_sidecar_records_definitions_versions_and_hashes(study: Study, tmp_path: Path) -> None:
    result = evaluate(study.dataset, _sources(study), options=MetricOptions(hd95="max"))
    _, sidecar = result.write(tmp_path / "metrics.csv")
    assert sidecar == tmp_path / "metrics.json"
    data = json.loads(sidecar.read_text())
    assert data["software"]["dlas"] == __version__
    assert data["options"]["hd95"] == "max"
    assert "larger of the two directed 95th percentiles" in data["definitions"]["hd95_mm"]
    assert "10 mm" in data["definitions"]["specificity"]
    assert data["columns"] == list(COLUMNS)
    assert data["flags"] == {"prediction_empty": 1}
    assert data["metrics_csv"] == "metrics.csv"
    assert set(data["predictions"]) == set(MODELS)
    hashes = [
        data["reference"]["masks_sha256"],
        *(p["masks_sha256"] for p in data["predictions"].values()),
    ]
    assert all(len(h) == 64 for h in hashes) and len(set(hashes)) == 3
    # Same inputs, same hashes and numbers.
    again = evaluate(study.dataset, _sources(study), options=MetricOptions(hd95="max"))
    assert again.metadata == result.metadata
    assert again.table.equals(result.table)


def test_csv_writes_nan_and_inf_and_reads_back_equal(study: Study, tmp_path: Path) -> None:
    result = evaluate(study.dataset, _sources(study), cases=["EX002"])
    table = result.table.copy()
    table.loc[0, "specificity"] = math.nan  # as a both-empty row would have
    result.table = table
    csv_path, _ = result.write(tmp_path / "metrics.csv")
    text = csv_path.read_text()
    assert ",inf," in text and ",nan," in text and "prediction_empty" in text
    back = read_metrics(csv_path)
    assert list(back.columns) == list(COLUMNS)
    assert back["case_id"].tolist() == table["case_id"].tolist()
    np.testing.assert_array_equal(back["hd95_mm"].to_numpy(), table["hd95_mm"].to_numpy())
    assert math.isnan(back.loc[0, "specificity"])
    assert back["flags"].tolist() == table["flags"].tolist()


def test_case_ids_that_look_like_numbers_stay_text(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("case_id,cohort,model,structure,dsc,flags\n007,A,VPM,CTV,0.9,\n")
    table = read_metrics(path)
    assert table.loc[0, "case_id"] == "007"
    assert table.loc[0, "flags"] == ""


def test_body_domain_uses_the_body_of_the_ct(study: Study) -> None:
    result = evaluate(
        study.dataset,
        _sources(study),
        cases=["EX001"],
        options=MetricOptions(specificity_domain="body"),
    )
    assert "largest 6-connected component" in result.metadata["definitions"]["body"]
    row = result.table[
        (result.table["model"] == "VPM") & (result.table["structure"] == "CTV")
    ].iloc[0]
    ref = reference_masks(0)
    body = np.zeros(ref["CTV"].shape, dtype=bool)
    body[:, 2:30, 1:31] = True  # the fixture's body (its structures lie inside)
    expected = compute_metrics(
        ref["CTV"],
        predicted_masks("VPM", ref, 0)["CTV"],
        SPACING,
        specificity_domain="body",
        body_mask=body,
    )
    assert row["specificity"] == pytest.approx(expected.specificity)


# ---------------------------------------------------------------------------------- grids
def _regrid(path: Path, *, origin_shift: float = 0.0, factor: int = 1) -> None:
    """Rewrite a prediction file on another grid (shifted origin or coarser pixels)."""
    mask = read_mask(path)
    array = mask.array
    spacing = mask.spacing.copy()
    if factor > 1:
        array = array[:, ::factor, ::factor]
        spacing[1:] *= factor
    origin = mask.origin + np.array([origin_shift, 0.0, 0.0])
    write_mask(Volume(array, spacing, origin, mask.direction), path)


def test_prediction_on_another_grid_is_refused(own_study: Study) -> None:
    path = own_study.predictions["LFT"] / "EX001" / "structures" / "CTV.nii.gz"
    _regrid(path, origin_shift=1.5)
    with pytest.raises(
        EvaluationError, match=r"prediction grid differs from the reference grid.*--resample"
    ):
        evaluate(own_study.dataset, _sources(own_study))


def test_resample_puts_the_prediction_on_the_reference_grid_and_flags_it(
    own_study: Study,
) -> None:
    path = own_study.predictions["LFT"] / "EX001" / "structures" / "CTV.nii.gz"
    _regrid(path, factor=2)
    table = evaluate(own_study.dataset, _sources(own_study), resample=True, cases=["EX001"]).table
    row = table[(table["model"] == "LFT") & (table["structure"] == "CTV")].iloc[0]
    assert row["flags"] == "resampled"
    # Nearest neighbour of a 2x coarser copy: close to, not equal to, the original result.
    assert 0.6 < row["dsc"] < 0.95
    others = table[(table["model"] != "LFT") | (table["structure"] != "CTV")]
    assert (others["flags"] == "").all()


# ---------------------------------------------------------------------------------- refusals
def test_missing_prediction_file_is_refused(own_study: Study) -> None:
    (own_study.predictions["VPM"] / "GE001" / "structures" / "Bladder.nii.gz").unlink()
    with pytest.raises(EvaluationError, match=r"prediction missing.*GE001/Bladder"):
        evaluate(own_study.dataset, _sources(own_study))


def test_prediction_folder_without_a_case_is_refused(own_study: Study) -> None:
    import shutil

    shutil.rmtree(own_study.predictions["LFT"] / "GE002")
    with pytest.raises(EvaluationError, match=r"prediction folder lacks cases.*GE002.*--cohort"):
        evaluate(own_study.dataset, _sources(own_study))


def test_missing_prediction_folder_is_refused(study: Study, tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="prediction folder not found"):
        evaluate(study.dataset, {"VPM": str(tmp_path / "nowhere")})


def test_no_prediction_is_refused(study: Study) -> None:
    with pytest.raises(EvaluationError, match="no prediction given"):
        evaluate(study.dataset, {})


def test_duplicate_prediction_name_is_refused(study: Study) -> None:
    sources = [
        parse_prediction(f"VPM={study.predictions['VPM']}"),
        parse_prediction(f"VPM={study.predictions['LFT']}"),
    ]
    with pytest.raises(EvaluationError, match=r"prediction name given twice.*VPM"):
        evaluate(study.dataset, sources)


@pytest.mark.parametrize("spec", ["predictions/vpm", "=predictions/vpm", "V PM=dir", "VPM="])
def test_malformed_prediction_option_is_refused(spec: str) -> None:
    with pytest.raises(EvaluationError, match="cannot read the prediction option"):
        parse_prediction(spec)


def test_unknown_cohort_is_refused(study: Study) -> None:
    with pytest.raises(EvaluationError, match=r"unknown cohort.*ExVal, GenEva.*found Training"):
        evaluate(study.dataset, _sources(study), cohorts=["Training"])


def test_unknown_case_is_refused(study: Study) -> None:
    with pytest.raises(EvaluationError, match=r"unknown case.*XX999"):
        evaluate(study.dataset, _sources(study), cases=["XX999"])


def test_unknown_structure_is_refused(study: Study) -> None:
    with pytest.raises(EvaluationError, match=r"unknown structure.*Rectum"):
        evaluate(study.dataset, _sources(study), structures=["Rectum"])


def test_selection_without_structures_is_refused(study: Study) -> None:
    with pytest.raises(EvaluationError, match="nothing to evaluate"):
        evaluate(study.dataset, _sources(study), cases=["GE003"], structures=["Femur_Head_L"])


def test_zero_workers_is_refused(study: Study) -> None:
    with pytest.raises(EvaluationError, match="invalid number of workers"):
        evaluate(study.dataset, _sources(study), workers=0)


def test_output_without_csv_suffix_is_refused(study: Study, tmp_path: Path) -> None:
    result = evaluate(study.dataset, _sources(study), cases=["EX001"])
    with pytest.raises(EvaluationError, match=r"metrics output must be a \.csv file"):
        result.write(tmp_path / "metrics.json")
    assert not (tmp_path / "metrics.json").exists()


def test_missing_metrics_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="metrics CSV not found"):
        read_metrics(tmp_path / "metrics.csv")


def test_metrics_table_without_identifying_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("case,dsc\nA,0.5\n")
    with pytest.raises(
        EvaluationError,
        match=r"metrics CSV lacks columns.*found no case_id, cohort, model, structure",
    ):
        read_metrics(path)


def test_non_numeric_metric_value_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("case_id,cohort,model,structure,dsc\nA,X,VPM,CTV,high\n")
    with pytest.raises(
        EvaluationError, match=r"row 2, column dsc: metrics CSV holds a non-number.*'high'"
    ):
        read_metrics(path)
