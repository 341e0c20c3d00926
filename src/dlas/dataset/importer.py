"""`dlas import`: a folder of planning CTs + RTSTRUCTs (or NIfTI cases) → a de-identified data set.

The source may hold, at any depth,

* DICOM files: each CT series becomes a case; the RTSTRUCT drawn on it (found through its
  referenced series, or else its frame of reference) supplies the structures. With contour-set
  rules (:mod:`dlas.dataset.contour_sets`) every RTSTRUCT and DICOM SEG of the series is kept,
  each in its named set, one of which is the reference;
* NIfTI case folders ``<case>/ct.nii.gz`` + ``<case>/structures/<Name>.nii.gz`` (the layout of
  ``shared/data/openkbp-hn``), whose mask file names are mapped like ROI names.

Nothing is lost silently. Every file not used is listed with its reason; every series that
cannot be read, every RTSTRUCT that cannot be paired or rasterised, becomes a *skipped* entry
with the one-line error; every ROI name that maps to no structure, every empty or duplicated
ROI and every doubtful contour is a warning in the case's ``case.json`` and in
``import-report.json``. A case is written completely or not at all, and cases already in the
data set are left untouched (unless ``overwrite``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dlas import __version__
from dlas.dataset.cohorts import CaseKeys, CohortRule
from dlas.dataset.contour_sets import (
    ContourSetRules,
    Pairing,
    object_kind,
    object_summary,
    pair_contour_objects,
)
from dlas.dataset.deid import KEY_FILE, Pseudonymizer, Redactor, age_in_years
from dlas.dataset.layout import (
    LOCK_FILE,
    MASK_FOLDER,
    REPORT_FILE,
    CaseDataset,
    mask_file,
    writer_lock,
)
from dlas.errors import DatasetError, DlasError
from dlas.io.atomic import write_json
from dlas.io.ct import CTSeries, read_ct_series, scanner_tags
from dlas.io.dicom_scan import (
    UNIDENTIFIED_SERIES,
    DicomScan,
    ScannedFile,
    SkippedFile,
    scan_dicom,
    walk_folders,
)
from dlas.io.nifti import read_mask, read_nifti
from dlas.io.rtstruct import RTStructData, read_rtstruct
from dlas.io.volume import Volume
from dlas.structures import StructureSet

__all__ = ["ImportItem", "ImportOptions", "ImportReport", "import_source", "series_case_ids"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]

_DEID_METHOD = (
    "DICOM PS3.15 Basic Application Level Confidentiality Profile, with the Retain Longitudinal "
    "Temporal Information with Modified Dates and Retain Patient Characteristics options"
)


@dataclass
class ImportOptions:
    """Options of an import (the flags of ``dlas import``)."""

    structure_set: StructureSet
    cohort_by: str = "none"
    keep_unmapped: bool = False
    keep_ids: bool = False
    overwrite: bool = False
    key_file: str | None = None
    contour_sets: ContourSetRules = field(default_factory=ContourSetRules.default)


@dataclass
class ImportItem:
    """The outcome for one source case (a CT series or a NIfTI case folder)."""

    status: str  # "imported", "exists" or "skipped"
    source: str  # folder relative to the import source
    reason: str = ""
    case_id: str | None = None
    cohort: str | None = None
    structures: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    #: with contour-set rules: set → the object it came from, its structures and unmatched names
    contour_sets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_data(self, *, fingerprint: Callable[[str, str], str] | None) -> dict[str, Any]:
        """JSON-ready form; the source folder is replaced by its keyed ``fingerprint`` unless
        that is None (identifiers kept on request)."""
        data: dict[str, Any] = {
            "status": self.status,
            "source": self.source if fingerprint is None else fingerprint("folder", self.source),
            "reason": self.reason,
            "case_id": self.case_id,
            "cohort": self.cohort,
            "structures": self.structures,
            "unmatched": self.unmatched,
            "warnings": self.warnings,
        }
        if self.contour_sets:
            data["contour_sets"] = self.contour_sets
        return data


@dataclass
class ImportReport:
    """What an import did."""

    source: Path
    dataset: Path
    items: list[ImportItem] = field(default_factory=list)
    skipped_files: list[SkippedFile] = field(default_factory=list)
    #: the data set's pseudonymizer (fingerprints of folders and files in the report)
    pseudo: Pseudonymizer | None = None

    @property
    def imported(self) -> list[ImportItem]:
        """Cases written by this import."""
        return [i for i in self.items if i.status == "imported"]

    @property
    def skipped(self) -> list[ImportItem]:
        """Cases refused, with their reason."""
        return [i for i in self.items if i.status == "skipped"]

    def unmatched_names(self) -> Counter[str]:
        """ROI names that matched no structure, with how many cases had them."""
        return Counter(name for item in self.items for name in set(item.unmatched))

    def warning_counts(self) -> Counter[str]:
        """Warnings per code over all cases."""
        return Counter(w["code"] for item in self.items for w in item.warnings)

    def to_data(self, *, keep_paths: bool) -> dict[str, Any]:
        """JSON-ready form (``import-report.json``). Unless ``keep_paths``, folders and files
        are keyed fingerprints and the reasons are redacted (nothing of a path, a UID or an
        identifying attribute)."""
        fingerprint = None
        if not keep_paths:
            if self.pseudo is None:
                raise ValueError("a de-identified import report needs the data set's key")
            fingerprint = self.pseudo.fingerprint

        def file_reason(s: SkippedFile) -> str:
            if keep_paths:
                return s.reason
            return Redactor.for_source(self.source, [s.path]).text(s.reason)

        skipped = [(s, file_reason(s)) for s in self.skipped_files]
        skipped_reasons = Counter(reason for _, reason in skipped)
        return {
            "software": {"name": "dlas", "version": __version__},
            "counts": {
                "imported": len(self.imported),
                "already_present": sum(1 for i in self.items if i.status == "exists"),
                "skipped_cases": len(self.skipped),
                "skipped_files": len(self.skipped_files),
            },
            "cases": [i.to_data(fingerprint=fingerprint) for i in self.items],
            "skipped_files": [
                {
                    "file": s.path.name
                    if fingerprint is None
                    else fingerprint("file", str(s.path)),
                    "folder": (
                        _relative(s.path.parent, self.source)
                        if fingerprint is None
                        else fingerprint("folder", _relative(s.path.parent, self.source))
                    ),
                    "reason": reason,
                }
                for s, reason in skipped
            ],
            "skipped_file_reasons": dict(sorted(skipped_reasons.items())),
            "unmatched_names": dict(sorted(self.unmatched_names().items())),
            "warning_counts": dict(sorted(self.warning_counts().items())),
        }


def _relative(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return str(path)
    return rel.as_posix() or "."


#: Longest file or folder name made from a source name (ROI names may run to 300 characters,
#: more than a file system allows); longer ones keep a hash of the whole name.
_MAX_NAME = 64


def _safe_name(name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name.strip()).strip("_.") or "unnamed"
    if len(text) > _MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        text = f"{text[: _MAX_NAME - 9]}-{digest}"
    return text


def _extra_name(
    original: str, taken: set[str], warnings: list[dict[str, Any]], roi_number: int | None
) -> str:
    """The file name of a structure kept under its own name (``--keep-unmapped``): made safe,
    and told apart from names already ``taken`` by ``_2``, ``_3``, ... with a
    ``name-collision`` warning (``X ray`` and ``X_ray`` both become ``X_ray``)."""
    safe = _safe_name(original)
    name, n = safe, 2
    while name in taken:
        name, n = f"{safe}_{n}", n + 1
    if name != safe:
        warnings.append(
            {
                "code": "name-collision",
                "message": f"{original!r} has the name of another structure once made safe "
                f"({safe}); kept as {name}",
                "roi_number": roi_number,
                "roi_name": original,
            }
        )
    return name


def _find_nifti_cases(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in walk_folders(root):
        if ("ct.nii.gz" in filenames or "ct.nii" in filenames) and "structures" in dirnames:
            found.append(Path(dirpath))
    return found


def import_source(
    source: str | os.PathLike[str],
    dataset_root: str | os.PathLike[str],
    options: ImportOptions,
    *,
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """Import every case found in ``source`` into the data set at ``dataset_root``.

    Raises
    ------
    DatasetError
        The source is missing or holds no CT at all; the cohort rule is malformed; the data set
        exists with another structure set. Problems of single cases do not raise: they are
        reported in the returned :class:`ImportReport` and in ``import-report.json``.
    """
    src = Path(source)
    if not src.exists():
        raise DatasetError(
            "source folder not found",
            where=str(src),
            expected="a folder of DICOM files and/or NIfTI case folders",
            found="nothing at that path",
            fix="check the path",
        )
    rule = CohortRule.parse(options.cohort_by)
    nifti_cases = _find_nifti_cases(src) if src.is_dir() else []
    nifti_dirs = {p.resolve() for p in nifti_cases}
    scan = scan_dicom(src)
    report = ImportReport(source=src, dataset=Path(dataset_root))
    # Files of NIfTI case folders are not DICOM: keep them out of the skipped list.
    report.skipped_files = [
        s
        for s in scan.skipped
        if not any(parent in nifti_dirs for parent in s.path.resolve().parents)
    ]
    if not scan.ct_series and not nifti_cases:
        reasons = Counter(s.reason for s in scan.skipped)
        found = (
            "an empty folder"
            if not scan.n_files
            else f"{scan.n_files} files, none a CT image: "
            + "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
        )
        raise DatasetError(
            "no CT found to import",
            where=str(src),
            expected="DICOM CT series (with RTSTRUCTs) or NIfTI case folders",
            found=found,
            fix="point at the folder of the planning system export",
        )

    # Refuses ambiguous or idle contour-set rules before anything is written.
    pairing = pair_contour_objects(
        scan.ct_series, [*scan.rtstructs, *scan.segs], options.contour_sets
    )
    root = Path(dataset_root)
    had_root = root.exists()
    with writer_lock(root):
        skeleton = _Skeleton.before(root, had_root=had_root)
        try:
            dataset = CaseDataset.open_or_create(root, options.structure_set)
            _bind_reference_set(dataset, options.contour_sets)
            pseudo = _bound_pseudonymizer(dataset, options.key_file)
        except BaseException:
            skeleton.remove()
            raise
        report.pseudo = pseudo
        _import_all(
            src, scan, pairing, nifti_cases, dataset, pseudo, rule, options, report, progress
        )
        previous = _earlier_runs(root / REPORT_FILE)
        data = report.to_data(keep_paths=options.keep_ids)
        data["earlier_runs"] = previous
        write_json(root / REPORT_FILE, data)
        if not any(i.status in ("imported", "exists") for i in report.items):
            # Nothing came in: leave no empty data set that looks usable, only the report.
            skeleton.remove(keep_report=True)
    return report


@dataclass(frozen=True)
class _Skeleton:
    """What an import creates before its first case, to take it away again when it fails."""

    root: Path
    had_root: bool
    had: frozenset[str]

    @classmethod
    def before(cls, root: Path, *, had_root: bool) -> _Skeleton:
        names = ("dataset.json", KEY_FILE, REPORT_FILE, "cases")
        return cls(root, had_root, frozenset(n for n in names if (root / n).exists()))

    def remove(self, *, keep_report: bool = False) -> None:
        if "dataset.json" in self.had:
            return
        for name in ("dataset.json", KEY_FILE, *(() if keep_report else (REPORT_FILE,))):
            if name not in self.had:
                (self.root / name).unlink(missing_ok=True)
        cases = self.root / "cases"
        if "cases" not in self.had and cases.is_dir() and not any(cases.iterdir()):
            cases.rmdir()
        if not self.had_root and not keep_report:
            (self.root / LOCK_FILE).unlink(missing_ok=True)
            if not any(self.root.iterdir()):
                self.root.rmdir()


def _bind_reference_set(dataset: CaseDataset, rules: ContourSetRules) -> None:
    """Record the reference set's name in a new data set; refuse another name than the one a
    data set with cases was imported with (its ``structures/`` would mix two references)."""
    if rules.reference == dataset.reference_set:
        return
    if len(dataset):
        raise DatasetError(
            "data set has another reference contour set",
            where=str(dataset.root),
            expected=f"--reference-set {dataset.reference_set} (its cases were imported so)",
            found=f"--reference-set {rules.reference}",
            fix=f"import with --reference-set {dataset.reference_set}, or into a new folder",
        )
    dataset.meta["reference_set"] = rules.reference
    dataset.save()


def _bound_pseudonymizer(dataset: CaseDataset, key_file: str | None) -> Pseudonymizer:
    """The data set's pseudonymizer, refusing a key other than the one it was made with (and
    recording the key's check value on first use)."""
    recorded = dataset.meta.get("pseudonym_key_check")
    pseudo = Pseudonymizer.for_dataset(
        dataset.root, key_file, expected_check=str(recorded) if recorded else None
    )
    if not recorded:
        dataset.meta["pseudonym_key_check"] = pseudo.check
        dataset.save()
    return pseudo


