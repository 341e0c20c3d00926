"""`dlas study`: the whole study in one call, every step resumable.

Steps, in order; each writes its outputs in place and then a completion marker
(``STUDY_DIR/.steps/<step>.json``), so an interrupted study continues where it stopped:

=========  ==========================================================================
data       generate the synthetic replica (``source/``) and import it, or import the
           department's export, into ``data/`` (or use an existing data set as is)
pretrain   train the vendor model on ``cohorts.pretrain`` → ``models/<VPM>/``, unless
           ``pretrained_model`` is given (then it is only referenced)
finetune   fine-tune it on ``cohorts.finetune`` with the recipe and k-fold CV → ``models/<LFT>/``
predict    both models on every evaluation cohort → ``predictions/<model>/<case>/...`` (NIfTI),
           plus RTSTRUCTs of a sample of DICOM cases → ``predictions/rtstruct-sample/``
           (a model given as contours, ``models.from_contours``, is read from its contour set
           of the data set instead: it is neither trained nor predicted, and with both models
           so given, pretrain, finetune and predict record that they had nothing to do)
evaluate   ``metrics.csv`` + ``metrics.json`` (definitions, hashes)
compare    ``comparison/`` (paired statistics, Table 2)
report     ``report/index.html``, tables, figures and the contour viewer
=========  ==========================================================================

A step interrupted half-way is redone (training continues from its last finished epoch through
the trainer's own resume; prediction skips cases already written). ``study.yaml`` holds the
resolved configuration and its hash; resuming with another configuration is refused.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dlas import __version__
from dlas.config_files import canonical_sha256
from dlas.errors import DatasetError, StudyError
from dlas.io.atomic import write_json, write_text
from dlas.study.config import DatasetSource, DicomSource, PhantomSource, StudyConfig
from dlas.study_layout import StudyLayout

if TYPE_CHECKING:
    from dlas.dataset.importer import ImportReport
    from dlas.phantom.config import PhantomConfig

__all__ = ["STEPS", "StudyProgress", "StudyResult", "check_study_folder", "run_study"]

log = logging.getLogger(__name__)

#: The steps and their share of a study's running time (for the progress estimate).
STEPS: dict[str, float] = {
    "data": 0.06,
    "pretrain": 0.36,
    "finetune": 0.42,
    "predict": 0.05,
    "evaluate": 0.03,
    "compare": 0.02,
    "report": 0.06,
}


@dataclass(frozen=True)
class StudyProgress:
    """Where a study is: ``fraction`` of the whole (0-1, by step weights), the step, a note."""

    step: str
    fraction: float
    message: str = ""


ProgressCallback = Callable[[StudyProgress], None]


@dataclass
class StudyResult:
    """What a study produced."""

    root: Path
    config_sha256: str
    steps: dict[str, str] = field(default_factory=dict)  # step -> "ran" | "skipped"
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        """The report's main page."""
        return StudyLayout(self.root).report / "index.html"


class _Study:
    """Paths and step helpers of one study folder."""

    def __init__(
        self, root: Path, config: StudyConfig, device: str, progress: ProgressCallback | None
    ) -> None:
        self.root = root
        self.layout = StudyLayout.of(root, config.to_data())
        self.config = config
        self.device = device
        self.progress = progress
        self.names = (config.models.vendor, config.models.finetuned)
        self._done_before = 0.0
        self._step = ""

    # ------------------------------------------------------------------ paths
    def from_contours(self, name: str) -> bool:
        return name in self.config.models.from_contours

    @property
    def data(self) -> Path:
        return self.layout.data

    def model(self, name: str) -> Path:
        return self.layout.model(name, vendor=name == self.config.models.vendor)

    def marker(self, step: str) -> Path:
        return self.layout.marker(step)

    # ------------------------------------------------------------------ progress
    def report_progress(self, within: float, message: str = "") -> None:
        if self.progress is None:
            return
        share = STEPS[self._step]
        fraction = self._done_before + share * min(max(within, 0.0), 1.0)
        self.progress(StudyProgress(self._step, min(fraction, 1.0), message))

    def counter(self, what: str) -> Callable[[int, int, str], None]:
        def update(done: int, total: int, label: str) -> None:
            self.report_progress(done / total if total else 0.0, f"{what} {label}".strip())

        return update


