"""`dlas evaluate`: every structure of every case, for every prediction folder, into one table.

Inputs
------
* The reference: a dlas data set (``DATASET/cases/<case_id>/structures/<Name>.nii.gz``), or
  another of its contour sets (``reference_set``: e.g. a second clinician's); the cohort of each
  case comes from its record in ``dataset.json``.
* One or more predictions: ``NAME=DIR``, where ``DIR/<case_id>/structures/<Name>.nii.gz`` holds
  the prediction of structure ``Name`` for that case (the layout ``dlas predict`` writes), or a
  bare ``NAME``: the data set's contour set of that name (a vendor model's RTSTRUCTs or SEGs
  brought in by `dlas import --contour-set`), or a folder of label maps ``DIR/<case_id>.nii.gz``
  (one integer label per voxel, as nnU-Net, TotalSegmentator and MONAI write) with its label
  table (``labels``: TotalSegmentator ``classes.json``, nnU-Net ``dataset.json`` or a CSV;
  :func:`dlas.io.read_label_table`), whose names are matched to the structure set like ROI
  names.

Rules (refuse rather than guess)
--------------------------------
* Every structure a selected case has in the reference must have a prediction file in every
  prediction folder; a missing file is an error. An existing but empty mask is an empty
  prediction: it is evaluated and flagged ``prediction_empty``.
* A prediction on another grid than its reference is an error, unless ``resample=True``: it is
  then resampled onto the reference grid with nearest-neighbour interpolation and flagged
  ``resampled``.
* Structures a prediction has but the reference lacks are not evaluated (there is no ground
  truth); structures the reference lacks for a case get no row.

Output
------
A long table, one row per (case, model, structure), with the columns of :data:`COLUMNS`, and
metadata for the sidecar JSON: the metric definitions and options, software versions, and
SHA-256 hashes of every mask file read. In the CSV, undefined values are written ``nan`` and
infinite distances ``inf`` (``-inf`` never occurs); ``flags`` holds the special cases of the
row separated by ``;`` (empty when none). ``qa`` holds the prediction QA flag codes of the row
(:mod:`dlas.prediction.qa`), read from ``DIR/<case_id>/qa.json`` when ``dlas predict`` wrote one:
the structure's own codes followed by the input CT's (``input-domain``, which concerns every
structure of the case), separated by ``;``; empty when nothing was flagged or no ``qa.json``
exists.

Cases are evaluated in parallel worker processes (``workers``); each worker holds one reference
and one prediction mask at a time, so memory stays bounded whatever the cohort size, and the
result does not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dlas import __version__
from dlas.dataset import CaseDataset, CaseRecord
from dlas.dataset.layout import mask_file
from dlas.errors import DlasError, EvaluationError
from dlas.evaluation.metrics import MetricOptions, compute_metrics
from dlas.evaluation.results import COLUMNS
from dlas.io.atomic import atomic_path, write_json
from dlas.io.nifti import read_mask, read_nifti
from dlas.io.volume import BODY_DEFINITION, Volume, body_mask

if TYPE_CHECKING:
    import pandas as pd

    from dlas.io.labelmap import LabelMapData

__all__ = [
    "BODY_DEFINITION",
    "METRICS_SCHEMA_VERSION",
    "EvaluationResult",
    "PredictionSource",
    "evaluate",
    "parse_prediction",
    "read_qa",
]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]

METRICS_SCHEMA_VERSION = 1
_CSV_CONVENTIONS = (
    "one row per case_id, model and structure; distances in mm, volumes in cm³, volume error "
    "in %; 'nan' = undefined (e.g. both masks empty), 'inf' = distance to a structure missing "
    "in one mask; flags separated by ';', empty when none; qa: prediction QA flag codes from "
    "the prediction's qa.json, separated by ';', empty when none"
)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class PredictionSource:
    """Named predictions: a folder ``folder/<case_id>/structures/<Name>.nii.gz``, or with
    ``contour_set`` the contour set of that name in the data set at ``folder``."""

    name: str
    folder: Path
    contour_set: str | None = None
    #: label table of a folder of label maps ``folder/<case_id>.nii.gz`` (None: mask folders)
    labels: Path | None = None

    def case_folder(self, case_id: str) -> Path:
        """The folder whose ``structures/`` holds the predictions of a case (for label maps:
        the folder of the label maps)."""
        if self.contour_set is not None:
            return self.folder / "cases" / case_id / "sets" / self.contour_set
        if self.labels is not None:
            return self.folder
        return self.folder / case_id

    def label_map_path(self, case_id: str) -> Path:
        """The label map of a case (``<case_id>.nii.gz``, or ``.nii`` when only that exists)."""
        return _label_map_file(self.folder, case_id)

    def mask_path(self, case_id: str, structure: str) -> Path:
        """Where the prediction of a structure of a case must be."""
        return mask_file(self.case_folder(case_id), structure)

    def describe(self) -> str:
        """How the source was given (for messages)."""
        if self.contour_set is not None:
            return f"contour set {self.contour_set} of {self.folder}"
        if self.labels is not None:
            return f"{self.name}={self.folder} (label maps, table {self.labels.name})"
        return f"{self.name}={self.folder}"


def _label_map_file(folder: Path, case_id: str) -> Path:
    plain = folder / f"{case_id}.nii"
    return plain if plain.is_file() else folder / f"{case_id}.nii.gz"


def parse_prediction(spec: str, dataset: CaseDataset | None = None) -> PredictionSource:
    """Parse ``NAME=DIR`` or, with a data set, a bare ``NAME`` of one of its contour sets (the
    ``--prediction`` option).

    Raises
    ------
    EvaluationError
        If the name is empty or has characters other than letters, digits and ``_ . + -``; a
        bare name without a data set, or naming no contour set of it.
    """
    name, sep, folder = spec.partition("=")
    name = name.strip()
    if not sep and dataset is not None and _MODEL_NAME.match(name):
        sets = dataset.contour_sets()
        if name not in sets:
            raise EvaluationError(
                "no such contour set in the data set",
                where=f"--prediction {spec}",
                expected="NAME=DIR, or the name of a contour set of the data set: "
                + (", ".join(sets) or "(it has none)"),
                found=repr(name),
                fix="give the folder as NAME=DIR, or import the set with `dlas import "
                "--contour-set NAME=RULE`",
            )
        return PredictionSource(name, dataset.root, contour_set=name)
    if not sep or not folder.strip() or not _MODEL_NAME.match(name):
        raise EvaluationError(
            "cannot read the prediction option",
            where=f"--prediction {spec}",
            expected="NAME=DIR (or a contour set's NAME) with NAME made of letters, digits, "
            "'_', '.', '+', '-'",
            found=repr(spec),
            fix="write e.g. --prediction VPM=predictions/vpm",
        )
    return PredictionSource(name, Path(folder.strip()))


@dataclass
class EvaluationResult:
    """The metrics table and what is needed to reproduce it."""

    table: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)

    def write(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``path`` (CSV) and its sidecar ``path`` with suffix ``.json``, atomically.

        Returns the two paths. The sidecar is written first, so a CSV never exists without it.
        """
        csv_path = Path(path)
        if csv_path.suffix.lower() != ".csv":
            raise EvaluationError(
                "metrics output must be a .csv file",
                where=str(csv_path),
                expected="a path ending in .csv (the sidecar gets .json)",
                found=f"suffix {csv_path.suffix or '(none)'}",
                fix="name the output e.g. metrics.csv",
            )
        sidecar = csv_path.with_suffix(".json")
        write_json(sidecar, {**self.metadata, "metrics_csv": csv_path.name})
        with atomic_path(csv_path) as tmp:
            self.table.to_csv(tmp, index=False, na_rep="nan", lineterminator="\n")
        return csv_path, sidecar


