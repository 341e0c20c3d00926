"""The seed paper's Table 2 from a comparison: Markdown, LaTeX (booktabs) and CSV.

Layout (as in the paper): one block of rows per structure — the structure's name, one row per
model with "mean ± SD" cells, and a "p-value" row — and one column per metric × cohort, the
metric spanning its cohorts. p-values below 0.01 are written "< 0.01", others with two
decimals; the p-value shown is ``p_adjusted`` (equal to ``p_value`` without correction), and
the caption says which correction was applied.

With an inter-observer reference (other clinicians' contours evaluated against the same
reference, :func:`~dlas.evaluation.interobserver`) each structure gets a row per observer with
its own mean ± SD, and a model's cell is marked ``§`` where its mean is at least as good as
every observer's: its disagreement with the reference lies within the clinicians' own.

Nothing non-finite is dropped silently: a cell whose model had cases without a finite value (the
95HD of a structure it missed is infinite) states its own n and is marked ``†``; a p-value whose
test kept such pairs (ranked as the largest difference) is marked ``‡``; the caption gives every
cohort's n and explains both marks.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from dlas.errors import EvaluationError
from dlas.evaluation.metric_info import METRICS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEFAULT_TABLE_METRICS", "METRIC_LABELS", "render_table2"]

#: The metrics of the paper's Table 2.
DEFAULT_TABLE_METRICS: tuple[str, ...] = ("dsc", "hd95_mm", "sensitivity", "specificity")

#: Column labels of the metrics (plain text / Markdown / CSV), from the one metric table.
METRIC_LABELS: dict[str, str] = {column: info.label for column, info in METRICS.items()}
_P_ROW = "p-value"

TableFormat = Literal["markdown", "latex", "csv"]


def render_table2(
    comparison: pd.DataFrame,
    fmt: TableFormat = "markdown",
    *,
    metrics: Sequence[str] | None = None,
    cohorts: Sequence[str] | None = None,
    structures: Sequence[str] | None = None,
    digits: int = 3,
    caption: bool = True,
    interobserver: pd.DataFrame | None = None,
) -> str:
    """Render a comparison (the DataFrame of :func:`~dlas.evaluation.compare`) as Table 2.

    Parameters
    ----------
    comparison
        Rows with the columns of :data:`~dlas.evaluation.COMPARISON_COLUMNS`.
    fmt
        ``"markdown"``, ``"latex"`` (needs ``\\usepackage{booktabs}``) or ``"csv"``.
    metrics
        Metric columns, in order (default: DSC, 95HD, sensitivity, specificity).
    cohorts, structures
        Which and in which order (default: all, cohorts sorted, structures as in the table).
    digits
        Decimals of the "mean ± SD" cells.
    caption
        Add a caption (Markdown: a paragraph under the table; LaTeX: ``\\caption``; CSV: none).
    interobserver
        The rows of :func:`~dlas.evaluation.interobserver` for the two models, to add the
        observers' rows and the ``§`` marks (None: none).

    Returns
    -------
    str
        The table as text, ending with a newline.

    Raises
    ------
    EvaluationError
        If the comparison lacks a requested metric, cohort or structure, or holds more than one
        model pair.
    """
    grid = _grid(
        comparison,
        list(metrics or DEFAULT_TABLE_METRICS),
        cohorts,
        structures,
        digits,
        _Observers(interobserver),
    )
    if fmt == "markdown":
        return _markdown(grid, caption)
    if fmt == "latex":
        return _latex(grid, caption)
    if fmt == "csv":
        return _csv(grid)
    raise EvaluationError(
        "unknown table format",
        where="render_table2",
        expected="markdown, latex or csv",
        found=repr(fmt),
        fix="choose one of the three formats",
    )


class _Grid:
    """The table's content, independent of the output format."""

    def __init__(
        self,
        metrics: list[str],
        cohorts: list[str],
        models: tuple[str, str],
        blocks: list[tuple[str, list[tuple[str, list[str]]]]],
        caption: str,
    ) -> None:
        self.metrics = metrics
        self.cohorts = cohorts
        self.models = models
        self.blocks = blocks  # structure → rows (label, cells)
        self.caption = caption


