"""Generating the replica's cohorts and writing them as DICOM (CT + RTSTRUCT) or as a data set.

One patient is fully determined by ``(seed, cohort, index)`` and the preset's grid: its random
streams come from ``numpy.random.SeedSequence(seed, spawn_key=(cohort code, index))``, split into
independent streams for the anatomy, the observer who contoured it, the scanner noise, the
placement on the table and the fictitious identity. Patient *i* of a cohort is therefore the same
whatever the sizes of the other cohorts, the number of worker processes or the order of
generation, and patients of different cohorts are independent draws (no leakage).

Output of :func:`generate` with ``fmt="dicom"``::

    OUT/manifest.json              cohorts, patients, scanner, style, seed, version, config hash
    OUT/cohorts.csv                series_uid,cohort — for `dlas import --cohort-by csv:...`
    OUT/<cohort>/<cohort>-NNN/     CT0001.dcm … (one CT series) and RS.dcm (its RTSTRUCT)

With ``fmt="nifti"`` ``OUT`` is a `dlas` data set (``dataset.json``, ``cases/<cohort>-NNN/``) with
the same cohorts, plus ``manifest.json``. The RTSTRUCTs carry ROIGenerationAlgorithm MANUAL: the
ground truth stands for an institution's approved manual contours, with that institution's
structure names.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from dlas import __version__
from dlas.config_files import canonical_sha256
from dlas.io.volume import Volume
from dlas.phantom.anatomy import Anatomy, sample_anatomy
from dlas.phantom.config import CohortSpec, PhantomConfig, PhantomError
from dlas.phantom.geometry import Grid
from dlas.phantom.render import render_ct
from dlas.phantom.scanners import SCANNERS, ScannerProfile, acquire
from dlas.phantom.styles import STRUCTURES, STYLES, ContouringStyle, contour

__all__ = [
    "PatientIdentity",
    "PhantomCase",
    "PhantomPatient",
    "generate",
    "make_case",
    "make_patient",
]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]
Format = Literal["dicom", "nifti"]
Mask = npt.NDArray[np.bool_]

_FAMILY = (
    "ABBOTT",
    "BERGMAN",
    "CALLOWAY",
    "DUNMORE",
    "ELLISON",
    "FARRELL",
    "GARRIDO",
    "HOLLOWAY",
    "IVERSEN",
    "JANSSEN",
    "KOWALCZYK",
    "LINDQVIST",
    "MORENO",
    "NAKAMURA",
    "OKAFOR",
    "PETROV",
    "QUINLAN",
    "ROSSETTI",
    "SANTORO",
    "TANAKA",
    "UDALL",
    "VOSS",
    "WINTERS",
    "YAMADA",
    "ZHAO",
)
_GIVEN = {
    "F": (
        "ANNA",
        "BEATRIX",
        "CLARA",
        "DORA",
        "ELENA",
        "FREYA",
        "GRETA",
        "HANNA",
        "INES",
        "JUNE",
        "KARIN",
        "LENA",
        "MARTA",
        "NORA",
        "OLGA",
        "PAULA",
        "ROSA",
        "SILVIA",
    ),
    "M": (
        "ADAM",
        "BORIS",
        "CARL",
        "DAVID",
        "EMIL",
        "FELIX",
        "GUSTAV",
        "HUGO",
        "IVAN",
        "JONAS",
        "KARL",
        "LUKAS",
        "MARCO",
        "NILS",
        "OSKAR",
        "PAUL",
        "RUBEN",
        "SIMON",
    ),
}


@dataclass(frozen=True)
class PatientIdentity:
    """The fictitious identity written into the DICOM headers (never into manifests or logs)."""

    name: str
    patient_id: str
    birth_date: dt.date
    sex: str
    age: int
    study: dt.datetime
    accession: str


@dataclass
class PhantomPatient:
    """A patient placed on a cohort's scanner: anatomy, image grid and random streams."""

    config: PhantomConfig
    cohort: CohortSpec
    index: int
    anatomy: Anatomy
    scanner: ScannerProfile
    grid: Grid
    lps_origin: tuple[float, float, float]
    fov_mm: float
    identity: PatientIdentity
    observer_rng: np.random.Generator
    scanner_rng: np.random.Generator

    @property
    def case_name(self) -> str:
        """``<cohort>-NNN``: the folder (DICOM) or case id (data set) of this patient."""
        return f"{self.cohort.name}-{self.index:03d}"

    @property
    def style(self) -> ContouringStyle:
        """The contouring style of the cohort's institution."""
        return STYLES[self.cohort.style]

    def volume(self, array: npt.ArrayLike) -> Volume:
        """A :class:`~dlas.io.Volume` on this patient's image grid (LPS)."""
        return Volume(np.asarray(array), np.array(self.grid.spacing), np.array(self.lps_origin))

    def image(self) -> npt.NDArray[np.float32]:
        """The CT (HU, (z, y, x)) as the cohort's scanner records it."""
        with _one_blas_thread():
            clean = render_ct(self.anatomy, self.grid)
            half = self.grid.shape[1] / 2.0
            return acquire(
                clean,
                (self.grid.spacing[1], self.grid.spacing[2]),
                self.scanner,
                self.scanner_rng,
                body_width_mm=self.anatomy.body_width_mm,
                fov_radius_px=(half, self.grid.shape[2] / 2.0),
            )

    def ground_truth(
        self, style: ContouringStyle | None = None, rng: np.random.Generator | None = None
    ) -> dict[str, Mask]:
        """Masks contoured in ``style`` (default: the cohort's) by this patient's observer."""
        with _one_blas_thread():
            return contour(
                self.anatomy,
                self.grid,
                style or self.style,
                self.observer_rng if rng is None else rng,
            )

    def uid_seed(self) -> str:
        """Seed of the DICOM UIDs: everything that defines this patient's files, not the
        sizes of the cohorts."""
        key = {
            "seed": self.config.seed,
            "grid": self.config.grid.model_dump(mode="json"),
            "cohort": self.cohort.model_dump(mode="json", exclude={"count"}),
            "index": self.index,
        }
        return "dlas-phantom:" + canonical_sha256(key)[:32]


