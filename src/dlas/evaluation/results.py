"""The results schema: the columns of the metrics and comparison tables, and their one reader.

`dlas evaluate` writes ``metrics.csv`` (one row per case, model and structure), `dlas compare`
writes ``comparison.csv`` (one row per cohort, structure and metric) and, with observers,
``interobserver.csv``. Everything that reads them back — `dlas compare`, the report, the study
runner — reads them here, with the same checks and the same error messages:

* the file exists and parses as CSV with a header row, and has at least one row;
* the identifying columns are present (every metric too, where the caller needs them all);
* identifiers stay text (a case id ``007`` is not the number 7), an empty ``flags`` or ``qa``
  field is "none", and every other column is a number: ``nan`` (undefined) and ``inf`` (a
  distance to a missing structure) are numbers, anything else is refused with its row;
* a (case, model, structure) appears once in a metrics table.

Columns added in later versions (``qa``; the comparison's non-finite counts and fails) are
optional, so tables written before them still read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlas.errors import EvaluationError
from dlas.evaluation.metrics import METRIC_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMNS",
    "COMPARISON_COLUMNS",
    "COMPARISON_TEXT_COLUMNS",
    "ID_COLUMNS",
    "INTEROBSERVER_COLUMNS",
    "LATER_COMPARISON_COLUMNS",
    "read_comparison",
    "read_interobserver",
    "read_metrics",
    "read_sidecar",
]

#: The columns that identify a row of the metrics table.
ID_COLUMNS: tuple[str, ...] = ("case_id", "cohort", "model", "structure")
#: Every column of the metrics table, in order.
COLUMNS: tuple[str, ...] = (*ID_COLUMNS, *METRIC_COLUMNS, "flags", "qa")
_METRIC_TEXT = (*ID_COLUMNS, "flags", "qa")

#: The columns of ``comparison.csv`` (and of the DataFrame :func:`~dlas.evaluation.compare`
#: returns), in order.
COMPARISON_COLUMNS: tuple[str, ...] = (
    "cohort",
    "structure",
    "metric",
    "model_a",
    "model_b",
    "n_pairs",
    "n_pairs_nonfinite",
    "n_a",
    "n_b",
    "n_nonfinite_a",
    "n_nonfinite_b",
    "fails_a",
    "fails_b",
    "mean_a",
    "sd_a",
    "median_a",
    "q1_a",
    "q3_a",
    "mean_b",
    "sd_b",
    "median_b",
    "q1_b",
    "q3_b",
    "mean_diff",
    "ci_low",
    "ci_high",
    "statistic",
    "p_value",
    "p_adjusted",
    "correction",
    "effect_size_rb",
    "significant",
    "test",
    "zero_method",
)
#: Comparison columns added after the first version: readers accept tables without them.
LATER_COMPARISON_COLUMNS: tuple[str, ...] = (
    "n_pairs_nonfinite",
    "n_nonfinite_a",
    "n_nonfinite_b",
    "fails_a",
    "fails_b",
)
#: The comparison columns that hold text (the others are numbers, and ``significant`` a flag).
COMPARISON_TEXT_COLUMNS: tuple[str, ...] = (
    "cohort",
    "structure",
    "metric",
    "model_a",
    "model_b",
    "correction",
    "test",
    "zero_method",
)
#: The columns of ``interobserver.csv``: a comparison's, and whether the model lies within the
#: clinicians' own disagreement.
INTEROBSERVER_COLUMNS: tuple[str, ...] = (*COMPARISON_COLUMNS, "within")
_REQUIRED_COMPARISON = tuple(c for c in COMPARISON_COLUMNS if c not in LATER_COMPARISON_COLUMNS)


def read_metrics(path: str | os.PathLike[str], *, every_metric: bool = False) -> pd.DataFrame:
    """Read and check a metrics table written by `dlas evaluate`.

    Parameters
    ----------
    path
        The CSV.
    every_metric
        Require every metric column (the report draws them all); otherwise the identifying
        columns suffice and the metric columns present are read.

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`COLUMNS` that the file has, in that order; ``flags`` and ``qa``
        always (empty when the file predates them).

    Raises
    ------
    EvaluationError
        If the file is missing or unparsable, lacks a required column, has no rows, holds a
        non-number in a metric column, or lists a (case, model, structure) twice.
    """
    p = Path(path)
    required = (*ID_COLUMNS, *METRIC_COLUMNS, "flags") if every_metric else ID_COLUMNS
    optional = [c for c in COLUMNS if c not in required]
    table = _read_table(p, required, _METRIC_TEXT, "metrics CSV", optional)
    for column in ("flags", "qa"):
        if column not in table.columns:
            table[column] = ""  # tables written before the column existed
    duplicated = table.duplicated(["case_id", "model", "structure"])
    if duplicated.any():
        row = table[duplicated].iloc[0]
        raise EvaluationError(
            "metrics CSV lists a case twice",
            where=str(p),
            expected="one row per case, model and structure",
            found=f"case {row['case_id']}, model {row['model']}, structure {row['structure']} "
            f"{int(duplicated.sum()) + 1} times",
            fix="evaluate each model once, or concatenate tables of different models only",
        )
    return table[[c for c in COLUMNS if c in table.columns]].copy()


def read_comparison(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read ``comparison.csv`` (a file, or the folder that holds it) and its ``comparison.json``
    (an empty dict when there is none).

    Raises
    ------
    EvaluationError
        If the file is missing or malformed, or lacks a column of :data:`COMPARISON_COLUMNS`
        (those of :data:`LATER_COMPARISON_COLUMNS` may be absent).
    """
    p = Path(path)
    csv = p / "comparison.csv" if p.is_dir() else p
    table = _read_table(
        csv,
        _REQUIRED_COMPARISON,
        COMPARISON_TEXT_COLUMNS,
        "comparison CSV",
        LATER_COMPARISON_COLUMNS,
    )
    table["significant"] = table["significant"].map(_as_bool)
    table = table[[c for c in COMPARISON_COLUMNS if c in table.columns]].copy()
    return table, read_sidecar(csv.with_name("comparison.json"))