def _earlier_runs(path: Path) -> list[dict[str, Any]]:
    """The runs recorded in an existing import report (each without its own history)."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        log.warning("the earlier import report %s is unreadable; it is replaced", path)
        return []
    if not isinstance(data, dict):
        return []
    earlier = data.pop("earlier_runs", [])
    return [*(r for r in earlier if isinstance(r, dict)), data]


def _import_all(
    src: Path,
    scan: DicomScan,
    pairing: Pairing,
    nifti_cases: list[Path],
    dataset: CaseDataset,
    pseudo: Pseudonymizer,
    rule: CohortRule,
    options: ImportOptions,
    report: ImportReport,
    progress: ProgressCallback | None,
) -> None:
    report.skipped_files.extend(pairing.unused)
    total = len(scan.ct_series) + len(nifti_cases)
    done = 0
    case_ids, id_notes = _case_ids(scan, pseudo, keep_ids=options.keep_ids, dataset=dataset)
    for uid, files in scan.ct_series.items():
        folder = _relative(Path(os.path.commonpath([str(f.path.parent) for f in files])), src)
        if progress:
            progress(done, total, folder)
        item = _import_dicom_case(
            src,
            uid,
            files,
            pairing.chosen.get(uid, {}),
            pairing.notes.get(uid, []),
            folder,
            dataset,
            pseudo,
            rule,
            options,
            case_ids[uid],
            id_notes.get(uid, []),
        )
        report.items.append(item)
        done += 1
    folders = {_relative(d, src): d for d in nifti_cases}
    nifti_ids = {
        f: _safe_name(d.name) if options.keep_ids else pseudo.case_id(d.name, f)
        for f, d in folders.items()
    }
    nifti_notes: dict[str, list[str]] = {}
    if options.keep_ids:
        nifti_ids, nifti_notes = _tell_apart(
            nifti_ids,
            {f: d.name for f, d in folders.items()},
            lambda case_id: _existing_source(dataset, case_id, "folder"),
        )
    for folder, case_dir in folders.items():
        if progress:
            progress(done, total, folder)
        item = _import_nifti_case(
            src, case_dir, folder, dataset, pseudo, rule, options, nifti_ids[folder]
        )
        for note in nifti_notes.get(folder, []) if item.status == "imported" else []:
            item.warnings.append(
                {"code": "case-id-collision", "message": note, "roi_number": None, "roi_name": None}
            )
        report.items.append(item)
        done += 1
    if progress:
        progress(done, total, "")


def _patient_characteristics(first: Dataset) -> dict[str, Any]:
    sex = str(first.get("PatientSex", "") or "").upper()
    return {
        "sex": sex if sex in ("M", "F", "O") else None,
        "age_years": age_in_years(
            str(first.get("PatientAge", "") or ""),
            str(first.get("PatientBirthDate", "") or ""),
            str(first.get("StudyDate", "") or ""),
        ),
    }


def _map_rois(
    rs: RTStructData, structure_set: StructureSet, grid: Volume, *, folder: str = ""
) -> tuple[
    dict[str, Volume],
    dict[str, dict[str, Any]],
    list[str],
    list[dict[str, Any]],
    list[dict[str, Any]],
]:
    """Canonical masks and their records, unmatched names, empty ROIs, warnings."""
    masks: dict[str, Volume] = {}
    records: dict[str, dict[str, Any]] = {}
    unmatched: list[str] = []
    empty: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    claims: dict[str, list[int]] = {}
    for number, roi in sorted(rs.rois.items()):
        canonical = structure_set.match(roi.name)  # raises on an ambiguous name
        if canonical is None:
            unmatched.append(roi.name)
            continue
        claims.setdefault(canonical, []).append(number)
    voxel_cm3 = grid.voxel_volume_mm3 / 1000.0
    for canonical, numbers in claims.items():
        if len(numbers) > 1:
            names = ", ".join(f"{n} '{rs.rois[n].name}'" for n in numbers)
            warnings.append(
                {
                    "code": "duplicate-structure",
                    "message": f"ROIs {names} all map to {canonical}; none of them was imported "
                    "(rename or delete the extra ROI in the planning system)",
                    "roi_number": None,
                    "roi_name": canonical,
                }
            )
            continue
        roi = rs.rois[numbers[0]]
        if roi.empty:
            empty.append({"roi_number": roi.number, "name": roi.name, "canonical": canonical})
            continue
        masks[canonical] = grid.with_array(roi.mask)
        records[canonical] = {
            "original_name": roi.name,
            "roi_number": roi.number,
            "voxels": int(roi.mask.sum()),
            "volume_cm3": round(float(roi.mask.sum()) * voxel_cm3, 3),
            "file": mask_file(Path(folder), canonical).as_posix(),
        }
    return masks, records, unmatched, empty, warnings


def series_case_ids(
    scan: DicomScan,
    pseudo: Pseudonymizer,
    *,
    keep_ids: bool = False,
    dataset: CaseDataset | None = None,
) -> dict[str, str]:
    """The case id each CT series of a scan gets (or got) on import, by series key.

    A keyed pseudonym of patient and series; with ``keep_ids`` the patient id itself, made safe
    as a folder name (with the series number appended when the patient has several series).
    Other tools use this to find the DICOM series of an imported case without storing
    identifying paths. Ids that coincide after sanitising are told apart (see
    :func:`_case_ids`).
    """
    return _case_ids(scan, pseudo, keep_ids=keep_ids, dataset=dataset)[0]


def _case_ids(
    scan: DicomScan,
    pseudo: Pseudonymizer,
    *,
    keep_ids: bool,
    dataset: CaseDataset | None,
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Case ids by series key, and a note for each series whose id had to be changed.

    With ``keep_ids``, two different series may sanitise to one id (PatientIDs ``12/34`` and
    ``12_34``; two series with one SeriesNumber), or to the id of another series already in the
    data set. The id is then kept by the series whose patient id needed no change (else the
    first by series UID) unless the data set holds another series under it; every other one
    gets ``-`` and six hex digits of the SHA-256 of its series UID appended: deterministic,
    and reported, never dropped. Keyed pseudonyms (48 bits) are not expected to collide.
    """
    patient_series: Counter[str] = Counter(
        str(files[0].header.get("PatientID", "") or "") for files in scan.ct_series.values()
    )
    out: dict[str, str] = {}
    raw: dict[str, str] = {}
    for uid, files in scan.ct_series.items():
        first = files[0].header
        patient_id = str(first.get("PatientID", "") or "")
        patient_key = patient_id or str(first.get("StudyInstanceUID", "")) or uid
        raw[uid] = patient_key
        if keep_ids:
            case_id = _safe_name(patient_key)
            if patient_series[patient_id] > 1:
                case_id += f"_s{_safe_name(str(first.get('SeriesNumber', '') or uid[-6:]))}"
        else:
            case_id = pseudo.case_id(patient_key, uid)
        out[uid] = case_id
    if not keep_ids:
        return out, {}
    return _tell_apart(out, raw, lambda case_id: _existing_source(dataset, case_id, "series"))


