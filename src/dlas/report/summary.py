"""The summary at the top of the report, written from the numbers of the comparison.

Every sentence is generated from ``comparison.csv`` and the metrics table: which differences
are significant, in which direction (better or worse, read from whether higher or lower values
of the metric are better), with the test and the multiple-testing correction that decided it.
Nothing is written that the numbers do not say; metrics without a better direction (a volume)
are reported as larger or smaller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dlas.evaluation.metric_info import format_number, format_p, metric_info

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CohortFindings", "Finding", "Summary", "summarize"]

_TESTS = {
    "wilcoxon": "Wilcoxon signed-rank test",
    "wilcoxon-signed-rank": "Wilcoxon signed-rank test",
    "paired-t": "paired t-test",
    "ttest_rel": "paired t-test",
}
_CORRECTIONS = {
    "holm": "Holm correction",
    "bonferroni": "Bonferroni correction",
    "bh": "Benjamini–Hochberg correction",
    "fdr_bh": "Benjamini–Hochberg correction",
    "benjamini-hochberg": "Benjamini–Hochberg correction",
}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class Finding:
    """One significant difference: structure, metric, means of a and b, p and direction."""

    structure: str
    metric: str
    mean_a: float
    mean_b: float
    p: float
    direction: str  # "better", "worse", "larger", "smaller"

    def text(self) -> str:
        """``CTV DSC 0.898 → 0.972 (p = 0.031)``."""
        info = metric_info(self.metric)
        unit = ""
        if self.metric.endswith("cm3"):
            unit = " cm³"
        elif self.metric.endswith("_mm"):
            unit = " mm"
        elif self.metric.endswith("pct"):
            unit = " %"
        p = format_p(self.p)
        p_text = f"p {p}" if p.startswith("<") else f"p = {p}"
        decimals = info.decimals
        # A significant difference printed as "1.000 → 1.000" would read as none: add decimals.
        while (
            format_number(self.mean_a, decimals) == format_number(self.mean_b, decimals)
            and decimals < info.decimals + 3
        ):
            decimals += 1
        return (
            f"{self.structure} {info.short} {format_number(self.mean_a, decimals)} → "
            f"{format_number(self.mean_b, decimals)}{unit} ({p_text})"
        )


@dataclass
class CohortFindings:
    """Findings of one comparison (model b against model a) in one cohort."""

    cohort: str
    model_a: str
    model_b: str
    n_cases: int
    n_tests: int
    findings: list[Finding] = field(default_factory=list)

    def by_direction(self, direction: str) -> list[Finding]:
        """The findings in one direction."""
        return [f for f in self.findings if f.direction == direction]

    def outline(self) -> dict[str, Any]:
        """The same content as :meth:`sentence`, as a lead and lists (for the HTML page)."""
        n_sig = len(self.findings)
        lead = (
            f"{self.cohort} (n = {self.n_cases}), {self.model_b} against {self.model_a}: "
            f"{n_sig} of {_plural(self.n_tests, 'test')} significant."
        )
        groups = []
        for direction in ("better", "worse", "larger", "smaller"):
            found = self.by_direction(direction)
            if found:
                groups.append(
                    {
                        "label": f"{direction.capitalize()} with {self.model_b}",
                        "direction": direction,
                        "items": [f.text() for f in found],
                    }
                )
        return {"lead": lead, "groups": groups}

    def sentence(self) -> str:
        """One paragraph on this cohort."""
        head = f"{self.cohort} (n = {self.n_cases}):"
        parts: list[str] = []
        for direction, verb in (
            ("better", "significantly better than"),
            ("worse", "significantly worse than"),
            ("larger", "significantly larger than"),
            ("smaller", "significantly smaller than"),
        ):
            found = self.by_direction(direction)
            if found:
                parts.append(
                    f"{self.model_b} was {verb} {self.model_a} in {len(found)} of "
                    f"{_plural(self.n_tests, 'test')}: " + "; ".join(f.text() for f in found)
                )
        rest = self.n_tests - len(self.findings)
        if not parts:
            return (
                f"{head} no difference between {self.model_b} and {self.model_a} was "
                f"significant ({_plural(self.n_tests, 'test')})."
            )
        tail = ""
        if rest == 1:
            tail = "The other difference was not significant."
        elif rest > 1:
            tail = f"The other {rest} differences were not significant."
        return " ".join([head, ". ".join(parts) + ".", tail]).strip()


@dataclass
class Summary:
    """The report's summary: the method sentence, findings per cohort, volumes and notes."""

    method: str
    cohorts: list[CohortFindings]
    volumes: list[str]
    notes: list[str]

    def paragraphs(self) -> list[str]:
        """All sentences as paragraphs, in reading order."""
        return [self.method, *(c.sentence() for c in self.cohorts), *self.volumes, *self.notes]


def _direction(metric: str, mean_a: float, mean_b: float) -> str:
    better = metric_info(metric).better
    if better == "higher":
        return "better" if mean_b > mean_a else "worse"
    if better == "lower":
        return "better" if mean_b < mean_a else "worse"
    if better == "zero":
        return "better" if abs(mean_b) < abs(mean_a) else "worse"
    return "larger" if mean_b > mean_a else "smaller"