# ---------------------------------------------------------------------------------- evaluate
def evaluate(
    reference: str | os.PathLike[str] | CaseDataset,
    predictions: Sequence[PredictionSource] | Mapping[str, str | os.PathLike[str]],
    *,
    options: MetricOptions | None = None,
    cohorts: Sequence[str] | None = None,
    cases: Sequence[str] | None = None,
    structures: Sequence[str] | None = None,
    resample: bool = False,
    workers: int = 1,
    progress: ProgressCallback | None = None,
    reference_set: str | None = None,
    observers: Sequence[str] = (),
) -> EvaluationResult:
    """Evaluate prediction folders or contour sets against a data set's reference structures.

    Parameters
    ----------
    reference
        The data set (folder or opened :class:`~dlas.dataset.CaseDataset`).
    predictions
        Named prediction folders (:class:`PredictionSource` or a mapping name → folder).
    options
        Metric definitions (default :class:`~dlas.evaluation.MetricOptions`).
    cohorts, cases, structures
        Restrict the evaluation to these cohorts, case ids and structure names (default all).
    resample
        Resample predictions on another grid onto the reference grid (nearest neighbour,
        flagged ``resampled``) instead of refusing them.
    workers
        Worker processes evaluating cases in parallel (1: in this process).
    progress
        ``progress(done, total, case_id)`` after each case.
    reference_set
        Measure against this contour set of the data set instead of its reference structures
        (e.g. a second clinician's set); cases without it are left out.
    observers
        Names of the predictions that are other clinicians' contours (e.g. a second
        observer's contour set), not models: they are evaluated like the models and recorded
        in the sidecar as ``observers``, so that `dlas compare` reports the inter-observer
        agreement next to the models'.

    Returns
    -------
    EvaluationResult
        ``table`` with the columns of :data:`COLUMNS` (rows ordered by case, model, structure
        in the structure set's order) and ``metadata`` for the sidecar JSON.

    Raises
    ------
    EvaluationError
        If a prediction file is missing, a grid differs (without ``resample``), a selection
        names an unknown cohort, case or structure, or nothing is left to evaluate.
    """
    import pandas as pd

    opts = options if options is not None else MetricOptions()
    dataset = reference if isinstance(reference, CaseDataset) else CaseDataset.open(reference)
    sources = _sources(predictions, dataset)
    ref_set = _reference_set(dataset, reference_set, sources)
    _check_observers(observers, sources)
    if workers < 1:
        raise EvaluationError(
            "invalid number of workers",
            where="--workers",
            expected="1 or more",
            found=str(workers),
            fix="pass --workers 1 to evaluate in this process",
        )
    records = _select_cases(dataset, cohorts, cases)
    wanted = _select_structures(dataset, structures)
    tasks = _case_tasks(dataset, records, wanted, sources, ref_set, opts, resample)
    tables = {s.name: _label_ids(s, dataset) for s in sources if s.labels is not None}
    tasks = [
        replace(t, label_maps=tuple((n, tuple(sorted(ids.items()))) for n, ids in tables.items()))
        for t in tasks
        if t.structures
    ]
    if not tasks:
        raise EvaluationError(
            "nothing to evaluate",
            where=str(dataset.root),
            expected="at least one selected case with a selected reference structure",
            found=f"{len(records)} case(s), structures {', '.join(wanted) or '(none)'}",
            fix="check --cohort, --case and --structure",
        )
    _check_prediction_files(tasks, sources, tables)
    results = _run(tasks, workers, progress)
    rows = [row for result in results for row in result.rows]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    metadata = _metadata(dataset, sources, tasks, results, opts, resample, table, ref_set)
    metadata["observers"] = list(dict.fromkeys(observers))
    return EvaluationResult(table=table, metadata=metadata)


