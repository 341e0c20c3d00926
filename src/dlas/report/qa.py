"""The report's "Prediction QA" section: what prediction QA flagged, per model.

Read from each prediction folder's ``<case_id>/qa.json`` (written by ``dlas predict``, see
:mod:`dlas.prediction.qa`) for the cases of the metrics table. Predictions made without QA (no
``qa.json``) are counted as unchecked, never as passed.
"""

from __future__ import annotations

from typing import Any

from dlas.errors import ReportError
from dlas.evaluation.evaluate import read_qa
from dlas.report.inputs import ReportInputs

__all__ = ["prediction_qa"]


def _rows(model: str, case_id: str, cohort: str, data: dict[str, Any]) -> list[dict[str, str]]:
    scopes: list[tuple[str, list[dict[str, Any]]]] = [("input CT", data["input"]["flags"])]
    scopes += [(name, entry["flags"]) for name, entry in data["structures"].items()]
    return [
        {
            "model": model,
            "case_id": case_id,
            "cohort": cohort,
            "structure": scope,
            "codes": ", ".join(dict.fromkeys(str(f["code"]) for f in flags)),
            "details": "; ".join(str(f["message"]) for f in flags),
        }
        for scope, flags in scopes
        if flags
    ]


def prediction_qa(inputs: ReportInputs) -> dict[str, Any]:
    """The section's content: flagged (model, case, structure) rows and, per model, how many
    cases were checked and flagged.

    Raises
    ------
    ReportError
        If a ``qa.json`` is malformed.
    """
    metrics = inputs.metrics
    rows: list[dict[str, str]] = []
    models: list[dict[str, Any]] = []
    for model in inputs.model_names:
        source = inputs.predictions.get(model)
        cases = metrics.loc[metrics["model"] == model].drop_duplicates("case_id")
        checked = flagged = 0
        for case_id, cohort in zip(cases["case_id"], cases["cohort"], strict=True):
            path = source.case_folder(str(case_id)) / "qa.json" if source is not None else None
            if path is None or not path.is_file():
                continue
            data = read_qa(path, ReportError)
            checked += 1
            found = _rows(model, str(case_id), str(cohort), data)
            flagged += bool(found)
            rows += found
        models.append({"model": model, "cases": len(cases), "checked": checked, "flagged": flagged})
    return {"models": models, "rows": rows}
