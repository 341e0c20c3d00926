"""Evaluation: segmentation metrics with declared definitions, and paired statistics.

* :func:`compute_metrics` — every metric of one structure (DSC, 95HD in three declared
  variants, HD, sensitivity, specificity in a declared domain, volumes, surface DSC, ASSD,
  added path length, centroid distance), exact and fast;
* :func:`evaluate` — a data set's reference against prediction folders, one row per case,
  model and structure, with a sidecar of definitions and input hashes (``dlas evaluate``);
* :func:`compare` — paired Wilcoxon statistics of two models per cohort × structure × metric
  (``dlas compare``), and :func:`render_table2` — the seed paper's Table 2 layout.

pandas is imported only by the functions that build tables.
"""

from dlas.errors import EvaluationError
from dlas.evaluation.evaluate import (
    EvaluationResult,
    PredictionSource,
    evaluate,
    parse_prediction,
    read_qa,
)
from dlas.evaluation.metrics import (
    HD95_VARIANTS,
    METRIC_COLUMNS,
    SPECIFICITY_DOMAINS,
    MetricOptions,
    SegmentationMetrics,
    SurfaceDistances,
    compute_metrics,
    surface_distances,
)
from dlas.evaluation.results import (
    COLUMNS,
    COMPARISON_COLUMNS,
    ID_COLUMNS,
    INTEROBSERVER_COLUMNS,
    LATER_COMPARISON_COLUMNS,
    read_comparison,
    read_interobserver,
    read_metrics,
)
from dlas.evaluation.statistics import (
    COMPARISON_FILES,
    CORRECTIONS,
    ZERO_METHODS,
    compare,
    interobserver,
    read_observers,
    write_comparison,
)
from dlas.evaluation.tables import DEFAULT_TABLE_METRICS, METRIC_LABELS, render_table2

__all__ = [
    "COLUMNS",
    "COMPARISON_COLUMNS",
    "COMPARISON_FILES",
    "CORRECTIONS",
    "DEFAULT_TABLE_METRICS",
    "HD95_VARIANTS",
    "ID_COLUMNS",
    "INTEROBSERVER_COLUMNS",
    "LATER_COMPARISON_COLUMNS",
    "METRIC_COLUMNS",
    "METRIC_LABELS",
    "SPECIFICITY_DOMAINS",
    "ZERO_METHODS",
    "EvaluationError",
    "EvaluationResult",
    "MetricOptions",
    "PredictionSource",
    "SegmentationMetrics",
    "SurfaceDistances",
    "compare",
    "compute_metrics",
    "evaluate",
    "interobserver",
    "parse_prediction",
    "read_comparison",
    "read_interobserver",
    "read_metrics",
    "read_observers",
    "read_qa",
    "render_table2",
    "surface_distances",
    "write_comparison",
]