def _check_observers(observers: Sequence[str], sources: Sequence[PredictionSource]) -> None:
    """Refuse an observer that is not among the predictions."""
    unknown = [o for o in observers if o not in {s.name for s in sources}]
    if unknown:
        raise EvaluationError(
            "observer is not among the predictions",
            where="--observer " + ", ".join(unknown),
            expected="names of given predictions: " + ", ".join(s.name for s in sources),
            found=", ".join(unknown),
            fix="give the observer's contours as a prediction too (a contour set NAME or NAME=DIR)",
        )


def _case_tasks(
    dataset: CaseDataset,
    records: Sequence[CaseRecord],
    wanted: Sequence[str],
    sources: Sequence[PredictionSource],
    ref_set: str | None,
    opts: MetricOptions,
    resample: bool,
) -> list[_CaseTask]:
    """One task per selected case: its reference folder and the selected structures it has
    (possibly none), and the prediction folders."""
    return [
        _CaseTask(
            case_id=record.case_id,
            cohort=record.cohort,
            case_dir=str(dataset.set_dir(record.case_id, ref_set)),
            structures=tuple(
                s for s in wanted if s in dataset.set_structures(record.case_id, ref_set)
            ),
            predictions=tuple((s.name, str(s.case_folder(record.case_id))) for s in sources),
            options=opts,
            resample=resample,
            ct_path=str(dataset.case_dir(record.case_id) / "ct.nii.gz"),
        )
        for record in records
    ]