def _tell_apart(
    ids: dict[str, str], raw: dict[str, str], owner: Callable[[str], str | None]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Make ``ids`` (by source key) unique: see :func:`_case_ids`. ``raw`` is what each id
    was made from; ``owner(case_id)`` the source key of that id in the data set, if any."""
    out = dict(ids)
    notes: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}
    for key, case_id in ids.items():
        groups.setdefault(case_id, []).append(key)
    for case_id, keys in groups.items():
        keys.sort(key=lambda k: (not case_id.startswith(raw[k]), k))
        holder = owner(case_id)
        for n, key in enumerate(keys):
            if n == 0 and holder in (None, key):
                continue
            out[key] = f"{case_id}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"
            other = "a case already in the data set" if n == 0 else "another case of this import"
            notes[key] = [
                f"case id {case_id} (from {raw[key]!r}, made safe as a folder name) is taken "
                f"by {other}; this one was imported as {out[key]}"
            ]
    return out, notes


def _existing_source(dataset: CaseDataset | None, case_id: str, field: str) -> str | None:
    """The source ``field`` (series UID, folder) recorded for ``case_id`` in the data set
    (None: no such case)."""
    if dataset is None or case_id not in dataset:
        return None
    source = dataset.case_info(case_id).get("source", {})
    return str(source.get(field, "")) if isinstance(source, dict) else ""


@dataclass
class _CaseStructures:
    """What the contours of a case gave: canonical masks and their records, the masks kept
    under their own names (``--keep-unmapped``), unmatched names, empty structures, warnings,
    and (DICOM, with contour-set rules) the other contour sets' masks and records."""

    masks: dict[str, Volume] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    empty: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Volume] = field(default_factory=dict)
    extra_records: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    set_masks: dict[str, dict[str, Volume]] = field(default_factory=dict)
    set_info: dict[str, dict[str, Any]] = field(default_factory=dict)


