"""The redactor of messages bound for de-identified outputs (dlas.dataset.deid.Redactor)."""

from __future__ import annotations

from pathlib import Path

import pydicom

from dlas.dataset.deid import REDACTED, Redactor
from dlas.errors import DicomSeriesError


def _redactor(tmp_path: Path) -> tuple[Redactor, list[Path]]:
    source = tmp_path / "export"
    files = [source / "DOE^JANE_12345678" / "ct" / f"IMG{k:04d}.dcm" for k in range(3)]
    header = pydicom.Dataset()
    header.PatientName = "DOE^JANE"
    header.PatientID = "12345678"
    header.AccessionNumber = "A99"
    return Redactor.for_source(source, files, [header]), files


def test_redactor_removes_paths_names_ids_and_uids(tmp_path: Path) -> None:
    redactor, files = _redactor(tmp_path)
    text = (
        f"{files[1]}: unreadable; series 1.2.840.113619.2.55.3 of patient JANE DOE (12345678),"
        " folder DOE^JANE_12345678, file IMG0001.dcm, accession A99"
    )
    clean = redactor.text(text)
    for secret in ("DOE", "JANE", "12345678", "IMG0001", "1.2.840", "export", "A99"):
        assert secret not in clean, secret
    assert clean.count(REDACTED) >= 7
    assert "unreadable; series" in clean


def test_redactor_keeps_short_tokens_and_parts_of_words(tmp_path: Path) -> None:
    redactor, _ = _redactor(tmp_path)
    # "ct" (a folder of the source) is too short to identify anyone; "DOE" inside "DOES" is
    # not the name; z positions and versions are not UIDs
    text = "the ct DOES have a gap between z = -5.00 and z = 0.00 mm (dlas 0.1.0)"
    assert redactor.text(text) == text


def test_redactor_places_an_error_by_case_and_file_position(tmp_path: Path) -> None:
    redactor, files = _redactor(tmp_path)
    exc = DicomSeriesError(
        "not a CT image",
        where=str(files[2]),
        expected="Modality CT",
        found=f"Modality MR in {files[2].name}",
        fix="remove it",
    )
    message = redactor.error(exc, case_id="ab12cd34-ef56", files=files)
    assert message.startswith("case ab12cd34-ef56, file 3 of 3: not a CT image")
    assert "IMG0002" not in message and "DOE" not in message