def _method(
    comparison: pd.DataFrame, meta: Mapping[str, Any], pairs: Sequence[tuple[str, str]]
) -> str:
    tests = sorted(set(comparison["test"].astype(str)))
    corrections = sorted(set(comparison["correction"].astype(str).str.lower()))
    zero = sorted(set(comparison["zero_method"].astype(str)))
    settings = meta.get("settings") if isinstance(meta.get("settings"), Mapping) else {}
    alpha = meta.get("alpha", settings.get("alpha") if settings else None)
    test_text = ", ".join(_TESTS.get(t.lower(), t) for t in tests)
    if corrections in ([], ["none"], ["nan"], [""]):
        correction_text = "without correction for multiple testing"
    else:
        names = ", ".join(_CORRECTIONS.get(c, c) for c in corrections if c not in ("none", ""))
        correction_text = (
            f"with {names} across the family of {len(comparison)} tests (adjusted p shown)"
        )
    pair_text = "; ".join(f"{b} against {a}" for a, b in pairs)
    alpha_text = (
        f"α = {float(alpha):g}"
        if isinstance(alpha, (int, float))
        else "significance as flagged in the comparison"
    )
    zero_text = f", zero differences: {', '.join(zero)}" if zero and zero != ["nan"] else ""
    return (
        f"Compared: {pair_text}, paired by case within each cohort. Test: {test_text} "
        f"(two-sided{zero_text}), {correction_text}, {alpha_text}. Differences are "
        "model b − model a."
    )


def summarize(
    comparison: pd.DataFrame,
    metrics: pd.DataFrame,
    *,
    pairs: Sequence[tuple[str, str]],
    cohorts: Sequence[str],
    volume_structure: str | None,
    meta: Mapping[str, Any] | None = None,
) -> Summary:
    """Write the summary from the comparison and the metrics table.

    Parameters
    ----------
    comparison
        ``comparison.csv`` as read by :func:`~dlas.report.inputs.read_comparison`.
    metrics
        The metrics table (for case counts, volumes and undefined values).
    pairs
        The (model a, model b) pairs to summarise.
    cohorts
        Cohorts in reading order.
    volume_structure
        Structure whose relative volume error is summarised (None: none).
    meta
        ``comparison.json`` (the significance level, when it records one).
    """
    blocks: list[CohortFindings] = []
    for a, b in pairs:
        for cohort in cohorts:
            rows = comparison[
                (comparison["cohort"] == cohort)
                & (comparison["model_a"] == a)
                & (comparison["model_b"] == b)
            ]
            if rows.empty:
                continue
            block = CohortFindings(
                cohort=cohort,
                model_a=a,
                model_b=b,
                n_cases=int(metrics.loc[metrics["cohort"] == cohort, "case_id"].nunique()),
                n_tests=len(rows),
            )
            for _, row in rows.iterrows():
                if not bool(row["significant"]):
                    continue
                adjusted = str(row["correction"]).lower() not in ("none", "", "nan")
                block.findings.append(
                    Finding(
                        structure=str(row["structure"]),
                        metric=str(row["metric"]),
                        mean_a=float(row["mean_a"]),
                        mean_b=float(row["mean_b"]),
                        p=float(row["p_adjusted"] if adjusted else row["p_value"]),
                        direction=_direction(
                            str(row["metric"]), float(row["mean_a"]), float(row["mean_b"])
                        ),
                    )
                )
            blocks.append(block)
    volumes: list[str] = []
    if volume_structure is not None:
        part = metrics[metrics["structure"] == volume_structure]
        models = list(dict.fromkeys(m for pair in pairs for m in pair)) or list(
            dict.fromkeys(part["model"])
        )
        for cohort in cohorts:
            sub = part[part["cohort"] == cohort]
            if sub.empty:
                continue
            texts = []
            for model in models:
                err = sub.loc[sub["model"] == model, "volume_error_pct"]
                err = err[err.map(math.isfinite)]
                if err.empty:
                    continue
                texts.append(
                    f"{model} {_signed(float(err.mean()))} ± "
                    f"{format_number(float(err.std(ddof=1)), 1)} %"
                )
            if texts:
                volumes.append(
                    f"{volume_structure} volume against GT in {cohort} (mean ± SD "
                    "of the relative error): " + ", ".join(texts) + "."
                )
    return Summary(
        method=_method(comparison, meta or {}, pairs),
        cohorts=blocks,
        volumes=volumes,
        notes=_notes(metrics),
    )


def _signed(value: float) -> str:
    text = format_number(value, 1)
    return text if text.startswith("−") or text == "0.0" else f"+{text}"


def _notes(metrics: pd.DataFrame) -> list[str]:
    """Undefined and infinite values, which the means exclude and the reader must know of."""
    notes = []
    undefined = int(metrics["dsc"].isna().sum())
    if undefined:
        notes.append(
            f"{undefined} case/model/structure rows have an undefined DSC (both masks "
            "empty); they are excluded from the means (n_pairs in comparison.csv gives the pairs "
            "each test used)."
        )
    infinite = int((metrics["hd95_mm"] == math.inf).sum())
    if infinite:
        notes.append(
            f"{infinite} rows have an infinite 95HD (a structure missing in one of the "
            "two masks): the means leave them out (Table 2 marks those cells †), the paired "
            "tests keep them as the largest difference (‡), figures count them below the axis."
        )
    flagged = metrics.loc[metrics["flags"].astype(str).str.strip() != "", "flags"]
    if not flagged.empty:
        counts: dict[str, int] = {}
        for value in flagged:
            for flag in str(value).replace(";", " ").replace(",", " ").replace("|", " ").split():
                counts[flag] = counts.get(flag, 0) + 1
        notes.append(
            "Flags in the metrics table: "
            + ", ".join(f"{k} × {v}" for k, v in sorted(counts.items()))
            + "."
        )
    return notes
