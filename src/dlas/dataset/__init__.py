"""Data sets: the on-disk layout, cohorts, de-identification and `dlas import`."""

from dlas.dataset.cohorts import CaseKeys, CohortRule
from dlas.dataset.contour_sets import ContourSetRule, ContourSetRules
from dlas.dataset.deid import KEY_FILE, Pseudonymizer, age_in_years
from dlas.dataset.importer import (
    ImportItem,
    ImportOptions,
    ImportReport,
    import_source,
    series_case_ids,
)
from dlas.dataset.inspect import inspect_path
from dlas.dataset.layout import (
    DATASET_SCHEMA_VERSION,
    Case,
    CaseDataset,
    CaseRecord,
    label_map,
)

__all__ = [
    "DATASET_SCHEMA_VERSION",
    "KEY_FILE",
    "Case",
    "CaseDataset",
    "CaseKeys",
    "CaseRecord",
    "CohortRule",
    "ContourSetRule",
    "ContourSetRules",
    "ImportItem",
    "ImportOptions",
    "ImportReport",
    "Pseudonymizer",
    "age_in_years",
    "import_source",
    "inspect_path",
    "label_map",
    "series_case_ids",
]