# ---------------------------------------------------------------------------------- selection
def _sources(
    predictions: Sequence[PredictionSource] | Mapping[str, str | os.PathLike[str]],
    dataset: CaseDataset,
) -> list[PredictionSource]:
    if isinstance(predictions, Mapping):
        sources = [parse_prediction(f"{k}={os.fspath(v)}") for k, v in predictions.items()]
    else:
        sources = list(predictions)
    if not sources:
        raise EvaluationError(
            "no prediction given",
            where="--prediction",
            expected="at least one NAME=DIR",
            found="none",
            fix="add e.g. --prediction VPM=predictions/vpm",
        )
    names = Counter(s.name for s in sources)
    doubled = [n for n, c in names.items() if c > 1]
    if doubled:
        raise EvaluationError(
            "prediction name given twice",
            where="--prediction",
            expected="a distinct NAME for each folder",
            found=", ".join(doubled),
            fix="give every prediction folder its own name",
        )
    for source in sources:
        if source.contour_set is not None and source.labels is not None:
            raise EvaluationError(
                "a label table for a contour set",
                where=source.describe(),
                expected="--labels only for a folder of label maps (NAME=DIR)",
                found=f"--labels {source.name}={source.labels}",
                fix="drop --labels for the contour set",
            )
        if source.contour_set is not None:
            if source.folder.resolve() != dataset.root.resolve():
                raise EvaluationError(
                    "contour set of another data set",
                    where=source.describe(),
                    expected=f"a contour set of the evaluated data set {dataset.root}",
                    found=f"one of {source.folder}",
                    fix="import the contour set into the evaluated data set",
                )
            continue
        if not source.folder.is_dir():
            raise EvaluationError(
                "prediction folder not found",
                where=f"{source.name}={source.folder}",
                expected="a folder of <case_id>.nii.gz label maps"
                if source.labels is not None
                else "a folder of <case_id>/structures/<Name>.nii.gz",
                found="no such folder",
                fix="check the path (it is what `dlas predict --out` wrote)",
            )
    return sources


def _label_ids(source: PredictionSource, dataset: CaseDataset) -> dict[str, int]:
    """Canonical structure name → label id, from the source's label table (names matched like
    ROI names; names that match no structure are left out, and logged)."""
    from dlas.io.labelmap import read_label_table

    assert source.labels is not None
    ids: dict[str, int] = {}
    unmatched = []
    for label, name in read_label_table(source.labels).items():
        canonical = dataset.structure_set.match(name)
        if canonical is None:
            unmatched.append(name)
        elif canonical in ids:
            raise EvaluationError(
                "two labels map to one structure",
                where=str(source.labels),
                expected="at most one label per structure",
                found=f"labels {ids[canonical]} and {label} both map to {canonical}",
                fix="remove or rename one of them in the label table",
            )
        else:
            ids[canonical] = label
    if unmatched:
        log.info("%s: labels matching no structure, not evaluated: %s", source.name, unmatched)
    return ids


