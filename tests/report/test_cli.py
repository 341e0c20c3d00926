"""``dlas report`` on the command line: both input routes, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlas.cli import app, main
from dlas.cli import report as report_cli

from .conftest import StudyFixture


@pytest.fixture(autouse=True, scope="module")
def _registered() -> None:
    """``dlas report`` as the CLI registers it (added here if the CLI does not yet)."""
    if not any(c.name == "report" for c in app.registered_commands):
        report_cli.register(app)


def test_report_from_a_study_folder(
    study: StudyFixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    code = main(
        ["report", str(study.root), "--out", str(out), "--no-viewer", "--dpi", "60", "--quiet"]
    )
    assert code == 0
    assert (out / "index.html").is_file()
    assert not (out / "viewer").exists()
    assert capsys.readouterr().out == ""


def test_report_from_a_metrics_csv(
    study: StudyFixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    code = main(
        [
            "report",
            str(study.metrics),
            "--out",
            str(out),
            "--dataset",
            str(study.dataset),
            "--prediction",
            f"VPM={study.predictions['VPM']}",
            "--prediction",
            f"LFT={study.predictions['LFT']}",
            "--comparison",
            str(study.comparison),
            "--dpi",
            "60",
            "--viewer-format",
            "png",
            "--palette",
            "colorblind",
            "--cases",
            "EX002,GE001",
            "--volume-structure",
            "Bladder",
            "--metric",
            "dsc",
            "--metric",
            "hd95_mm",
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"report written to {out / 'index.html'}" in printed
    assert "viewer GenEva" in printed
    assert (out / "tables" / "volume_Bladder.md").is_file()
    assert "data:image/png;base64," in (out / "viewer" / "ExVal.html").read_text()


def test_metrics_csv_without_dataset_is_refused_on_the_command_line(
    study: StudyFixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", str(study.metrics), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "needs its data set" in err
    assert not (tmp_path / "r").exists()


def test_malformed_prediction_option_is_refused(
    study: StudyFixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "report",
            str(study.metrics),
            "--out",
            str(tmp_path / "r"),
            "--dataset",
            str(study.dataset),
            "--prediction",
            "VPM",
        ]
    )
    assert code == 2
    assert "malformed --prediction" in capsys.readouterr().err


def test_model_given_twice_is_refused(
    study: StudyFixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "report",
            str(study.metrics),
            "--out",
            str(tmp_path / "r"),
            "--dataset",
            str(study.dataset),
            "--prediction",
            "VPM=a",
            "--prediction",
            "VPM=b",
        ]
    )
    assert code == 2
    assert "model given twice" in capsys.readouterr().err