def _case_warning(code: str, message: str) -> dict[str, Any]:
    """A warning of a whole case (no ROI)."""
    return {"code": code, "message": message, "roi_number": None, "roi_name": None}


def _admit(
    item: ImportItem, rule: CohortRule, keys: CaseKeys, dataset: CaseDataset, options: ImportOptions
) -> str | None:
    """The case's cohort, or None when the case is not imported: not in the cohort rule, or
    already in the data set (``item`` then says why)."""
    cohort = rule.assign(keys)
    if cohort is None:
        item.reason = f"not listed in the cohort file {rule.describe()} (by {rule.key_column})"
        return None
    item.cohort = cohort
    if item.case_id in dataset and not options.overwrite:
        item.status = "exists"
        item.reason = "already in the data set (use --overwrite to replace it)"
        return None
    return cohort


def _imported(item: ImportItem, found: _CaseStructures) -> ImportItem:
    """Mark ``item`` imported with the structures, unmatched names and warnings ``found``."""
    item.status = "imported"
    item.structures = list(found.records)
    item.unmatched = found.unmatched
    item.warnings = found.warnings
    return item


def _import_dicom_case(
    source: Path,
    uid: str,
    files: list[ScannedFile],
    objects: dict[str, ScannedFile],
    notes: list[str],
    folder: str,
    dataset: CaseDataset,
    pseudo: Pseudonymizer,
    rule: CohortRule,
    options: ImportOptions,
    case_id: str,
    id_notes: list[str],
) -> ImportItem:
    """Import one CT series with the contour objects paired with it (``objects``, by set)."""
    first = files[0].header
    keys = CaseKeys(
        folder=folder,
        patient_id=str(first.get("PatientID", "") or ""),
        series_uid=uid,
        study_uid=str(first.get("StudyInstanceUID", "")),
        study_date=str(first.get("StudyDate", "") or ""),
        manufacturer=str(first.get("Manufacturer", "") or ""),
        model=str(first.get("ManufacturerModelName", "") or ""),
        station=str(first.get("StationName", "") or ""),
    )
    item = ImportItem(status="skipped", source=folder, case_id=case_id)
    cohort = _admit(item, rule, keys, dataset, options)
    if cohort is None:
        return item
    paths = [f.path for f in files]
    rules = options.contour_sets
    rtstruct = objects.get(rules.reference)
    warnings = [_case_warning("pairing", n) for n in notes]
    warnings.extend(_case_warning("case-id-collision", n) for n in id_notes)
    try:
        ct = read_ct_series(files)
        found = _read_dicom_structures(ct, uid, rtstruct, objects, options, warnings)
    except (DlasError, ValueError, TypeError, KeyError, AttributeError) as exc:
        # Anything else from a malformed file refuses this case, not the whole import.
        item.reason = _reason(_as_dlas_error(exc), options, case_id, source, paths, [first])
        log.info("case %s skipped: %s", case_id, item.reason)
        return item
    if found.warnings and not options.keep_ids:
        redactor = Redactor.for_source(source, paths, [first])
        for warning in found.warnings:
            warning["message"] = redactor.text(str(warning["message"]))
    info = _dicom_case_info(case_id, cohort, uid, keys, rtstruct, ct, first, found, options, pseudo)
    if rules.explicit:
        redactor = Redactor.for_source(source, paths, [first])
        for name, entry in found.set_info.items():
            entry["object"] = _object_record(objects[name], options, pseudo, redactor)
            entry["rule"] = rules.describe()[name]
        info["reference_set"] = rules.reference
        info["contour_sets"] = dict(sorted(found.set_info.items()))
    try:
        dataset.write_case(
            case_id,
            cohort,
            ct.volume,
            found.masks,
            info,
            extra_masks=found.extra,
            contour_sets=found.set_masks,
            overwrite=options.overwrite,
        )
    except DlasError as exc:
        item.reason = _reason(exc, options, case_id, source, paths, [first])
        return item
    _imported(item, found)
    item.contour_sets = {
        name: {
            "object": entry["object"],
            "structures": list(entry["structures"]),
            "unmatched": entry["unmatched"],
        }
        for name, entry in info.get("contour_sets", {}).items()
    }
    log.info("imported case %s (%s): %d structures", case_id, cohort, len(found.records))
    return item