class _Observers:
    """The inter-observer rows of a Table 2, indexed by (observer, model, cohort, structure,
    metric)."""

    def __init__(self, rows: pd.DataFrame | None) -> None:
        records = [] if rows is None else rows.to_dict(orient="records")
        self.index = {
            (
                str(r["model_a"]),
                str(r["model_b"]),
                str(r["cohort"]),
                str(r["structure"]),
                str(r["metric"]),
            ): r
            for r in records
        }
        self.names = list(dict.fromkeys(str(r["model_a"]) for r in records))

    def within(self, model: str, cohort: str, structure: str, metric: str) -> bool:
        """Whether the model's mean is at least as good as every observer's."""
        if not self.names:
            return False
        values = [
            self.index.get((obs, model, cohort, structure, metric), {}).get("within")
            for obs in self.names
        ]
        return all(v is True or str(v) == "True" for v in values)

    def rows(
        self,
        models: tuple[str, str],
        structure: str,
        metrics: list[str],
        cohorts: list[str],
        sizes: dict[str, int],
        digits: int,
    ) -> list[tuple[str, list[str]]]:
        """One row per observer: its mean ± SD against the reference in each cell."""
        out = []
        for obs in self.names:
            cells = []
            for metric in metrics:
                for cohort in cohorts:
                    r = self.index.get(
                        (obs, models[1], cohort, structure, metric)
                    ) or self.index.get((obs, models[0], cohort, structure, metric))
                    if r is None:
                        cells.append("–")
                        continue
                    cell = _mean_sd(float(r["mean_a"]), float(r["sd_a"]), digits)
                    n = _count(r, "n_a")
                    if n != sizes.get(cohort):
                        cell += f" (n = {n})"
                    cells.append(cell)
            out.append((f"Inter-observer ({obs})", cells))
        return out


def _grid(
    comparison: pd.DataFrame,
    metrics: list[str],
    cohorts: Sequence[str] | None,
    structures: Sequence[str] | None,
    digits: int,
    observers: _Observers,
) -> _Grid:
    pairs = comparison[["model_a", "model_b"]].drop_duplicates()
    if len(pairs) != 1:
        raise EvaluationError(
            "comparison holds several model pairs",
            where="render_table2",
            expected="the rows of one comparison (one model_a, one model_b)",
            found=f"{len(pairs)} pairs",
            fix="render each comparison separately",
        )
    model_a, model_b = (str(v) for v in pairs.iloc[0])
    all_cohorts = sorted(set(comparison["cohort"]))
    all_structures = list(dict.fromkeys(comparison["structure"]))
    chosen_cohorts = _choose(list(cohorts) if cohorts else all_cohorts, all_cohorts, "cohort")
    chosen_structures = _choose(
        list(structures) if structures else all_structures, all_structures, "structure"
    )
    _choose(metrics, list(dict.fromkeys(comparison["metric"])), "metric")
    index: dict[tuple[str, str, str], dict[Any, Any]] = {
        (str(r["cohort"]), str(r["structure"]), str(r["metric"])): r
        for r in comparison.to_dict(orient="records")
    }
    sizes = _cohort_sizes(comparison, chosen_cohorts)
    fails = _fails(comparison, chosen_cohorts, chosen_structures, (model_a, model_b))
    cells = _Cells(index, metrics, chosen_cohorts, sizes, digits, observers)
    blocks = []
    for structure in chosen_structures:
        rows = [
            (m, cells.model_row(side, m, structure)) for side, m in (("a", model_a), ("b", model_b))
        ]
        rows += observers.rows(
            (model_a, model_b), structure, metrics, chosen_cohorts, sizes, digits
        )
        rows.append((_P_ROW, cells.p_row(structure)))
        blocks.append((structure, rows))
    notes = _n_note(sizes, cells.marks) + fails
    caption = _caption(comparison, model_a, model_b, observers, notes)
    return _Grid(metrics, chosen_cohorts, (model_a, model_b), blocks, caption)


