"""The `dlas` data set on disk: what every stage after import reads.

Layout::

    DATASET/
      dataset.json                 schema version, structure set, cases with cohorts
      import-report.json           what each import did, skipped and warned about (the last
                                   run, with the earlier ones under "earlier_runs")
      .dlas-pseudonym-key          key of the pseudonyms (never share it)
      .dlas-lock                   writer lock: one import (or phantom) at a time
      cases/<case_id>/
        ct.nii.gz                  CT in HU, canonical axial orientation
        structures/<Name>.nii.gz   one binary mask per structure of the reference contour set,
                                   on the CT grid
        sets/<set>/structures/<Name>.nii.gz
                                   the masks of each other contour set of the case (a vendor
                                   model's export, a second clinician's), same grid and names
        case.json                  scanner, geometry, name mapping, warnings, and per contour
                                   set the object it came from and its mapping

``dataset.json`` lists each case's reference structures and, under ``contour_sets``, the
structures of its other sets; ``meta.reference_set`` names the reference set (``reference`` when
absent: data sets imported without contour-set rules, including those of earlier versions, which
read unchanged). See :mod:`dlas.dataset.contour_sets` for how objects are assigned to sets.

Cases are written to a hidden temporary folder and renamed into place when complete, and
``dataset.json`` is rewritten atomically after each case, so an interrupted import leaves only
complete cases behind and loses none already written. Writers hold the data set's lock
(:func:`writer_lock`) for their whole run: a second `dlas import` into the same data set while
one is running fails at once with a clear message, instead of both rewriting ``dataset.json``
from their own view and losing each other's cases.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dlas import __version__
from dlas.dataset.contour_sets import DEFAULT_REFERENCE_SET, SET_NAME
from dlas.errors import DatasetError, DlasError
from dlas.io.atomic import atomic_dir, write_json
from dlas.io.nifti import read_mask, read_nifti, write_mask, write_nifti
from dlas.io.volume import Volume
from dlas.structures import StructureSet

__all__ = [
    "DATASET_SCHEMA_VERSION",
    "LOCK_FILE",
    "MASK_FOLDER",
    "Case",
    "CaseDataset",
    "CaseRecord",
    "label_map",
    "mask_file",
    "writer_lock",
]

DATASET_SCHEMA_VERSION = 1
#: The folder of one mask file per structure, in a case, a contour set or a prediction of a case
#: (``dlas predict`` writes the same layout, so that a prediction folder reads like a data set).
MASK_FOLDER = "structures"
REPORT_FILE = "import-report.json"
LOCK_FILE = ".dlas-lock"


def mask_file(folder: Path, structure: str) -> Path:
    """Where the mask of ``structure`` lies under ``folder`` (a case, a contour set of a case,
    or a case of a prediction folder): ``folder/structures/<structure>.nii.gz``."""
    return folder / MASK_FOLDER / f"{structure}.nii.gz"


@contextlib.contextmanager
def writer_lock(root: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the writer lock of the data set at ``root`` (created if needed) for the block.

    An operating-system file lock (``filelock``): released when the block ends or the process
    dies, so a killed import never leaves a stale lock behind.

    Raises
    ------
    DatasetError
        Another process holds the lock.
    """
    from filelock import FileLock, Timeout

    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DatasetError(
            "data set is being written by another dlas process",
            where=str(path),
            expected="one writer at a time (dlas import, dlas phantom)",
            found=f"its lock ({LOCK_FILE}) held by a running process",
            fix="wait until the other import has finished, then run this one again",
        ) from None
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True)
class CaseRecord:
    """A case as listed in ``dataset.json``: its reference structures and, per other contour
    set, that set's structures."""

    case_id: str
    cohort: str
    structures: tuple[str, ...]
    sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form (``contour_sets`` only when the case has any, so that data sets
        without them are written exactly as before)."""
        data: dict[str, Any] = {
            "case_id": self.case_id,
            "cohort": self.cohort,
            "structures": list(self.structures),
        }
        if self.sets:
            data["contour_sets"] = {k: list(v) for k, v in sorted(self.sets.items())}
        return data


@dataclass
class Case:
    """A loaded case: CT, structure masks and its ``case.json``."""

    case_id: str
    cohort: str
    ct: Volume
    structures: dict[str, Volume]
    info: dict[str, Any] = field(default_factory=dict)


def label_map(
    masks: Mapping[str, npt.ArrayLike], structure_set: StructureSet
) -> npt.NDArray[np.uint8]:
    """One label per voxel from binary masks: 0 background, i+1 for structure i of the set.

    Where structures overlap the one with the higher ``priority`` wins (ties: the later one in
    the structure set). Masks of names not in the set are ignored.
    """
    shape: tuple[int, ...] | None = None
    for mask in masks.values():
        shape = np.asarray(mask).shape
        break
    if shape is None:
        raise ValueError("label_map needs at least one mask")
    labels = np.zeros(shape, dtype=np.uint8)
    order = sorted(
        range(len(structure_set.structures)),
        key=lambda i: (structure_set.structures[i].priority, i),
    )
    for i in order:
        name = structure_set.structures[i].name
        if name in masks:
            labels[np.asarray(masks[name]) != 0] = i + 1
    return labels


class CaseDataset:
    """A data-set folder: open an existing one or create a new one, read and add cases."""

    def __init__(
        self,
        root: Path,
        structure_set: StructureSet,
        cases: dict[str, CaseRecord],
        *,
        name: str,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.structure_set = structure_set
        self._cases = cases
        self.name = name
        self.meta = meta or {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> CaseDataset:
        """Open an existing data set.

        Raises
        ------
        DatasetError
            If ``root/dataset.json`` is missing, malformed or of another schema version.
        """
        path = Path(root)
        index = path / "dataset.json"
        if not index.is_file():
            raise DatasetError(
                "not a dlas data set",
                where=str(path),
                expected="a folder with dataset.json (made by `dlas import` or `dlas phantom`)",
                found="no dataset.json" if path.is_dir() else "no such folder",
                fix="import the data first with `dlas import SRC DATASET`",
            )
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(
                "dataset.json is not valid JSON",
                where=str(index),
                expected="JSON",
                found=f"{exc.msg} at line {exc.lineno}",
                fix="restore the file or import again into a new folder",
            ) from None
        version = data.get("schema_version")
        if version != DATASET_SCHEMA_VERSION:
            raise DatasetError(
                "unsupported data set schema version",
                where=str(index),
                expected=f"schema_version {DATASET_SCHEMA_VERSION}",
                found=f"schema_version {version!r}",
                fix="import the data again with this version of dlas",
            )
        structure_set = StructureSet.from_data(data["structure_set"], source=str(index))
        cases = {
            c["case_id"]: CaseRecord(
                c["case_id"],
                c["cohort"],
                tuple(c["structures"]),
                {str(k): tuple(v) for k, v in dict(c.get("contour_sets", {})).items()},
            )
            for c in data.get("cases", [])
        }
        return cls(
            path,
            structure_set,
            cases,
            name=str(data.get("name", path.name)),
            meta=dict(data.get("meta", {})),
        )

    @classmethod
    def open_or_create(
        cls, root: str | os.PathLike[str], structure_set: StructureSet, *, name: str | None = None
    ) -> CaseDataset:
        """Open ``root`` if it is a data set (its structure set must equal ``structure_set``),
        or create an empty one."""
        path = Path(root)
        if (path / "dataset.json").exists():
            existing = cls.open(path)
            if existing.structure_set.sha256() != structure_set.sha256():
                raise DatasetError(
                    "data set uses another structure set",
                    where=str(path),
                    expected=f"structure set {structure_set.name!r} "
                    f"(sha256 {structure_set.sha256()[:12]})",
                    found=f"{existing.structure_set.name!r} "
                    f"(sha256 {existing.structure_set.sha256()[:12]})",
                    fix="import with the data set's structure set, or into a new folder",
                )
            return existing
        if path.exists() and any(
            p for p in path.iterdir() if not p.name.startswith(".") and p.name != REPORT_FILE
        ):
            raise DatasetError(
                "destination is not empty and not a data set",
                where=str(path),
                expected="a new or empty folder, or an existing dlas data set",
                found=f"{sum(1 for _ in path.iterdir())} entries and no dataset.json",
                fix="choose a new folder for the data set",
            )
        path.mkdir(parents=True, exist_ok=True)
        dataset = cls(path, structure_set, {}, name=name or path.name)
        dataset.save()
        return dataset

    # ------------------------------------------------------------------ listing
    @property
    def cases(self) -> list[CaseRecord]:
        """All cases, sorted by case id."""
        return [self._cases[k] for k in sorted(self._cases)]

    def __len__(self) -> int:
        return len(self._cases)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._cases

    def case_ids(self, cohort: str | None = None) -> list[str]:
        """Case ids, optionally of one cohort, sorted."""
        return [c.case_id for c in self.cases if cohort is None or c.cohort == cohort]

    def cohorts(self) -> dict[str, list[str]]:
        """Cohort name → sorted case ids."""
        out: dict[str, list[str]] = {}
        for c in self.cases:
            out.setdefault(c.cohort, []).append(c.case_id)
        return dict(sorted(out.items()))

    def check_cohorts(
        self,
        cohorts: Iterable[str] | None,
        *,
        error: type[DlasError] = DatasetError,
        where: str | None = None,
    ) -> None:
        """Refuse cohort names the data set does not have, with ``error`` (the caller's error
        class) naming the ones it has. None or empty: nothing to check."""
        known = self.cohorts()
        unknown = [c for c in cohorts or () if c not in known]
        if unknown:
            raise error(
                "unknown cohort",
                where=where or str(self.root),
                expected=f"one of {', '.join(known) or '(no cohorts)'}",
                found=", ".join(unknown),
                fix="list the cohorts with `dlas inspect DATASET`",
            )

    @property
    def reference_set(self) -> str:
        """Name of the reference contour set (the masks under ``structures/``)."""
        return str(self.meta.get("reference_set", DEFAULT_REFERENCE_SET))

    def contour_sets(self) -> dict[str, int]:
        """Every contour set other than the reference → the number of cases that have it."""
        counts: dict[str, int] = {}
        for record in self._cases.values():
            for name in record.sets:
                counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))

    def set_structures(self, case_id: str, contour_set: str | None = None) -> tuple[str, ...]:
        """Structures of a case in a contour set (None or the reference set's name: the
        reference structures); empty when the case lacks the set."""
        record = self.record(case_id)
        if contour_set is None or contour_set == self.reference_set:
            return record.structures
        return tuple(record.sets.get(contour_set, ()))

    def set_dir(self, case_id: str, contour_set: str | None = None) -> Path:
        """The folder whose ``structures/`` holds a case's masks of a contour set (None or the
        reference set's name: the case folder itself)."""
        if contour_set is None or contour_set == self.reference_set:
            return self.case_dir(case_id)
        return self.case_dir(case_id) / "sets" / contour_set

    def record(self, case_id: str) -> CaseRecord:
        """The listing entry of a case."""
        try:
            return self._cases[case_id]
        except KeyError:
            raise DatasetError(
                "unknown case",
                where=str(self.root),
                expected="a case id listed in dataset.json",
                found=repr(case_id),
                fix="list the cases with `dlas inspect DATASET`",
            ) from None

    def case_dir(self, case_id: str) -> Path:
        """Folder of a case."""
        return self.root / "cases" / case_id

    def case_info(self, case_id: str) -> dict[str, Any]:
        """The ``case.json`` of a case."""
        self.record(case_id)
        path = self.case_dir(case_id) / "case.json"
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def load_case(
        self, case_id: str, structures: list[str] | None = None, *, contour_set: str | None = None
    ) -> Case:
        """Read a case's CT and masks (all its structures, or those named) of the reference
        contour set, or of ``contour_set``."""
        record = self.record(case_id)
        ct = read_nifti(self.case_dir(case_id) / "ct.nii.gz")
        present = self.set_structures(case_id, contour_set)
        folder = self.set_dir(case_id, contour_set)
        wanted = present if structures is None else structures
        masks = {}
        for name in wanted:
            if name in present:
                masks[name] = read_mask(mask_file(folder, name), reference=ct)
        return Case(case_id, record.cohort, ct, masks, self.case_info(case_id))

    # ------------------------------------------------------------------ writing
    def write_case(
        self,
        case_id: str,
        cohort: str,
        ct: Volume,
        masks: Mapping[str, Volume],
        info: Mapping[str, Any],
        *,
        extra_masks: Mapping[str, Volume] | None = None,
        contour_sets: Mapping[str, Mapping[str, Volume]] | None = None,
        overwrite: bool = False,
    ) -> CaseRecord:
        """Write a complete case atomically and list it in ``dataset.json``.

        ``masks`` (the reference set) and each of ``contour_sets`` (set name → masks) must use
        canonical names of the structure set; ``extra_masks`` (ROIs kept under their own names
        with ``--keep-unmapped``) are written but not listed as structures.
        """
        sets = dict(contour_sets or {})
        for where, named in [("", masks), *((f", contour set {k}", v) for k, v in sets.items())]:
            unknown = [n for n in named if n not in self.structure_set]
            if unknown:
                raise DatasetError(
                    "structure not in the data set's structure set",
                    where=f"case {case_id}{where}",
                    expected=", ".join(self.structure_set.names),
                    found=", ".join(unknown),
                    fix="map the names first",
                )
        bad_names = [k for k in sets if not SET_NAME.match(k) or k == self.reference_set]
        if bad_names:
            raise DatasetError(
                "invalid contour set name",
                where=f"case {case_id}",
                expected="letters, digits, '_', '.', '+', '-', other than the reference set "
                f"{self.reference_set!r}",
                found=", ".join(repr(k) for k in bad_names),
                fix="rename the contour set",
            )
        final = self.case_dir(case_id)
        if final.exists() and not overwrite:
            raise DatasetError(
                "case already exists",
                where=str(final),
                expected="a new case id",
                found="a complete case of that id",
                fix="pass overwrite=True (`--overwrite`) to replace it",
            )
        with atomic_dir(final, replace=overwrite) as tmp:
            write_nifti(ct, tmp / "ct.nii.gz")
            folders = [
                (tmp, "", {**masks, **(extra_masks or {})}),
                *((tmp / "sets" / k, f"contour set {k}, ", v) for k, v in sets.items()),
            ]
            for folder, where, named in folders:
                (folder / MASK_FOLDER).mkdir(parents=True)
                for name, mask in named.items():
                    if not mask.same_grid(ct):
                        raise DatasetError(
                            "mask grid differs from the CT grid",
                            where=f"case {case_id}, {where}structure {name}",
                            expected=ct.grid_description(),
                            found=mask.grid_description(),
                            fix="resample the mask onto the CT before import",
                        )
                    write_mask(mask, mask_file(folder, name))
            write_json(tmp / "case.json", {"schema_version": DATASET_SCHEMA_VERSION, **info})

        def listed(named: Mapping[str, Volume]) -> tuple[str, ...]:
            return tuple(n for n in self.structure_set.names if n in named)

        record = CaseRecord(
            case_id, cohort, listed(masks), {k: listed(v) for k, v in sorted(sets.items())}
        )
        self._cases[case_id] = record
        self.save()
        return record

    def save(self) -> None:
        """Write ``dataset.json`` atomically."""
        counts: dict[str, int] = {}
        for c in self._cases.values():
            counts[c.cohort] = counts.get(c.cohort, 0) + 1
        write_json(
            self.root / "dataset.json",
            {
                "schema_version": DATASET_SCHEMA_VERSION,
                "kind": "dlas-dataset",
                "name": self.name,
                "created_by": {"software": "dlas", "version": __version__},
                "structure_set": self.structure_set.to_data(),
                "structure_set_sha256": self.structure_set.sha256(),
                "cohorts": dict(sorted(counts.items())),
                "cases": [c.to_data() for c in self.cases],
                "meta": self.meta,
            },
        )

    def sha256(self, case_ids: list[str] | None = None) -> str:
        """Content hash of the listed cases (their case.json and file sizes); identifies the
        training data of a model."""
        digest = hashlib.sha256()
        digest.update(self.structure_set.sha256().encode())
        for case_id in sorted(case_ids if case_ids is not None else self._cases):
            record = self.record(case_id)
            digest.update(f"{case_id}\x00{record.cohort}\x00".encode())
            folder = self.case_dir(case_id)
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    digest.update(path.relative_to(folder).as_posix().encode())
                    digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()
