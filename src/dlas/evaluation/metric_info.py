"""How each metric of the metrics table is named, printed and read (is higher better?).

One owner for Table 2 (:mod:`dlas.evaluation.tables`), the inter-observer reference and every
part of the report. This is presentation only: the definitions themselves (95HD variant,
specificity domain, tolerances) are in the evaluation's ``metrics.json`` and are quoted in the
report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["METRICS", "MetricInfo", "format_mean_sd", "format_number", "format_p", "metric_info"]


@dataclass(frozen=True)
class MetricInfo:
    """Display properties of one metric column.

    Attributes
    ----------
    column
        Column of the metrics table.
    label
        Name in tables and axes (with the unit).
    short
        Name in running text.
    better
        ``higher`` or ``lower`` when one direction is better, ``zero`` when closer to zero is
        better (signed errors), ``none`` when neither (a volume).
    decimals
        Decimals of means and SDs in tables.
    """

    column: str
    label: str
    short: str
    better: Literal["higher", "lower", "zero", "none"]
    decimals: int


METRICS: dict[str, MetricInfo] = {
    m.column: m
    for m in (
        MetricInfo("dsc", "DSC", "DSC", "higher", 3),
        MetricInfo("hd95_mm", "95HD (mm)", "95HD", "lower", 2),
        MetricInfo("hd_mm", "HD (mm)", "Hausdorff distance", "lower", 2),
        MetricInfo("sensitivity", "Sensitivity", "sensitivity", "higher", 3),
        MetricInfo("specificity", "Specificity", "specificity", "higher", 3),
        MetricInfo("volume_cm3", "Volume (cm³)", "volume", "none", 1),
        MetricInfo("volume_ref_cm3", "GT volume (cm³)", "GT volume", "none", 1),
        MetricInfo(
            "volume_error_pct", "Relative volume error (%)", "relative volume error", "zero", 1
        ),
        MetricInfo("surface_dsc", "Surface DSC", "surface DSC", "higher", 3),
        MetricInfo("assd_mm", "ASSD (mm)", "ASSD", "lower", 2),
        MetricInfo("apl_mm", "Added path length (mm)", "added path length", "lower", 0),
        MetricInfo("centroid_mm", "Centroid distance (mm)", "centroid distance", "lower", 2),
    )
}


def metric_info(column: str) -> MetricInfo:
    """Display properties of ``column`` (a neutral default for a column not listed)."""
    return METRICS.get(column, MetricInfo(column, column, column, "none", 3))


def format_number(value: float, decimals: int) -> str:
    """A number with fixed decimals; NaN as ``n/a`` and infinities as ``∞``/``−∞``."""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    text = f"{value:.{decimals}f}"
    if float(text) == 0:
        text = text.lstrip("-")  # "-0.000" would suggest a sign the data do not have
    return text.replace("-", "−")


def format_mean_sd(mean: float, sd: float, decimals: int) -> str:
    """``mean ± SD`` as in the paper's tables (``0.967 ± 0.013``)."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(sd):
        return format_number(mean, decimals)
    return f"{format_number(mean, decimals)} ± {format_number(sd, decimals)}"


def format_p(p: float) -> str:
    """A p-value as the paper prints it: ``< 0.01`` below 0.01, else two decimals (three
    between 0.01 and 0.1, so that 0.046 is not printed as 0.05)."""
    if math.isnan(p):
        return "n/a"
    if p < 0.01:
        return "< 0.01"
    if p < 0.1:
        return f"{p:.3f}"
    return f"{p:.2f}"