@dataclass
class PhantomCase:
    """A generated patient: CT volume, ground-truth masks and what the manifest records."""

    patient: PhantomPatient
    ct: Volume
    masks: dict[str, Mask]

    def volumes_cm3(self) -> dict[str, float]:
        """Ground-truth volume of each structure (cm³)."""
        voxel = self.ct.voxel_volume_mm3 / 1000.0
        return {name: round(float(m.sum()) * voxel, 3) for name, m in self.masks.items()}

    def record(self) -> dict[str, Any]:
        """The patient's manifest entry (no name, id or birth date)."""
        p = self.patient
        return {
            "cohort": p.cohort.name,
            "index": p.index,
            "case": p.case_name,
            "scanner": p.scanner.key,
            "style": p.cohort.style,
            "study_date": p.identity.study.date().isoformat(),
            "sex": p.identity.sex,
            "age": p.identity.age,
            "anatomy": p.anatomy.summary,
            "volumes_cm3": self.volumes_cm3(),
            "shape_zyx": list(self.ct.shape),
            "spacing_zyx": [round(float(v), 6) for v in self.ct.spacing],
            "fov_mm": round(p.fov_mm, 3),
        }


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run the numerical work with one BLAS thread.

    Two reasons. Determinism: a matrix product summed by two threads can differ in the last bit
    from the same product on one thread, and a flipped bit can move a rounded HU value or a
    boundary voxel — the files must not depend on how many workers made them. Speed: the
    products are small; on shared cores extra BLAS threads only compete (a serial demo patient
    took 3x longer with two threads than with one on our 2-core machine).
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped,unused-ignore]

    from dlas import interrupts

    # threadpoolctl finds the BLAS libraries through a C callback: interrupts are held there
    # (dlas.interrupts), and only there, so that the work itself stays interruptible.
    with interrupts.held():
        limits = threadpool_limits(limits=1, user_api="blas")
    try:
        yield
    finally:
        with interrupts.held():
            limits.restore_original_limits()