def _write_config(root: Path, config: StudyConfig) -> None:
    header = (
        f"# Resolved configuration of this study, written by dlas {__version__}.\n"
        f"# config_sha256: {config.sha256()}\n"
    )
    body = yaml.safe_dump(config.to_data(), sort_keys=False, allow_unicode=True)
    write_text(StudyLayout(root).config, header + body)


def check_study_folder(
    out: str | os.PathLike[str], config: StudyConfig, *, resume: bool = False
) -> None:
    """Refuse a folder that :func:`run_study` could not start (or resume) in.

    Raises
    ------
    StudyError
        The folder holds another study (without ``resume``), a study begun with another
        configuration, or unrelated files (a ``study.log`` alone, left by the CLI or by a start
        that failed, is not a study and is appended to).
    """
    root = Path(out)
    existing = StudyLayout(root).config
    if existing.exists():
        if not resume:
            raise StudyError(
                "study folder already holds a study",
                where=str(root),
                expected="a new or empty folder",
                found="study.yaml from an earlier run",
                fix="add --resume to continue it, or choose another --out folder",
            )
        text = existing.read_text(encoding="utf-8")
        line = next((x for x in text.splitlines() if x.startswith("# config_sha256: ")), "")
        recorded = line.split(": ", 1)[1].strip() if line else ""
        if recorded != config.sha256():
            raise StudyError(
                "the configuration changed since the study started",
                where=str(existing),
                expected=f"config_sha256 {recorded[:12] or '?'} (the one the study began with)",
                found=f"config_sha256 {config.sha256()[:12]}",
                fix="resume with the same configuration and preset, or start a new --out folder",
            )
    elif root.exists() and any(
        not p.name.startswith(".") and p.name != StudyLayout(root).log.name for p in root.iterdir()
    ):
        raise StudyError(
            "study folder is not empty",
            where=str(root),
            expected="a new or empty folder",
            found=f"{sum(1 for _ in root.iterdir())} entries and no study.yaml",
            fix="choose a new --out folder",
        )


def run_study(
    config: StudyConfig,
    out: str | os.PathLike[str],
    *,
    device: str = "auto",
    resume: bool = False,
    progress: ProgressCallback | None = None,
) -> StudyResult:
    """Run (or resume) every step of a study into ``out``.

    Parameters
    ----------
    config
        The study (see :mod:`dlas.study.config`).
    out
        The study folder: new or empty, or an interrupted study with ``resume``.
    device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` for training and inference.
    resume
        Continue a study begun with the same configuration; completed steps are skipped.
    progress
        Called with :class:`StudyProgress` as the study advances.

    Raises
    ------
    StudyError
        The folder holds another study or is not empty; the configuration does not fit the
        data (e.g. a cohort it names does not exist).
    dlas.errors.DlasError
        Any step's own errors (bad DICOM, unusable model, ...), with their one-line message.
    """
    root = Path(out)
    check_study_folder(root, config, resume=resume)
    root.mkdir(parents=True, exist_ok=True)
    _write_config(root, config)
    study = _Study(root, config, device, progress)
    result = StudyResult(root=root, config_sha256=config.sha256())
    runners: dict[str, Callable[[_Study], dict[str, Any]]] = {
        "data": _step_data,
        "pretrain": _step_pretrain,
        "finetune": _step_finetune,
        "predict": _step_predict,
        "evaluate": _step_evaluate,
        "compare": _step_compare,
        "report": _step_report,
    }
    for step, share in STEPS.items():
        study._step = step
        marker = study.marker(step)
        if marker.exists():
            result.steps[step] = "skipped"
            log.info("step %s already complete; skipped", step)
        else:
            study.report_progress(0.0, "starting")
            start = time.perf_counter()
            details = runners[step](study)
            seconds = time.perf_counter() - start
            write_json(
                marker,
                {
                    "step": step,
                    "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "seconds": round(seconds, 2),
                    "config_sha256": config.sha256(),
                    "software": {"name": "dlas", "version": __version__},
                    **details,
                },
            )
            result.steps[step] = "ran"
            result.seconds[step] = seconds
            log.info("step %s finished in %.1f s", step, seconds)
        study._done_before += share
        study.report_progress(0.0, "done")
    return result


