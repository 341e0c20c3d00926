"""Assigning imported cases to cohorts: by scanner, by study date, or from a CSV file.

Rules (the ``--cohort-by`` option of ``dlas import``):

``none``
    every case in cohort ``all``.
``scanner``
    by (Manufacturer, ManufacturerModelName), e.g. ``SIEMENS-Sensation-Open``.
``scanner+station``
    by (Manufacturer, ManufacturerModelName, StationName).
``date``
    by the year of the (real, unshifted) StudyDate, e.g. ``2022``.
``date:YYYY-MM-DD[,YYYY-MM-DD...]``
    by period between the given cut dates: ``before-2022-11-01``,
    ``2022-11-01-to-2023-02-01``, ``from-2023-02-01``.
``csv:FILE``
    from a CSV file with a ``cohort`` column and one key column: ``patient_id``,
    ``series_uid``, ``study_uid`` or ``folder`` (the folder that holds the series or NIfTI case,
    relative to the import source). Cases not listed are skipped and reported.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

from dlas.errors import DatasetError

__all__ = ["CaseKeys", "CohortRule"]

_KEY_COLUMNS = ("patient_id", "series_uid", "study_uid", "folder")


def _slug(*parts: str | None) -> str:
    words = [re.sub(r"[^A-Za-z0-9.+]+", "-", str(p)).strip("-") for p in parts if p]
    text = "-".join(w for w in words if w)
    return text or "unknown-scanner"


@dataclass(frozen=True)
class CaseKeys:
    """What a cohort rule may look at for one case (real values, used only during import)."""

    folder: str
    patient_id: str = ""
    series_uid: str = ""
    study_uid: str = ""
    study_date: str = ""
    manufacturer: str = ""
    model: str = ""
    station: str = ""


@dataclass
class CohortRule:
    """A parsed ``--cohort-by`` rule."""

    kind: str
    cuts: list[dt.date] = field(default_factory=list)
    table: dict[str, str] = field(default_factory=dict)
    key_column: str = ""
    source: str = ""

    @classmethod
    def parse(cls, spec: str | None) -> CohortRule:
        """Parse a rule; a malformed one is a :class:`DatasetError`."""
        text = (spec or "none").strip()
        if text in ("none", "scanner", "scanner+station", "date"):
            return cls(kind=text)
        if text.startswith("date:"):
            cuts = []
            for part in text[5:].split(","):
                try:
                    cuts.append(dt.date.fromisoformat(part.strip()))
                except ValueError:
                    raise DatasetError(
                        "malformed cut date in --cohort-by",
                        where=text,
                        expected="date:YYYY-MM-DD[,YYYY-MM-DD...]",
                        found=repr(part),
                        fix="write dates as 2022-11-01",
                    ) from None
            return cls(kind="date-cuts", cuts=sorted(cuts), source=text)
        if text.startswith("csv:"):
            return cls._from_csv(Path(text[4:]))
        raise DatasetError(
            "unknown --cohort-by rule",
            where=text,
            expected="none, scanner, scanner+station, date, date:CUTS or csv:FILE",
            found=repr(text),
            fix="see `dlas import --help`",
        )

    @classmethod
    def _from_csv(cls, path: Path) -> CohortRule:
        if not path.is_file():
            raise DatasetError(
                "cohort CSV not found",
                where=str(path),
                expected="a CSV file with columns cohort and one of " + ", ".join(_KEY_COLUMNS),
                found="nothing at that path",
                fix="check the path after csv:",
            )
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            keys = [c for c in columns if c in _KEY_COLUMNS]
            if "cohort" not in columns or len(keys) != 1:
                raise DatasetError(
                    "cohort CSV has the wrong columns",
                    where=str(path),
                    expected="a cohort column and exactly one of " + ", ".join(_KEY_COLUMNS),
                    found="columns " + ", ".join(columns),
                    fix="rename the columns",
                )
            table: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                key, cohort = row.get(keys[0], ""), row.get("cohort", "")
                if not key or not cohort:
                    raise DatasetError(
                        "empty cell in cohort CSV",
                        where=f"{path}, line {line}",
                        expected=f"a {keys[0]} and a cohort",
                        found=f"{keys[0]}={key!r}, cohort={cohort!r}",
                        fix="fill or delete the line",
                    )
                if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", cohort):
                    raise DatasetError(
                        "invalid cohort name in cohort CSV",
                        where=f"{path}, line {line}",
                        expected="letters, digits and _ . + -",
                        found=repr(cohort),
                        fix="rename the cohort",
                    )
                if key in table and table[key] != cohort:
                    raise DatasetError(
                        "key listed twice with different cohorts",
                        where=f"{path}, line {line}",
                        expected="one cohort per key",
                        found=f"{key!r} in {table[key]!r} and {cohort!r}",
                        fix="remove one of the lines",
                    )
                table[key.replace("\\", "/").strip("/") if keys[0] == "folder" else key] = cohort
        return cls(kind="csv", table=table, key_column=keys[0], source=str(path))

    def describe(self) -> str:
        """The rule as given."""
        return self.source or self.kind

    def assign(self, keys: CaseKeys) -> str | None:
        """The cohort of a case, or None when a CSV does not list it."""
        if self.kind == "none":
            return "all"
        if self.kind == "scanner":
            return _slug(keys.manufacturer, keys.model)
        if self.kind == "scanner+station":
            return _slug(keys.manufacturer, keys.model, keys.station)
        if self.kind in ("date", "date-cuts"):
            try:
                day = dt.datetime.strptime(keys.study_date, "%Y%m%d").date()
            except ValueError:
                return "unknown-date"
            if self.kind == "date":
                return str(day.year)
            before = [c for c in self.cuts if day < c]
            if len(before) == len(self.cuts):
                return f"before-{self.cuts[0].isoformat()}"
            if not before:
                return f"from-{self.cuts[-1].isoformat()}"
            lower = self.cuts[len(self.cuts) - len(before) - 1]
            return f"{lower.isoformat()}-to-{before[0].isoformat()}"
        value = {
            "patient_id": keys.patient_id,
            "series_uid": keys.series_uid,
            "study_uid": keys.study_uid,
            "folder": keys.folder.replace("\\", "/").strip("/"),
        }[self.key_column]
        return self.table.get(value)