def read_interobserver(folder: str | os.PathLike[str]) -> pd.DataFrame | None:
    """``interobserver.csv`` in a comparison folder (None when the study has no observers).

    Raises
    ------
    EvaluationError
        If the file is malformed.
    """
    path = Path(folder) / "interobserver.csv"
    if not path.is_file():
        return None
    table = _read_table(
        path,
        (*_REQUIRED_COMPARISON, "within"),
        (*COMPARISON_TEXT_COLUMNS, "within"),
        "inter-observer CSV",
        LATER_COMPARISON_COLUMNS,
    )
    table["significant"] = table["significant"].map(_as_bool)
    table["within"] = [{"True": True, "False": False}.get(v, float("nan")) for v in table["within"]]
    return table[[c for c in INTEROBSERVER_COLUMNS if c in table.columns]].copy()


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON written next to a table (definitions, versions, hashes); an empty dict when
    there is none.

    Raises
    ------
    EvaluationError
        If the file is not a JSON object.
    """
    p = Path(path)
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvaluationError(
            "sidecar JSON is not valid JSON",
            where=str(p),
            expected="the JSON written next to the table by dlas",
            found=f"{exc.msg} at line {exc.lineno}",
            fix="restore the file, or run the step that writes it again",
        ) from None
    if not isinstance(data, dict):
        raise EvaluationError(
            "sidecar JSON is not an object",
            where=str(p),
            expected="a JSON object",
            found=type(data).__name__,
            fix="run the step that writes it again",
        )
    return data


def _read_table(
    path: Path,
    columns: Sequence[str],
    text: Sequence[str],
    what: str,
    optional: Sequence[str] = (),
) -> pd.DataFrame:
    """Read and check a CSV of dlas: every one of ``columns`` required, the ``optional`` ones
    kept when present, numbers parsed except in ``text`` (and in ``significant``, a flag)."""
    import pandas as pd

    if not path.is_file():
        raise EvaluationError(
            f"{what} not found",
            where=str(path),
            expected=f"the {what} written by dlas",
            found="no such file" if not path.exists() else "a folder",
            fix="check the path"
            + (
                ", or run `dlas evaluate` first"
                if what == "metrics CSV"
                else ", or run `dlas compare` first"
            ),
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise EvaluationError(
            f"{what} cannot be parsed",
            where=str(path),
            expected="comma-separated values with a header row",
            found=" ".join(str(exc).split())[:200] or "an empty file",
            fix="write the file again with dlas",
        ) from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise EvaluationError(
            f"{what} lacks columns",
            where=str(path),
            expected="columns " + ", ".join(columns),
            found=f"no {', '.join(missing)} (columns: {', '.join(map(str, table.columns))})",
            fix="write the file again with this version of dlas",
        )
    if table.empty:
        raise EvaluationError(
            f"{what} has no rows",
            where=str(path),
            expected="one row per case, model and structure"
            if what == "metrics CSV"
            else "one row per cohort, structure and metric",
            found="a header only",
            fix="check that the evaluation ran on at least one case",
        )
    present = [*columns, *(c for c in optional if c in table.columns)]
    for column in present:
        if column not in text and column != "significant":
            table[column] = _numbers(table[column], path, column, what)
    return table[present].copy()


def _numbers(values: pd.Series, path: Path, column: str, what: str) -> pd.Series:
    """A column of text as floats (Python's correctly rounded parsing): ``nan``, ``inf`` and
    an empty field (undefined) included."""
    stripped = values.str.strip()
    try:
        return stripped.where(stripped != "", "nan").astype(float)
    except ValueError:
        row = next(i for i, v in enumerate(stripped) if v and not _is_float(v))
        raise EvaluationError(
            f"{what} holds a non-number",
            where=f"{path}, row {row + 2}, column {column}",
            expected="a number, nan or inf",
            found=repr(values.iloc[row]),
            fix="write the file again with dlas",
        ) from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(value)