# ---------------------------------------------------------------------------------- steps


def _structure_set(study: _Study) -> Any:
    from dlas.structures import load_structure_set

    return load_structure_set(study.config.structures)


def _step_data(study: _Study) -> dict[str, Any]:
    from dlas.dataset import CaseDataset

    source = study.config.data
    if isinstance(source, DatasetSource):
        dataset = CaseDataset.open(source.path)
        _check_cohorts(study, dataset)
        return {"dataset": str(source.path), "cases": len(dataset)}
    if isinstance(source, PhantomSource):
        # A data step interrupted half-way is simply redone: it is cheap and leaves no trace.
        for partial in (study.layout.source, study.layout.data):
            if partial.exists():
                shutil.rmtree(partial)
        if source.format == "nifti":
            return _phantom_nifti(study, source)
        report = _phantom_dicom(study, source)
        details = {
            "source": "phantom",
            "format": "dicom",
            "phantom_sha256": _phantom(source).sha256(),
        }
    else:
        assert isinstance(source, DicomSource)
        report = _import_dicom(study, source)
        details = {"source": "dicom"}
    return {**details, **_check_import(study, report)}


def _phantom(source: PhantomSource) -> PhantomConfig:
    """The replica's configuration: the preset with the study's seed, counts and slices."""
    from dlas.phantom.config import preset

    phantom = preset(source.preset).with_seed(source.seed)
    if source.counts:
        phantom = phantom.with_counts(source.counts)
    if source.slice_mm is not None:
        phantom = phantom.model_copy(
            update={"grid": phantom.grid.model_copy(update={"slice_mm": source.slice_mm})}
        )
    return phantom


def _phantom_nifti(study: _Study, source: PhantomSource) -> dict[str, Any]:
    """The replica generated straight into a data set (no DICOM round trip)."""
    from dlas.dataset import CaseDataset
    from dlas.phantom import generate

    phantom = _phantom(source)
    study.report_progress(0.0, "generating the synthetic cohorts")
    generate(
        study.data,
        phantom,
        fmt="nifti",
        workers=os.cpu_count() or 1,
        progress=study.counter("generating"),
    )
    dataset = CaseDataset.open(study.data)
    _check_cohorts(study, dataset)
    return {
        "source": "phantom",
        "format": "nifti",
        "cases": len(dataset),
        "phantom_sha256": phantom.sha256(),
    }


def _phantom_dicom(study: _Study, source: PhantomSource) -> ImportReport:
    """The replica written as DICOM, then imported like a department's export."""
    from dlas.dataset import ImportOptions, import_source
    from dlas.dataset.deid import KEY_FILE
    from dlas.phantom import generate

    phantom = _phantom(source)
    generate(
        study.layout.source,
        phantom,
        fmt="dicom",
        workers=os.cpu_count() or 1,
        progress=lambda d, t, label: study.report_progress(
            0.6 * d / max(t, 1), f"generating {label}"
        ),
    )
    # Synthetic patients identify nobody: the pseudonym key is derived from the replica's
    # configuration, so that case ids, and with them the order in which training meets the
    # cases, are the same in every run (a random key gave every run other numbers).
    key = canonical_sha256({"dlas-replica-pseudonym-key": phantom.sha256()})
    write_text(study.data / KEY_FILE, key + "\n")
    options = ImportOptions(
        structure_set=_structure_set(study),
        cohort_by=f"csv:{study.layout.source / 'cohorts.csv'}",
    )
    return import_source(
        study.layout.source,
        study.data,
        options,
        progress=lambda d, t, label: study.report_progress(
            0.6 + 0.4 * d / max(t, 1), f"importing {label}"
        ),
    )


def _import_dicom(study: _Study, source: DicomSource) -> ImportReport:
    from dlas.dataset import ImportOptions, import_source

    options = ImportOptions(
        structure_set=_structure_set(study),
        cohort_by=source.cohort_by,
        keep_ids=source.keep_ids,
        keep_unmapped=source.keep_unmapped,
        key_file=str(source.pseudonym_key) if source.pseudonym_key else None,
        contour_sets=source.contour_set_rules(),
    )
    return import_source(source.path, study.data, options, progress=study.counter("importing"))


