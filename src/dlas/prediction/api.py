"""``predict()``: run a model on DICOM series, NIfTI CTs or a data set (``dlas predict``).

Output layout — one folder per input CT, written completely or not at all::

    OUT/
      predictions.json             the model, and per input its status and files
      <id>/
        structures/<Name>.nii.gz   one mask per structure on the CT's own grid (format nifti)
        RTSTRUCT.dcm               referencing the source series (format rtstruct; DICOM input)
        SEG.dcm                    DICOM Segmentation (format seg; DICOM input)
        prediction.json            provenance: model name, version and hash, software version,
                                   structures with voxel counts and volumes

``<id>`` is the case id for a data set (so ``dlas evaluate --prediction NAME=OUT`` finds
``OUT/<case_id>/structures``), ``series-<first 12 hex digits of SHA-256(SeriesInstanceUID)>`` for
a DICOM series (no patient identifier in paths), and the file name without ``.nii.gz`` for a
NIfTI CT. Every structure of the model is written, empty ones included, so that a missing
prediction is never mistaken for a missing file.

Default formats: ``rtstruct`` for DICOM input, ``nifti`` otherwise. RTSTRUCT and SEG need the
source DICOM series and are refused for other inputs. RTSTRUCTs are marked AUTOMATIC and carry
the model name, version (software version + short model hash) and the full model hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlas import __version__
from dlas.dataset import CaseDataset
from dlas.errors import DlasError
from dlas.io.atomic import atomic_dir, write_json
from dlas.io.ct import CTSeries, read_ct_series
from dlas.io.dicom_scan import scan_dicom
from dlas.io.nifti import read_nifti, write_mask
from dlas.io.rtstruct import AlgorithmIdentification, ROIGenerationAlgorithm, write_rtstruct
from dlas.io.seg import write_seg
from dlas.io.volume import Volume
from dlas.prediction.engine import Predictor

__all__ = [
    "FORMATS",
    "PredictionError",
    "PredictionItem",
    "PredictionReport",
    "parse_formats",
    "predict",
]

log = logging.getLogger(__name__)

FORMATS = ("rtstruct", "seg", "nifti")

ProgressCallback = Callable[[int, int, str], None]


class PredictionError(DlasError):
    """A prediction request that cannot be carried out (formats, inputs, existing outputs)."""


@dataclass
class PredictionItem:
    """The outcome for one input CT."""

    id: str
    kind: str  # "dicom", "nifti" or "dataset"
    status: str  # "written", "exists" or "failed"
    reason: str = ""
    files: list[str] = field(default_factory=list)
    structures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "files": self.files,
            "structures": self.structures,
        }


@dataclass
class PredictionReport:
    """What a prediction run did."""

    out: Path
    model_name: str
    model_sha256: str
    formats: tuple[str, ...]
    items: list[PredictionItem] = field(default_factory=list)

    @property
    def failed(self) -> list[PredictionItem]:
        """Inputs that could not be predicted."""
        return [i for i in self.items if i.status == "failed"]

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form (``predictions.json``)."""
        return {
            "schema_version": 1,
            "software": {"name": "dlas", "version": __version__},
            "model": {"name": self.model_name, "model_sha256": self.model_sha256},
            "formats": list(self.formats),
            "items": [i.to_data() for i in self.items],
        }


def parse_formats(formats: str | Sequence[str] | None, kind: str) -> tuple[str, ...]:
    """Validated output formats (``"rtstruct,seg"`` or a list); default by input kind.

    Raises
    ------
    PredictionError
        Unknown format, or a DICOM format for an input that is not DICOM.
    """
    if formats is None:
        return ("rtstruct",) if kind == "dicom" else ("nifti",)
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise PredictionError(
            "unknown output format",
            where="--format",
            expected=f"a comma-separated list of {', '.join(FORMATS)}",
            found=", ".join(unknown) or "nothing",
            fix="e.g. --format rtstruct,nifti",
        )
    dicom_only = [f for f in chosen if f in ("rtstruct", "seg")]
    if dicom_only and kind != "dicom":
        raise PredictionError(
            f"{', '.join(dicom_only)} needs a DICOM input",
            where="--format",
            expected="a DICOM CT series to reference",
            found=f"a {kind} input",
            fix="use --format nifti, or predict the original DICOM folder",
        )
    return chosen


