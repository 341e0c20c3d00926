"""What to generate: image grids, cohorts and the two presets (``paper`` and ``demo``).

The cohorts mirror the seed study (its Table 1 and methods):

========  =====  ======  ========  ===================  =====================================
cohort    paper  demo    style     scanner              study dates
========  =====  ======  ========  ===================  =====================================
vendor    122    16      vendor    V1 / V2 (its own)    2016-01 … 2019-12 (other institution)
training  60     12      local     A                    2020-03 … 2022-10
ExVal     30     6       local     A                    2022-11 … 2023-05
GenEva    30     6       local     B                    2023-02 … 2023-05 (B commissioned 2022)
========  =====  ======  ========  ===================  =====================================

``paper`` images are 512x512 pixels over each scanner's full field of view (A: 1.27 mm, B:
1.17 mm) with 5 mm slices; ``demo`` images are 128x128 over 75 % of the field of view (at least
440 mm, so no patient is cut off: A 3.8 mm, B 3.5 mm pixels) with 8 mm slices, so that the demo
study trains a CPU model in minutes. Both cover the same 260 mm of the patient, from below the
anal verge to above the sacral promontory, so patient *i* of a cohort has the same anatomy in
both presets.

A configuration is data (pydantic, validated, with a schema version); its SHA-256 over the
canonical JSON is recorded in every output.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dlas.config_files import canonical_sha256, validation_error
from dlas.errors import DlasError
from dlas.phantom.scanners import SCANNERS

__all__ = [
    "COHORT_NAMES",
    "PRESETS",
    "CohortSpec",
    "GridSpec",
    "PhantomConfig",
    "PhantomError",
    "parse_cohort_counts",
    "preset",
    "validate_config",
]

#: The cohorts of the study, in generation order.
COHORT_NAMES = ("vendor", "training", "ExVal", "GenEva")


class PhantomError(DlasError):
    """A phantom request that cannot be carried out (bad preset, cohort, count or folder)."""


class GridSpec(BaseModel):
    """The image grid of a preset.

    Attributes
    ----------
    matrix
        Pixels per row and column.
    fov_scale
        Fraction of the scanner's field of view reconstructed (1 = the full diameter).
    min_fov_mm
        Smallest reconstructed field of view (mm), whatever ``fov_scale`` says.
    slice_mm
        Slice thickness and spacing (mm).
    z_range_mm
        Covered patient-frame z range (mm, relative to the femoral-head centres).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    matrix: int = Field(ge=32, le=1024)
    fov_scale: float = Field(gt=0.2, le=1.0)
    min_fov_mm: float = Field(ge=0.0, le=700.0)
    slice_mm: float = Field(gt=0.5, le=20.0)
    z_range_mm: tuple[float, float] = (-125.0, 135.0)

    def fov_mm(self, scanner_fov_mm: float) -> float:
        """Reconstructed field of view (mm) on a scanner with the given full diameter."""
        return min(scanner_fov_mm, max(scanner_fov_mm * self.fov_scale, self.min_fov_mm))

    def n_slices(self) -> int:
        """Number of slices."""
        lo, hi = self.z_range_mm
        return round((hi - lo) / self.slice_mm) + 1


