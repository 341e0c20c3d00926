"""`dlas study`: the seed study end to end — data, pretraining, fine-tuning with CV, prediction,
evaluation, statistics and report — on the embedded replica or a department's own data."""

from dlas.study.config import (
    EXAMPLES,
    PRESETS,
    CohortRoles,
    DatasetSource,
    DicomSource,
    MetricsSpec,
    ModelNames,
    PhantomSource,
    PredictionSpec,
    ReportSpec,
    StatisticsSpec,
    StudyConfig,
    example_config,
    load_study_config,
    preset_config,
)
from dlas.study.runner import STEPS, StudyProgress, StudyResult, check_study_folder, run_study

__all__ = [
    "EXAMPLES",
    "PRESETS",
    "STEPS",
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
    "StudyProgress",
    "StudyResult",
    "check_study_folder",
    "example_config",
    "load_study_config",
    "preset_config",
    "run_study",
]
