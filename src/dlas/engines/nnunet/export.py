"""``dlas export-nnunet``: a dlas data set in nnU-Net v2's raw format.

::

    OUT/DatasetNNN_NAME/
      imagesTr/<case>_0000.nii.gz   the CT (HU), canonical axial orientation
      labelsTr/<case>.nii.gz        one label per voxel: 0 background, i for structure i
      dataset.json                  channel_names {"0": "CT"}, labels, numTraining, file_ending
      dlas-export.json              what was exported: data set and structure-set hashes, cases
                                    left out and why, overlaps resolved per case

Label ``i`` is structure ``i`` of the data set's structure set (the order of its label table,
as in every dlas label map). Where contours overlap, the structure with the higher ``priority``
wins (ties: the later one in the set), as in dlas's own training; every overlap resolved is
counted in ``dlas-export.json``, per case and pair, in voxels.

nnU-Net has no notion of a structure that was not contoured in a case: a missing structure would
be learnt as background. Such cases are therefore left out by default (``missing="skip"``,
listed with the structures they lack), or refused (``"error"``), or exported with the structure
as background only when asked (``"background"``).

The folder is written next to its final place and renamed into it when complete, so an
interrupted export leaves no half-written data set behind. Nothing identifying a patient is
written: case ids are the data set's (pseudonymised at import) and NIfTI carries no identity.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dlas import __version__
from dlas.dataset import Case, CaseDataset, label_map
from dlas.errors import DatasetError
from dlas.io.atomic import write_json
from dlas.io.nifti import write_nifti
from dlas.model.preprocessing import canonical_axial
from dlas.structures import StructureSet

__all__ = ["MISSING_MODES", "ExportResult", "export_nnunet", "nnunet_labels"]

log = logging.getLogger(__name__)

MISSING_MODES = ("skip", "error", "background")
_NAME = re.compile(r"[^A-Za-z0-9]+")


@dataclass
class ExportResult:
    """What :func:`export_nnunet` wrote."""

    folder: Path
    dataset_name: str
    labels: dict[str, int]
    cases: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    overlaps: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form (``dlas-export.json`` adds the hashes)."""
        return {
            "dataset_name": self.dataset_name,
            "labels": self.labels,
            "cases": self.cases,
            "skipped": self.skipped,
            "overlaps_voxels": self.overlaps,
        }


def nnunet_labels(names: Sequence[str]) -> dict[str, int]:
    """nnU-Net's ``labels`` entry for structures ``names`` (in label order)."""
    return {"background": 0, **{name: i for i, name in enumerate(names, start=1)}}


def _overlaps(
    masks: dict[str, np.ndarray], labels: np.ndarray, names: Sequence[str]
) -> dict[str, int]:
    """Voxels where a structure's contour lost to another's: ``"A under B"`` → count."""
    counts: dict[str, int] = {}
    for name, mask in masks.items():
        if name not in names:
            continue
        own = names.index(name) + 1
        lost = labels[mask & (labels != own)]
        for value, n in zip(*np.unique(lost, return_counts=True), strict=True):
            if value:
                counts[f"{name} under {names[int(value) - 1]}"] = int(n)
    return counts


def _check_request(
    ds: CaseDataset, out: Path, dataset_id: int, missing: str, cohorts: Sequence[str] | None
) -> None:
    if not 1 <= dataset_id <= 999:
        raise DatasetError(
            "nnU-Net data set id out of range",
            where="--dataset-id",
            expected="an integer from 1 to 999 (nnU-Net's DatasetNNN)",
            found=str(dataset_id),
            fix="choose a free id in that range (nnU-Net reserves none for dlas)",
        )
    if missing not in MISSING_MODES:
        raise DatasetError(
            "unknown handling of missing structures",
            where="--missing",
            expected=" or ".join(MISSING_MODES),
            found=repr(missing),
            fix="use --missing skip (leave such cases out), error or background",
        )
    ds.check_cohorts(cohorts)
    if out.exists() and not out.is_dir():
        raise DatasetError(
            "export folder is a file",
            where=str(out),
            expected="a folder (new or existing) to write DatasetNNN_NAME into",
            found="a file",
            fix="choose another OUT",
        )


def _export_case(
    case: Case, structure_set: StructureSet, folder: Path, missing: str
) -> tuple[str | None, dict[str, int]]:
    """Write one case; returns (reason it was left out or None, overlaps)."""
    names = structure_set.names
    lacking = [n for n in names if n not in case.structures]
    if lacking and missing == "skip":
        return f"lacks {', '.join(lacking)}", {}
    if lacking and missing == "error":
        raise DatasetError(
            "case lacks structures nnU-Net would learn as background",
            where=f"case {case.case_id}",
            expected="every structure of the structure set contoured",
            found=f"no {', '.join(lacking)}",
            fix="export with --missing skip (leave such cases out) or --missing background",
        )
    ct = canonical_axial(case.ct, where=f"case {case.case_id}")
    masks = {
        name: np.asarray(canonical_axial(m, where=f"case {case.case_id}, {name}").array, bool)
        for name, m in case.structures.items()
        if name in names
    }
    labels = label_map(masks, structure_set) if masks else np.zeros(ct.shape, dtype=np.uint8)
    write_nifti(ct, folder / "imagesTr" / f"{case.case_id}_0000.nii.gz")
    write_nifti(ct.with_array(labels), folder / "labelsTr" / f"{case.case_id}.nii.gz")
    return None, _overlaps(masks, labels, names)