def _check_import(study: _Study, report: ImportReport) -> dict[str, Any]:
    """Warn about refused cases, refuse an import that brought nothing; the data set's size."""
    from dlas.dataset import CaseDataset

    if report.skipped:
        log.warning(
            "%d case(s) were not imported; see %s",
            len(report.skipped),
            study.data / "import-report.json",
        )
    if not any(i.status in ("imported", "exists") for i in report.items):
        first = report.skipped[0].reason if report.skipped else "no case found"
        raise DatasetError(
            "no case could be imported",
            where=str(report.source),
            expected="at least one readable CT series",
            found=f"{len(report.skipped)} refused; the first: {first}",
            fix=f"see {study.data / 'import-report.json'} for every reason",
        )
    dataset = CaseDataset.open(study.data)
    _check_cohorts(study, dataset)
    return {"cases": len(dataset), "skipped": len(report.skipped)}


def _check_cohorts(study: _Study, dataset: Any) -> None:
    roles = study.config.cohorts
    trains = study.config.models.trains
    wanted = [roles.finetune, *roles.evaluate] if trains else list(roles.evaluate)
    if trains and study.config.pretrained_model is None and roles.pretrain is not None:
        wanted.append(roles.pretrain)
    sets = dataset.contour_sets()
    named = [*study.config.models.from_contours, *study.config.observers]
    absent = [n for n in named if n not in sets]
    if absent:
        raise StudyError(
            "contour set not found in the data",
            where=str(dataset.root),
            expected="contour set(s) " + ", ".join(named),
            found="none named "
            + ", ".join(absent)
            + "; the data set has "
            + (", ".join(f"{k} ({v} cases)" for k, v in sets.items()) or "no contour set"),
            fix="name the sets in data.contour_sets (or import them with `dlas import "
            "--contour-set`) under the models' names",
        )
    cohorts = dataset.cohorts()
    missing = [c for c in wanted if not cohorts.get(c)]
    if missing:
        raise StudyError(
            "cohort not found in the data",
            where=str(dataset.root),
            expected="cases in cohort(s) " + ", ".join(wanted),
            found="no case in "
            + ", ".join(missing)
            + "; the data set has "
            + (", ".join(f"{k} ({len(v)})" for k, v in cohorts.items()) or "no cases"),
            fix="set data.cohort_by (or cohorts.*) so that every named cohort has patients",
        )


def _train_progress(study: _Study) -> Callable[[Any], None]:
    def update(event: Any) -> None:
        if event.kind in ("epoch", "step") and event.folds and event.epochs:
            steps = max(event.steps, 1)
            within_epoch = event.step / steps if event.kind == "step" else 1.0
            # fold and epoch count from 1
            done = ((event.fold - 1) * event.epochs + (event.epoch - 1) + within_epoch) / (
                event.folds * event.epochs
            )
            note = f"fold {event.fold}/{event.folds}, epoch {event.epoch}/{event.epochs}"
            if event.kind == "epoch":
                log.info("%s: %s", study._step, event.summary())
                if event.val_loss is not None:
                    note += f", val loss {event.val_loss:.3f}"
            study.report_progress(done, note)
        elif event.kind == "prepare" and event.steps:
            study.report_progress(0.0, f"preparing case {event.step}/{event.steps}")
        elif event.kind == "plan":
            log.info("%s: %s", study._step, event.message)

    return update


def _step_pretrain(study: _Study) -> dict[str, Any]:
    from dlas.training import train

    config = study.config
    if not config.models.trains:
        return {"skipped": "both models are given as contour sets; nothing is trained"}
    if config.pretrained_model is not None:
        sha = _check_given_model(study, config.pretrained_model)
        return {"pretrained_model": str(config.pretrained_model), "model_sha256": sha}
    assert config.cohorts.pretrain is not None
    target = study.model(config.models.vendor)
    result = train(
        study.data,
        target,
        config=config.recipe("pretrain"),
        cohorts=[config.cohorts.pretrain],
        device=study.device,
        resume=(target / "run.json").exists(),
        name=config.models.vendor,
        progress=_train_progress(study),
    )
    return {"model": str(target.relative_to(study.root)), "model_sha256": result.model_sha256}


