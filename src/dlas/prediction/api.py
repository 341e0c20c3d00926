"""``predict()``: run a model on DICOM series, NIfTI CTs or a data set (``dlas predict``).

Output layout — one folder per input CT, written completely or not at all::

    OUT/
      predictions.json             the model, and per input its status and files
      <id>/
        structures/<Name>.nii.gz   one mask per structure on the CT's own grid (format nifti)
        RTSTRUCT.dcm               referencing the source series (format rtstruct; DICOM input)
        SEG.dcm                    DICOM Segmentation (format seg; DICOM input)
        prediction.json            provenance: model name, version and hash, software version,
                                   structures with voxel counts and volumes, the QA summary
        qa.json                    prediction QA (dlas.prediction.qa): flags and measures per
                                   structure and for the input CT, status pass or flagged
        uncertainty.nii.gz         members disagreeing with the ensemble, per voxel (uint8;
                                   with uncertainty_map, for an ensemble or test-time flipping)

``<id>`` is the case id for a data set (so ``dlas evaluate --prediction NAME=OUT`` finds
``OUT/<case_id>/structures``), ``series-<first 12 hex digits of SHA-256(SeriesInstanceUID)>`` for
a DICOM series (no patient identifier in paths), and the file name without ``.nii.gz`` for a
NIfTI CT. Every structure of the model is written, empty ones included, so that a missing
prediction is never mistaken for a missing file.

Default formats: ``rtstruct`` for DICOM input, ``nifti`` otherwise. RTSTRUCT and SEG need the
source DICOM series and are refused for other inputs. RTSTRUCTs are marked AUTOMATIC and carry
the model name, version (software version + short model hash) and the full model hash.

Prediction QA runs on every prediction. A flagged prediction is written with its flags in
``qa.json``, and its RTSTRUCT/SEG are marked: the series description ends in ``[QA: N flags]``,
and each flagged ROI (segment) carries its flag codes in its ROI Description (Segment
Description). ``predictions.json`` lists the flagged inputs. With ``qa_fail="error"`` a flagged
input is not written at all: it is reported as failed with its flags (``PredictionQAError``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlas import __version__
from dlas.dataset import CaseDataset
from dlas.dataset.layout import MASK_FOLDER, mask_file
from dlas.errors import DlasError
from dlas.io.atomic import atomic_dir, check_output, write_json
from dlas.io.ct import CTSeries, read_ct_series
from dlas.io.dicom_scan import scan_dicom
from dlas.io.nifti import read_nifti, write_mask, write_nifti
from dlas.io.rtstruct import AlgorithmIdentification, ROIGenerationAlgorithm, write_rtstruct
from dlas.io.seg import write_seg
from dlas.io.volume import Volume
from dlas.model.checkpoint import ModelInfo
from dlas.prediction.engine import MemberAgreement, Predictor, open_predictor
from dlas.prediction.qa import QAReport, check_prediction

if TYPE_CHECKING:
    from dlas.engines.nnunet.model import NnUNetModelInfo, NnUNetPredictor

__all__ = [
    "FORMATS",
    "QA_FAIL_MODES",
    "PredictionError",
    "PredictionItem",
    "PredictionQAError",
    "PredictionReport",
    "parse_formats",
    "predict",
]

log = logging.getLogger(__name__)

FORMATS = ("rtstruct", "seg", "nifti")
#: What a flagged prediction does: ``warn`` writes it marked, ``error`` fails it unwritten.
QA_FAIL_MODES = ("warn", "error")

ProgressCallback = Callable[[int, int, str], None]


class PredictionError(DlasError):
    """A prediction request that cannot be carried out (formats, inputs, existing outputs)."""


class PredictionQAError(PredictionError):
    """A prediction that prediction QA flagged, refused because of ``--qa-fail error``.

    ``summary`` holds the QA summary (:meth:`~dlas.prediction.qa.QAReport.summary`)."""

    summary: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance, never mutated


@dataclass
class PredictionItem:
    """The outcome for one input CT."""

    id: str
    kind: str  # "dicom", "nifti" or "dataset"
    status: str  # "written", "exists" or "failed"
    reason: str = ""
    files: list[str] = field(default_factory=list)
    structures: dict[str, dict[str, Any]] = field(default_factory=dict)
    qa: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        """Whether prediction QA flagged this input."""
        return self.qa.get("status") == "flagged"

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "files": self.files,
            "structures": self.structures,
            "qa": self.qa,
        }


@dataclass
class PredictionReport:
    """What a prediction run did."""

    out: Path
    model_name: str
    model_sha256: str
    formats: tuple[str, ...]
    items: list[PredictionItem] = field(default_factory=list)
    qa_fail: str = "warn"

    @property
    def failed(self) -> list[PredictionItem]:
        """Inputs that could not be predicted."""
        return [i for i in self.items if i.status == "failed"]

    @property
    def flagged(self) -> list[PredictionItem]:
        """Inputs that prediction QA flagged (written marked, or failed with ``error``)."""
        return [i for i in self.items if i.flagged]

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form (``predictions.json``)."""
        return {
            "schema_version": 1,
            "software": {"name": "dlas", "version": __version__},
            "model": {"name": self.model_name, "model_sha256": self.model_sha256},
            "formats": list(self.formats),
            "qa_fail": self.qa_fail,
            "flagged": [
                {"id": i.id, "status": i.status, "flags": i.qa.get("flags", 0), **_codes(i.qa)}
                for i in self.flagged
            ],
            "items": [i.to_data() for i in self.items],
        }