def _read_dicom_structures(
    ct: CTSeries,
    uid: str,
    rtstruct: ScannedFile | None,
    objects: dict[str, ScannedFile],
    options: ImportOptions,
    warnings: list[dict[str, Any]],
) -> _CaseStructures:
    """The structures of the reference object (``rtstruct``: an RTSTRUCT or SEG, or None)
    mapped onto the structure set, then those of every other contour set; the warnings are
    added to ``warnings``."""
    found = _CaseStructures(warnings=warnings)
    if uid.startswith(UNIDENTIFIED_SERIES):
        warnings.append(
            _case_warning(
                "series-without-uid",
                "the images carry no SeriesInstanceUID; they were grouped by "
                "frame of reference, series number and geometry",
            )
        )
    rules = options.contour_sets
    if rtstruct is None:
        warnings.append(
            _case_warning(
                "no-rtstruct",
                "no RTSTRUCT found for this series; imported without structures"
                if not rules.explicit
                else f"no object of the reference contour set {rules.reference} for this "
                "series; imported without reference structures",
            )
        )
    else:
        rs = _read_contours(rtstruct, ct)
        warnings.extend(w.to_data() for w in rs.warnings)
        found.masks, found.records, found.unmatched, found.empty, map_warnings = _map_rois(
            rs, options.structure_set, ct.volume
        )
        warnings.extend(map_warnings)
        if options.keep_unmapped:
            found.extra, found.extra_records = _extra_masks(
                rs, found.unmatched, ct, found.masks, warnings
            )
    for name, obj in sorted(objects.items()):
        if name == rules.reference:
            continue
        data = _read_contours(obj, ct)
        named, named_records, named_unmatched, named_empty, named_warnings = _map_rois(
            data, options.structure_set, ct.volume, folder=f"sets/{name}"
        )
        for warning in [*(w.to_data() for w in data.warnings), *named_warnings]:
            warnings.append({**warning, "contour_set": name})
        found.set_masks[name] = named
        found.set_info[name] = {
            "structures": named_records,
            "unmatched": named_unmatched,
            "empty": named_empty,
        }
    if rules.explicit and rtstruct is not None:
        found.set_info[rules.reference] = {
            "structures": found.records,
            "unmatched": found.unmatched,
            "empty": found.empty,
        }
    return found