def _reference_set(
    dataset: CaseDataset, reference_set: str | None, sources: Sequence[PredictionSource]
) -> str | None:
    """The contour set to measure against (None: the reference structures), checked."""
    if reference_set is None or reference_set == dataset.reference_set:
        return None
    sets = dataset.contour_sets()
    if reference_set not in sets:
        raise EvaluationError(
            "no such contour set in the data set",
            where=f"--reference-set {reference_set}",
            expected=f"the reference set {dataset.reference_set} or one of: "
            + (", ".join(sets) or "(no other set)"),
            found=repr(reference_set),
            fix="list the contour sets with `dlas inspect DATASET`",
        )
    if any(s.contour_set == reference_set for s in sources):
        raise EvaluationError(
            "contour set is both reference and prediction",
            where=f"--reference-set {reference_set}",
            expected="a reference other than every prediction",
            found=f"{reference_set} given as both",
            fix="drop it from --prediction",
        )
    return reference_set


def _select_cases(
    dataset: CaseDataset, cohorts: Sequence[str] | None, cases: Sequence[str] | None
) -> list[CaseRecord]:
    records = dataset.cases
    if cohorts:
        dataset.check_cohorts(cohorts, error=EvaluationError)
        records = [r for r in records if r.cohort in cohorts]
    if cases:
        unknown = [c for c in cases if c not in dataset]
        if unknown:
            raise EvaluationError(
                "unknown case",
                where=str(dataset.root),
                expected="case ids listed in dataset.json",
                found=", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""),
                fix="list the cases with `dlas inspect DATASET`",
            )
        records = [r for r in records if r.case_id in cases]
    return records


def _select_structures(dataset: CaseDataset, structures: Sequence[str] | None) -> list[str]:
    names = list(dataset.structure_set.names)
    if not structures:
        return names
    unknown = [s for s in structures if s not in names]
    if unknown:
        raise EvaluationError(
            "unknown structure",
            where=str(dataset.root),
            expected=f"one of {', '.join(names)}",
            found=", ".join(unknown),
            fix="use the canonical names of the data set's structure set",
        )
    return [n for n in names if n in structures]


def _check_prediction_files(
    tasks: Sequence[_CaseTask],
    sources: Sequence[PredictionSource],
    tables: Mapping[str, Mapping[str, int]],
) -> None:
    """Refuse before any work when a prediction file is missing (a clear, complete message)."""
    for source in sources:
        if source.labels is not None:
            _check_label_maps(tasks, source, tables[source.name])
            continue
        missing: list[str] = []
        missing_cases: list[str] = []
        for task in tasks:
            if not source.case_folder(task.case_id).is_dir():
                missing_cases.append(task.case_id)
                continue
            missing.extend(
                f"{task.case_id}/{s}"
                for s in task.structures
                if not source.mask_path(task.case_id, s).is_file()
            )
        if missing_cases:
            raise EvaluationError(
                "prediction folder lacks cases"
                if source.contour_set is None
                else "contour set missing for some cases",
                where=source.describe(),
                expected="a folder <case_id>/structures/ for every selected case"
                if source.contour_set is None
                else "the set in every selected case",
                found=f"{len(missing_cases)} case(s) missing, e.g. " + ", ".join(missing_cases[:3]),
                fix="predict those cases, or restrict the evaluation with --cohort / --case",
            )
        if missing:
            raise EvaluationError(
                "prediction missing",
                where=source.describe(),
                expected="<case_id>/structures/<Name>.nii.gz for every reference structure "
                "(an empty mask file counts as an empty prediction)",
                found=f"{len(missing)} file(s) missing, e.g. " + ", ".join(missing[:3]),
                fix="write an empty mask for a structure the model did not find, or restrict "
                "the evaluation with --structure / --case",
            )


def _check_label_maps(
    tasks: Sequence[_CaseTask], source: PredictionSource, ids: Mapping[str, int]
) -> None:
    absent = [t.case_id for t in tasks if not source.label_map_path(t.case_id).is_file()]
    if absent:
        raise EvaluationError(
            "label map missing",
            where=source.describe(),
            expected="<case_id>.nii.gz for every selected case",
            found=f"{len(absent)} missing, e.g. " + ", ".join(absent[:3]),
            fix="predict those cases, or restrict the evaluation with --cohort / --case",
        )
    unlabelled = sorted({s for t in tasks for s in t.structures if s not in ids})
    if unlabelled:
        raise EvaluationError(
            "label table has no label for a reference structure",
            where=str(source.labels),
            expected="a label whose name maps to each evaluated structure",
            found="none for "
            + ", ".join(unlabelled)
            + (f"; the table maps {', '.join(ids)}" if ids else "; no name of it maps"),
            fix="add the structure's name as a synonym to the structure set, or restrict the "
            "evaluation with --structure",
        )