def _cohort_code(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def make_patient(config: PhantomConfig, cohort: str, index: int) -> PhantomPatient:
    """Patient ``index`` of ``cohort`` (without rendering anything yet).

    Raises
    ------
    PhantomError
        The cohort is not in the configuration, or ``index`` is negative.
    """
    spec = config.cohort(cohort)
    if index < 0:
        raise PhantomError(
            "negative patient index",
            where=f"cohort {cohort}",
            expected="an index from 0",
            found=str(index),
            fix="number patients from 0",
        )
    seq = np.random.SeedSequence(config.seed, spawn_key=(_cohort_code(spec.name), index))
    anatomy_ss, observer_ss, scanner_ss, place_ss, identity_ss = seq.spawn(5)
    with _one_blas_thread():
        anatomy = sample_anatomy(np.random.default_rng(anatomy_ss))
    place = np.random.default_rng(place_ss)
    who = np.random.default_rng(identity_ss)
    scanner = SCANNERS[spec.scanners[int(place.integers(0, len(spec.scanners)))]]

    g = config.grid
    fov = g.fov_mm(scanner.fov_mm)
    n = g.matrix
    pixel = fov / n
    nz = g.n_slices()
    # Where the patient lies: lateral and vertical position on the table, table position, and
    # where the scan starts relative to the anatomy.
    dx = float(np.clip(place.normal(0.0, 8.0), -25.0, 25.0))
    dy = float(np.clip(place.normal(-12.0, 8.0), -35.0, 15.0))
    dz = round(float(place.uniform(-80.0, 80.0)), 1)
    z0 = g.z_range_mm[0] + round(float(place.uniform(-8.0, 8.0)), 1)
    x0 = -(n - 1) / 2.0 * pixel
    y0 = -(n - 1) / 2.0 * pixel
    grid = Grid((nz, n, n), (g.slice_mm, pixel, pixel), (x0 - dx, y0 - dy, z0))
    lps_origin = (x0, y0, z0 + dz)

    identity = _identity(who, spec, index, anatomy)
    return PhantomPatient(
        config=config,
        cohort=spec,
        index=index,
        anatomy=anatomy,
        scanner=scanner,
        grid=grid,
        lps_origin=lps_origin,
        fov_mm=fov,
        identity=identity,
        observer_rng=np.random.default_rng(observer_ss),
        scanner_rng=np.random.default_rng(scanner_ss),
    )


def _identity(
    rng: np.random.Generator, spec: CohortSpec, index: int, anatomy: Anatomy
) -> PatientIdentity:
    days = (spec.end - spec.start).days
    day = spec.start + dt.timedelta(days=int(rng.integers(0, days + 1)))
    study = dt.datetime.combine(
        day, dt.time(int(rng.integers(8, 17)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    )
    birth = day - dt.timedelta(days=int(anatomy.age * 365.25 + rng.integers(0, 365)))
    family = _FAMILY[int(rng.integers(0, len(_FAMILY)))]
    given = _GIVEN[anatomy.sex][int(rng.integers(0, len(_GIVEN[anatomy.sex])))]
    prefix = "NG" if spec.style == "vendor" else "LR"
    code = _cohort_code(spec.name) % 90 + 10
    patient_id = f"{prefix}{code:02d}{index:04d}{int(rng.integers(0, 1000)):03d}"
    accession = f"{int(rng.integers(10**7, 10**8))}"
    return PatientIdentity(
        f"{family}^{given}", patient_id, birth, anatomy.sex, anatomy.age, study, accession
    )


def make_case(config: PhantomConfig, cohort: str, index: int) -> PhantomCase:
    """Generate patient ``index`` of ``cohort``: CT as scanned and ground truth in the cohort's
    style."""
    patient = make_patient(config, cohort, index)
    ct = patient.volume(patient.image())
    masks = patient.ground_truth()
    return PhantomCase(patient, ct, masks)


# ---------------------------------------------------------------------- writers


def _ds(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text[:16]


def write_dicom_case(case: PhantomCase, folder: Path) -> dict[str, Any]:
    """Write the case as a CT series and its RTSTRUCT into ``folder`` (atomically).

    Returns
    -------
    dict
        The manifest entry, with the CT series and RTSTRUCT UIDs added.
    """
    from dlas.io import (
        CTSeriesSpec,
        ROIGenerationAlgorithm,
        atomic_dir,
        read_ct_series,
        write_ct_series,
        write_rtstruct,
    )
    from dlas.structures import StructureSet

    p = case.patient
    ident = p.identity
    scanner = p.scanner
    seed = p.uid_seed()
    spec = CTSeriesSpec(
        patient_name=ident.name,
        patient_id=ident.patient_id,
        patient_birth_date=ident.birth_date.strftime("%Y%m%d"),
        patient_sex=ident.sex,
        patient_age=f"{ident.age:03d}Y",
        study_date=ident.study.strftime("%Y%m%d"),
        study_time=ident.study.strftime("%H%M%S"),
        study_description="RT PLANNING PELVIS",
        accession_number=ident.accession,
        series_description=f"Pelvis {p.config.grid.slice_mm:g}mm {scanner.kernel}",
        series_number=2,
        body_part="PELVIS",
        manufacturer=scanner.manufacturer,
        manufacturer_model_name=scanner.model,
        station_name=scanner.station,
        kvp=scanner.kvp,
        convolution_kernel=scanner.kernel,
        institution_name=p.cohort.institution,
        uid_seed=seed,
        extra={"ReconstructionDiameter": _ds(p.fov_mm)},
    )
    names = p.style.roi_names
    with atomic_dir(folder) as tmp:
        files = write_ct_series(case.ct, tmp, spec)
        series = read_ct_series(files)
        write_rtstruct(
            {names[s]: case.masks[s] for s in STRUCTURES},
            series,
            tmp / "RS.dcm",
            generation=ROIGenerationAlgorithm.MANUAL,
            structure_set=StructureSet.builtin("rectal"),
            label="RT PELVIS",
            series_description="Approved structures",
            series_number=3,
            timestamp=ident.study + dt.timedelta(days=2),
            uid_seed=seed,
        )
    record = case.record()
    record["series_uid"] = spec.series_instance_uid
    record["roi_names"] = {s: names[s] for s in STRUCTURES}
    return record


def _case_info(case: PhantomCase, structure_names: dict[str, str]) -> dict[str, Any]:
    from dlas.dataset.layout import mask_file

    p = case.patient
    voxel = case.ct.voxel_volume_mm3 / 1000.0
    return {
        "case_id": p.case_name,
        "cohort": p.cohort.name,
        "source": {
            "kind": "phantom",
            "generator": "dlas.phantom",
            "preset": p.config.preset,
            "seed": p.config.seed,
            "index": p.index,
            "study_date": p.identity.study.date().isoformat(),
            "n_slices": case.ct.shape[0],
        },
        "style": p.cohort.style,
        "institution": p.cohort.institution,
        "patient": {"sex": p.identity.sex, "age_years": p.identity.age},
        "scanner": {
            "Manufacturer": p.scanner.manufacturer,
            "ManufacturerModelName": p.scanner.model,
            "StationName": p.scanner.station,
            "KVP": p.scanner.kvp,
            "ConvolutionKernel": p.scanner.kernel,
            "PixelSpacing": [float(case.ct.spacing[1]), float(case.ct.spacing[2])],
            "SliceThickness": float(case.ct.spacing[0]),
        },
        "scanner_profile": p.scanner.key,
        "geometry": case.ct.geometry(),
        "structures": {
            name: {
                "original_name": structure_names[name],
                "roi_number": None,
                "voxels": int(mask.sum()),
                "volume_cm3": round(float(mask.sum()) * voxel, 3),
                "file": mask_file(Path(), name).as_posix(),
            }
            for name, mask in case.masks.items()
            if mask.any()
        },
        "anatomy": p.anatomy.summary,
        "unmatched": [],
        "empty": [name for name, mask in case.masks.items() if not mask.any()],
        "warnings": [],
        "deidentification": {
            "method": "synthetic patient from dlas.phantom; no real person behind it",
            "ids_kept": False,
            "dates_shifted": False,
        },
    }


# ---------------------------------------------------------------------- the whole replica


def _job(
    config_data: dict[str, Any], cohort: str, index: int, out: str, fmt: Format
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Generate one patient in a worker; DICOM is written here, NIfTI data goes back."""
    config = PhantomConfig.model_validate(config_data)
    case = make_case(config, cohort, index)
    if fmt == "dicom":
        folder = Path(out) / cohort / case.patient.case_name
        return write_dicom_case(case, folder), None
    labels = np.zeros(case.ct.shape, dtype=np.uint8)
    for i, name in enumerate(STRUCTURES, start=1):
        labels[case.masks[name]] = i
    payload = {
        "ct": case.ct.array.astype(np.int16),
        "labels": labels,
        "spacing": case.ct.spacing,
        "origin": case.ct.origin,
        "info": _case_info(case, dict(case.patient.style.roi_names)),
    }
    return case.record(), payload


def _one_thread() -> None:
    """Worker start-up: one BLAS/OpenMP thread for the whole process (one process per core)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped,unused-ignore]

    from dlas import interrupts

    with interrupts.held():
        threadpool_limits(limits=1)


def _check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PhantomError(
            "output folder is not empty",
            where=str(out),
            expected="a new or empty folder",
            found="a file" if not out.is_dir() else f"{sum(1 for _ in out.iterdir())} entries",
            fix="choose a new folder or delete the old replica first",
        )


def generate(
    out: str | os.PathLike[str],
    config: PhantomConfig,
    *,
    fmt: Format = "dicom",
    workers: int = 1,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Generate every cohort of ``config`` into ``out``.

    Parameters
    ----------
    out
        New or empty folder.
    config
        Preset with seed and cohort sizes.
    fmt
        ``"dicom"`` (CT series + RTSTRUCT per patient, ``cohorts.csv``) or ``"nifti"`` (a `dlas`
        data set).
    workers
        Processes generating patients in parallel (the output does not depend on it). As with
        any ``multiprocessing`` code, a script that calls this with ``workers > 1`` must guard
        its entry point with ``if __name__ == "__main__":``.
    progress
        ``(done, total, label)`` callback.

    Returns
    -------
    dict
        The manifest (also written to ``out/manifest.json``).

    Raises
    ------
    PhantomError
        ``out`` is not empty, the format is unknown, or ``workers`` < 1.
    """

    out_path = Path(out)
    if fmt not in ("dicom", "nifti"):
        raise PhantomError(
            "unknown output format",
            where=f"--format {fmt}",
            expected="dicom or nifti",
            found=repr(fmt),
            fix="use --format dicom (default) or --format nifti",
        )
    if workers < 1:
        raise PhantomError(
            "invalid number of workers",
            where=f"--workers {workers}",
            expected="1 or more",
            found=str(workers),
            fix="use --workers 1 or the number of CPU cores",
        )
    _check_output(out_path)
    jobs = [(c.name, i) for c in config.cohorts for i in range(c.count)]
    if not jobs:
        raise PhantomError(
            "nothing to generate",
            where="cohort sizes",
            expected="at least one patient",
            found="all cohorts have 0 patients",
            fix="give a cohort a size, e.g. --cohort training=4",
        )
    from dlas.io.atomic import atomic_dir

    # The replica is generated in a hidden sibling folder and renamed into place when complete
    # (manifest.json written last): an interrupted run leaves no replica that looks complete.
    with atomic_dir(out_path, replace=out_path.exists()) as tmp:
        manifest = _generate_into(tmp, config, jobs, fmt=fmt, workers=workers, progress=progress)
    return manifest


def _generate_into(
    out_path: Path,
    config: PhantomConfig,
    jobs: list[tuple[str, int]],
    *,
    fmt: Format,
    workers: int,
    progress: ProgressCallback | None,
) -> dict[str, Any]:
    from dlas.io import write_json, write_text

    dataset = None
    if fmt == "nifti":
        from dlas.dataset import CaseDataset
        from dlas.structures import StructureSet

        dataset = CaseDataset.open_or_create(
            out_path, StructureSet.builtin("rectal"), name=f"phantom-{config.preset}"
        )
    data = config.to_data()
    records: dict[tuple[str, int], dict[str, Any]] = {}

    def finish(key: tuple[str, int], result: tuple[dict[str, Any], dict[str, Any] | None]) -> None:
        record, payload = result
        if payload is not None and dataset is not None:
            ct = Volume(payload["ct"], payload["spacing"], payload["origin"])
            masks = {
                name: ct.with_array(payload["labels"] == i)
                for i, name in enumerate(STRUCTURES, start=1)
                if (payload["labels"] == i).any()
            }
            dataset.write_case(key[0] + f"-{key[1]:03d}", key[0], ct, masks, payload["info"])
        records[key] = record
        if progress:
            progress(len(records), len(jobs), f"{key[0]}-{key[1]:03d}")
        log.info("generated %s-%03d", *key)

    if progress:
        progress(0, len(jobs), "")
    if workers == 1 or len(jobs) == 1:
        for cohort, index in jobs:
            finish((cohort, index), _job(data, cohort, index, str(out_path), fmt))
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(workers, len(jobs)), mp_context=context, initializer=_one_thread
        ) as pool:
            futures = {
                pool.submit(_job, data, cohort, index, str(out_path), fmt): (cohort, index)
                for cohort, index in jobs
            }
            for future in as_completed(futures):
                finish(futures[future], future.result())

    patients = [records[key] for key in jobs]
    manifest = {
        "kind": "dlas-phantom",
        "schema_version": 1,
        "software": {"name": "dlas", "version": __version__},
        "preset": config.preset,
        "seed": config.seed,
        "format": fmt,
        "config": data,
        "config_sha256": config.sha256(),
        "cohorts": {
            c.name: {
                "count": c.count,
                "style": c.style,
                "scanners": list(c.scanners),
                "period": [c.start.isoformat(), c.end.isoformat()],
                "institution": c.institution,
                "roi_names": dict(STYLES[c.style].roi_names),
            }
            for c in config.cohorts
        },
        "scanners": {k: SCANNERS[k].to_data() for k in sorted({p["scanner"] for p in patients})},
        "patients": patients,
    }
    if fmt == "dicom":
        lines = ["series_uid,cohort"] + [f"{p['series_uid']},{p['cohort']}" for p in patients]
        write_text(out_path / "cohorts.csv", "\n".join(lines) + "\n")
    else:
        assert dataset is not None
        dataset.meta = {
            "phantom": {k: manifest[k] for k in ("preset", "seed", "config_sha256", "software")}
        }
        dataset.save()
    write_json(out_path / "manifest.json", manifest)
    return manifest
