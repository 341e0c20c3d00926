"""`dlas phantom` and `dlas phantom-preview` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dlas.cli
from dlas.cli import main
from dlas.cli import phantom as phantom_cli


@pytest.fixture(autouse=True)
def _registered() -> None:
    """The phantom commands on the application (registered once, whoever registers them)."""
    names = {c.name for c in dlas.cli.app.registered_commands}
    if "phantom" not in names:
        phantom_cli.register(dlas.cli.app)


def test_phantom_writes_dicom_and_the_import_reproduces_cohorts(tmp_path: Path) -> None:
    out = tmp_path / "replica"
    code = main(
        [
            "phantom",
            str(out),
            "--preset",
            "demo",
            "--seed",
            "3",
            "--cohort",
            "vendor=1",
            "--cohort",
            "training=1",
            "--cohort",
            "ExVal=0",
            "--cohort",
            "GenEva=1",
            "--workers",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3
    assert {k: v["count"] for k, v in manifest["cohorts"].items()} == {
        "vendor": 1,
        "training": 1,
        "ExVal": 0,
        "GenEva": 1,
    }
    ds = tmp_path / "ds"
    assert (
        main(["import", str(out), str(ds), "--cohort-by", f"csv:{out / 'cohorts.csv'}", "--quiet"])
        == 0
    )
    data = json.loads((ds / "dataset.json").read_text())
    assert data["cohorts"] == {"GenEva": 1, "training": 1, "vendor": 1}


def test_phantom_nifti_with_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    figure = tmp_path / "preview.png"
    code = main(
        [
            "phantom",
            str(out),
            "--format",
            "nifti",
            "--cohort",
            "vendor=0",
            "--cohort",
            "training=0",
            "--cohort",
            "ExVal=1",
            "--cohort",
            "GenEva=0",
            "--preview",
            str(figure),
        ]
    )
    assert code == 0
    assert (out / "dataset.json").exists()
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote 1 patient(s)" in capsys.readouterr().out


def test_phantom_preview_of_chosen_cases(tmp_path: Path) -> None:
    figure = tmp_path / "fig.png"
    assert main(["phantom-preview", str(figure), "--case", "training:1", "--quiet"]) == 0
    assert figure.stat().st_size > 10_000


def test_unknown_cohort_on_the_command_line_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["phantom", str(tmp_path / "x"), "--cohort", "validation=3"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unknown cohort" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_unknown_format_on_the_command_line_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["phantom", str(tmp_path / "x"), "--format", "mha"]) == 2
    assert "unknown output format" in capsys.readouterr().err


def test_malformed_preview_case_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["phantom-preview", str(tmp_path / "f.png"), "--case", "ExVal"]) == 2
    assert "malformed --case" in capsys.readouterr().err