# ---------------------------------------------------------------------------------- workers
@dataclass(frozen=True)
class _CaseTask:
    case_id: str
    cohort: str
    case_dir: str
    structures: tuple[str, ...]
    #: (model name, the folder whose structures/ holds the case's predictions)
    predictions: tuple[tuple[str, str], ...]
    options: MetricOptions
    resample: bool
    ct_path: str
    #: (model name, ((structure, label id), ...)) of predictions given as label maps; their
    #: entry in ``predictions`` is the folder of the label maps
    label_maps: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()


@dataclass
class _CaseResult:
    case_id: str
    rows: list[dict[str, Any]]
    # (model or "", structure) → sha256 of the mask file; "" is the reference
    hashes: dict[tuple[str, str], str]


def _run(
    tasks: Sequence[_CaseTask], workers: int, progress: ProgressCallback | None
) -> list[_CaseResult]:
    """Evaluate the cases in this process, helped by ``workers - 1`` worker processes when
    ``workers > 1``; the results come in the order of ``tasks`` whatever the number of workers.

    A worker is a fresh interpreter ("spawn": no inherited threads or locks, on every platform
    alike) that takes about a second to start and import what a case needs. This process
    evaluates cases meanwhile, and a worker is handed cases only once it has started, so that
    no case waits behind a worker that is still starting, and many cases are spread over all
    the workers.
    """
    from collections import deque

    total = len(tasks)
    todo = deque(tasks)
    by_case: dict[str, _CaseResult] = {}

    def record(result: _CaseResult) -> None:
        by_case[result.case_id] = result
        if progress:
            progress(len(by_case), total, result.case_id)

    helpers = min(workers, total) - 1
    if helpers > 0:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

        pool = ProcessPoolExecutor(
            max_workers=helpers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
        )
        try:
            # A worker answers os.getpid once it has started.
            starting = {pool.submit(os.getpid) for _ in range(helpers)}
            running: set[Future[_CaseResult]] = set()
            ready = 0
            while todo or running:
                started = {f for f in starting if f.done()}
                for ping in started:
                    ping.result()  # a worker that failed to start raises here
                starting -= started
                ready += len(started)
                # Two cases per ready worker, one running and one waiting, so that a worker
                # does not idle while this process is busy with a case of its own; one near
                # the end, so that this process does not wait for cases queued behind others.
                while todo and len(running) < (2 if len(todo) > 2 * ready else 1) * ready:
                    running.add(pool.submit(_evaluate_case, todo.popleft()))
                if todo:
                    record(_evaluate_case(todo.popleft()))
                finished, running = wait(
                    running, timeout=0 if todo else None, return_when=FIRST_COMPLETED
                )
                for future in finished:
                    record(future.result())  # a case that failed in a worker raises here
        finally:
            # Waits for the cases running in workers (after an error), and for workers still
            # starting when this process has done every case (a set of a few small cases).
            # (Not waiting made Python 3.11 fail at exit now and then: a closed wake-up pipe.)
            pool.shutdown(wait=True, cancel_futures=True)
    while todo:
        record(_evaluate_case(todo.popleft()))
    return [by_case[t.case_id] for t in tasks]


def _start_worker() -> None:
    """Import in a new worker what a case needs (nibabel and the scipy parts the metrics use
    are imported on first use), so that its first case is not slower than the others."""
    import nibabel  # noqa: F401
    import scipy.ndimage
    import scipy.spatial  # noqa: F401