def _write_cases(
    ds: CaseDataset,
    ids: Sequence[str],
    folder: Path,
    missing: str,
    result: ExportResult,
    on_case: Callable[[Case], None] | None,
    progress: Callable[[int, int, str], None] | None,
) -> None:
    for n, case_id in enumerate(ids):
        if progress is not None:
            progress(n, len(ids), case_id)
        case = ds.load_case(case_id)
        reason, overlaps = _export_case(case, ds.structure_set, folder, missing)
        if reason is not None:
            result.skipped[case_id] = reason
            log.warning("%s left out of the nnU-Net export: %s", case_id, reason)
            continue
        result.cases.append(case_id)
        if overlaps:
            result.overlaps[case_id] = overlaps
        if on_case is not None:
            on_case(case)
    if not result.cases:
        raise DatasetError(
            "no case to export",
            where=f"data set {ds.root}",
            expected="at least one case with every structure of the structure set",
            found=f"{len(ids)} case(s), {len(result.skipped)} left out"
            + (f" ({next(iter(result.skipped.values()))} ...)" if result.skipped else ""),
            fix="check --cohort, or export with --missing background",
        )


def _write_metadata(ds: CaseDataset, folder: Path, missing: str, result: ExportResult) -> None:
    write_json(
        folder / "dataset.json",
        {
            "channel_names": {"0": "CT"},
            "labels": result.labels,
            "numTraining": len(result.cases),
            "file_ending": ".nii.gz",
            "name": result.dataset_name,
            "description": f"exported by dlas {__version__} from structure set "
            f"{ds.structure_set.name}",
        },
    )
    write_json(
        folder / "dlas-export.json",
        {
            "schema_version": 1,
            "software": {"name": "dlas", "version": __version__},
            "dataset_sha256": ds.sha256(result.cases),
            "structure_set": ds.structure_set.name,
            "structure_set_sha256": ds.structure_set.sha256(),
            "overlap_rule": "higher priority wins (ties: the later structure)",
            "missing": missing,
            **result.to_data(),
        },
    )


def export_nnunet(
    dataset: str | os.PathLike[str] | CaseDataset,
    out: str | os.PathLike[str],
    *,
    dataset_id: int,
    name: str | None = None,
    cohorts: Sequence[str] | None = None,
    case_ids: Sequence[str] | None = None,
    missing: Literal["skip", "error", "background"] | str = "skip",
    on_case: Callable[[Case], None] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> ExportResult:
    """Write the cases of ``dataset`` (all, those of ``cohorts``, or ``case_ids``) as nnU-Net
    data set ``DatasetNNN_NAME`` under ``out`` (see the module docstring).

    Parameters
    ----------
    name
        The NAME part (letters and digits); default the data set folder's name.
    on_case
        Called with every case exported (loaded once; e.g. to measure it).

    Raises
    ------
    dlas.errors.DatasetError
        Bad id, cohort or ``missing``; an existing data set of that name in ``out``; no case
        left to export; a case that lacks structures with ``missing="error"``.
    """
    ds = dataset if isinstance(dataset, CaseDataset) else CaseDataset.open(dataset)
    out_dir = Path(out)
    _check_request(ds, out_dir, dataset_id, missing, cohorts)
    label = _NAME.sub("", name if name is not None else Path(ds.root).name) or "dlas"
    dataset_name = f"Dataset{dataset_id:03d}_{label}"
    final = out_dir / dataset_name
    clash = [p.name for p in out_dir.glob(f"Dataset{dataset_id:03d}_*")] if out_dir.is_dir() else []
    if clash:
        raise DatasetError(
            "nnU-Net data set id already used",
            where=str(out_dir),
            expected=f"no other Dataset{dataset_id:03d}_* folder (nnU-Net finds data sets by id)",
            found=", ".join(sorted(clash)),
            fix="choose another --dataset-id, or remove that folder",
        )
    if case_ids is not None:
        ids = list(case_ids)
    elif cohorts:
        ids = [c for c in ds.case_ids() if ds.record(c).cohort in set(cohorts)]
    else:
        ids = ds.case_ids()
    partial = out_dir / f".{dataset_name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "imagesTr").mkdir(parents=True)
    (partial / "labelsTr").mkdir()
    result = ExportResult(final, dataset_name, nnunet_labels(ds.structure_set.names), [])
    try:
        _write_cases(ds, ids, partial, missing, result, on_case, progress)
        _write_metadata(ds, partial, missing, result)
        if progress is not None:
            progress(len(ids), len(ids), "")
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return result
