"""`dlas evaluate` and `dlas compare` on the command line: outputs, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dlas.cli import app, main
from dlas.cli.evaluation import register
from dlas.evaluation import COLUMNS, COMPARISON_COLUMNS

from .conftest import Study

# The commands join the application in dlas.cli; add them here if that has not happened yet.
if not any(c.name == "evaluate" for c in app.registered_commands):
    register(app)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_then_compare(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = tmp_path / "metrics.csv"
    code, out, err = _run(
        [
            "evaluate",
            "--reference",
            str(study.dataset),
            "--prediction",
            f"VPM={study.predictions['VPM']}",
            "--prediction",
            f"LFT={study.predictions['LFT']}",
            "--out",
            str(metrics),
            "--hd95",
            "mean",
            "--specificity-domain",
            "union-bbox",
            "--workers",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    table = pd.read_csv(metrics, dtype={"case_id": str})
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 34
    sidecar = json.loads(metrics.with_suffix(".json").read_text())
    assert sidecar["options"]["hd95"] == "mean"
    assert sidecar["options"]["specificity_domain"] == "union-bbox"
    assert "VPM" in out and "wrote" in out

    out_dir = tmp_path / "comparison"
    code, out, err = _run(
        [
            "compare",
            str(metrics),
            "--a",
            "VPM",
            "--b",
            "LFT",
            "--out",
            str(out_dir),
            "--correction",
            "holm",
            "--bootstrap",
            "100",
            "--seed",
            "3",
        ],
        capsys,
    )
    assert code == 0, err
    comparison = pd.read_csv(out_dir / "comparison.csv")
    assert list(comparison.columns) == list(COMPARISON_COLUMNS)
    assert set(comparison["correction"]) == {"holm"}
    for name in ("table2.md", "table2.tex", "table2.csv", "comparison.json"):
        assert (out_dir / name).stat().st_size > 100, name
    settings = json.loads((out_dir / "comparison.json").read_text())
    assert settings["input"]["metric_options"]["hd95"] == "mean"
    assert "| **CTV** |" in out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("V P M=predictions", "cannot read the prediction option"),
        # a bare name is a contour set of the data set, and this one has none
        ("VPM", "no such contour set in the data set"),
    ],
)
def test_evaluate_error_is_one_line_with_exit_status_2(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    code, _, err = _run(
        [
            "evaluate",
            "--reference",
            str(study.dataset),
            "--prediction",
            spec,
            "--out",
            str(tmp_path / "metrics.csv"),
        ],
        capsys,
    )
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err
    assert not (tmp_path / "metrics.csv").exists()


def test_evaluate_unknown_hd95_variant_is_refused(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(
        [
            "evaluate",
            "--reference",
            str(study.dataset),
            "--prediction",
            f"VPM={study.predictions['VPM']}",
            "--out",
            str(tmp_path / "metrics.csv"),
            "--hd95",
            "median",
        ],
        capsys,
    )
    assert code == 2 and "unknown 95HD variant" in err


def test_compare_unknown_table_metric_is_refused_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = Path(__file__).parent / "data" / "table2_metrics.csv"
    code, _, err = _run(
        [
            "compare",
            str(fixture),
            "--a",
            "VPM",
            "--b",
            "LFT",
            "--out",
            str(tmp_path / "c"),
            "--table-metric",
            "rmsd",
            "--bootstrap",
            "0",
        ],
        capsys,
    )
    assert code == 2 and "unknown metric for Table 2" in err
    assert not (tmp_path / "c").exists()


def test_compare_unknown_model_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = Path(__file__).parent / "data" / "table2_metrics.csv"
    code, _, err = _run(
        ["compare", str(fixture), "--a", "VPM", "--b", "XYZ", "--out", str(tmp_path / "c")], capsys
    )
    assert code == 2 and "model not in the metrics table" in err


def test_commands_keep_help_free_of_heavy_imports() -> None:
    code = (
        "import sys; from dlas.cli import app, main; from dlas.cli.evaluation import register; "
        "register(app) if not any(c.name == 'evaluate' for c in app.registered_commands) "
        "else None; main(['evaluate', '--help']); main(['compare', '--help']); "
        "heavy = {'torch', 'scipy', 'pandas', 'SimpleITK', 'matplotlib'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().endswith("[]")
    assert "--specificity-domain" in result.stdout and "--correction" in result.stdout


def test_evaluate_and_compare_refuse_to_overwrite_without_overwrite(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `evaluate --out` used to overwrite an earlier metrics table silently.
    metrics = tmp_path / "metrics.csv"
    args = [
        "evaluate",
        "--reference",
        str(study.dataset),
        "--prediction",
        f"VPM={study.predictions['VPM']}",
        "--prediction",
        f"LFT={study.predictions['LFT']}",
        "--out",
        str(metrics),
    ]
    assert _run(args, capsys)[0] == 0
    before = metrics.read_bytes()
    code, _, err = _run(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "output already exists" in err and "--overwrite" in err
    assert metrics.read_bytes() == before
    assert _run([*args, "--overwrite"], capsys)[0] == 0

    out_dir = tmp_path / "cmp"
    compare = ["compare", str(metrics), "--a", "VPM", "--b", "LFT", "--out", str(out_dir)]
    assert _run([*compare, "--bootstrap", "10"], capsys)[0] == 0
    code, _, err = _run([*compare, "--bootstrap", "10"], capsys)
    assert code == 2
    assert "output already exists" in err and "comparison.csv" in err
    assert _run([*compare, "--bootstrap", "10", "--overwrite"], capsys)[0] == 0