def _codes(summary: dict[str, Any]) -> dict[str, Any]:
    return {"input": summary.get("input", []), "structures": summary.get("structures", {})}


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


def _qa_marks(qa: QAReport, base: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """Series description (64 characters at most) and, per flagged structure, the ROI and
    segment descriptions that mark a flagged prediction."""
    n = len(qa.flags)
    if not n:
        return base[:64], {}, {}
    suffix = f" [QA: {n} flag{'s' if n != 1 else ''}]"
    rois = {
        name: f"QA flags: {', '.join(s.codes)}. Review before use ({n} flag(s) in this set)."
        for name, s in qa.structures.items()
        if s.flags
    }
    segments = {name: f"QA: {', '.join(s.codes)}" for name, s in qa.structures.items() if s.flags}
    return base[: 64 - len(suffix)] + suffix, rois, segments


def _write_dicom(
    tmp: Path,
    masks: dict[str, Volume],
    series: CTSeries,
    formats: Sequence[str],
    info: ModelInfo | NnUNetModelInfo,
    qa: QAReport,
) -> list[str]:
    algorithm = AlgorithmIdentification(
        name=info.name, version=info.version, parameters=f"model_sha256={info.model_sha256}"
    )
    description, rois, segments = _qa_marks(qa, f"{info.name} auto-segmentation")
    files: list[str] = []
    if "rtstruct" in formats:
        write_rtstruct(
            {name: mask.array for name, mask in masks.items()},
            series,
            tmp / "RTSTRUCT.dcm",
            generation=ROIGenerationAlgorithm.AUTOMATIC,
            algorithm=algorithm,
            structure_set=info.structure_set,
            label=info.name[:16],
            series_description=description,
            roi_descriptions=rois,
        )
        files.append("RTSTRUCT.dcm")
    if "seg" in formats:
        write_seg(
            {name: mask.array for name, mask in masks.items()},
            series,
            tmp / "SEG.dcm",
            generation=ROIGenerationAlgorithm.AUTOMATIC,
            algorithm=algorithm,
            structure_set=info.structure_set,
            series_description=description,
            segment_descriptions=segments,
        )
        files.append("SEG.dcm")
    return files


def _write_item(
    predictor: Predictor | NnUNetPredictor,
    folder: Path,
    item: PredictionItem,
    masks: dict[str, Volume],
    *,
    formats: Sequence[str],
    ct: Volume,
    series: CTSeries | None,
    overwrite: bool,
    extra: dict[str, Any],
    qa: QAReport,
    agreement: MemberAgreement | None = None,
) -> None:
    info = predictor.model.info
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
            (tmp / MASK_FOLDER).mkdir()
            for name, mask in masks.items():
                write_mask(mask, mask_file(tmp, name))
                files.append(mask_file(tmp, name).relative_to(tmp).as_posix())
        if series is not None:
            files += _write_dicom(tmp, masks, series, formats, info, qa)
        qa_data = qa.to_data()
        if agreement is not None and agreement.disagreement is not None:
            write_nifti(agreement.disagreement, tmp / "uncertainty.nii.gz")
            files.append("uncertainty.nii.gz")
            qa_data["uncertainty_map"] = {
                "file": "uncertainty.nii.gz",
                "definition": "per voxel, the number of members (networks x test-time passes) "
                f"whose arg-max label differs from the ensemble's; {agreement.members} members",
            }
        write_json(tmp / "qa.json", qa_data)
        files.append("qa.json")
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
                "qa": qa.summary(),
            },
        )