def _check_given_model(study: _Study, model: Path) -> str:
    """The given vendor model's hash, once it is known to contour every structure the study
    evaluates: a missing one would fail the evaluation only after fine-tuning and prediction.

    Raises
    ------
    StudyError
        A structure of the data set's structure set that the model does not contour.
    """
    from dlas.dataset import CaseDataset
    from dlas.model.checkpoint import model_format, read_model_info

    if model_format(model) == "dlas-nnunet":
        from dlas.engines.nnunet.model import read_nnunet_model

        info = read_nnunet_model(model)
        sha, names = info.model_sha256, list(info.structures)
    else:
        dpn = read_model_info(model)
        sha, names = dpn.model_sha256, list(dpn.structure_set.names)
    wanted = CaseDataset.open(study.data).structure_set.names
    missing = [n for n in wanted if n not in names]
    if missing and not study.from_contours(study.config.models.vendor):
        raise StudyError(
            "the vendor model does not contour every structure of the study",
            where=f"pretrained_model {model}",
            expected="a model with " + ", ".join(wanted),
            found=f"no {', '.join(missing)} (the model has {', '.join(names) or 'none'})",
            fix="give a vendor model trained on this structure set, or name a structure set "
            "with only the structures it contours (structures:)",
        )
    return sha


def _step_finetune(study: _Study) -> dict[str, Any]:
    from dlas.training import train

    config = study.config
    if not config.models.trains:
        return {"contour_set": config.models.finetuned}
    target = study.model(config.models.finetuned)
    result = train(
        study.data,
        target,
        config=config.recipe("finetune"),
        pretrained=study.model(config.models.vendor),
        cohorts=[config.cohorts.finetune],
        device=study.device,
        resume=(target / "run.json").exists(),
        name=config.models.finetuned,
        progress=_train_progress(study),
    )
    return {
        "model": str(target.relative_to(study.root)),
        "model_sha256": result.model_sha256,
        "selected_fold": result.selected_fold,
    }


def _step_predict(study: _Study) -> dict[str, Any]:
    from dlas.prediction import predict

    config = study.config
    cohorts = list(config.cohorts.evaluate)
    details: dict[str, Any] = {}
    for n, name in enumerate(study.names):
        if study.from_contours(name):
            details[name] = {"contour_set": name}
            continue

        def update(done: int, total: int, label: str, _n: int = n, _name: str = name) -> None:
            share = (_n + (done / total if total else 0.0)) / 2
            study.report_progress(0.9 * share, f"{_name}: {label}")

        report = predict(
            study.model(name),
            study.data,
            study.layout.predictions(name),
            formats="nifti",
            device=study.device,
            tta=config.prediction.tta,
            batch_size=config.prediction.batch_size,
            cohorts=cohorts,
            progress=update,
        )
        if report.failed:
            first = report.failed[0]
            raise StudyError(
                "prediction failed",
                where=f"model {name}",
                expected="a prediction for every evaluation case",
                found=f"{len(report.failed)} failed; the first: {first.reason}",
                fix="see predictions.json in the model's prediction folder",
            )
        details[name] = {"cases": len(report.items), "model_sha256": report.model_sha256}
    details["rtstruct_sample"] = _rtstruct_sample(study)
    return details


def _rtstruct_sample(study: _Study) -> list[str]:
    """RTSTRUCTs of the fine-tuned model for a few DICOM cases of each evaluation cohort: the
    deliverable a planning system loads, checked on the study's own data."""
    from dlas.prediction import predict

    per_cohort = study.config.prediction.rtstruct_sample
    if not study.config.models.trains:
        return []
    source = study.layout.source if isinstance(study.config.data, PhantomSource) else None
    if isinstance(study.config.data, DicomSource):
        source = study.config.data.path
    if per_cohort == 0 or source is None or not source.is_dir():
        return []
    folders = _dicom_case_folders(study, source, per_cohort)
    written = []
    out = study.layout.rtstruct_sample
    for folder in folders:
        report = predict(
            study.model(study.config.models.finetuned),
            folder,
            out,
            formats="rtstruct",
            device=study.device,
        )
        written += [f for item in report.items for f in item.files]
    return written


