"""The study report: the paper's tables and figures, a self-contained HTML page and a viewer.

Data flow: :func:`resolve_inputs` gathers and checks the metrics table, the comparison, the data
set and the prediction folders (from a study folder or given one by one);
:func:`build_report` draws the figures (:mod:`dlas.report.figures`), lays out the tables
(:mod:`dlas.report.tables`), writes the summary from the numbers (:mod:`dlas.report.summary`),
renders ``index.html`` and the per-cohort contour viewer (:mod:`dlas.report.viewer`) from the
Jinja2 templates in ``templates/``, and records the provenance in ``report.json``.

matplotlib, pandas, Pillow and Jinja2 are imported only by the functions that draw or render,
so importing this package stays cheap.
"""

from dlas.errors import ReportError
from dlas.report.build import ReportOptions, ReportResult, build_report
from dlas.report.cases import CaseImages, choose_cases, choose_slices, load_case_images
from dlas.report.inputs import (
    ReportInputs,
    load_inputs,
    load_study,
    read_comparison,
    read_metrics,
    resolve_inputs,
)
from dlas.report.palette import GROUND_TRUTH, PALETTES, Palette, get_palette
from dlas.report.summary import Summary, summarize
from dlas.report.tables import Table, cohort_table, volume_table

__all__ = [
    "GROUND_TRUTH",
    "PALETTES",
    "CaseImages",
    "Palette",
    "ReportError",
    "ReportInputs",
    "ReportOptions",
    "ReportResult",
    "Summary",
    "Table",
    "build_report",
    "choose_cases",
    "choose_slices",
    "cohort_table",
    "get_palette",
    "load_case_images",
    "load_inputs",
    "load_study",
    "read_comparison",
    "read_metrics",
    "resolve_inputs",
    "summarize",
    "volume_table",
]
