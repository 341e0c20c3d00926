"""Session-wide test settings: pydicom's strict validation, and access to ../shared/data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import config as pydicom_config

#: Real data shared next to the repository (see ../shared/data/README.md); never copied in.
SHARED_DATA = Path(
    os.environ.get("DLAS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
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