def _predict_checked(
    predictor: Predictor | NnUNetPredictor,
    ct: Volume,
    item_id: str,
    qa_fail: str,
    with_agreement: bool,
) -> tuple[dict[str, Volume], QAReport, MemberAgreement | None]:
    """Masks of ``ct`` and their QA; raises :class:`PredictionQAError` for a flagged
    prediction when ``qa_fail`` is ``error``."""
    info = predictor.model.info
    agreement: MemberAgreement | None = None
    if with_agreement:
        masks, agreement = predictor.predict_with_agreement(ct)
    else:
        masks = predictor.predict(ct)
    started = time.perf_counter()
    qa = check_prediction(
        ct,
        masks,
        info.structure_set,
        info.qa,
        agreement=agreement,
        body_threshold_hu=predictor.body_threshold_hu,
    )
    log.debug("%s: prediction QA took %.2f s", item_id, time.perf_counter() - started)
    if qa.flags and qa_fail == "error":
        error = PredictionQAError(
            f"prediction flagged by QA ({len(qa.flags)} flag(s)); nothing written",
            where=f"input {item_id}",
            expected="no QA flag (--qa-fail error)",
            found=qa.describe(),
            fix="review this CT and the model's fit to it, or predict with --qa-fail warn to "
            "write the prediction marked as flagged",
        )
        error.summary = qa.summary()
        raise error
    return masks, qa, agreement


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
    qa_fail: str = "warn",
    uncertainty_map: bool = False,
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
    qa_fail
        ``warn`` (default): a prediction flagged by QA is written, marked (see the module
        docstring); ``error``: it is not written and the input is reported as failed.
    uncertainty_map
        For an ensemble or test-time flipping, also write ``uncertainty.nii.gz`` (members
        disagreeing with the ensemble, per voxel).

    Returns
    -------
    PredictionReport
        Per input: written, exists or failed (with the reason).

    Raises
    ------
    PredictionError
        Bad formats, cohorts or ``qa_fail``; an only input that fails raises its own error
        instead (:class:`PredictionQAError` when QA flagged it with ``qa_fail="error"``).
    dlas.model.ModelFileError
        An unusable model.
    """
    src = Path(source)
    out_dir = Path(out)
    _check_request(src, qa_fail)
    kind = _input_kind(src)
    chosen = parse_formats(formats, kind)
    # Before the model is loaded and anything computed: an --out that is a file, or a folder
    # that cannot be written, used to fail only after the first prediction.
    check_output(out_dir, folder=True, option="--out")
    predictor = open_predictor(model, device=device, batch_size=batch_size, tta=tta)
    info = predictor.model.info
    report = PredictionReport(out_dir, info.name, info.model_sha256, chosen, qa_fail=qa_fail)
    # Member agreement only when there are members to disagree: a single model runs as before.
    with_agreement = predictor.members > 1
    jobs = _jobs(src, kind, cohorts)
    errors: list[DlasError] = []
    for n, (item_id, load) in enumerate(jobs):
        if progress is not None:
            progress(n, len(jobs), item_id)
        item = PredictionItem(id=item_id, kind=kind, status="failed")
        report.items.append(item)
        error = _predict_item(
            predictor,
            item,
            load,
            out_dir / item_id,
            formats=chosen,
            overwrite=overwrite,
            qa_fail=qa_fail,
            with_agreement=with_agreement,
            uncertainty_map=uncertainty_map,
        )
        if error is not None:
            errors.append(error)
    if progress is not None:
        progress(len(jobs), len(jobs), "")
    if len(jobs) == 1 and errors:
        raise errors[0]
    write_json(out_dir / "predictions.json", report.to_data())
    return report


def _check_request(src: Path, qa_fail: str) -> None:
    """Refuse a missing input or an unknown QA failure mode before anything is loaded."""
    if not src.exists():
        raise PredictionError(
            "input not found",
            where=str(src),
            expected="a DICOM folder, a NIfTI CT or a dlas data set",
            found="nothing at that path",
            fix="check the path",
        )
    if qa_fail not in QA_FAIL_MODES:
        raise PredictionError(
            "unknown QA failure mode",
            where="--qa-fail",
            expected=" or ".join(QA_FAIL_MODES),
            found=repr(qa_fail),
            fix="use --qa-fail warn (write flagged predictions, marked) or error",
        )


def _predict_item(
    predictor: Predictor | NnUNetPredictor,
    item: PredictionItem,
    load: Loader,
    folder: Path,
    *,
    formats: Sequence[str],
    overwrite: bool,
    qa_fail: str,
    with_agreement: bool,
    uncertainty_map: bool,
) -> DlasError | None:
    """Predict one input into ``folder`` and record the outcome in ``item``; the error that
    stopped it (the item is then ``failed``), or None (``written`` or ``exists``)."""
    item_id = item.id
    if not overwrite:
        existing = _existing(folder, predictor.model.info.model_sha256)
        if isinstance(existing, PredictionError):
            item.reason = str(existing)
            return existing
        if existing is not None:
            item.status, item.reason = "exists", existing
            return None
    try:
        ct, series, extra = load()
        masks, qa, agreement = _predict_checked(predictor, ct, item_id, qa_fail, with_agreement)
        item.qa = qa.summary()
        _write_item(
            predictor,
            folder,
            item,
            masks,
            formats=formats,
            ct=ct,
            series=series,
            overwrite=overwrite,
            extra=extra,
            qa=qa,
            agreement=agreement if uncertainty_map else None,
        )
    except PredictionQAError as exc:
        item.reason, item.qa = str(exc), exc.summary
        log.warning("%s not written: flagged by prediction QA", item_id)
        return exc
    except DlasError as exc:
        item.reason = str(exc)
        log.warning("%s not predicted: %s", item_id, exc.what)
        return exc
    item.status = "written"
    log.info("%s predicted (%s; QA %s)", item_id, ", ".join(item.files), qa.status)
    return None


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
        dataset.check_cohorts(cohorts, error=PredictionError)
        known = dataset.cohorts()
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
