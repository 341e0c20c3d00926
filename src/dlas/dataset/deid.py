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
* UIDs, source folders and file names are replaced by their keyed hash (a fingerprint that
  tells two sources apart without naming them; a bare hash of a folder named after a patient
  would be reversed by trying candidate ids);
* messages about refused cases and files (``import-report.json``, logs) quote the pseudonymous
  case and the file's position in its series, never a path, a folder or file name, an original
  UID or an identifying attribute (:class:`Redactor`).

The key is created on first import as ``DATASET/.dlas-pseudonym-key`` (readable by the owner
only). Keep it to re-import or add patients consistently; share a data set without it. The data
set records a check value of its key (an HMAC of a constant, which reveals nothing of the key):
an import with another key, or without the key once the data set has one, is refused — with a
second key the same patient would come back as a new case and could sit in training and
validation at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlas.errors import DatasetError, DlasError

__all__ = ["KEY_FILE", "Pseudonymizer", "Redactor", "age_in_years"]

KEY_FILE = ".dlas-pseudonym-key"
_DATE = re.compile(r"^\d{8}$")


@dataclass(frozen=True)
class Pseudonymizer:
    """Keyed pseudonyms and date shifts for one data set."""

    key: bytes

    @classmethod
    def for_dataset(
        cls,
        root: str | os.PathLike[str],
        key_file: str | None = None,
        *,
        expected_check: str | None = None,
    ) -> Pseudonymizer:
        """Load the key of a data set (``key_file`` or ``root/.dlas-pseudonym-key``), creating it
        on first use.

        ``expected_check`` is the data set's recorded :attr:`check`: with it, a missing key is
        an error (not a new key) and a key of another check value is refused.
        """
        path = Path(key_file) if key_file else Path(root) / KEY_FILE
        if not path.exists() and expected_check is not None:
            raise DatasetError(
                "the data set's pseudonym key is missing",
                where=str(path),
                expected=f"the key this data set was imported with (check {expected_check})",
                found="no key file",
                fix="restore the key file, or pass it with --pseudonym-key; a new key would "
                "give every re-imported patient a second case id",
            )
        found = cls._load_or_create(path, key_file)
        if expected_check is not None and found.check != expected_check:
            raise DatasetError(
                "pseudonym key does not belong to this data set",
                where=str(path),
                expected=f"the key this data set was imported with (check {expected_check})",
                found=f"another key (check {found.check})",
                fix="pass the data set's own key with --pseudonym-key, or import into a new "
                "data set folder",
            )
        return found

    @property
    def check(self) -> str:
        """A check value of the key, recorded in the data set (reveals nothing of the key)."""
        return self.digest("key-check", "dlas-dataset", 16)

    @classmethod
    def _load_or_create(cls, path: Path, key_file: str | None) -> Pseudonymizer:
        if path.exists():
            text = path.read_text(encoding="ascii", errors="replace").strip()
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

    def fingerprint(self, kind: str, value: str) -> str:
        """A keyed fingerprint of an identifying value (a folder, a file, a UID) for outputs."""
        return "hmac:" + self.digest(kind, value, 12)

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


#: Dotted-decimal DICOM UIDs (four or more components) inside free text.
_UID_IN_TEXT = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+){3,}(?![\w.])")
#: The DICOM attributes whose values are redacted from messages (besides UIDs, which are
#: recognised by their form).
_IDENTIFYING = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "AccessionNumber",
    "PatientAddress",
    "ReferringPhysicianName",
)
REDACTED = "<redacted>"


@dataclass(frozen=True)
class Redactor:
    """Takes what could identify a patient out of a message bound for a de-identified output.

    Exporting systems name folders and files after patients (``DOE^JANE_12345678/CT/...``),
    and reader errors quote paths, UIDs and attribute values. A redactor knows the strings of one
    source case (paths, path components, file names, identifying attribute values) and replaces
    each whole occurrence, plus anything shaped like a DICOM UID, by ``<redacted>``. Strings
    shorter than three characters (``ct``, ``a``) are left: they identify nobody and would
    garble every message.
    """

    secrets: tuple[str, ...]

    @classmethod
    def for_source(
        cls,
        source: Path,
        paths: Iterable[Path] = (),
        headers: Iterable[Any] = (),
    ) -> Redactor:
        """A redactor for files under ``source`` (their folders and names) and DICOM headers."""
        found: set[str] = set()
        root = source.resolve()
        found.update({str(source), str(root)})
        for path in paths:
            found.update({str(path), str(path.resolve()), path.name})
            name = path.name
            for suffix in (".nii.gz", ".nii", ".dcm", ".DCM"):
                name = name.removesuffix(suffix)
            found.add(name)
            try:
                relative = path.resolve().relative_to(root)
            except ValueError:
                relative = Path(*path.parts[-3:])
            found.add(relative.as_posix())
            found.update(relative.parts)
        for header in headers:
            for keyword in _IDENTIFYING:
                value = str(header.get(keyword, "") or "")
                found.add(value)
                found.update(re.split(r"[\^\s,=\\]+", value))
        kept = sorted((t for t in found if len(t) >= 3 and t not in (".", "..")), key=len)
        return cls(tuple(reversed(kept)))

    def text(self, text: str) -> str:
        """``text`` with every secret and every UID replaced."""
        for secret in self.secrets:
            pattern = r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])"
            text = re.sub(pattern, REDACTED, text)
        return _UID_IN_TEXT.sub(REDACTED, text)

    def error(self, exc: DlasError, *, case_id: str, files: Sequence[Path] = ()) -> str:
        """The one-line message of ``exc`` with its place given as the case and the position
        of the file in the case (``case 1a2b-3c4d, file 5 of 90``), everything else redacted."""
        where = f"case {case_id}"
        if exc.where:
            for k, path in enumerate(files):
                if exc.where in (str(path), str(path.resolve())):
                    where += f", file {k + 1} of {len(files)}"
                    break
        clean = DlasError(
            self.text(exc.what),
            where=where,
            expected=None if exc.expected is None else self.text(exc.expected),
            found=None if exc.found is None else self.text(exc.found),
            fix=None if exc.fix is None else self.text(exc.fix),
        )
        return str(clean)


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
