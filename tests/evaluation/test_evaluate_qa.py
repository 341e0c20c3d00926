"""The ``qa`` column of the metrics table: prediction QA codes read from each qa.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlas.errors import EvaluationError
from dlas.evaluation import COLUMNS, evaluate, read_metrics
from dlas.io import write_mask
from dlas.prediction import check_prediction
from helpers import synthetic_data as sd


def _study(tmp_path: Path) -> tuple[Path, Path]:
    """Two synthetic cases; predictions equal to the ground truth, except case00 whose femoral
    heads are swapped (left/right), with the qa.json prediction QA writes for them."""
    dataset = sd.make_dataset(tmp_path / "ds", 2, seed=3)
    pred = tmp_path / "pred"
    for case_id in dataset.case_ids():
        case = dataset.load_case(case_id)
        masks = dict(case.structures)
        if case_id == "case00":
            masks["Femur_Head_L"], masks["Femur_Head_R"] = (
                masks["Femur_Head_R"],
                masks["Femur_Head_L"],
            )
        for name, mask in masks.items():
            write_mask(mask, pred / case_id / "structures" / f"{name}.nii.gz")
        qa = check_prediction(case.ct, masks, dataset.structure_set, {})
        (pred / case_id / "qa.json").write_text(json.dumps(qa.to_data()), encoding="utf-8")
    return tmp_path / "ds", pred


def test_metrics_table_has_the_qa_codes_of_each_row(tmp_path: Path) -> None:
    dataset, pred = _study(tmp_path)
    result = evaluate(dataset, {"M": pred})
    assert list(result.table.columns) == list(COLUMNS) and COLUMNS[-1] == "qa"
    codes = {(r.case_id, r.structure): r.qa for r in result.table.itertuples()}
    assert codes == {
        ("case00", "Bladder"): "",
        ("case00", "Femur_Head_L"): "laterality",
        ("case00", "Femur_Head_R"): "laterality",
        ("case01", "Bladder"): "",
        ("case01", "Femur_Head_L"): "",
        ("case01", "Femur_Head_R"): "",
    }
    assert result.metadata["qa"] == {"laterality": 2}
    csv, _ = result.write(tmp_path / "metrics.csv")
    back = read_metrics(csv)
    assert back.loc[back["structure"] == "Femur_Head_L", "qa"].tolist() == ["laterality", ""]


def test_input_codes_apply_to_every_structure_of_the_case(tmp_path: Path) -> None:
    dataset, pred = _study(tmp_path)
    data = json.loads((pred / "case01" / "qa.json").read_text(encoding="utf-8"))
    data["codes"]["input"] = ["input-domain"]
    (pred / "case01" / "qa.json").write_text(json.dumps(data), encoding="utf-8")
    table = evaluate(dataset, {"M": pred}).table
    assert table.loc[table["case_id"] == "case01", "qa"].tolist() == ["input-domain"] * 3


def test_predictions_without_qa_json_get_an_empty_qa_column(tmp_path: Path) -> None:
    dataset, pred = _study(tmp_path)
    for path in pred.glob("*/qa.json"):
        path.unlink()
    assert set(evaluate(dataset, {"M": pred}).table["qa"]) == {""}


def test_metrics_csv_written_before_the_qa_column_still_reads(tmp_path: Path) -> None:
    dataset, pred = _study(tmp_path)
    csv, _ = evaluate(dataset, {"M": pred}).write(tmp_path / "metrics.csv")
    old = tmp_path / "old.csv"
    old.write_text(
        "\n".join(line.rsplit(",", 1)[0] for line in csv.read_text().splitlines()) + "\n"
    )
    table = read_metrics(old)
    assert "qa" in table.columns and set(table["qa"]) == {""}


def test_malformed_qa_json_is_refused(tmp_path: Path) -> None:
    dataset, pred = _study(tmp_path)
    (pred / "case00" / "qa.json").write_text('{"status": "pass"}', encoding="utf-8")
    with pytest.raises(EvaluationError, match="prediction QA file is malformed"):
        evaluate(dataset, {"M": pred})


def test_qa_json_with_a_flag_lacking_its_message_is_refused_by_every_reader(
    tmp_path: Path,
) -> None:
    # One reader of the format for evaluation and report: a flag without a message used to pass
    # the report's check and fail later with an internal KeyError.
    from dlas.errors import ReportError
    from dlas.evaluation import read_qa

    _, pred = _study(tmp_path)
    path = pred / "case00" / "qa.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["input"]["flags"] = [{"code": "input-domain"}]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(EvaluationError, match="prediction QA file is malformed"):
        read_qa(path)
    with pytest.raises(ReportError, match="prediction QA file is malformed"):
        read_qa(path, ReportError)
