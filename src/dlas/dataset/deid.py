"""De-identification on import: pseudonymous case ids, shifted dates, no direct identifiers.

What `dlas import` keeps and drops follows the DICOM PS3.15 Basic Application Level
Confidentiality Profile with the *Retain Longitudinal Temporal Information with Modified Dates*
and *Retain Patient Characteristics* options:

* PatientName, PatientID, PatientBirthDate, addresses, accession numbers and all other direct
  identifiers are never written to a data set, a report or a log;
* case ids are pseudonyms: a keyed hash (HMAC-SHA256) of the patient id and series UID, so that
  re-importing the same export into the same data set gives the same ids, while nobody without
  the key can link an id to a patient by trying candidate patient ids;
* dates are shifted by one offset for the whole data set (derived from the key), so intervals
  and the order of patients in time survive — cohorts defined by treatment period stay valid;
* sex and age in years (capped at 90) are kept, as the cohort table of a study needs them;
* UIDs are replaced by their keyed hash.

The key is created on first import as ``DATASET/.dlas-pseudonym-key`` (readable by the owner
only). Keep it to re-import or add patients consistently; share a data set without it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from dlas.errors import DatasetError

__all__ = ["KEY_FILE", "Pseudonymizer", "age_in_years"]

KEY_FILE = ".dlas-pseudonym-key"
_DATE = re.compile(r"^\d{8}$")


@dataclass(frozen=True)
class Pseudonymizer:
    """Keyed pseudonyms and date shifts for one data set."""

    key: bytes

    @classmethod
    def for_dataset(
        cls, root: str | os.PathLike[str], key_file: str | None = None
    ) -> Pseudonymizer:
        """Load the key of a data set (``key_file`` or ``root/.dlas-pseudonym-key``), creating it
        on first use."""
        path = Path(key_file) if key_file else Path(root) / KEY_FILE
        if path.exists():
            text = path.read_text(encoding="ascii").strip()
            if not re.fullmatch(r"[0-9a-f]{64}", text):
                raise DatasetError(
                    "malformed pseudonym key",
                    where=str(path),
                    expected="64 hexadecimal characters",
                    found=f"{len(text)} characters",
                    fix="restore the key file, or import into a new data set folder",
                )
            return cls(bytes.fromhex(text))
        if key_file:
            raise DatasetError(
                "pseudonym key file not found",
                where=str(path),
                expected="an existing key file",
                found="nothing at that path",
                fix="check the path, or leave the option out to create a key in the data set",
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.hex() + "\n")
        return cls(key)

    def digest(self, kind: str, value: str, length: int = 16) -> str:
        """Hex HMAC of ``value`` in namespace ``kind``, truncated to ``length`` characters."""
        mac = hmac.new(self.key, f"{kind}\x00{value}".encode(), hashlib.sha256)
        return mac.hexdigest()[:length]

    def case_id(self, patient_key: str, series_key: str) -> str:
        """Pseudonymous case id: 8 characters for the patient, 4 for the series."""
        return f"{self.digest('patient', patient_key, 8)}-{self.digest('series', series_key, 4)}"

    @property
    def date_shift_days(self) -> int:
        """Days added to every date (negative: between 1 and 10 years back)."""
        return -(365 + int(self.digest("date", "shift", 8), 16) % 3285)

    def shift_date(self, value: str | None) -> str | None:
        """Shift a DICOM date (YYYYMMDD); anything else becomes None."""
        if not value or not _DATE.match(str(value)):
            return None
        try:
            day = dt.datetime.strptime(str(value), "%Y%m%d").date()
        except ValueError:
            return None
        return (day + dt.timedelta(days=self.date_shift_days)).strftime("%Y%m%d")


def age_in_years(
    patient_age: str | None, birth_date: str | None, study_date: str | None
) -> int | None:
    """Age at the study in whole years, capped at 90 (larger ages are identifying)."""
    years: int | None = None
    if patient_age and re.fullmatch(r"\d{3}[DWMY]", str(patient_age)):
        n, unit = int(str(patient_age)[:3]), str(patient_age)[3]
        years = {"Y": n, "M": n // 12, "W": n // 52, "D": n // 365}[unit]
    elif (
        birth_date and study_date and _DATE.match(str(birth_date)) and _DATE.match(str(study_date))
    ):
        try:
            born = dt.datetime.strptime(str(birth_date), "%Y%m%d").date()
            seen = dt.datetime.strptime(str(study_date), "%Y%m%d").date()
        except ValueError:
            return None
        years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    if years is None or years < 0:
        return None
    return min(years, 90)
