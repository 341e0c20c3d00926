"""``dlas predict`` on the command line."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from dlas.io import CTSeriesSpec, write_ct_series
from helpers.synthetic_data import write_malicious_pickle


@pytest.fixture
def dlas() -> Callable[[Sequence[str]], int]:
    """``dlas(args)`` → exit status, with the model commands registered."""
    from dlas import cli
    from dlas.cli import model

    if "predict" not in {c.name for c in cli.app.registered_commands}:
        model.register(cli.app)
    return cli.main


def _dicom(tmp_path: Path, synthetic: ModuleType, seed: int, name: str) -> Path:
    ct, _ = synthetic.make_case(seed)
    write_ct_series(ct, tmp_path / name, CTSeriesSpec(uid_seed=name))
    return tmp_path / name


def test_predict_command_writes_an_rtstruct(
    tmp_path: Path,
    synthetic: ModuleType,
    trained_model: Path,
    dlas,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = _dicom(tmp_path, synthetic, 5, "ct")
    status = dlas(
        [
            "predict",
            str(trained_model),
            str(folder),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    (item,) = report["items"]
    assert item["status"] == "written" and item["files"] == ["RTSTRUCT.dcm", "qa.json"]
    assert (tmp_path / "out" / item["id"] / "RTSTRUCT.dcm").is_file()


def test_predict_command_fails_when_a_series_fails(
    tmp_path: Path,
    synthetic: ModuleType,
    trained_model: Path,
    dlas,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "export"
    _dicom(root, synthetic, 6, "good")
    broken = _dicom(root, synthetic, 7, "broken")
    sorted(broken.iterdir())[3].unlink()
    status = dlas(
        [
            "predict",
            str(trained_model),
            str(root),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    assert status == 2
    captured = capsys.readouterr()
    assert "1 failed, 1 written" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith("error: ")
    assert "1 of 2 failed" in captured.err and "missing slice" in captured.err


def test_predict_command_refuses_a_pickle(
    tmp_path: Path, synthetic: ModuleType, dlas, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"

    write_malicious_pickle(tmp_path / "evil.pt", marker)
    folder = _dicom(tmp_path, synthetic, 8, "ct")
    status = dlas(
        ["predict", str(tmp_path / "evil.pt"), str(folder), "--out", str(tmp_path / "out")]
    )
    assert status == 2
    assert "refusing to load a pickled model file" in capsys.readouterr().err
    assert not marker.exists()


def test_predict_command_refuses_an_unknown_format(
    tmp_path: Path,
    synthetic: ModuleType,
    trained_model: Path,
    dlas,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = _dicom(tmp_path, synthetic, 9, "ct")
    status = dlas(
        [
            "predict",
            str(trained_model),
            str(folder),
            "--out",
            str(tmp_path / "out"),
            "--format",
            "stl",
        ]
    )
    assert status == 2
    assert "unknown output format" in capsys.readouterr().err