def _input_kind(source: Path) -> str:
    if source.is_dir() and (source / "dataset.json").is_file():
        return "dataset"
    if source.is_file() and source.name.endswith((".nii", ".nii.gz")):
        return "nifti"
    return "dicom"


def _series_id(series_uid: str) -> str:
    return "series-" + hashlib.sha256(series_uid.encode()).hexdigest()[:12]


def _safe_id(name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_.")
    return text or "ct"


def _existing(folder: Path, model_sha: str) -> str | PredictionError | None:
    """None when ``folder`` is free; the reason to skip it when it holds this model's
    prediction; an error when it holds something else."""
    if not folder.exists():
        return None
    record = folder / "prediction.json"
    try:
        previous = json.loads(record.read_text(encoding="utf-8"))["model"]["model_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        previous = None
    if previous == model_sha:
        return "already predicted with this model (use --overwrite to redo it)"
    return PredictionError(
        "output folder holds another prediction",
        where=str(folder),
        expected=f"no folder, or a prediction of model {model_sha[:12]}",
        found=f"a prediction of model {str(previous)[:12]}" if previous else "other files",
        fix="pass --overwrite to replace it, or choose another --out",
    )


def _write_item(
    predictor: Predictor,
    folder: Path,
    item: PredictionItem,
    masks: dict[str, Volume],
    *,
    formats: Sequence[str],
    ct: Volume,
    series: CTSeries | None,
    overwrite: bool,
    extra: dict[str, Any],
) -> None:
    info = predictor.model.info
    algorithm = AlgorithmIdentification(
        name=info.name, version=info.version, parameters=f"model_sha256={info.model_sha256}"
    )
    voxel_cm3 = ct.voxel_volume_mm3 / 1000.0
    item.structures = {
        name: {
            "voxels": int(np.count_nonzero(mask.array)),
            "volume_cm3": round(int(np.count_nonzero(mask.array)) * voxel_cm3, 3),
            "postprocess": info.structure_set[name].postprocess.model_dump(),
        }
        for name, mask in masks.items()
    }
    files: list[str] = []
    with atomic_dir(folder, replace=overwrite) as tmp:
        if "nifti" in formats:
            (tmp / "structures").mkdir()
            for name, mask in masks.items():
                write_mask(mask, tmp / "structures" / f"{name}.nii.gz")
                files.append(f"structures/{name}.nii.gz")
        if series is not None and "rtstruct" in formats:
            write_rtstruct(
                {name: mask.array for name, mask in masks.items()},
                series,
                tmp / "RTSTRUCT.dcm",
                generation=ROIGenerationAlgorithm.AUTOMATIC,
                algorithm=algorithm,
                structure_set=info.structure_set,
                label=info.name[:16],
                series_description=f"{info.name} auto-segmentation"[:64],
            )
            files.append("RTSTRUCT.dcm")
        if series is not None and "seg" in formats:
            write_seg(
                {name: mask.array for name, mask in masks.items()},
                series,
                tmp / "SEG.dcm",
                generation=ROIGenerationAlgorithm.AUTOMATIC,
                algorithm=algorithm,
                structure_set=info.structure_set,
            )
            files.append("SEG.dcm")
        item.files = files
        write_json(
            tmp / "prediction.json",
            {
                "schema_version": 1,
                "software": {"name": "dlas", "version": __version__},
                "model": {
                    "name": info.name,
                    "version": info.version,
                    "model_sha256": info.model_sha256,
                    "members": len(info.weights),
                },
                "input": {"kind": item.kind, "id": item.id, **extra},
                "geometry": ct.geometry(),
                "test_time_flip": predictor.tta,
                "device": predictor.device.type,
                "formats": list(formats),
                "files": files,
                "structures": item.structures,
            },
        )


def predict(
    model: str | os.PathLike[str],
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    formats: str | Sequence[str] | None = None,
    device: str = "auto",
    tta: bool = False,
    batch_size: int = 8,
    cohorts: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> PredictionReport:
    """Predict every CT of ``source`` with ``model`` and write the results under ``out``.

    Parameters
    ----------
    model
        A dlas model folder (``dlas train --out``).
    source
        A DICOM folder (one or many CT series, any depth), a NIfTI CT file, or a dlas data set.
    out
        Output folder (see the module docstring).
    formats
        ``rtstruct``, ``seg``, ``nifti`` (comma-separated or a list); default by input kind.
    device, batch_size, tta
        See :class:`~dlas.prediction.engine.Predictor`.
    cohorts
        For a data set: predict only these cohorts.
    overwrite
        Replace earlier predictions in ``out``; otherwise an input already predicted with this
        model is skipped (``exists``), and one predicted with another model fails.
    progress
        ``(done, total, label)`` callback, called per input.

    Returns
    -------
    PredictionReport
        Per input: written, exists or failed (with the reason).

    Raises
    ------
    PredictionError
        Bad formats or cohorts; an only input that fails raises its own error instead.
    dlas.model.ModelFileError
        An unusable model.
    """
    src = Path(source)
    out_dir = Path(out)
    if not src.exists():
        raise PredictionError(
            "input not found",
            where=str(src),
            expected="a DICOM folder, a NIfTI CT or a dlas data set",
            found="nothing at that path",
            fix="check the path",
        )
    kind = _input_kind(src)
    chosen = parse_formats(formats, kind)
    predictor = Predictor(model, device=device, batch_size=batch_size, tta=tta)
    info = predictor.model.info
    report = PredictionReport(out_dir, info.name, info.model_sha256, chosen)
    jobs = _jobs(src, kind, cohorts)
    errors: list[DlasError] = []
    for n, (item_id, load) in enumerate(jobs):
        if progress is not None:
            progress(n, len(jobs), item_id)
        item = PredictionItem(id=item_id, kind=kind, status="failed")
        report.items.append(item)
        folder = out_dir / item_id
        if not overwrite:
            existing = _existing(folder, info.model_sha256)
            if isinstance(existing, PredictionError):
                item.reason = str(existing)
                errors.append(existing)
                continue
            if existing is not None:
                item.status, item.reason = "exists", existing
                continue
        try:
            ct, series, extra = load()
            masks = predictor.predict(ct)
            _write_item(
                predictor,
                folder,
                item,
                masks,
                formats=chosen,
                ct=ct,
                series=series,
                overwrite=overwrite,
                extra=extra,
            )
        except DlasError as exc:
            item.reason = str(exc)
            errors.append(exc)
            log.warning("%s not predicted: %s", item_id, exc.what)
            continue
        item.status = "written"
        log.info("%s predicted (%s)", item_id, ", ".join(item.files))
    if progress is not None:
        progress(len(jobs), len(jobs), "")
    if len(jobs) == 1 and errors:
        raise errors[0]
    write_json(out_dir / "predictions.json", report.to_data())
    return report


Loader = Callable[[], tuple[Volume, CTSeries | None, dict[str, Any]]]


def _jobs(src: Path, kind: str, cohorts: Sequence[str] | None) -> list[tuple[str, Loader]]:
    if cohorts and kind != "dataset":
        raise PredictionError(
            "--cohort applies to data sets only",
            where=str(src),
            expected="a dlas data set",
            found=f"a {kind} input",
            fix="leave out --cohort",
        )
    if kind == "nifti":
        stem = src.name[: -len(".nii.gz")] if src.name.endswith(".nii.gz") else src.stem
        return [(_safe_id(stem), lambda: (read_nifti(src), None, {}))]
    if kind == "dataset":
        dataset = CaseDataset.open(src)
        known = dataset.cohorts()
        unknown = [c for c in cohorts or [] if c not in known]
        if unknown:
            raise PredictionError(
                "unknown cohort",
                where=str(src),
                expected=f"one of {', '.join(known) or '(no cohorts)'}",
                found=", ".join(unknown),
                fix="list the cohorts with `dlas inspect DATASET`",
            )
        ids = [c for name in cohorts for c in known[name]] if cohorts else dataset.case_ids()

        def case_loader(case_id: str) -> Loader:
            def load() -> tuple[Volume, CTSeries | None, dict[str, Any]]:
                return (
                    read_nifti(dataset.case_dir(case_id) / "ct.nii.gz"),
                    None,
                    {"cohort": dataset.record(case_id).cohort},
                )

            return load

        return [(case_id, case_loader(case_id)) for case_id in ids]
    scan = scan_dicom(src)
    if not scan.ct_series:
        read_ct_series(src)  # raises the reader's own "no CT series found" error
    jobs: list[tuple[str, Loader]] = []
    for uid, files in scan.ct_series.items():

        def series_loader(
            files: Any = files, uid: str = uid
        ) -> tuple[Volume, CTSeries | None, dict[str, Any]]:
            series = read_ct_series(files)
            return series.volume, series, {"series": _series_id(uid)}

        jobs.append((_series_id(uid), series_loader))
    return jobs
