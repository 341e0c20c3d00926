"""Session-wide test settings: pydicom's strict validation, and access to ../shared/data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import config as pydicom_config

from helpers.browser import browser_missing, start_chromium

#: Real data shared next to the repository (see ../shared/data/README.md); never copied in.
SHARED_DATA = Path(
    os.environ.get(
        "DLAS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)


@pytest.fixture(autouse=True, scope="session")
def _strict_pydicom() -> Iterator[None]:
    """Every DICOM file read or written in the tests must pass pydicom's strict validation."""
    old = (
        pydicom_config.settings.reading_validation_mode,
        pydicom_config.settings.writing_validation_mode,
    )
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    yield
    (
        pydicom_config.settings.reading_validation_mode,
        pydicom_config.settings.writing_validation_mode,
    ) = old


@pytest.fixture
def shared_data() -> Callable[[str], Path]:
    """``shared_data("openkbp-hn")``: path of a shared real data set; the test skips cleanly
    when it is absent."""

    def locate(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.exists():
            pytest.skip(f"real data {name!r} not found at {path} (see ../shared/data/README.md)")
        return path

    return locate


@pytest.fixture
def synthetic_ct(tmp_path: Path) -> Callable[..., tuple[Path, list[Path], Any]]:
    """Write a small synthetic CT series; returns (folder, files, Volume).

    ``synthetic_ct(name="ct", shape=(10, 32, 32), spacing=(2.5, 1.2, 1.2), **spec_fields)``:
    a body-like ellipse of soft tissue in air, with the given CTSeriesSpec fields.
    """
    import numpy as np

    from dlas.io import CTSeriesSpec, Volume, write_ct_series

    def make(
        name: str = "ct",
        shape: tuple[int, int, int] = (10, 32, 32),
        spacing: tuple[float, float, float] = (2.5, 1.2, 1.2),
        origin: tuple[float, float, float] = (-19.0, -19.0, -12.5),
        **spec: Any,
    ) -> tuple[Path, list[Path], Any]:
        nz, ny, nx = shape
        _, yy, xx = np.mgrid[:nz, :ny, :nx]
        body = ((yy - ny / 2) / (ny * 0.42)) ** 2 + ((xx - nx / 2) / (nx * 0.45)) ** 2 < 1
        hu = np.where(body, 40.0, -1000.0)
        hu += (np.arange(nz) * 3.0)[:, None, None] * body  # each slice distinguishable
        volume = Volume(hu, spacing=spacing, origin=origin)
        spec.setdefault("patient_name", "DOE^JANE")
        spec.setdefault("patient_id", "PID-0001")
        spec.setdefault("patient_birth_date", "19600214")
        spec.setdefault("uid_seed", f"{name}-{sorted(spec.items())}")
        folder = tmp_path / name
        files = write_ct_series(volume, folder, CTSeriesSpec(**spec))
        return folder, files, volume

    return make


@pytest.fixture
def dciodvfy() -> Callable[[Path], list[str]]:
    """``dciodvfy(path)`` → the ``Error`` lines dicom3tools' validator prints for a file.

    Skips when dciodvfy is not installed (CI installs Debian's dicom3tools). Its exit status is
    unreliable, so the output is parsed.
    """
    import shutil
    import subprocess

    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")

    def run(path: Path) -> list[str]:
        result = subprocess.run(
            [exe, str(path)], capture_output=True, text=True, check=False, timeout=120
        )
        lines = (result.stdout + result.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")]

    return run


# ------------------------------------------------------------------ headless Chromium
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``browser`` skip, with the reason, when Chromium or selenium is missing."""
    reason = browser_missing()
    if reason is None:
        return
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium with a fresh profile, logging the console and the network."""
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()
