"""The study's tables: cohort description (Table 1), Table 2, and the volume table.

Each table is built once as a :class:`Table` (header, rows, optional section rows such as
"Bladder" in Table 2) and written as Markdown, LaTeX (booktabs) and HTML from that one object, so
the formats cannot disagree; the CSV holds the unformatted numbers for further analysis.

Table 2 itself is laid out by :func:`dlas.evaluation.render_table2`, the evaluation's own
renderer of its comparison; the report only converts its CSV form to HTML
(:func:`table2_display`), so that there is one Table-2 layout in the toolkit.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any, Literal

from dlas.errors import ReportError
from dlas.evaluation.metric_info import format_mean_sd, format_p

if TYPE_CHECKING:
    import pandas as pd

    from dlas.dataset import CaseDataset

__all__ = [
    "Table",
    "cohort_table",
    "table2",
    "table2_display",
    "volume_table",
]


@dataclass
class Table:
    """A display table: a header, rows of strings, and section rows between them.

    Attributes
    ----------
    title
        Caption.
    columns
        Header cells.
    rows
        Body rows; a row of one cell is a section row spanning the table (e.g. "Bladder").
    notes
        Footnotes printed under the table.
    data
        The numbers behind the table, written as its CSV (None: write the display cells).
    """

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame | None = None

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown; section rows become bold rows."""
        width = len(self.columns)

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        out = [f"**{self.title}**", "", line(self.columns), line(["---"] * width)]
        for row in self.rows:
            if len(row) == 1:
                out.append(line([f"**{row[0]}**"] + [""] * (width - 1)))
            else:
                out.append(line(row))
        for note in self.notes:
            out += ["", note]
        return "\n".join(out) + "\n"

    def to_latex(self) -> str:
        """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
        width = len(self.columns)
        spec = "l" + "c" * (width - 1)
        out = [
            "\\begin{table}[htbp]",
            "\\centering",
            f"\\caption{{{_latex(self.title)}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(_latex(c) for c in self.columns) + " \\\\",
            "\\midrule",
        ]
        for row in self.rows:
            if len(row) == 1:
                out.append(f"\\multicolumn{{{width}}}{{l}}{{\\textbf{{{_latex(row[0])}}}}} \\\\")
            else:
                out.append(" & ".join(_latex(c) for c in row) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        for note in self.notes:
            out.append(f"\\par\\smallskip\\footnotesize {_latex(note)}")
        out.append("\\end{table}")
        return "\n".join(out) + "\n"

    def to_html(self, table_id: str) -> str:
        """An HTML ``<table>`` with a caption and footnotes (no styles inline)."""
        width = len(self.columns)
        out = [
            f'<table id="{escape(table_id)}" class="data">',
            f"<caption>{escape(self.title)}</caption>",
            "<thead><tr>",
        ]
        out += [f"<th>{escape(c)}</th>" for c in self.columns]
        out.append("</tr></thead><tbody>")
        for row in self.rows:
            if len(row) == 1:
                out.append(f'<tr class="section"><th colspan="{width}">{escape(row[0])}</th></tr>')
            else:
                cells = [f"<th>{escape(row[0])}</th>"] + [f"<td>{escape(c)}</td>" for c in row[1:]]
                out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody>")
        if self.notes:
            notes = "<br>".join(escape(n) for n in self.notes)
            out.append(f'<tfoot><tr><td colspan="{width}">{notes}</td></tr></tfoot>')
        out.append("</table>")
        return "\n".join(out)

    def to_csv(self) -> str:
        """The numbers behind the table (or, without them, the display cells) as CSV."""
        if self.data is not None:
            text: str = self.data.to_csv(index=False, lineterminator="\n", na_rep="nan")
            return text
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow(row + [""] * (len(self.columns) - len(row)))
        return buffer.getvalue()


_LATEX_SPECIAL = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "±": "$\\pm$",
    "−": "$-$",
    "–": "--",
    "∞": "$\\infty$",
    "³": "$^3$",
    "×": "$\\times$",
    "<": "$<$",
    ">": "$>$",
    "→": "$\\rightarrow$",
}


def _latex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


# ---------------------------------------------------------------------- Table 2
#: Our file suffixes → the format names of :func:`dlas.evaluation.render_table2`.
TABLE2_FORMATS: dict[str, Literal["markdown", "latex", "csv"]] = {
    "md": "markdown",
    "tex": "latex",
    "csv": "csv",
}


def table2(
    comparison: pd.DataFrame,
    fmt: str,
    cohorts: Sequence[str] | None = None,
    interobserver: pd.DataFrame | None = None,
) -> str:
    """Table 2 of the study as rendered by :func:`dlas.evaluation.render_table2`.

    Parameters
    ----------
    comparison
        The rows of one model pair.
    fmt
        ``md``, ``tex`` or ``csv``.
    cohorts
        Cohort columns in this order (default: the renderer's, sorted by name).
    interobserver
        The pair's rows of ``interobserver.csv`` (observers' rows and § marks), or None.
    """
    from dlas.evaluation import render_table2

    text: str = render_table2(
        comparison,
        TABLE2_FORMATS[fmt],
        cohorts=list(cohorts) if cohorts else None,
        interobserver=interobserver,
    )
    return text


def table2_display(csv_text: str, title: str, notes: Sequence[str] = ()) -> Table:
    """A display :class:`Table` (for the HTML page) from Table 2's CSV rendering, whose first
    two columns are the structure and the row label: one section row per structure."""
    rows = [r for r in csv.reader(io.StringIO(csv_text)) if r]
    if len(rows) < 2 or rows[0][:2] != ["structure", "row"]:
        raise ReportError(
            "Table 2 rendering has an unexpected layout",
            where="dlas.evaluation.render_table2 (csv)",
            expected="a header starting with structure,row and at least one row",
            found=",".join(rows[0][:3]) if rows else "no lines",
            fix="use matching versions of dlas.report and dlas.evaluation",
        )
    out: list[list[str]] = []
    current = None
    for structure, label, *cells in rows[1:]:
        if structure != current:
            out.append([structure])
            current = structure
        out.append([label, *cells])
    return Table(title=title, columns=["", *rows[0][2:]], rows=out, notes=list(notes))


# ---------------------------------------------------------------------- Table 1
def _range_median(values: Sequence[float]) -> str:
    import numpy as np

    if not values:
        return "n/a"
    arr = np.asarray(values, dtype=float)
    return f"{arr.min():.0f}–{arr.max():.0f}, {float(np.median(arr)):g}"


def _counted(values: Sequence[str]) -> str:
    counts = Counter(v for v in values if v)
    if not counts:
        return "n/a"
    if len(counts) == 1:
        return next(iter(counts))
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "; ".join(f"{v} ({n})" for v, n in ordered)


def _fmt_mm(value: float) -> str:
    return f"{round(value, 2):g}"


def _case_description(info: dict[str, Any]) -> dict[str, Any]:
    """Sex, age, scanner, kVp, FOV (cm) and resolution (mm) of one ``case.json``."""
    patient = info.get("patient") or {}
    scanner = info.get("scanner") or {}
    geometry = info.get("geometry") or {}
    maker = " ".join(
        str(v) for v in (scanner.get("Manufacturer"), scanner.get("ManufacturerModelName")) if v
    )
    kvp = scanner.get("KVP")
    spacing = geometry.get("spacing_zyx_mm")
    shape = geometry.get("shape_zyx")
    resolution = ""
    fov = ""
    if spacing and len(spacing) == 3:
        sz, sy, sx = (float(v) for v in spacing)
        resolution = f"{_fmt_mm(sx)}×{_fmt_mm(sy)}×{_fmt_mm(sz)}"
    diameter = scanner.get("ReconstructionDiameter")
    if diameter:
        fov = f"{float(diameter) / 10:.0f}"
    elif spacing and shape and len(shape) == 3:
        # Without the Reconstruction Diameter tag the reconstructed FOV is the image width.
        fov = f"{float(spacing[2]) * int(shape[2]) / 10:.0f}"
    return {
        "sex": patient.get("sex"),
        "age": patient.get("age_years"),
        "scanner": maker,
        "kvp": f"{float(kvp):g}" if kvp not in (None, "") else "",
        "fov": fov,
        "resolution": resolution,
    }


def cohort_table(dataset: CaseDataset, evaluated: Sequence[str]) -> Table:
    """The paper's Table 1: per cohort n, female/male, age, CT scanner, kVp, FOV, resolution.

    Read from each case's ``case.json``: patient sex and age, the scanner tags and the grid.
    Unknown values print as ``n/a``; cohorts mixing scanners or protocols list each with its
    number of cases. Cohorts not evaluated (training) come first, then the evaluated ones in the
    order given.
    """
    import pandas as pd

    cohorts = dataset.cohorts()
    order = [c for c in cohorts if c not in evaluated] + [c for c in evaluated if c in cohorts]
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for cohort in order:
        described = [_case_description(dataset.case_info(cid)) for cid in cohorts[cohort]]
        sexes = [d["sex"] for d in described]
        n_f, n_m = sexes.count("F"), sexes.count("M")
        unknown = len(sexes) - n_f - n_m
        if n_f + n_m == 0:
            sex = "n/a"
        else:
            sex = f"{n_f}/{n_m}" + (f" ({unknown} other or unknown)" if unknown else "")
        ages = [float(d["age"]) for d in described if isinstance(d["age"], (int, float))]
        row = [
            cohort,
            str(len(described)),
            sex,
            _range_median(ages),
            _counted([d["scanner"] for d in described]),
            _counted([d["kvp"] for d in described]),
            _counted([d["fov"] for d in described]),
            _counted([d["resolution"] for d in described]),
        ]
        rows.append(row)
        records.append(
            {
                "cohort": cohort,
                "evaluated": cohort in evaluated,
                "n": len(described),
                "female": n_f,
                "male": n_m,
                "sex_unknown": unknown,
                "age_min": min(ages) if ages else math.nan,
                "age_max": max(ages) if ages else math.nan,
                "age_median": float(pd.Series(ages).median()) if ages else math.nan,
                "scanner": row[4],
                "kvp": row[5],
                "fov_cm": row[6],
                "resolution_mm": row[7],
            }
        )
    return Table(
        title="Table 1. Description of the cohorts",
        columns=[
            "Cohort",
            "n",
            "Female/male",
            "Age (min–max, median)",
            "CT scanner",
            "kVp",
            "FOV (cm)",
            "Resolution (mm)",
        ],
        rows=rows,
        notes=[
            "Resolution: pixel spacing × pixel spacing × slice spacing. FOV: reconstruction "
            "diameter, or the image width where the scanner did not record it. Evaluated "
            "cohorts: " + ", ".join(evaluated) + "."
        ],
        data=pd.DataFrame.from_records(records),
    )


# ---------------------------------------------------------------------- volume table
def _p_lookup(
    comparison: pd.DataFrame | None, cohort: str, structure: str, metric: str, a: str, b: str
) -> str:
    if comparison is None:
        return "n/a"
    hit = comparison[
        (comparison["cohort"] == cohort)
        & (comparison["structure"] == structure)
        & (comparison["metric"] == metric)
        & (comparison["model_a"] == a)
        & (comparison["model_b"] == b)
    ]
    if hit.empty:
        return "n/a"
    row = hit.iloc[0]
    adjusted = str(row["correction"]).lower() not in ("none", "", "nan")
    return format_p(float(row["p_adjusted"] if adjusted else row["p_value"]))


def volume_table(
    metrics: pd.DataFrame,
    structure: str,
    models: Sequence[str],
    cohorts: Sequence[str],
    comparison: pd.DataFrame | None,
    pair: tuple[str, str] | None,
) -> Table:
    """Volumes of ``structure``: GT and each model (mean ± SD, cm³) and each model's relative
    volume error against GT (mean ± SD, %), per cohort, with the paired test's p-values.

    Relative error = (V_model − V_GT) / V_GT x 100, the metrics table's ``volume_error_pct``;
    cases whose GT is empty (undefined error) are excluded from the error's mean and counted
    in a note.
    """
    import pandas as pd

    sub = metrics[metrics["structure"] == structure]
    if sub.empty:
        raise ReportError(
            "structure not in the metrics table",
            where="volume table",
            expected="one of " + ", ".join(sorted(set(metrics["structure"]))),
            found=repr(structure),
            fix="choose another structure with --volume-structure",
        )
    columns = ["Cohort", "n", "GT (cm³)"]
    for model in models:
        columns += [f"{model} (cm³)", f"{model} error (%)"]
    if pair is not None:
        columns += [f"p volume ({pair[1]} vs {pair[0]})", f"p error ({pair[1]} vs {pair[0]})"]
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []
    undefined = 0
    for cohort in cohorts:
        part = sub[sub["cohort"] == cohort]
        if part.empty:
            continue
        gt = part.drop_duplicates("case_id")["volume_ref_cm3"]
        record: dict[str, Any] = {
            "cohort": cohort,
            "structure": structure,
            "n": int(gt.notna().sum()),
            "gt_mean_cm3": gt.mean(),
            "gt_sd_cm3": gt.std(ddof=1),
        }
        row = [cohort, str(int(gt.notna().sum())), format_mean_sd(gt.mean(), gt.std(ddof=1), 1)]
        for model in models:
            m = part[part["model"] == model]
            vol = m["volume_cm3"]
            err = m["volume_error_pct"].replace([float("inf"), float("-inf")], float("nan"))
            undefined += int(err.isna().sum())
            row += [
                format_mean_sd(vol.mean(), vol.std(ddof=1), 1),
                format_mean_sd(err.mean(), err.std(ddof=1), 1),
            ]
            record.update(
                {
                    f"{model}_mean_cm3": vol.mean(),
                    f"{model}_sd_cm3": vol.std(ddof=1),
                    f"{model}_error_mean_pct": err.mean(),
                    f"{model}_error_sd_pct": err.std(ddof=1),
                }
            )
        if pair is not None:
            row += [
                _p_lookup(comparison, cohort, structure, "volume_cm3", *pair),
                _p_lookup(comparison, cohort, structure, "volume_error_pct", *pair),
            ]
        rows.append(row)
        records.append(record)
    notes = ["Mean ± SD over cases. Relative error = (V − V_GT) / V_GT × 100 %."]
    if pair is not None:
        notes.append(
            f"p: paired test of {pair[1]} against {pair[0]} from the comparison "
            "(n/a where the comparison did not test that metric)."
        )
    if undefined:
        notes.append(
            f"{undefined} model/case pairs with an empty GT (undefined relative error) "
            "are excluded from the error's mean."
        )
    return Table(
        title=f"{structure} volume of GT and each model, and relative volume error",
        columns=columns,
        rows=rows,
        notes=notes,
        data=pd.DataFrame.from_records(records),
    )
