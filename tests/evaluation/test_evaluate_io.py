"""`evaluate` reads each mask once: the sidecar's hashes are those of the files' bytes; cases
evaluated in worker processes give the same table; `--workers` on the command line."""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dlas.cli import app, main
from dlas.cli.evaluation import register
from dlas.evaluation import evaluate

from .conftest import Study

# evaluate() the function shadows evaluate the module in dlas.evaluation.
evaluation_module = sys.modules["dlas.evaluation.evaluate"]

if not any(c.name == "evaluate" for c in app.registered_commands):
    register(app)


def _sources(study: Study) -> dict[str, str]:
    return {name: str(folder) for name, folder in study.predictions.items()}


def _combined(lines: list[tuple[str, str, Path]]) -> str:
    """The sidecar's masks_sha256: each (case, structure, file) with hashlib on the file."""
    digest = hashlib.sha256()
    for case_id, structure, path in lines:
        value = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{case_id}\x00{structure}\x00{value}\n".encode())
    return digest.hexdigest()


def test_sidecar_hashes_are_the_sha256_of_the_mask_files(study: Study) -> None:
    result = evaluate(study.dataset, _sources(study))
    case_ids = list(dict.fromkeys(result.table["case_id"]))
    reference = [
        (c, p.name.removesuffix(".nii.gz"), p)
        for c in case_ids
        for p in sorted((study.dataset / "cases" / c / "structures").glob("*.nii.gz"))
    ]
    assert result.metadata["reference"]["masks_sha256"] == _combined(reference)
    for model, folder in study.predictions.items():
        predicted = [
            (c, p.name.removesuffix(".nii.gz"), p)
            for c in case_ids
            for p in sorted((folder / c / "structures").glob("*.nii.gz"))
        ]
        assert result.metadata["predictions"][model]["masks_sha256"] == _combined(predicted)


def test_cases_evaluated_in_worker_processes_give_the_same_table(
    study: Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = evaluation_module._evaluate_case
    in_this_process: list[str] = []

    # Slow in this process only, so that the worker (which unpickles the original by name)
    # has started before this process has done every case.
    @functools.wraps(original)
    def slow_here(task: Any) -> Any:
        in_this_process.append(task.case_id)
        time.sleep(1.0)
        return original(task)

    monkeypatch.setattr(evaluation_module, "_evaluate_case", slow_here)
    two = evaluate(study.dataset, _sources(study), workers=2)
    monkeypatch.undo()
    one = evaluate(study.dataset, _sources(study), workers=1)
    assert 0 < len(in_this_process) < len(set(one.table["case_id"]))  # both processes worked
    assert two.table.equals(one.table)
    assert two.metadata == one.metadata


@pytest.mark.parametrize("workers", ["auto", "AUTO", "1", "3"])
def test_cli_workers_auto_or_a_number_give_the_same_table(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    out = tmp_path / "metrics.csv"
    args = ["evaluate", "--reference", str(study.dataset), "--out", str(out)]
    args += ["--prediction", f"VPM={study.predictions['VPM']}", "--workers", workers]
    assert main(args) == 0, capsys.readouterr().err
    expected = evaluate(study.dataset, {"VPM": str(study.predictions["VPM"])})
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["reference"] == expected.metadata["reference"]
    assert out.read_text() == expected.table.to_csv(index=False, na_rep="nan", lineterminator="\n")


@pytest.mark.parametrize("workers", ["0", "-2", "two", "1.5"])
def test_cli_invalid_number_of_workers_is_refused_before_work(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    out = tmp_path / "metrics.csv"
    args = ["evaluate", "--reference", str(study.dataset), "--out", str(out)]
    args += ["--prediction", f"VPM={study.predictions['VPM']}", "--workers", workers]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "invalid number of workers" in err and "--workers auto" in err
    assert not out.exists()
