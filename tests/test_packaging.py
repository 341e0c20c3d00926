"""The wheel: it carries its package data, and the command runs from it (not from the checkout)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the project's source (the checkout stays untouched)."""
    src = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*build, "-w", str(out), str(src)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build a wheel here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("dlas-*.whl")
    return path


def test_wheel_carries_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "dlas/py.typed",
        "dlas/structures/rectal.yaml",
        "dlas/study/examples/hospital.yaml",
        "dlas/study/examples/contours.yaml",
        "dlas/report/templates/report.html.j2",
    ):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_dlas_runs_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    """`dlas --help` and `dlas example-config` from the unpacked wheel, ahead of the editable
    checkout on the path (its dependencies are this environment's)."""
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    where = subprocess.run(
        [sys.executable, "-c", "import dlas; print(dlas.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(unpacked)
    run = [sys.executable, "-m", "dlas"]
    help_text = subprocess.run(
        [*run, "--help"], capture_output=True, text=True, env=env, cwd=tmp_path, check=True
    ).stdout
    assert "example-config" in help_text and "evaluate" in help_text
    example = subprocess.run(
        [*run, "example-config", "contours"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert "contour_sets:" in example


def _name(distribution: str) -> str:
    """A distribution name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _pins(lines: list[str], operator: str) -> dict[str, str]:
    """Name (normalised) → version of each ``name<operator>version`` requirement in ``lines``."""
    pins = {}
    for line in lines:
        match = re.match(rf"\s*([A-Za-z0-9_.-]+)\s*{re.escape(operator)}\s*([0-9][0-9.]*)", line)
        if match:
            pins[_name(match.group(1))] = match.group(2)
    return pins


def test_minimum_versions_file_pins_exactly_the_declared_floors() -> None:
    """CI tests the floors through .ci/min-versions.txt; it must not drift from pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = project["dependencies"]
    floors = _pins(declared, ">=")
    assert len(floors) == len(declared), "every runtime dependency declares a floor"
    constraints = (ROOT / ".ci" / "min-versions.txt").read_text(encoding="utf-8").splitlines()
    pinned = _pins([line for line in constraints if not line.startswith("#")], "==")
    # torch is the one floor CI cannot install (see the file's header)
    assert floors.pop("torch") == "2.3"
    assert pinned == floors


def test_device_kit_covers_every_runtime_dependency() -> None:
    """benchmarks/device_kit.py packs what the accelerator machine's image lacks: a dependency
    added to pyproject.toml must be either there already or in the kit, or the GPU run of the
    next session stops at an import (device time lost)."""
    import importlib.util

    tomllib = pytest.importorskip("tomllib")
    spec = importlib.util.spec_from_file_location("device_kit", ROOT / "benchmarks/device_kit.py")
    assert spec is not None and spec.loader is not None
    kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kit)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    packed = set(_pins(kit.CORE + kit.NNUNET + kit.SMP, "=="))
    there = {_name(n) for n in kit.ON_THE_MACHINE}
    assert not packed & there
    for group, names in (
        ("dependencies", project["dependencies"]),
        ("nnunet", project["optional-dependencies"]["nnunet"]),
        ("bench", project["optional-dependencies"]["bench"]),
    ):
        needed = set(_pins(names, ">="))
        assert needed <= packed | there, (
            f"{group}: not in the device kit: {needed - packed - there}"
        )