def _dicom_case_folders(study: _Study, source: Path, per_cohort: int) -> list[Path]:
    """The DICOM series of the first ``per_cohort`` cases of each evaluation cohort.

    The source is scanned again and each series' case id recomputed with the data set's
    pseudonym key, so the study folder never stores paths that might name a patient.
    """
    from dlas.dataset import CaseDataset, Pseudonymizer, series_case_ids
    from dlas.io import scan_dicom

    dataset = CaseDataset.open(study.data)
    keep_ids = isinstance(study.config.data, DicomSource) and study.config.data.keep_ids
    key_file = (
        str(study.config.data.pseudonym_key)
        if isinstance(study.config.data, DicomSource) and study.config.data.pseudonym_key
        else None
    )
    scan = scan_dicom(source)
    ids = series_case_ids(
        scan, Pseudonymizer.for_dataset(dataset.root, key_file), keep_ids=keep_ids
    )
    by_case = {case_id: uid for uid, case_id in ids.items()}
    folders = []
    for cohort in study.config.cohorts.evaluate:
        for case_id in dataset.case_ids(cohort)[:per_cohort]:
            uid = by_case.get(case_id)
            if uid is not None:
                files = scan.ct_series[uid]
                folders.append(Path(os.path.commonpath([str(f.path.parent) for f in files])))
    return folders


def _step_evaluate(study: _Study) -> dict[str, Any]:
    from dlas.dataset import CaseDataset
    from dlas.evaluation import MetricOptions, PredictionSource, evaluate

    spec = study.config.metrics
    options = MetricOptions(
        hd95=spec.hd95,
        specificity_domain=spec.specificity_domain,
        specificity_margin_mm=spec.specificity_margin_mm,
        tolerance_mm=spec.tolerance_mm,
    )
    dataset = CaseDataset.open(study.data)
    result = evaluate(
        dataset,
        [
            PredictionSource(name, dataset.root, contour_set=name)
            if study.from_contours(name)
            else PredictionSource(name, study.layout.predictions(name))
            for name in study.names
        ]
        + [PredictionSource(o, dataset.root, contour_set=o) for o in study.config.observers],
        observers=list(study.config.observers),
        options=options,
        cohorts=list(study.config.cohorts.evaluate),
        workers=min(2, os.cpu_count() or 1),
        progress=study.counter("evaluating"),
    )
    result.write(study.layout.metrics)
    return {"rows": len(result.table)}


def _step_compare(study: _Study) -> dict[str, Any]:
    from dlas.evaluation import compare, interobserver, write_comparison

    spec = study.config.statistics
    table = compare(
        study.layout.metrics,
        study.config.models.vendor,
        study.config.models.finetuned,
        correction=spec.correction,
        alpha=spec.alpha,
        bootstrap=spec.bootstrap,
        seed=spec.seed,
        zero_method=spec.zero_method,
    )
    agreement = None
    if study.config.observers:
        agreement = interobserver(
            study.layout.metrics,
            list(study.config.observers),
            list(study.names),
            alpha=spec.alpha,
            zero_method=spec.zero_method,
        )
    write_comparison(
        table,
        study.layout.comparison,
        source=study.layout.metrics,
        interobserver=agreement,
    )
    return {"rows": len(table), "interobserver_rows": 0 if agreement is None else len(agreement)}


def _step_report(study: _Study) -> dict[str, Any]:
    from dlas.report import ReportOptions, build_report, load_study

    spec = study.config.report
    inputs = load_study(study.root)
    options = ReportOptions(
        palette=spec.palette,
        viewer=spec.viewer,
        title=spec.title or f"{study.config.name}: {study.names[1]} vs {study.names[0]}",
    )
    build_report(
        inputs, study.layout.report, options, overwrite=True, progress=study.counter("report")
    )
    return {"report": "report/index.html"}
