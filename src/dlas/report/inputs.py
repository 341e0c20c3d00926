"""What a report is made from: the metrics table, the comparison, the data set and predictions.

A report can be built from a study folder (what ``dlas study`` writes) or from a metrics CSV
with the data set and prediction folders named explicitly. Both routes end in one
:class:`ReportInputs`, validated up front so that a bad input is refused before anything is
drawn or written: a report that silently dropped a model or a cohort would misrepresent the
study.

A study folder is read through :class:`dlas.study_layout.StudyLayout`, the layout `dlas study`
writes (its data set in place when the study used one, the given vendor model's provenance from
its own folder). A model evaluated from a contour set of the data set (e.g. a vendor's exported
RTSTRUCTs) has no prediction folder: the metrics sidecar names its set.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlas.dataset import CaseDataset
from dlas.errors import ReportError
from dlas.evaluation.evaluate import PredictionSource
from dlas.evaluation.results import read_comparison, read_interobserver, read_sidecar
from dlas.evaluation.results import read_metrics as _read_metrics
from dlas.study_layout import StudyLayout

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ReportError",
    "ReportInputs",
    "load_inputs",
    "load_study",
    "read_comparison",
    "read_interobserver",
    "read_metrics",
    "resolve_inputs",
]

log = logging.getLogger(__name__)


@dataclass
class ReportInputs:
    """Everything a report is built from, checked for consistency.

    Attributes
    ----------
    metrics
        The metrics table (one row per case x model x structure), the columns of
        :data:`dlas.evaluation.COLUMNS` (every metric); ``nan``/``inf`` parsed as floats.
    metrics_meta
        The sidecar ``metrics.json`` (metric definitions, software version, input hashes), or
        an empty dict when there is none.
    comparison
        ``comparison.csv`` (columns :data:`dlas.evaluation.COMPARISON_COLUMNS`), or None when it
        still has to be computed.
    comparison_meta
        ``comparison.json`` next to it, or an empty dict.
    dataset
        The data set holding the CTs and ground-truth masks.
    predictions
        Model name → its predictions (a folder ``<case_id>/structures/<Name>.nii.gz`` or a
        contour set of the data set).
    reference_set
        The contour set the metrics were measured against, when not the data set's reference
        structures (from the metrics sidecar); None otherwise.
    models
        Provenance of the models: dicts with at least ``name`` and, when known, ``sha256``.
    config
        Provenance of the study configuration (``path``, ``sha256``), or None.
    sources
        Input file (its name, with its folder for the comparison) → sha256, recorded in the
        report's provenance.
    training_runs
        Model name → the folder of the ``dlas train`` run that made it (with ``cv.json``), for
        the learning curves; empty when unknown.
    interobserver
        ``interobserver.csv`` next to the comparison (each model against other clinicians'
        contours), or None.
    """

    metrics: pd.DataFrame
    metrics_meta: dict[str, Any]
    comparison: pd.DataFrame | None
    comparison_meta: dict[str, Any]
    dataset: CaseDataset
    predictions: dict[str, PredictionSource]
    models: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    sources: dict[str, str] = field(default_factory=dict)
    comparison_dir: Path | None = None
    training_runs: dict[str, Path] = field(default_factory=dict)
    reference_set: str | None = None
    interobserver: pd.DataFrame | None = None

    @property
    def model_names(self) -> list[str]:
        """Models in the order they first appear in the metrics table."""
        return list(dict.fromkeys(self.metrics["model"].tolist()))

    @property
    def cohort_names(self) -> list[str]:
        """Cohorts in the order they first appear in the metrics table."""
        return list(dict.fromkeys(self.metrics["cohort"].tolist()))

    @property
    def structure_names(self) -> list[str]:
        """Structures of the metrics table, in the data set's structure-set order."""
        present = set(self.metrics["structure"].tolist())
        ordered = [n for n in self.dataset.structure_set.names if n in present]
        return ordered + sorted(present - set(ordered))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metrics(path: str | Path) -> pd.DataFrame:
    """The metrics table of a report: :func:`dlas.evaluation.read_metrics` with every metric
    column required (the report draws them all).

    Raises
    ------
    dlas.errors.EvaluationError
        See :func:`dlas.evaluation.read_metrics`.
    """
    return _read_metrics(path, every_metric=True)