def _dicom_case_info(
    case_id: str,
    cohort: str,
    uid: str,
    keys: CaseKeys,
    rtstruct: ScannedFile | None,
    ct: CTSeries,
    first: Dataset,
    found: _CaseStructures,
    options: ImportOptions,
    pseudo: Pseudonymizer,
) -> dict[str, Any]:
    """The ``case.json`` of a DICOM case: source (pseudonymised unless ``--keep-ids``),
    patient characteristics, scanner, geometry and structures."""
    sop = None if rtstruct is None else str(rtstruct.header.get("SOPInstanceUID", ""))
    return {
        "case_id": case_id,
        "cohort": cohort,
        "source": {
            "kind": "dicom",
            "series": uid if options.keep_ids else pseudo.fingerprint("series", uid),
            "rtstruct": (
                None
                if sop is None
                else (sop if options.keep_ids else pseudo.fingerprint("sop", sop))
            ),
            "n_slices": ct.volume.shape[0],
            "study_date": (
                keys.study_date if options.keep_ids else pseudo.shift_date(keys.study_date)
            ),
        },
        "patient": _patient_characteristics(first),
        "scanner": scanner_tags(first),
        "geometry": ct.volume.geometry(),
        "original_orientation": list(ct.original_orientation),
        "structures": found.records,
        "extra_structures": found.extra_records,
        "unmatched": found.unmatched,
        "empty": found.empty,
        "warnings": found.warnings,
        "deidentification": _deid_record(options),
    }