def _evaluate_case(task: _CaseTask) -> _CaseResult:
    """Evaluate one case: structure by structure, so only two masks are in memory at once."""
    case_dir = Path(task.case_dir)
    rows_by_model: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in task.predictions}
    hashes: dict[tuple[str, str], str] = {}
    body: npt.NDArray[np.bool_] | None = None
    tables = dict(task.label_maps)
    qa = {
        name: {} if name in tables else _qa_codes(Path(folder) / "qa.json")
        for name, folder in task.predictions
    }
    maps: dict[str, tuple[LabelMapData, str]] = {}
    if task.options.specificity_domain == "body":
        body = body_mask(read_nifti(task.ct_path))
    for structure in task.structures:
        ref_path = mask_file(case_dir, structure)
        digest = hashlib.sha256()  # of the bytes the mask is decoded from: one read per file
        reference = read_mask(ref_path, digest=digest)
        hashes[("", structure)] = digest.hexdigest()
        if body is not None and body.shape != reference.shape:
            raise EvaluationError(
                "reference mask grid differs from the CT grid",
                where=str(ref_path),
                expected=f"shape {body.shape} (z, y, x)",
                found=f"shape {reference.shape}",
                fix="re-import the case",
            )
        for name, folder in task.predictions:
            if name in tables:
                if name not in maps:  # one read of the case's label map, on the first structure
                    maps[name] = _read_label_map(
                        _label_map_file(Path(folder), task.case_id),
                        tables[name],
                        reference,
                        task.resample,
                    )
                label_map, sha256 = maps[name]
                prediction, resampled = label_map.mask(structure), label_map.resampled
            else:
                path = mask_file(Path(folder), structure)
                prediction, resampled, sha256 = _read_prediction(path, reference, task.resample)
            hashes[(name, structure)] = sha256
            metrics = compute_metrics(
                reference.array,
                prediction.array,
                reference.spacing,
                task.options,
                body_mask=body,
            )
            values = metrics.as_dict()
            flags = [f for f in str(values.pop("flags")).split(";") if f]
            if resampled:
                flags.append("resampled")
            rows_by_model[name].append(
                {
                    "case_id": task.case_id,
                    "cohort": task.cohort,
                    "model": name,
                    "structure": structure,
                    **values,
                    "flags": ";".join(flags),
                    "qa": ";".join(qa[name].get(structure, []) + qa[name].get("", [])),
                }
            )
            log.debug("%s %s %s: %s", task.case_id, name, structure, values)
    rows = [row for name, _ in task.predictions for row in rows_by_model[name]]
    return _CaseResult(task.case_id, rows, hashes)


def read_qa(
    path: str | os.PathLike[str], error: type[DlasError] = EvaluationError
) -> dict[str, Any]:
    """A prediction's ``qa.json`` (written by `dlas predict`, :mod:`dlas.prediction.qa`),
    checked for what its readers use: the codes per structure and of the input, and the flags
    (code and message) of the input and of every structure.

    Raises
    ------
    DlasError
        ``error`` (the caller's kind: evaluation or report) when the file is missing parts or
        is not JSON.
    """
    import json

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        flags = [f for s in [data["input"], *data["structures"].values()] for f in s["flags"]]
        codes = [
            *data["codes"]["input"],
            *(c for v in data["codes"]["structures"].values() for c in v),
        ]
        texts = [*codes, *(f["code"] for f in flags), *(f["message"] for f in flags)]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("a flag code or message is not text")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise error(
            "prediction QA file is malformed",
            where=str(p),
            expected="the qa.json written by `dlas predict` (codes, input and structure flags)",
            found=f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}",
            fix="predict the case again, or delete its qa.json to go on without QA",
        ) from None
    return dict(data)


def _qa_codes(path: Path) -> dict[str, list[str]]:
    """Prediction QA codes from a ``qa.json``: structure → codes, ``""`` → the input's codes;
    empty when there is no file (a prediction made before dlas wrote one)."""
    if not path.is_file():
        return {}
    codes = read_qa(path)["codes"]
    out = {str(k): [str(c) for c in v] for k, v in codes["structures"].items()}
    out[""] = [str(c) for c in codes["input"]]
    return out