class CohortSpec(BaseModel):
    """One cohort: how many patients, contoured in which style, scanned where and when."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    count: int = Field(ge=0, le=10000)
    style: Literal["vendor", "local"]
    scanners: tuple[str, ...] = Field(min_length=1)
    start: dt.date
    end: dt.date
    institution: str

    @field_validator("scanners")
    @classmethod
    def _known_scanners(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in value if s not in SCANNERS]
        if unknown:
            raise ValueError(f"unknown scanners {unknown}; known: {sorted(SCANNERS)}")
        return value

    @model_validator(mode="after")
    def _period(self) -> CohortSpec:
        if self.end < self.start:
            raise ValueError(f"cohort {self.name}: end {self.end} before start {self.start}")
        return self


class PhantomConfig(BaseModel):
    """Everything that determines a generated replica (with the seed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1
    preset: str
    seed: int = Field(ge=0, lt=2**63)
    grid: GridSpec
    cohorts: tuple[CohortSpec, ...]

    @model_validator(mode="after")
    def _unique_names(self) -> PhantomConfig:
        names = [c.name for c in self.cohorts]
        if len(set(names)) != len(names):
            raise ValueError(f"cohort names repeat: {names}")
        return self

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form."""
        return self.model_dump(mode="json")

    def sha256(self) -> str:
        """Hash of the canonical JSON form."""
        return canonical_sha256(self.to_data())

    def cohort(self, name: str) -> CohortSpec:
        """The cohort called ``name``."""
        for c in self.cohorts:
            if c.name == name:
                return c
        raise PhantomError(
            "unknown cohort",
            where=repr(name),
            expected=", ".join(c.name for c in self.cohorts),
            found=repr(name),
            fix="use one of the preset's cohort names (case matters)",
        )

    def with_counts(self, counts: Mapping[str, int]) -> PhantomConfig:
        """A copy with some cohort sizes replaced."""
        for name in counts:
            self.cohort(name)
        cohorts = tuple(
            c.model_copy(update={"count": int(counts[c.name])}) if c.name in counts else c
            for c in self.cohorts
        )
        return self.model_copy(update={"cohorts": cohorts})

    def with_seed(self, seed: int) -> PhantomConfig:
        """A copy with another seed."""
        if not 0 <= seed < 2**63:
            raise PhantomError(
                "seed out of range",
                where="--seed",
                expected="an integer from 0 to 2**63 - 1",
                found=str(seed),
                fix="choose a non-negative seed",
            )
        return self.model_copy(update={"seed": int(seed)})


_VENDOR_SITE = "Northgate Cancer Centre"
_LOCAL_SITE = "Lakeside Radiotherapy"


def _cohorts(counts: tuple[int, int, int, int]) -> tuple[CohortSpec, ...]:
    v, t, e, g = counts
    return (
        CohortSpec(
            name="vendor",
            count=v,
            style="vendor",
            scanners=("V1", "V2"),
            start=dt.date(2016, 1, 4),
            end=dt.date(2019, 12, 20),
            institution=_VENDOR_SITE,
        ),
        CohortSpec(
            name="training",
            count=t,
            style="local",
            scanners=("A",),
            start=dt.date(2020, 3, 2),
            end=dt.date(2022, 10, 31),
            institution=_LOCAL_SITE,
        ),
        CohortSpec(
            name="ExVal",
            count=e,
            style="local",
            scanners=("A",),
            start=dt.date(2022, 11, 1),
            end=dt.date(2023, 5, 31),
            institution=_LOCAL_SITE,
        ),
        CohortSpec(
            name="GenEva",
            count=g,
            style="local",
            scanners=("B",),
            start=dt.date(2023, 2, 1),
            end=dt.date(2023, 5, 31),
            institution=_LOCAL_SITE,
        ),
    )


#: The built-in presets.
PRESETS: dict[str, PhantomConfig] = {
    "paper": PhantomConfig(
        preset="paper",
        seed=0,
        grid=GridSpec(matrix=512, fov_scale=1.0, min_fov_mm=0.0, slice_mm=5.0),
        cohorts=_cohorts((122, 60, 30, 30)),
    ),
    "demo": PhantomConfig(
        preset="demo",
        seed=0,
        grid=GridSpec(matrix=128, fov_scale=0.75, min_fov_mm=440.0, slice_mm=8.0),
        cohorts=_cohorts((16, 12, 6, 6)),
    ),
}


def preset(name: str) -> PhantomConfig:
    """A built-in preset (``paper`` or ``demo``)."""
    if name not in PRESETS:
        raise PhantomError(
            "unknown phantom preset",
            where=f"--preset {name}",
            expected=" or ".join(PRESETS),
            found=repr(name),
            fix="use --preset demo (small, CPU) or --preset paper (full size)",
        )
    return PRESETS[name]


def parse_cohort_counts(items: list[str], config: PhantomConfig) -> dict[str, int]:
    """Parse ``NAME=COUNT`` overrides (the ``--cohort`` option)."""
    out: dict[str, int] = {}
    for item in items:
        match = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(\d+)\s*", item)
        if not match:
            raise PhantomError(
                "malformed cohort size",
                where=f"--cohort {item}",
                expected="NAME=COUNT, e.g. training=12",
                found=repr(item),
                fix="write the cohort name, '=', and a non-negative whole number",
            )
        name, count = match.group(1), int(match.group(2))
        config.cohort(name)
        if count > 10000:
            raise PhantomError(
                "cohort size too large",
                where=f"--cohort {item}",
                expected="at most 10000 patients",
                found=str(count),
                fix="generate fewer patients",
            )
        out[name] = count
    return out


def validate_config(data: Mapping[str, Any]) -> PhantomConfig:
    """A configuration from JSON-like data; errors become one-line :class:`PhantomError`."""
    try:
        return PhantomConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise validation_error(
            exc,
            PhantomError,
            what="invalid phantom configuration",
            source=None,
            expected="the schema of dlas.phantom.config",
            fix="correct the configuration",
        ) from None