def _read_contours(obj: ScannedFile, ct: CTSeries) -> RTStructData:
    """The ROIs of an RTSTRUCT, or the segments of a SEG, rasterised on the CT grid."""
    if object_kind(obj.header) == "seg":
        from dlas.io.seg import read_seg

        return read_seg(obj.header, ct)
    return read_rtstruct(obj.header, ct)


def _object_record(
    obj: ScannedFile, options: ImportOptions, pseudo: Pseudonymizer, redactor: Redactor
) -> dict[str, Any]:
    """What the object of a contour set was: kind, manufacturer, model, label, approval and
    date (shifted like the study date), and its fingerprint (its UID with ``--keep-ids``)."""
    summary = object_summary(obj.header)
    sop = str(obj.header.get("SOPInstanceUID", ""))
    if not options.keep_ids:
        summary["label"] = redactor.text(summary["label"])
        summary["date"] = pseudo.shift_date(summary["date"])
    return {**summary, "sop": sop if options.keep_ids else pseudo.fingerprint("sop", sop)}


def _extra_masks(
    rs: RTStructData,
    unmatched: list[str],
    ct: CTSeries,
    taken: dict[str, Volume],
    warnings: list[dict[str, Any]],
) -> tuple[dict[str, Volume], dict[str, dict[str, Any]]]:
    extra: dict[str, Volume] = {}
    records: dict[str, dict[str, Any]] = {}
    for number, roi in sorted(rs.rois.items()):
        if roi.name not in unmatched or roi.empty:
            continue
        name = _extra_name(roi.name, {*extra, *taken}, warnings, number)
        extra[name] = ct.volume.with_array(roi.mask)
        records[name] = {
            "original_name": roi.name,
            "roi_number": number,
            "voxels": int(roi.mask.sum()),
            "volume_cm3": round(float(roi.mask.sum()) * ct.volume.voxel_volume_mm3 / 1000, 3),
            "file": mask_file(Path(), name).as_posix(),
        }
    return extra, records


def _as_dlas_error(exc: Exception) -> DlasError:
    """A case-level error; an unexpected one (a bug, or a file malformed in a way dlas does not
    recognise yet) is logged with its traceback and reported as such."""
    if isinstance(exc, DlasError):
        return exc
    log.debug("unexpected error while reading a case", exc_info=exc)
    return DatasetError(
        "unexpected error while reading this case",
        where="the case's files",
        expected="a readable CT series and RTSTRUCT",
        found=f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
        fix="rerun with --debug to see where; please report it with that output",
    )


def _reason(
    exc: DlasError,
    options: ImportOptions,
    case_id: str,
    source: Path,
    paths: list[Path],
    headers: list[Dataset],
    files: list[Path] | None = None,
) -> str:
    """Why a case was refused: the error as it is with ``--keep-ids``; otherwise placed by the
    pseudonymous case and the file's position, with paths, names, UIDs and identifying
    attribute values redacted (``paths``: what the source calls the case's files or folder)."""
    if options.keep_ids:
        return str(exc)
    redactor = Redactor.for_source(source, paths, headers)
    return redactor.error(exc, case_id=case_id, files=paths if files is None else files)


