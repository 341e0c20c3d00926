"""Fault injection: the probes of the trust issue, kept. Each bad input or fault must end in one
line on standard error, exit status 2 (130/143 for an interrupt), and nothing half-written."""

from __future__ import annotations

import datetime as dt
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dlas.cli import main
from dlas.dataset import CaseDataset
from dlas.io import read_ct_series, write_rtstruct


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def _leftovers(root: Path) -> list[Path]:
    """Temporary files or folders of an atomic write left anywhere under ``root``."""
    return [p for p in root.rglob(".tmp-*")]


@pytest.fixture
def export(synthetic_ct, tmp_path: Path) -> Path:
    """A good patient (with an RTSTRUCT) and a patient whose CT has PixelSpacing 0\\0."""
    good, _, _ = synthetic_ct(name="src/good", patient_id="P1")
    ct = read_ct_series(good)
    mask = np.zeros(ct.volume.shape, bool)
    mask[2:6, 10:20, 10:20] = True
    write_rtstruct(
        {"Bladder": mask, "LongName": np.roll(mask, 3, axis=2)},
        ct,
        good / "RS.dcm",
        generation="MANUAL",
        timestamp=dt.datetime(2024, 1, 1),
    )
    _, files, _ = synthetic_ct(name="src/bad", patient_id="P2")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = [0, 0]
        ds.save_as(f)
    return tmp_path / "src"


