"""The study configuration: what `dlas study` runs, as typed, validated data.

A study is the seed paper's experiment on any data: a vendor-style pretrained model (VPM) — given,
or pretrained here on a cohort contoured in another style — is fine-tuned on the local training
cohort with the study's recipe and cross-validation (LFT), and both are compared on held-out
cohorts (same scanner, other scanner) with declared metrics and paired statistics.

The configuration is YAML (data, never code), with a schema version; ``dlas study`` writes the
resolved configuration and its hash to ``STUDY_DIR/study.yaml``. ``dlas example-config hospital``
is a commented example for a department's own DICOM export; the built-in presets (``tiny``,
``demo``, ``paper``) run on the embedded synthetic replica. Every field has a default, so a
hospital's file only names what differs::

    schema_version: 1
    name: rectal-lft
    structures: rectal                 # built-in name or a structure-set YAML
    data:
      kind: dicom                      # dicom | dataset | phantom
      path: /data/export               # DICOM folder (any depth) or NIfTI case folders
      cohort_by: csv:cohorts.csv       # see `dlas import --help`
    cohorts:
      pretrain: null                   # cohort to pretrain the vendor model on, if no model
      finetune: training
      evaluate: [ExVal, GenEva]
    pretrained_model: /models/vendor   # a dlas model folder; else pretrain on cohorts.pretrain
    pretrain: {epochs: 60, folds: 1}   # recipe overrides for pretraining
    finetune: {}                       # recipe overrides for fine-tuning (study recipe default;
                                       # e.g. {base: fast, time_budget: 15m})
    engine: dpnunet                    # or nnunet: both recipes train with nnU-Net v2
    models: {vendor: VPM, finetuned: LFT}
    metrics: {hd95: pooled, specificity_domain: reference-bbox}
    statistics: {alpha: 0.05, correction: none}

A model may also be *given as contours* instead of trained here: the vendor's exported RTSTRUCTs
or SEGs, brought in as a contour set of the data set (``data.contour_sets``, the rules of
``dlas import --contour-set``) and named in ``models.from_contours``. With both models from
contours the study only evaluates and compares (no training; ``dlas example-config contours``);
with only the vendor's, LFT is still fine-tuned here from ``pretrained_model``::

    data:
      kind: dicom
      path: /data/export
      contour_sets: {clinical: approved, VPM: "manufacturer:RT-Mind"}
      reference_set: clinical
    models: {vendor: VPM, finetuned: LFT, from_contours: [VPM]}

Other clinicians' contour sets named in ``observers`` (e.g. ``[observer2]``) are evaluated
against the reference too, as the inter-observer reference: Table 2 shows their agreement with
the reference next to the models' and marks where a model's lies within it
(``comparison/interobserver.csv``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dlas.config_files import canonical_sha256, read_yaml_mapping, validation_error
from dlas.errors import StudyError

__all__ = [
    "EXAMPLES",
    "PRESETS",
    "CohortRoles",
    "DatasetSource",
    "DicomSource",
    "MetricsSpec",
    "ModelNames",
    "PhantomSource",
    "PredictionSpec",
    "ReportSpec",
    "StatisticsSpec",
    "StudyConfig",
    "example_config",
    "load_study_config",
    "preset_config",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PhantomSource(_Strict):
    """Generate the synthetic replica (the embedded default)."""

    kind: Literal["phantom"] = "phantom"
    preset: Literal["demo", "paper"] = "demo"
    seed: int = Field(0, ge=0)
    counts: dict[str, int] | None = None
    format: Literal["dicom", "nifti"] = "dicom"
    slice_mm: float | None = Field(None, gt=0)


class DicomSource(_Strict):
    """Import a planning-system export (DICOM at any depth, or NIfTI case folders)."""

    kind: Literal["dicom"] = "dicom"
    path: Path
    cohort_by: str = "none"
    keep_ids: bool = False
    keep_unmapped: bool = False
    pseudonym_key: Path | None = None
    #: contour set name → rule (``dlas import --contour-set NAME=RULE``); empty: the
    #: reference structures from the approved or newest RTSTRUCT only
    contour_sets: dict[str, str] = Field(default_factory=dict)
    reference_set: str | None = None

    @model_validator(mode="after")
    def _rules_valid(self) -> DicomSource:
        self.contour_set_rules()  # a malformed rule fails at load, before any step
        return self

    def contour_set_rules(self) -> Any:
        """The parsed rules (:class:`dlas.dataset.ContourSetRules`)."""
        from dlas.dataset.contour_sets import ContourSetRules
        from dlas.errors import DatasetError

        try:
            return ContourSetRules.from_options(
                [f"{k}={v}" for k, v in self.contour_sets.items()],
                self.reference_set,
                option="data.contour_sets",
            )
        except DatasetError as exc:
            raise ValueError(f"{exc.what}: found {exc.found}; {exc.fix}") from None


class DatasetSource(_Strict):
    """Use a data set imported before (``dlas import``); it is read, never changed."""

    kind: Literal["dataset"] = "dataset"
    path: Path


DataSource = Annotated[PhantomSource | DicomSource | DatasetSource, Field(discriminator="kind")]


class CohortRoles(_Strict):
    """Which cohort plays which part."""

    pretrain: str | None = "vendor"
    finetune: str = "training"
    evaluate: tuple[str, ...] = ("ExVal", "GenEva")

    @field_validator("evaluate")
    @classmethod
    def _some(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one evaluation cohort")
        return value


class ModelNames(_Strict):
    """Names of the two models in every table and figure."""

    vendor: str = Field("VPM", pattern=_NAME)
    finetuned: str = Field("LFT", pattern=_NAME)
    #: models given as the data set's contour set of the same name (not trained or predicted)
    from_contours: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _distinct(self) -> ModelNames:
        if self.vendor == self.finetuned:
            raise ValueError("the two models need different names")
        unknown = [n for n in self.from_contours if n not in (self.vendor, self.finetuned)]
        if unknown:
            raise ValueError(
                f"from_contours names {unknown}, which is neither the vendor model "
                f"{self.vendor!r} nor the fine-tuned model {self.finetuned!r}"
            )
        return self

    @property
    def trains(self) -> bool:
        """Whether the study fine-tunes a model (the fine-tuned model is not given as contours)."""
        return self.finetuned not in self.from_contours


class MetricsSpec(_Strict):
    """Metric definitions (see ``dlas evaluate --help``)."""

    hd95: Literal["pooled", "max", "mean"] = "pooled"
    specificity_domain: Literal["reference-bbox", "union-bbox", "body", "image"] = "reference-bbox"
    specificity_margin_mm: float = Field(10.0, ge=0)
    tolerance_mm: float = Field(2.0, gt=0)


class StatisticsSpec(_Strict):
    """Paired statistics (see ``dlas compare --help``)."""

    alpha: float = Field(0.05, gt=0, lt=1)
    correction: Literal["none", "holm", "bh"] = "none"
    bootstrap: int = Field(2000, ge=0, le=100_000)  # MAX_BOOTSTRAP of dlas.evaluation
    seed: int = Field(0, ge=0)
    zero_method: Literal["wilcox", "pratt", "zsplit"] = "wilcox"


class PredictionSpec(_Strict):
    """Inference options."""

    tta: bool = False
    batch_size: int = Field(8, ge=1)
    rtstruct_sample: int = Field(1, ge=0)


class ReportSpec(_Strict):
    """Report options."""

    palette: Literal["paper", "colorblind"] = "paper"
    viewer: bool = True
    title: str | None = None


class StudyConfig(_Strict):
    """A whole study; see the module docstring for the YAML form."""

    schema_version: Literal[1] = 1
    name: str = Field("study", pattern=_NAME)
    structures: str = "rectal"
    data: DataSource = PhantomSource()
    cohorts: CohortRoles = CohortRoles()
    pretrained_model: Path | None = None
    pretrain: dict[str, Any] = Field(default_factory=dict)
    finetune: dict[str, Any] = Field(default_factory=dict)
    #: the training engine of both recipes (a recipe's own ``engine`` key wins)
    engine: Literal["dpnunet", "nnunet"] = "dpnunet"
    models: ModelNames = ModelNames()
    #: other clinicians' contour sets: the inter-observer reference
    observers: tuple[Annotated[str, Field(pattern=_NAME)], ...] = ()
    metrics: MetricsSpec = MetricsSpec()
    statistics: StatisticsSpec = StatisticsSpec()
    prediction: PredictionSpec = PredictionSpec()
    report: ReportSpec = ReportSpec()

    @model_validator(mode="after")
    def _recipe_overrides_valid(self) -> StudyConfig:
        # Checked here, before the first step: a typo such as `finetune: {epoch: 1}` used to
        # surface only when fine-tuning began, after the pretraining had run.
        from dlas.training.config import TrainingConfigError

        for part in ("pretrain", "finetune"):
            try:
                self.recipe(part)
            except TrainingConfigError as exc:
                key = (exc.where or "").partition(", at ")[2] or "?"
                raise ValueError(f"{part} recipe override {key!r}: {exc.found}") from None
        return self

    def recipe_data(self, part: Literal["pretrain", "finetune"]) -> dict[str, Any]:
        """The recipe overrides of ``part`` with the study's engine (empty: the default
        recipe)."""
        overrides = dict(getattr(self, part))
        if self.engine != "dpnunet":
            overrides.setdefault("engine", self.engine)
        return {"schema_version": 1, **overrides} if overrides else {}

    def recipe(self, part: Literal["pretrain", "finetune"]) -> Any:
        """The :class:`~dlas.training.config.Recipe` of ``part``, or None for the default one.

        Raises
        ------
        dlas.training.config.TrainingConfigError
            Invalid overrides.
        """
        from dlas.training.config import load_recipe

        data = self.recipe_data(part)
        return load_recipe(data) if data else None

    @model_validator(mode="after")
    def _pretraining_possible(self) -> StudyConfig:
        clash = [o for o in self.observers if o in (self.models.vendor, self.models.finetuned)]
        if clash or len(set(self.observers)) != len(self.observers):
            raise ValueError(
                f"observers {list(self.observers)} must be distinct and differ from the models' "
                "names"
            )
        if (self.models.from_contours or self.observers) and not (
            isinstance(self.data, DatasetSource)
            or (isinstance(self.data, DicomSource) and self.data.contour_sets)
        ):
            raise ValueError(
                "models.from_contours and observers need contour sets: data.contour_sets rules "
                "on a DICOM export (data.kind: dicom), or a data set imported with them "
                "(kind: dataset)"
            )
        if not self.models.trains:
            # evaluation only: nothing is pretrained or fine-tuned
            used = list(self.cohorts.evaluate)
            if len(set(used)) != len(used):
                raise ValueError(f"an evaluation cohort is named twice: {used}")
            return self
        if self.pretrained_model is None and self.cohorts.pretrain is None:
            raise ValueError(
                "give pretrained_model, or name a cohorts.pretrain cohort to pretrain it on"
            )
        used = [self.cohorts.finetune, *self.cohorts.evaluate]
        if self.pretrained_model is None and self.cohorts.pretrain is not None:
            used.append(self.cohorts.pretrain)
        if len(set(used)) != len(used):
            raise ValueError(f"a cohort plays two parts: {used}; patients would leak")
        return self

    def to_data(self) -> dict[str, Any]:
        """JSON/YAML-ready form (the default engine left out, so that configurations written
        before the engine existed keep their hash and their studies can still resume)."""
        data = self.model_dump(mode="json")
        if data["engine"] == "dpnunet":
            del data["engine"]
        return data

    def sha256(self) -> str:
        """Hash of the canonical JSON form."""
        return canonical_sha256(self.to_data())


def _error(exc: ValidationError, source: str) -> StudyError:
    return validation_error(
        exc,
        StudyError,
        what="invalid study configuration",
        source=source,
        expected="the schema in the dlas.study.config documentation "
        "(`dlas example-config hospital` prints a commented example)",
        fix="correct the configuration",
    )


def load_study_config(path: str | os.PathLike[str]) -> StudyConfig:
    """Read and validate a study configuration (YAML or JSON).

    Relative paths inside the file are taken relative to the file's folder.
    """
    p = Path(path)
    data = read_yaml_mapping(
        p,
        StudyError,
        what="study configuration",
        expected_keys="name, data, cohorts",
        missing_fix="check the path, or leave CONFIG out to run the embedded demo study",
        schema_fix="see `dlas example-config hospital`",
    )
    base = p.resolve().parent
    data = _absolute_paths(data, base)
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise _error(exc, str(p)) from None


def _absolute_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(data)

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not value.startswith("csv:"):
            candidate = Path(value).expanduser()
            return str(candidate if candidate.is_absolute() else base / candidate)
        return value

    if isinstance(out.get("data"), dict):
        section = dict(out["data"])
        for key in ("path", "pseudonym_key"):
            if section.get(key):
                section[key] = fix(section[key])
        rule = section.get("cohort_by")
        if isinstance(rule, str) and rule.startswith("csv:"):
            section["cohort_by"] = "csv:" + fix(rule[4:])
        out["data"] = section
    if out.get("pretrained_model"):
        out["pretrained_model"] = fix(out["pretrained_model"])
    structures = out.get("structures")
    if isinstance(structures, str) and structures.endswith((".yaml", ".yml")):
        out["structures"] = fix(structures)
    return out


#: The replica's recipes for a 2-core CPU: the ``fast`` recipe (chosen by cross-validation on
#: OpenKBP training patients, benchmarks/results/recipe-selection.md) with step counts that fit
#: the whole demo study into about ten minutes. The fine-tuning learning rate was chosen by the
#: study's own 5-fold cross-validation on the replica's training cohort, never on ExVal or
#: GenEva (benchmarks/bench_demo_recipe.py, recipe-selection.md): of 2e-3, 1e-3 and 5e-4, 5e-4
#: had the highest mean validation DSC (0.851 against 0.849 and 0.847, within noise); twice the
#: fine-tuning steps bought +0.005 for 4.5 more minutes. Left-right mirroring is off: with
#: recipe seed 1 the mirrored training split every femoral head between left and right
#: (cross-validation on the training cohort: Femur_Head_L 0.57, Femur_Head_R 0.44), and
#: without mirroring the same seed's cross-validation gave 0.92 and 0.92 (CTV 0.815 against
#: 0.827). Seed 0 had not shown it (0.92, 0.93): seen only when the spread over seeds was run.
_CPU_AUGMENTATION = {"flip_lr": False}
_CPU_PRETRAIN = {
    "base": "fast",
    "folds": 1,
    "steps_per_epoch": 50,
    "augmentation": _CPU_AUGMENTATION,
}
_CPU_FINETUNE = {
    "base": "fast",
    "learning_rate": 5e-4,
    "steps_per_epoch": 40,
    "augmentation": _CPU_AUGMENTATION,
}

#: Built-in presets on the synthetic replica. ``tiny`` is for tests (about a minute on 2 CPU
#: cores; too short to learn anything), ``demo`` the README's study (about 10 minutes on 2 CPU
#: cores, and it shows the paper's pattern), ``paper`` the full-size replica with the study's
#: recipe (for a GPU).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "name": "tiny-replica",
        "data": {
            "kind": "phantom",
            "preset": "demo",
            "seed": 0,
            "format": "dicom",
            "counts": {"vendor": 4, "training": 4, "ExVal": 3, "GenEva": 3},
            "slice_mm": 16.0,
        },
        "pretrain": {**_CPU_PRETRAIN, "epochs": 2, "steps_per_epoch": 5},
        "finetune": {**_CPU_FINETUNE, "epochs": 1, "folds": 2, "steps_per_epoch": 5},
        "statistics": {"bootstrap": 200},
    },
    "demo": {
        "name": "demo-replica",
        # Ten patients per evaluation cohort: with six, the exact Wilcoxon test reaches
        # p < 0.05 only when every single patient improves.
        "data": {
            "kind": "phantom",
            "preset": "demo",
            "seed": 0,
            "format": "dicom",
            "counts": {"ExVal": 10, "GenEva": 10},
        },
        "pretrain": {**_CPU_PRETRAIN, "epochs": 20},
        "finetune": {**_CPU_FINETUNE, "epochs": 3, "folds": 5},
    },
    "paper": {
        "name": "paper-replica",
        "data": {"kind": "phantom", "preset": "paper", "seed": 0, "format": "dicom"},
        "pretrain": {"epochs": 60, "folds": 1, "learning_rate": 1e-3},
        "finetune": {},
    },
}


#: The commented example configurations shipped with the package (``dlas example-config``).
EXAMPLES: dict[str, str] = {
    "hospital": "a study on a department's DICOM export: fine-tune the vendor's model, compare",
    "contours": "commissioning from exported contours: evaluate and compare, no training",
}


def example_config(name: str) -> str:
    """The text of a commented example configuration (package data, so it is there after
    ``pip install``).

    Raises
    ------
    StudyError
        No example of that name.
    """
    from importlib.resources import files

    if name not in EXAMPLES:
        raise StudyError(
            "unknown example configuration",
            where=f"dlas example-config {name}",
            expected=", ".join(EXAMPLES),
            found=repr(name),
            fix="use one of the listed names",
        )
    return (files("dlas.study") / "examples" / f"{name}.yaml").read_text(encoding="utf-8")


def preset_config(name: str, engine: str = "dpnunet") -> StudyConfig:
    """A built-in study on the synthetic replica, trained with ``engine``.

    The presets' recipes are written for the DpnUNet engine; with ``nnunet`` only what nnU-Net
    takes from a recipe is kept (epochs, steps per epoch, folds, seed, ...): nnU-Net plans the
    network, patch, batch, learning rate and augmentation itself.

    Raises
    ------
    StudyError
        Unknown preset or engine.
    """
    from dlas.training.config import NNUNET_FIELDS

    if engine not in ("dpnunet", "nnunet"):
        raise StudyError(
            "unknown training engine",
            where=f"--engine {engine}",
            expected="dpnunet or nnunet",
            found=repr(engine),
            fix="use --engine dpnunet (the default) or --engine nnunet",
        )
    if name not in PRESETS:
        raise StudyError(
            "unknown study preset",
            where=f"--preset {name}",
            expected=", ".join(PRESETS),
            found=repr(name),
            fix="use --preset demo (2-core CPU, minutes) or --preset paper (GPU)",
        )
    data = dict(PRESETS[name])
    if engine == "nnunet":
        for part in ("pretrain", "finetune"):
            data[part] = {k: v for k, v in data[part].items() if k in NNUNET_FIELDS}
        data["engine"] = engine
    return StudyConfig.model_validate(data)