def _deid_record(options: ImportOptions) -> dict[str, Any]:
    return {
        "method": "identifiers kept on request (--keep-ids)" if options.keep_ids else _DEID_METHOD,
        "ids_kept": options.keep_ids,
        "dates_shifted": not options.keep_ids,
    }


def _import_nifti_case(
    source: Path,
    case_dir: Path,
    folder: str,
    dataset: CaseDataset,
    pseudo: Pseudonymizer,
    rule: CohortRule,
    options: ImportOptions,
    case_id: str,
) -> ImportItem:
    """Import one NIfTI case folder: ``ct.nii.gz`` and ``structures/<Name>.nii.gz``."""
    item = ImportItem(status="skipped", source=folder, case_id=case_id)
    cohort = _admit(item, rule, CaseKeys(folder=folder, patient_id=case_dir.name), dataset, options)
    if cohort is None:
        return item
    ct_path = case_dir / "ct.nii.gz"
    if not ct_path.exists():
        ct_path = case_dir / "ct.nii"
    try:
        ct = read_nifti(ct_path)
        ct = ct.with_array(ct.array.astype(np.float32))
        found = _read_nifti_structures(case_dir, ct, options)
        info = {
            "case_id": case_id,
            "cohort": cohort,
            "source": {
                "kind": "nifti",
                "folder": folder if options.keep_ids else pseudo.fingerprint("folder", folder),
                "n_slices": ct.shape[0],
                "study_date": None,
            },
            "patient": {"sex": None, "age_years": None},
            "scanner": {},
            "geometry": ct.geometry(),
            "structures": found.records,
            "extra_structures": found.extra_records,
            "unmatched": found.unmatched,
            "empty": found.empty,
            "warnings": found.warnings,
            "deidentification": _deid_record(options),
        }
        dataset.write_case(
            case_id,
            cohort,
            ct,
            found.masks,
            info,
            extra_masks=found.extra,
            overwrite=options.overwrite,
        )
    except DlasError as exc:
        structure_files = sorted((case_dir / MASK_FOLDER).glob("*.nii*"))
        item.reason = _reason(
            exc, options, case_id, source, [case_dir], [], [ct_path, *structure_files]
        )
        return item
    return _imported(item, found)


def _read_nifti_structures(case_dir: Path, ct: Volume, options: ImportOptions) -> _CaseStructures:
    """The mask files of a NIfTI case mapped onto the structure set by their names (files
    that map to no structure are kept under their own names with ``--keep-unmapped``)."""
    found = _CaseStructures()
    files = sorted(
        p
        for p in (case_dir / MASK_FOLDER).iterdir()
        if p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith(".")
    )
    claims: dict[str, list[Path]] = {}
    names: dict[Path, str] = {}
    for path in files:
        name = path.name[: -len(".nii.gz")] if path.name.endswith(".gz") else path.stem
        names[path] = name
        canonical = options.structure_set.match(name)
        if canonical is None:
            found.unmatched.append(name)
            if options.keep_unmapped:
                _keep_unmapped_file(path, name, ct, found, {*found.extra, *claims})
            continue
        claims.setdefault(canonical, []).append(path)
    for canonical, paths in claims.items():
        if len(paths) > 1:
            found.warnings.append(
                {
                    "code": "duplicate-structure",
                    "message": f"files {', '.join(p.name for p in paths)} all map to "
                    f"{canonical}; none of them was imported",
                    "roi_number": None,
                    "roi_name": canonical,
                }
            )
            continue
        mask = read_mask(paths[0], reference=ct)
        if not mask.array.any():
            found.empty.append(
                {"roi_number": None, "name": names[paths[0]], "canonical": canonical}
            )
            found.warnings.append(
                {
                    "code": "empty-roi",
                    "message": f"{paths[0].name} is empty",
                    "roi_number": None,
                    "roi_name": names[paths[0]],
                }
            )
            continue
        found.masks[canonical] = mask
        found.records[canonical] = {
            "original_name": names[paths[0]],
            "roi_number": None,
            "voxels": int(mask.array.sum()),
            "volume_cm3": round(float(mask.array.sum()) * ct.voxel_volume_mm3 / 1000, 3),
            "file": mask_file(Path(), canonical).as_posix(),
        }
    return found


def _keep_unmapped_file(
    path: Path, name: str, ct: Volume, found: _CaseStructures, taken: set[str]
) -> None:
    """Keep a mask file that maps to no structure under its own (safe) name, unless empty."""
    mask = read_mask(path, reference=ct)
    if mask.array.any():
        safe = _extra_name(name, taken, found.warnings, None)
        found.extra[safe] = mask
        found.extra_records[safe] = {
            "original_name": name,
            "voxels": int(mask.array.sum()),
            "volume_cm3": round(float(mask.array.sum()) * ct.voxel_volume_mm3 / 1000, 3),
            "file": mask_file(Path(), safe).as_posix(),
        }