@dataclass
class _Cells:
    """The cells of Table 2's rows: means ± SD with their n and marks, and p-values."""

    index: dict[tuple[str, str, str], dict[Any, Any]]
    metrics: list[str]
    cohorts: list[str]
    sizes: dict[str, int]
    digits: int
    observers: _Observers
    marks: set[str] = field(default_factory=set)

    def model_row(self, side: str, model: str, structure: str) -> list[str]:
        """Mean ± SD of one model, with its n when not the cohort's and the marks."""

        def cell(r: dict[Any, Any], cohort: str, metric: str) -> str:
            text = _mean_sd(float(r[f"mean_{side}"]), float(r[f"sd_{side}"]), self.digits)
            n = _count(r, f"n_{side}")
            if _count(r, f"n_nonfinite_{side}"):
                text += f" (n = {n}){_EXCLUDED}"
                self.marks.add(_EXCLUDED)
            elif n != self.sizes[cohort]:
                text += f" (n = {n})"
            if self.observers.within(model, cohort, structure, metric):
                text += _WITHIN
                self.marks.add(_WITHIN)
            return text

        return self._row(structure, cell)

    def p_row(self, structure: str) -> list[str]:
        """The adjusted p-values, marked where pairs with an infinite difference were kept."""

        def cell(r: dict[Any, Any], cohort: str, metric: str) -> str:
            text = _p(float(r["p_adjusted"]))
            if _count(r, "n_pairs_nonfinite") and text != "n/a":
                text += _KEPT
                self.marks.add(_KEPT)
            return text

        return self._row(structure, cell)

    def _row(self, structure: str, cell: Callable[[dict[Any, Any], str, str], str]) -> list[str]:
        """One cell per metric and cohort (metric-major), "–" where the comparison has none."""
        cells = []
        for metric in self.metrics:
            for cohort in self.cohorts:
                r = self.index.get((cohort, structure, metric))
                cells.append("–" if r is None else cell(r, cohort, metric))
        return cells


def _caption(
    comparison: pd.DataFrame, model_a: str, model_b: str, observers: _Observers, notes: str
) -> str:
    """Table 2's caption; ``notes`` (on n and failures) follow its first sentences."""
    corrections = sorted(set(comparison["correction"]))
    zero_methods = sorted(set(comparison["zero_method"]))
    correction = {
        "none": "no correction for multiple testing",
        "holm": "Holm-adjusted",
        "bh": "Benjamini–Hochberg-adjusted",
    }.get(corrections[0], corrections[0])
    caption = (
        f"Mean ± SD per structure, model and cohort. p: two-sided Wilcoxon signed-rank test "
        f"of {model_b} against {model_a}, paired by case (zero differences: "
        f"{', '.join(zero_methods)}), {correction}." + notes
    )
    if observers.names:
        caption += (
            " Inter-observer: mean ± SD of another clinician's contours against the same "
            f"reference. {_WITHIN} The model's mean is at least as good as every observer's: "
            "its disagreement with the reference lies within the clinicians' own."
        )
    return caption


_EXCLUDED = "†"
_KEPT = "‡"
_WITHIN = "§"


def _count(row: dict[Any, Any], column: str) -> int:
    """An integer column of a comparison row; 0 when absent (comparisons of older versions)."""
    value = row.get(column, 0)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if math.isfinite(number) else 0


def _cohort_sizes(comparison: pd.DataFrame, cohorts: Sequence[str]) -> dict[str, int]:
    """Cases per cohort: the most any model has there (finite values or not)."""
    sizes = {}
    for cohort in cohorts:
        rows = comparison[comparison["cohort"] == cohort].to_dict(orient="records")
        sizes[cohort] = max(
            (
                _count(r, f"n_{side}") + _count(r, f"n_nonfinite_{side}")
                for r in rows
                for side in ("a", "b")
            ),
            default=0,
        )
    return sizes


def _fails(
    comparison: pd.DataFrame,
    cohorts: Sequence[str],
    structures: Sequence[str],
    models: tuple[str, str],
) -> str:
    """The caption's sentence on structures a model missed (empty prediction), if any."""
    if "fails_a" not in comparison.columns:
        return ""
    shown = comparison[
        comparison["cohort"].isin(cohorts) & comparison["structure"].isin(structures)
    ].drop_duplicates(["cohort", "structure"])
    counts = [
        f"{model} {int(shown[f'fails_{side}'].fillna(0).sum())}"
        for side, model in zip(("a", "b"), models, strict=True)
    ]
    if all(c.endswith(" 0") for c in counts):
        return ""
    return f" Structures missed (empty prediction, reference present): {', '.join(counts)}."