def _read_label_map(
    path: Path, ids: tuple[tuple[str, int], ...], reference: Volume, resample: bool
) -> tuple[LabelMapData, str]:
    """A case's label map on the reference grid, and the SHA-256 of its file."""
    from dlas.io.labelmap import read_label_map

    digest = hashlib.sha256()  # of the bytes the map is decoded from: one read of the file
    data = read_label_map(
        path, {label: name for name, label in ids}, reference, resample=resample, digest=digest
    )
    return data, digest.hexdigest()


def _read_prediction(path: Path, reference: Volume, resample: bool) -> tuple[Volume, bool, str]:
    """The prediction mask on the reference grid, whether it was resampled onto it, and the
    SHA-256 of the file (from the same read)."""
    digest = hashlib.sha256()
    mask = read_mask(path, digest=digest)
    if mask.same_grid(reference):
        return mask, False, digest.hexdigest()
    if not resample:
        raise EvaluationError(
            "prediction grid differs from the reference grid",
            where=str(path),
            expected=reference.grid_description(),
            found=mask.grid_description(),
            fix="predict on the reference CT, or pass --resample to resample the prediction "
            "(nearest neighbour; the rows are flagged 'resampled')",
        )
    import SimpleITK as sitk

    # Nearest neighbour picks voxel values, so resampling the 0/1 mask gives the same inside
    # as resampling the file's values.
    resampled = sitk.Resample(
        mask.to_sitk(), reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0
    )
    array = sitk.GetArrayFromImage(resampled) != 0
    log.info("resampled %s onto the reference grid", path)
    return reference.with_array(array), True, digest.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------- metadata
def _combined_hash(results: Sequence[_CaseResult], model: str) -> str:
    digest = hashlib.sha256()
    for result in results:
        for (name, structure), value in sorted(result.hashes.items()):
            if name == model:
                digest.update(f"{result.case_id}\x00{structure}\x00{value}\n".encode())
    return digest.hexdigest()


def _metadata(
    dataset: CaseDataset,
    sources: Sequence[PredictionSource],
    tasks: Sequence[_CaseTask],
    results: Sequence[_CaseResult],
    options: MetricOptions,
    resample: bool,
    table: pd.DataFrame,
    reference_set: str | None,
) -> dict[str, Any]:
    import pandas as pd
    import scipy

    definitions = options.definitions()
    if options.specificity_domain == "body":
        definitions["body"] = BODY_DEFINITION
    flags: Counter[str] = Counter()
    for value in table["flags"]:
        flags.update(f for f in str(value).split(";") if f)
    qa: Counter[str] = Counter()
    for value in table["qa"]:
        qa.update(f for f in str(value).split(";") if f)
    cohorts: Counter[str] = Counter(t.cohort for t in tasks)
    index = dataset.root / "dataset.json"
    return {
        "kind": "dlas-metrics",
        "schema_version": METRICS_SCHEMA_VERSION,
        "software": {
            "dlas": __version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pandas": pd.__version__,
        },
        "columns": list(COLUMNS),
        "csv_conventions": _CSV_CONVENTIONS,
        "options": options.to_data(),
        "definitions": definitions,
        "resample": resample,
        "reference": {
            "dataset": dataset.name,
            "folder": dataset.root.name,
            "dataset_json_sha256": _sha256(index) if index.is_file() else None,
            "structure_set": dataset.structure_set.name,
            "structure_set_sha256": dataset.structure_set.sha256(),
            "contour_set": reference_set or dataset.reference_set,
            "masks_sha256": _combined_hash(results, ""),
        },
        "predictions": {
            s.name: {
                "folder": s.folder.name,
                **({"contour_set": s.contour_set} if s.contour_set else {}),
                **({"label_table": s.labels.name} if s.labels is not None else {}),
                "masks_sha256": _combined_hash(results, s.name),
            }
            for s in sources
        },
        "cases": {"count": len(tasks), "cohorts": dict(sorted(cohorts.items()))},
        "structures": sorted(
            {s for t in tasks for s in t.structures}, key=list(dataset.structure_set.names).index
        ),
        "rows": len(table),
        "flags": dict(sorted(flags.items())),
        "qa": dict(sorted(qa.items())),
    }