def test_zero_pixel_spacing_refuses_that_case_and_keeps_the_good_ones(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was an internal error (ValueError from the volume) that lost the good case too.
    code, _, err = _run(["--quiet", "import", str(export), str(tmp_path / "ds")], capsys)
    assert code == 0, err
    report = CaseDataset.open(tmp_path / "ds")
    assert len(report) == 1
    code, _, err = _run(["import", str(export / "bad"), str(tmp_path / "ds2")], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "invalid PixelSpacing" in line and "found 0\\0" in line


def test_300_character_roi_name_is_kept_under_a_shortened_file_name(
    export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Was "File name too long" (internal error) with --keep-unmapped. Planning systems do
    # write such over-long values; pydicom reads them with a warning (the tests' strict mode
    # is relaxed here, as it is by default for users).
    settings = pydicom.config.settings
    monkeypatch.setattr(settings, "reading_validation_mode", pydicom.config.WARN)
    monkeypatch.setattr(settings, "writing_validation_mode", pydicom.config.WARN)
    rs = pydicom.dcmread(export / "good" / "RS.dcm")
    for roi in rs.StructureSetROISequence:
        if roi.ROIName == "LongName":
            roi.ROIName = "X" * 300
    rs.save_as(export / "good" / "RS.dcm")
    code, _, err = _run(
        ["--quiet", "import", str(export / "good"), str(tmp_path / "ds"), "--keep-unmapped"],
        capsys,
    )
    assert code == 0, err
    assert err == ""  # pydicom's warning about the over-long value stays out of the console
    (case,) = list((tmp_path / "ds" / "cases").iterdir())
    names = sorted(p.name for p in (case / "structures").iterdir())
    assert names[0] == "Bladder.nii.gz"
    assert len(names[1]) == len("X" * 55 + "-12345678.nii.gz")


def test_predict_output_that_is_a_file_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ct = tmp_path / "ct.nii.gz"
    from dlas.io import Volume, write_nifti

    write_nifti(Volume(np.zeros((4, 8, 8)), spacing=(3, 1, 1), origin=(0, 0, 0)), ct)
    out = tmp_path / "out"
    out.write_text("not a folder")
    # The model path does not even exist: the output is checked first.
    code, _, err = _run(["predict", str(tmp_path / "no-model"), str(ct), "--out", str(out)], capsys)
    assert code == 2
    assert "output folder is a file" in _one_error_line(err)


def test_unwritable_output_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read-only folder: root may write anywhere, so the refusal of the file system is injected.
    real = Path.write_bytes

    def read_only(self: Path, data: bytes) -> int:
        if self.name.startswith(".tmp-probe-"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    metrics = tmp_path / "m.csv"
    metrics.write_text("model,case_id\n")
    code, _, err = _run(
        ["compare", str(metrics), "--a", "A", "--b", "B", "--out", str(tmp_path / "cmp")], capsys
    )
    assert code == 2
    line = _one_error_line(err)
    assert "cannot write the output" in line and "Read-only file system" in line


def test_full_disk_during_a_write_is_one_line_and_leaves_nothing_half_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dlas.io.atomic as atomic

    real_replace = os.replace

    def full(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if str(dst).endswith(".nii.gz"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full)
    code, _, err = _run(
        [
            "phantom",
            str(tmp_path / "ds"),
            "--format",
            "nifti",
            "--cohort",
            "vendor=1",
            "--cohort",
            "training=0",
            "--cohort",
            "ExVal=0",
            "--cohort",
            "GenEva=0",
        ],
        capsys,
    )
    assert code == 2
    line = _one_error_line(err)
    assert "no space left on the device" in line and "free disk space" in line
    assert not (tmp_path / "ds").exists()
    assert _leftovers(tmp_path) == []


def test_study_recipe_override_is_validated_before_the_first_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "study.yaml"
    config.write_text("schema_version: 1\nname: s\nfinetune: {epoch: 1}\n")
    code, _, err = _run(["study", str(config), "--out", str(tmp_path / "st")], capsys)
    assert code == 2
    assert "recipe override 'epoch'" in _one_error_line(err)
    assert not (tmp_path / "st").exists()


def test_unbounded_bootstrap_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = tmp_path / "m.csv"
    metrics.write_text("model,case_id\n")
    code, _, err = _run(
        [
            "compare",
            str(metrics),
            "--a",
            "A",
            "--b",
            "B",
            "--out",
            str(tmp_path / "cmp"),
            "--bootstrap",
            "1000000000",
        ],
        capsys,
    )
    assert code == 2
    assert "invalid number of bootstrap resamples" in _one_error_line(err)
    config = tmp_path / "study.yaml"
    config.write_text("schema_version: 1\nstatistics: {bootstrap: 1000000000}\n")
    code, _, err = _run(["study", str(config), "--out", str(tmp_path / "st")], capsys)
    assert code == 2
    assert "bootstrap" in _one_error_line(err)


def test_truncated_ct_slice_refuses_its_case_only(
    synthetic_ct, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic_ct(name="src/a", patient_id="P1")
    _, files, _ = synthetic_ct(name="src/b", patient_id="P2")
    raw = files[3].read_bytes()
    files[3].write_bytes(raw[: len(raw) // 2])
    code, _, err = _run(["--quiet", "import", str(tmp_path / "src"), str(tmp_path / "ds")], capsys)
    assert code == 0, err
    assert len(CaseDataset.open(tmp_path / "ds")) == 1


_PHANTOM = [
    "phantom",
    "--preset",
    "paper",
    "--cohort",
    "vendor=3",
    "--cohort",
    "training=0",
    "--cohort",
    "ExVal=0",
    "--cohort",
    "GenEva=0",
]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_prints_one_line_with_how_to_resume(
    tmp_path: Path, signum: int, status: int
) -> None:
    # The probe: `kill -INT` on a dlas started from a script (SIGINT ignored, as a shell does
    # for background jobs) did nothing and printed nothing.
    out = tmp_path / "replica"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlas", *_PHANTOM[:1], str(out), *_PHANTOM[1:]],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    # Wait until the replica is being written (its hidden temporary folder exists).
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".tmp-replica-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(tmp_path.glob(".tmp-replica-*")), "the phantom never started"
    proc.send_signal(signum)
    code = proc.wait(timeout=120)
    err = proc.stderr.read() if proc.stderr else ""
    assert code == status, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    name = signal.Signals(signum).name
    assert lines[0].startswith(f"interrupted: dlas phantom stopped by {name}")
    assert "run the same `dlas phantom` again" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_metrics_output_that_is_a_folder_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "metrics.csv"
    out.mkdir()
    code, _, err = _run(
        [
            "evaluate",
            "--reference",
            str(tmp_path / "no-dataset"),
            "--prediction",
            f"M={tmp_path}",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 2
    assert "output file is a folder" in _one_error_line(err)


def test_os_error_that_is_not_the_users_is_an_internal_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An I/O error of the device is not something the user can fix by choosing another output:
    # it is reported as internal (exit 1), not dressed up as a usage error.
    import dlas.evaluation.statistics as statistics

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "m.csv"))

    monkeypatch.setattr(statistics, "read_metrics", broken)
    code, _, err = _run(
        ["compare", str(tmp_path / "m.csv"), "--a", "A", "--b", "B", "--out", str(tmp_path / "c")],
        capsys,
    )
    assert code == 1
    line = _one_error_line(err)
    assert "internal error (OSError" in line and "rerun with --debug" in line