def _check_consistency(
    metrics: pd.DataFrame,
    dataset: CaseDataset,
    predictions: Mapping[str, PredictionSource],
    comparison: pd.DataFrame | None,
    metrics_path: Path,
) -> None:
    models = list(dict.fromkeys(metrics["model"].tolist()))
    missing = [m for m in models if m not in predictions]
    if missing:
        raise ReportError(
            "no prediction folder for a model of the metrics table",
            where=str(metrics_path),
            expected="a prediction folder for each model: " + ", ".join(models),
            found="none for " + ", ".join(missing),
            fix="add --prediction NAME=DIR for " + ", ".join(missing),
        )
    extra = [m for m in predictions if m not in models]
    if extra:
        raise ReportError(
            "prediction folder of a model that the metrics table does not hold",
            where=", ".join(predictions[m].describe() for m in extra),
            expected="models " + ", ".join(models),
            found=", ".join(extra),
            fix="check the NAME in --prediction NAME=DIR, or evaluate that model first",
        )
    for name, source in predictions.items():
        if source.contour_set is None and not source.folder.is_dir():
            raise ReportError(
                "prediction folder not found",
                where=str(source.folder),
                expected=f"a folder of <case_id>/structures/<Name>.nii.gz for model {name}",
                found="no such folder",
                fix="check the path given with --prediction",
            )
    unknown = sorted(set(metrics["case_id"]) - set(dataset.case_ids()))
    if unknown:
        raise ReportError(
            "metrics table lists cases that the data set lacks",
            where=str(dataset.root),
            expected="every case of the metrics table in the data set",
            found=f"{len(unknown)} unknown, e.g. {', '.join(unknown[:3])}",
            fix="give the data set the metrics were computed on (--dataset)",
        )
    if comparison is not None:
        pairs = set(zip(comparison["model_a"], comparison["model_b"], strict=True))
        for a, b in pairs:
            absent = [m for m in (a, b) if m not in models]
            if absent:
                raise ReportError(
                    "comparison names a model that the metrics table does not hold",
                    where="comparison.csv",
                    expected="models " + ", ".join(models),
                    found=", ".join(absent),
                    fix="compare the metrics table given here (`dlas compare metrics.csv`)",
                )


