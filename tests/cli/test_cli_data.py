"""The command line: `dlas info`, `dlas import`, `dlas inspect`, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlas.cli import main


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json(capsys) -> None:
    code, out, _ = _run(["info", "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert data["packages"]["pydicom"]
    assert "rectal" in data["structure_sets"]
    # what the GPU fast path would use; on this CPU-only machine, the plain float32 step
    expected = "cuda: bf16 autocast" if data["torch"]["cuda_available"] else "cpu: float32"
    assert data["torch"]["training_step"].startswith(expected)


def test_help_is_instant_and_imports_no_heavy_library() -> None:
    code = (
        "import sys; from dlas.cli import main; main(['--help']); "
        "heavy = {'torch', 'SimpleITK', 'pydicom', 'matplotlib', 'pandas', 'nibabel'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().endswith("[]")


def test_import_and_inspect(synthetic_ct, tmp_path: Path, capsys) -> None:
    import datetime as dt

    import numpy as np

    from dlas.io import read_ct_series, write_rtstruct

    folder, _, _ = synthetic_ct(
        name="src/ct", manufacturer="SIEMENS", manufacturer_model_name="Sensation Open"
    )
    ct = read_ct_series(folder)
    mask = np.zeros(ct.volume.shape, dtype=bool)
    mask[2:6, 10:20, 10:20] = True
    write_rtstruct(
        {"Bladder": mask, "Femoral Head Lt": mask[:, ::-1], "PTV": mask},
        ct,
        tmp_path / "src" / "RS.dcm",
        generation="MANUAL",
        timestamp=dt.datetime(2024, 1, 1),
    )
    code, out, err = _run(
        ["import", str(tmp_path / "src"), str(tmp_path / "ds"), "--cohort-by", "scanner"], capsys
    )
    assert code == 0, err
    assert "imported 1 case(s)" in out and "SIEMENS-Sensation-Open: 1" in out
    assert "PTV (1)" in out
    code, out, _ = _run(["inspect", str(tmp_path / "src" / "RS.dcm"), "--json"], capsys)
    rois = json.loads(out)["rtstructs"][0]["rois"]
    assert [(r["name"], r["maps_to"]) for r in rois] == [
        ("Bladder", "Bladder"),
        ("Femoral Head Lt", "Femur_Head_L"),
        ("PTV", None),
    ]
    code, out, _ = _run(["inspect", str(tmp_path / "ds")], capsys)
    assert code == 0 and "1 case(s)" in out
    code, out, _ = _run(["--quiet", "inspect", str(tmp_path / "src")], capsys)
    assert "CT series" in out and "DOE" not in out and "PID-0001" not in out


def test_user_error_is_one_line_with_status_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = _run(["import", str(tmp_path / "empty"), str(tmp_path / "ds")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "no CT found to import" in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    code, _, err = _run(
        ["import", str(tmp_path / "absent"), str(tmp_path / "ds"), "--debug"], capsys
    )
    assert code == 2
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: ")


def test_usage_errors_are_one_line(capsys) -> None:
    code, _, err = _run(["import", "--no-such-option"], capsys)
    assert code == 2
    assert err.startswith("error: No such option") and err.count("\n") == 1


def test_bad_structure_set_file_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "set.yaml"
    bad.write_text("schema_version: 1\nname: x\nstructures: []\n")
    code, _, err = _run(["inspect", str(tmp_path), "--structures", str(bad)], capsys)
    assert code == 2 and "invalid structure set" in err and err.count("\n") == 1


def test_import_with_every_case_refused_fails(synthetic_ct, tmp_path: Path, capsys) -> None:
    _, files, _ = synthetic_ct(name="src/ct")
    files[3].unlink()
    code, _, err = _run(["import", str(tmp_path / "src"), str(tmp_path / "ds")], capsys)
    assert code == 2
    assert "no case could be imported" in err and "missing slice" in err


def test_global_options_are_read_by_the_root_callback_and_end_with_the_run(
    tmp_path: Path, capsys
) -> None:
    """--debug before or after the command is the root command's option; its setting holds
    for that run only, so the next run without it prints no traceback."""
    from dlas.cli import _global_options_first
    from dlas.cli._common import settings

    assert _global_options_first(["import", "a", "--quiet", "b", "--debug", "--quiet"]) == [
        "--quiet",
        "--debug",
        "import",
        "a",
        "b",
    ]
    assert _global_options_first(["x", "--", "--debug"]) == ["x", "--", "--debug"]
    for args in (["--debug", "import"], ["import", "--debug"]):
        code, _, err = _run([*args, str(tmp_path / "absent"), str(tmp_path / "ds")], capsys)
        assert code == 2 and "Traceback" in err
    code, _, err = _run(["import", str(tmp_path / "absent"), str(tmp_path / "ds")], capsys)
    assert code == 2 and "Traceback" not in err
    assert settings().debug is False and settings().quiet is False