def _n_note(sizes: dict[str, int], marks: set[str]) -> str:
    listed = ", ".join(f"{cohort} {n}" for cohort, n in sizes.items())
    text = f" n = cases per cohort ({listed}) unless a cell states its own."
    if _EXCLUDED in marks:
        text += (
            f" {_EXCLUDED} Mean ± SD over the cases with a finite value; the others have none "
            "(e.g. the 95HD of a structure the model missed)."
        )
    if _KEPT in marks:
        text += (
            f" {_KEPT} The test keeps the pairs with an infinite value, ranked as the largest "
            "difference of their sign."
        )
    return text


def _choose(wanted: list[str], available: list[str], what: str) -> list[str]:
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise EvaluationError(
            f"unknown {what} for Table 2",
            where="render_table2",
            expected=f"one of {', '.join(available)}",
            found=", ".join(unknown),
            fix=f"choose {what}s present in the comparison",
        )
    return wanted


def _mean_sd(mean: float, sd: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a" if math.isnan(mean) else ("inf" if mean > 0 else "-inf")
    if math.isnan(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "< 0.01" if p < 0.01 else f"{p:.2f}"


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _markdown(grid: _Grid, caption: bool) -> str:
    columns = [f"{_label(m)} {c}" for m in grid.metrics for c in grid.cohorts]
    lines = [
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for structure, rows in grid.blocks:
        lines.append(f"| **{_md_escape(structure)}** |" + " |" * len(columns))
        for label, cells in rows:
            lines.append(f"| {_md_escape(label)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if caption:
        text += f"\n{grid.caption}\n"
    return text


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|").replace("_", r"\_").replace("*", r"\*")


def _latex(grid: _Grid, caption: bool) -> str:
    n = len(grid.cohorts)
    width = 1 + n * len(grid.metrics)
    out = ["% Table 2 (dlas). Needs \\usepackage{booktabs}.", "\\begin{table}", "\\centering"]
    if caption:
        out.append(f"\\caption{{{_tex_escape(grid.caption)}}}")
    out.append("\\begin{tabular}{l" + "".join(" " + "c" * n for _ in grid.metrics) + "}")
    out.append("\\toprule")
    spans = [f"\\multicolumn{{{n}}}{{c}}{{{_tex_label(m)}}}" for m in grid.metrics]
    out.append(" & " + " & ".join(spans) + " \\\\")
    rules = [f"\\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(grid.metrics))]
    out.append(" ".join(rules))
    out.append(
        " & " + " & ".join(_tex_escape(c) for c in grid.cohorts * len(grid.metrics)) + " \\\\"
    )
    for structure, rows in grid.blocks:
        out.append("\\midrule")
        out.append(f"\\multicolumn{{{width}}}{{l}}{{\\textit{{{_tex_escape(structure)}}}}} \\\\")
        for label, cells in rows:
            out.append(
                _tex_escape(label) + " & " + " & ".join(_tex_cell(c) for c in cells) + " \\\\"
            )
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"


def _tex_label(metric: str) -> str:
    return _tex_escape(_label(metric))


def _tex_cell(cell: str) -> str:
    mark = ""
    if cell.endswith(_WITHIN):
        cell, mark = cell[:-1], "$^\\S$"
    if cell.endswith((_EXCLUDED, _KEPT)):
        tex = "$^\\dagger$" if cell[-1] == _EXCLUDED else "$^\\ddagger$"
        cell, mark = cell[:-1], tex + mark
    n = ""
    if cell.endswith(")") and " (n = " in cell:
        cell, _, count = cell.rpartition(" (n = ")
        n = f" ($n = {count[:-1]}$)"
    return _tex_core(cell) + n + mark


def _tex_core(cell: str) -> str:
    if " ± " in cell:
        mean, sd = cell.split(" ± ")
        return f"${mean} \\pm {sd}$"
    if cell.startswith("< "):
        return f"$<{cell[2:]}$"
    if cell == "–":
        return "--"
    return _tex_escape(cell)


def _tex_escape(text: str) -> str:
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "±": r"$\pm$",
        "–": "--",
        "†": r"$^\dagger$",
        "‡": r"$^\ddagger$",
        "³": r"$^3$",
    }
    return "".join(replacements.get(ch, ch) for ch in text)


def _csv(grid: _Grid) -> str:
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["structure", "row", *(f"{_label(m)} {c}" for m in grid.metrics for c in grid.cohorts)]
    )
    for structure, rows in grid.blocks:
        for label, cells in rows:
            writer.writerow([structure, label, *cells])
    return buffer.getvalue()