def load_inputs(
    metrics_csv: str | Path,
    *,
    dataset: str | Path,
    predictions: Mapping[str, str | Path],
    comparison: str | Path | None = None,
    models: Sequence[Mapping[str, Any]] = (),
    config: Mapping[str, Any] | None = None,
) -> ReportInputs:
    """Gather and check the inputs of a report given explicitly.

    A model the metrics sidecar records as a contour set of the data set (``dlas evaluate
    --prediction NAME``) needs no prediction folder: its masks are read from the set.

    Parameters
    ----------
    metrics_csv
        The metrics table; its ``metrics.json`` sidecar is read when present.
    dataset
        The data set the metrics were computed on.
    predictions
        Model name → prediction folder, one for every model of the metrics table.
    comparison
        ``comparison.csv`` or its folder; None to compute the comparison when building.
    models, config
        Provenance of the models and of the configuration, when known.

    Raises
    ------
    ReportError
        If an input is missing, or the inputs do not belong together.
    dlas.errors.EvaluationError
        If the metrics table or the comparison is missing or malformed
        (:mod:`dlas.evaluation.results`).
    """
    metrics_path = Path(metrics_csv)
    if metrics_path.is_dir():
        raise ReportError(
            "expected a metrics CSV, got a folder that is not a study",
            where=str(metrics_path),
            expected="metrics.csv, or a study folder with study.yaml",
            found="a folder without study.yaml",
            fix="give the metrics CSV file, or the study folder `dlas study` wrote",
        )
    metrics = read_metrics(metrics_path)
    meta = read_sidecar(metrics_path.with_suffix(".json"))
    ds = CaseDataset.open(dataset)
    preds = {name: PredictionSource(name, Path(p)) for name, p in predictions.items()}
    recorded = meta.get("predictions", {})
    for name, entry in recorded.items() if isinstance(recorded, dict) else ():
        if isinstance(entry, dict) and entry.get("contour_set") and name not in preds:
            preds[name] = PredictionSource(name, ds.root, contour_set=str(entry["contour_set"]))
    reference = meta.get("reference", {})
    reference_set = reference.get("contour_set") if isinstance(reference, dict) else None
    if reference_set == ds.reference_set:
        reference_set = None
    comp_df: pd.DataFrame | None = None
    comp_meta: dict[str, Any] = {}
    comp_dir: Path | None = None
    sources = {metrics_path.name: _sha256_file(metrics_path)}
    if comparison is not None:
        comp_df, comp_meta = read_comparison(comparison)
        comp_path = Path(comparison)
        comp_dir = comp_path if comp_path.is_dir() else comp_path.parent
        csv = comp_dir / "comparison.csv" if comp_path.is_dir() else comp_path
        sources[f"{csv.parent.name}/{csv.name}"] = _sha256_file(csv)
    _check_consistency(metrics, ds, preds, comp_df, metrics_path)
    return ReportInputs(
        metrics=metrics,
        metrics_meta=meta,
        comparison=comp_df,
        comparison_meta=comp_meta,
        dataset=ds,
        predictions=preds,
        models=[dict(m) for m in models]
        or [{"name": name, "sha256": None, "source": "not recorded"} for name in preds],
        config=dict(config) if config is not None else None,
        sources=sources,
        comparison_dir=comp_dir,
        reference_set=str(reference_set) if reference_set else None,
        interobserver=read_interobserver(comp_dir) if comp_dir is not None else None,
    )


def _model_provenance(models_dir: Path) -> list[dict[str, Any]]:
    """Name and hash of the model in ``models_dir`` (its ``model.json``), or of each model in
    a folder of models (``models/<name>/model.json``, or ``models/<name>.json``). Nothing deeper
    is read: a model folder also holds fold logs and, for nnU-Net, its work folder with JSON
    files of other kinds."""
    found: list[dict[str, Any]] = []
    if not models_dir.is_dir():
        return found
    own = models_dir / "model.json"
    paths = (
        [own]
        if own.is_file()
        else [*sorted(models_dir.glob("*.json")), *sorted(models_dir.glob("*/model.json"))]
    )
    for path in paths:
        data = read_sidecar(path)
        name = data.get("name") or data.get("model_name") or data.get("model")
        digest = data.get("sha256") or data.get("model_sha256") or data.get("weights_sha256")
        if not isinstance(name, str):
            continue
        entry: dict[str, Any] = {
            "name": name,
            "sha256": digest if isinstance(digest, str) else None,
            "source": path.relative_to(models_dir).as_posix(),
        }
        for key in ("version", "architecture", "created_by", "config_sha256", "dataset_sha256"):
            if key in data:
                entry[key] = data[key]
        found.append(entry)
    return found


