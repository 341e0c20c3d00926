"""The report's "Prediction QA" section lists what prediction QA flagged, per model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dlas.prediction import QAFlag, QAReport, StructureQA
from dlas.report import ReportError, ReportOptions, build_report, load_study

from .conftest import StudyFixture


def _qa_json(folder: Path, flags: dict[str, list[QAFlag]], input_flags: list[QAFlag]) -> None:
    report = QAReport(
        structures={name: StructureQA(name, flags=found) for name, found in flags.items()},
        input_measures={},
        input_flags=input_flags,
    )
    (folder / "qa.json").write_text(json.dumps(report.to_data()), encoding="utf-8")


def test_report_lists_the_flagged_cases_and_structures(
    copy_study: Callable[[], StudyFixture], tmp_path: Path
) -> None:
    study = copy_study()
    oversized = QAFlag("volume-out-of-range", "712 cm³, outside 300-600 cm³", structure="CTV")
    swapped = QAFlag("laterality", "a left structure on the right", structure="Femur_Head_L")
    wide = QAFlag("input-domain", "field of view 700 mm outside 300-500 mm")
    _qa_json(study.predictions["VPM"] / "EX001", {"CTV": [oversized]}, [])
    _qa_json(study.predictions["VPM"] / "GE002", {"Femur_Head_L": [swapped]}, [wide])
    _qa_json(study.predictions["LFT"] / "EX001", {}, [])  # checked, clean
    out = tmp_path / "report"
    build_report(load_study(study.root), out, ReportOptions(viewer=False, dpi=50))
    html = (out / "index.html").read_text(encoding="utf-8")
    section = html[html.index('<section id="prediction-qa">') :]
    section = section[: section.index("</section>")]
    rows = section.split("<tr>")[2:]
    assert len(rows) == 3
    assert (
        "<td>VPM</td><td>EX001</td><td>ExVal</td><td>CTV</td><td>volume-out-of-range</td>"
        in (rows[0])
    )
    assert "<td>GE002</td><td>GenEva</td><td>input CT</td><td>input-domain</td>" in rows[1]
    assert "<td>Femur_Head_L</td><td>laterality</td>" in rows[2]
    assert "VPM: 2 of 2 checked case(s) flagged (10 without QA record)" in section
    assert "LFT: 0 of 1 checked case(s) flagged" in section
    counts = json.loads((out / "report.json").read_text(encoding="utf-8"))["prediction_qa"]
    assert counts == [
        {"model": "VPM", "cases": 12, "checked": 2, "flagged": 2},
        {"model": "LFT", "cases": 12, "checked": 1, "flagged": 0},
    ]


def test_report_without_qa_records_says_nothing_was_flagged(report: Path) -> None:
    html = (report / "index.html").read_text(encoding="utf-8")
    assert '<a href="#prediction-qa">Prediction QA</a>' in html
    assert "No prediction was flagged." in html
    assert "VPM: 0 of 0 checked case(s) flagged (12 without QA record)" in html


def test_malformed_qa_file_is_refused(
    copy_study: Callable[[], StudyFixture], tmp_path: Path
) -> None:
    study = copy_study()
    (study.predictions["VPM"] / "EX001" / "qa.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ReportError, match="prediction QA file is malformed"):
        build_report(load_study(study.root), tmp_path / "r", ReportOptions(viewer=False))
    assert not (tmp_path / "r").exists()