def load_study(study_dir: str | Path) -> ReportInputs:
    """Gather and check the inputs of a report from a study folder (see the module docstring).

    Raises
    ------
    ReportError
        If the folder is not a study or lacks the data set or predictions.
    dlas.errors.EvaluationError
        If its metrics table or comparison is missing or malformed.
    """
    root = Path(study_dir)
    layout = StudyLayout.of(root)
    config_path = layout.config
    if not config_path.is_file():
        raise ReportError(
            "not a study folder",
            where=str(root),
            expected="a folder with study.yaml (written by `dlas study`)",
            found="no study.yaml" if root.is_dir() else "no such folder",
            fix="give the study folder, or a metrics CSV with --dataset and --prediction",
        )
    pred_root = layout.predictions_root
    predictions = (
        {
            p.name: p
            for p in sorted(pred_root.iterdir())
            if p.is_dir() and not p.name.startswith(".")
        }
        if pred_root.is_dir()
        else {}
    )
    comparison = layout.comparison
    has_comparison = (comparison / "comparison.csv").is_file()
    metrics_path = layout.metrics
    models = _model_provenance(layout.models)
    if layout.pretrained_model is not None:
        # the vendor model given to the study: its hash from its own folder
        models += _model_provenance(layout.pretrained_model)
    metrics = read_metrics(metrics_path)
    wanted = set(metrics["model"])
    predictions = {k: v for k, v in predictions.items() if k in wanted}
    known = {m["name"] for m in models}
    recorded = read_sidecar(metrics_path.with_suffix(".json")).get("predictions", {})
    for m in dict.fromkeys(metrics["model"]):
        if m in known:
            continue
        entry = recorded.get(m, {}) if isinstance(recorded, dict) else {}
        if isinstance(entry, dict) and entry.get("contour_set"):
            # a model given as contours: its provenance is the hash of the masks evaluated
            models.append(
                {
                    "name": m,
                    "sha256": entry.get("masks_sha256"),
                    "source": f"contour set {entry['contour_set']} of the data set "
                    "(imported RTSTRUCT/SEG; sha256 of its masks)",
                }
            )
        else:
            models.append({"name": m, "sha256": None, "source": "not recorded"})
    inputs = load_inputs(
        metrics_path,
        dataset=layout.data,
        predictions=predictions,
        comparison=comparison if has_comparison else None,
        models=models,
        config={"path": "study.yaml", "sha256": _sha256_file(config_path)},
    )
    inputs.sources[config_path.name] = _sha256_file(config_path)
    inputs.training_runs = {
        name: layout.model(name)
        for name in dict.fromkeys(metrics["model"])
        if (layout.model(name) / "cv.json").is_file()
    }
    return inputs


def resolve_inputs(
    source: str | Path,
    *,
    dataset: str | Path | None = None,
    predictions: Mapping[str, str | Path] | None = None,
    comparison: str | Path | None = None,
) -> ReportInputs:
    """Inputs from a study folder, or from a metrics CSV with its data set and predictions.

    Raises
    ------
    ReportError
        If ``source`` is neither, if a study folder is given together with explicit inputs,
        or if a metrics CSV is given without its data set.
    """
    path = Path(source)
    if path.is_dir() and (path / "study.yaml").is_file():
        if dataset is not None or predictions:
            raise ReportError(
                "a study folder already names its data set and predictions",
                where=str(path),
                expected="either STUDY_DIR alone, or metrics.csv with --dataset/--prediction",
                found="a study folder together with --dataset or --prediction",
                fix="drop --dataset/--prediction, or give the metrics CSV instead of the folder",
            )
        inputs = load_study(path)
        if comparison is not None:
            inputs.comparison, inputs.comparison_meta = read_comparison(comparison)
            csv = (
                Path(comparison) / "comparison.csv"
                if Path(comparison).is_dir()
                else Path(comparison)
            )
            inputs.sources = {
                k: v for k, v in inputs.sources.items() if not k.endswith("comparison.csv")
            }
            inputs.sources[f"{csv.parent.name}/{csv.name}"] = _sha256_file(csv)
            inputs.interobserver = read_interobserver(csv.parent)
        return inputs
    if dataset is None:
        raise ReportError(
            "a metrics CSV needs its data set",
            where=str(path),
            expected="--dataset DATASET (the CTs and ground truth the metrics were computed on)",
            found="no --dataset" if path.is_file() else "neither a study folder nor a file",
            fix="add --dataset DATASET and --prediction NAME=DIR for each model, "
            "or give a study folder",
        )
    return load_inputs(path, dataset=dataset, predictions=predictions or {}, comparison=comparison)
