"""``build_report``: every table and figure of the study, the HTML report and the viewer.

Output layout (written to a temporary folder and renamed into place when complete, so an
interrupted run leaves no half-written report and keeps an older complete one)::

    REPORT/
      index.html                      the self-contained report (figures embedded)
      report.json                     provenance: versions, hashes, options, files
      tables/table1_cohorts.{csv,md,tex}
      tables/table2.{csv,md,tex}      Table 2, rendered by dlas.evaluation
      tables/volume_<S>.{csv,md,tex}  volume table of one structure (default CTV)
      figures/slices.{png,svg}        representative slices (paper Fig. 3)
      figures/volume_profile_<S>.*    per-case volumes and errors (Fig. 4)
      figures/distributions_<S>.*     metric distributions with p-values (Fig. 5), per structure
      figures/bland_altman_<S>.*      volume agreement, per structure
      figures/dsc_heatmap.*           DSC of every case and structure
      figures/learning_curves_<M>.*   training curves of each model trained in the study
      viewer/<cohort>.html            contour viewer, one page per cohort

The HTML report also lists what prediction QA flagged, per model (``qa.json`` of each
prediction, :mod:`dlas.report.qa`); ``report.json`` records the counts.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dlas import __version__
from dlas.errors import ReportError
from dlas.evaluation.metric_info import METRICS, metric_info
from dlas.io.atomic import atomic_dir, write_json, write_text
from dlas.report import figures, tables
from dlas.report.cases import CaseImages, choose_cases, load_case_images
from dlas.report.html import png_data_uri, render_report
from dlas.report.inputs import ReportInputs
from dlas.report.palette import GROUND_TRUTH, get_palette
from dlas.report.qa import prediction_qa
from dlas.report.summary import Summary, summarize
from dlas.report.viewer import IMAGE_FORMATS, render_viewer
from dlas.training.curves import learning_curves_figure

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ReportOptions", "ReportResult", "build_report"]

log = logging.getLogger(__name__)

#: A progress callback: (steps done, steps in all, what is being done).
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ReportOptions:
    """What the report shows and how.

    Attributes
    ----------
    title
        Heading of the report.
    volume_structure
        Structure of the volume table, the volume profile and the summary's volume sentence;
        None: ``CTV`` when present, else the first structure.
    cases
        Cases of the representative-slices figure: ``median`` or ``worst`` (by the DSC of
        ``case_structure``, per cohort) or case ids.
    cases_per_cohort
        Rows per cohort in that figure when chosen by rule.
    case_structure
        Structure whose DSC chooses the cases; None: the volume structure.
    n_slices
        Slices (columns) per case in that figure.
    metrics
        Metric columns of the distribution figures.
    palette
        ``paper`` (GT red, VPM blue, LFT green) or ``colorblind``.
    model_a, model_b
        The compared pair when no comparison is given (default: the two models of the
        metrics table, in its order).
    dpi
        Resolution of the PNG figures (also embedded in the HTML).
    viewer
        Write the contour viewer.
    viewer_max_px
        Longest side of the viewer's slice images.
    viewer_format
        ``webp``, ``png`` or ``jpeg``.
    """

    title: str = "Auto-segmentation study report"
    volume_structure: str | None = None
    cases: tuple[str, ...] = ("median",)
    cases_per_cohort: int = 1
    case_structure: str | None = None
    n_slices: int = 3
    metrics: tuple[str, ...] = ("dsc", "sensitivity", "specificity", "hd95_mm")
    palette: str = "paper"
    model_a: str | None = None
    model_b: str | None = None
    dpi: int = 200
    viewer: bool = True
    viewer_max_px: int = 320
    viewer_format: str = "webp"


@dataclass
class ReportResult:
    """What :func:`build_report` wrote."""

    out: Path
    index: Path
    files: list[str] = field(default_factory=list)
    viewers: dict[str, Path] = field(default_factory=dict)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("._") or "cohort"


def _pairs(inputs: ReportInputs, options: ReportOptions) -> list[tuple[str, str]]:
    if inputs.comparison is not None:
        pairs = list(
            dict.fromkeys(
                zip(inputs.comparison["model_a"], inputs.comparison["model_b"], strict=True)
            )
        )
        return [(str(a), str(b)) for a, b in pairs]
    observers = _observers(inputs)
    models = [m for m in inputs.model_names if m not in observers]
    a, b = options.model_a, options.model_b
    if a is None and b is None:
        if len(models) != 2:
            raise ReportError(
                "which models to compare is not clear",
                where="metrics table",
                expected="a comparison (comparison.csv), --a and --b, or exactly two models",
                found=f"{len(models)} models ({', '.join(models)}) and no comparison",
                fix="run `dlas compare` first, or name the pair with --a and --b",
            )
        a, b = models
    for name in (a, b):
        if name not in models:
            raise ReportError(
                "model to compare is not in the metrics table",
                where="--a/--b",
                expected="one of " + ", ".join(models),
                found=repr(name),
                fix="check the model names",
            )
    assert a is not None and b is not None
    return [(a, b)]


def _observers(inputs: ReportInputs) -> list[str]:
    """Other clinicians' sets evaluated with the models (the metrics sidecar's observers)."""
    observers = inputs.metrics_meta.get("observers", [])
    return [str(o) for o in observers] if isinstance(observers, list) else []


def _compute_comparison(inputs: ReportInputs, pair: tuple[str, str]) -> None:
    """Run the evaluation's comparison when none was given (the report never tests itself)."""
    try:
        from dlas.evaluation import compare
    except ImportError as exc:
        raise ReportError(
            "no comparison given and the evaluation module cannot compute one",
            where="dlas.evaluation.compare",
            expected="comparison.csv (--comparison) or the evaluation engine",
            found=f"{type(exc).__name__}: {exc}",
            fix="run `dlas compare metrics.csv --a A --b B --out DIR` and pass --comparison DIR",
        ) from None
    result = compare(inputs.metrics, pair[0], pair[1])
    result["significant"] = result["significant"].astype(bool)
    observers = [o for o in _observers(inputs) if o not in pair]
    if observers and inputs.interobserver is None:
        from dlas.evaluation import interobserver

        inputs.interobserver = interobserver(inputs.metrics, observers, list(pair))
    inputs.comparison = result
    inputs.comparison_meta = dict(result.attrs.get("dlas", {}))
    inputs.sources["comparison"] = "computed by dlas.evaluation.compare for this report"
    log.info("comparison of %s against %s computed for the report", pair[1], pair[0])


def _check_options(inputs: ReportInputs, options: ReportOptions) -> tuple[str, str]:
    """Validate the options against the inputs; returns (volume structure, case structure)."""
    structures = inputs.structure_names
    if options.volume_structure is None:
        volume = "CTV" if "CTV" in structures else structures[0]
    else:
        volume = options.volume_structure
    case_structure = options.case_structure or volume
    for name, flag in ((volume, "--volume-structure"), (case_structure, "--case-structure")):
        if name not in structures:
            raise ReportError(
                "structure not in the metrics table",
                where=flag,
                expected="one of " + ", ".join(structures),
                found=repr(name),
                fix=f"choose a structure of the metrics table with {flag}",
            )
    unknown = [m for m in options.metrics if m not in METRICS or m not in inputs.metrics]
    if unknown or not options.metrics:
        raise ReportError(
            "unknown metric for the distribution figures",
            where="--metric",
            expected="columns of the metrics table: "
            + ", ".join(c for c in METRICS if c in inputs.metrics),
            found=", ".join(unknown) or "none",
            fix="name metric columns such as dsc, hd95_mm, sensitivity, specificity",
        )
    rules = {"median", "worst"}
    if not options.cases or (len(options.cases) > 1 and any(c in rules for c in options.cases)):
        raise ReportError(
            "invalid case selection",
            where="--cases",
            expected="median, worst, or case ids separated by commas",
            found=",".join(options.cases) or "nothing",
            fix="give one rule or a list of case ids",
        )
    if options.cases[0] not in rules:
        known = set(inputs.metrics["case_id"])
        missing = [c for c in options.cases if c not in known]
        if missing:
            raise ReportError(
                "case to show is not in the metrics table",
                where="--cases",
                expected="case ids of the metrics table",
                found=", ".join(missing),
                fix="check the case ids, or use --cases median",
            )
    for value, low, high, flag in (
        (options.n_slices, 1, 8, "--slices"),
        (options.cases_per_cohort, 1, 10, "--cases-per-cohort"),
        (options.dpi, 50, 1200, "--dpi"),
        (options.viewer_max_px, 64, 2048, "--viewer-max-px"),
    ):
        if not low <= value <= high:
            raise ReportError(
                "option out of range",
                where=flag,
                expected=f"{low} to {high}",
                found=str(value),
                fix=f"choose {flag} within {low}-{high}",
            )
    if options.viewer_format not in IMAGE_FORMATS:
        raise ReportError(
            "unknown viewer image format",
            where="--viewer-format",
            expected=", ".join(IMAGE_FORMATS),
            found=repr(options.viewer_format),
            fix="choose webp (smallest), png (lossless) or jpeg",
        )
    get_palette(options.palette)
    return volume, case_structure


#: Parts of metrics.json that the definitions list already shows, or that are bookkeeping.
_NOT_SETTINGS = {"definitions", "columns", "csv_conventions", "kind", "schema_version"}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key in sorted(data):
        value = data[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _flatten(value, name + ".")
        elif isinstance(value, (list, tuple)):
            out.append((name, json.dumps(value)))
        else:
            out.append((name, str(value)))
    return out


def _find_setting(meta: Mapping[str, Any], *words: str) -> str | None:
    """The first recorded setting whose key contains all ``words`` (for the definitions)."""
    for key, value in _flatten(meta):
        last = key.rsplit(".", 1)[-1].lower()
        if all(w in last for w in words):
            return value
    return None


def _definitions(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Metric definitions: the evaluation's own sentences from ``metrics.json`` when it
    records them (they state exactly what was computed), else the toolkit's defaults."""
    recorded = meta.get("definitions")
    statistics = (
        "Statistics",
        "Mean ± SD per metric, structure, model and cohort; paired "
        "test of the two models within each cohort, as recorded in comparison.csv "
        "(test, zero handling, correction).",
    )
    if isinstance(recorded, Mapping) and recorded:
        rows = [
            (
                metric_info(str(k)).label
                if k in METRICS
                else str(k).replace("_", " ").capitalize(),
                str(v),
            )
            for k, v in recorded.items()
        ]
        return [*rows, statistics]
    return [*_default_definitions(meta), statistics]


def _default_definitions(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    hd95 = _find_setting(meta, "hd95") or _find_setting(meta, "percentile")
    domain = _find_setting(meta, "specificity") or _find_setting(meta, "domain")
    tolerance = _find_setting(meta, "tolerance")
    hd95_used = (
        f" Variant used: {hd95}."
        if hd95
        else (" The variant used is not recorded in metrics.json.")
    )
    domain_used = (
        f" Domain used: {domain}."
        if domain
        else (" The domain used is not recorded in metrics.json.")
    )
    tolerance_used = f" Tolerance used: {tolerance} mm." if tolerance else ""
    return [
        (
            "DSC",
            "Dice similarity coefficient 2|D∩G| / (|D| + |G|) of prediction D and ground "
            "truth G. Both empty: undefined (excluded from means, counted); one empty: 0.",
        ),
        (
            "95HD (mm)",
            "95th percentile Hausdorff distance between the surfaces (boundary voxels: "
            "foreground voxels with a 6-neighbour outside the mask; Euclidean "
            "distances between voxel centres in mm, honouring the voxel spacing). "
            "pooled: 95th percentile of the union of the directed distances D→G and "
            "G→D (the seed paper's equation); max: the larger of the two directed "
            "95th percentiles (MONAI); mean: their mean (3D Slicer). A structure "
            "missing in one mask: infinite." + hd95_used,
        ),
        ("HD (mm)", "Maximum of the directed surface distances (100th percentile)."),
        ("Sensitivity", "TP / (TP + FN)."),
        (
            "Specificity",
            "TN / (TN + FP), true negatives counted inside a declared domain "
            "(reference-bbox: the GT's bounding box grown by a margin; union-bbox; "
            "body; image)." + domain_used,
        ),
        (
            "Volume (cm³)",
            "Voxel count × voxel volume. Relative volume error: (V − V_GT) / V_GT × 100 %.",
        ),
        (
            "Surface DSC",
            "Fraction of both surfaces within the tolerance of the other surface." + tolerance_used,
        ),
        ("ASSD (mm)", "Mean of all directed surface distances, both directions."),
        (
            "Added path length (mm)",
            "Length of the GT contour not covered by the prediction's "
            "contour, summed over slices (editing effort).",
        ),
        ("Centroid distance (mm)", "Distance between the centres of mass of D and G."),
    ]


class _Writer:
    """Writes the report's files into the temporary folder and remembers them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: list[str] = []

    def text(self, relative: str, text: str) -> str:
        write_text(self.root / relative, text)
        self.files.append(relative)
        return relative

    def table(self, stem: str, table: tables.Table) -> list[str]:
        return [
            self.text(f"{stem}.csv", table.to_csv()),
            self.text(f"{stem}.md", table.to_markdown()),
            self.text(f"{stem}.tex", table.to_latex()),
        ]

    def figure(self, stem: str, fig: Any, dpi: int) -> list[str]:
        paths = figures.save_figure(fig, self.root / stem, dpi=dpi)
        rel = [p.relative_to(self.root).as_posix() for p in paths]
        self.files += rel
        return rel


def build_report(
    inputs: ReportInputs,
    out: str | Path,
    options: ReportOptions | None = None,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ReportResult:
    """Write the report of a study (see the module docstring for what is written).

    Parameters
    ----------
    inputs
        From :func:`~dlas.report.inputs.resolve_inputs` (or ``load_study``/``load_inputs``).
    out
        The report folder. It must not exist, unless ``overwrite`` (replaced only once the new
        report is complete).
    options
        What to show; defaults reproduce the seed paper's figures.
    progress
        Called as ``progress(done, total, label)``.

    Raises
    ------
    ReportError
        If the options do not fit the inputs, the folder exists, or an image is missing.
    """
    options = options or ReportOptions()
    target = Path(out)
    if target.exists() and not overwrite:
        _refuse_existing(target)
    volume_structure, case_structure = _check_options(inputs, options)
    qa = prediction_qa(inputs)
    pairs = _pairs(inputs, options)
    if inputs.comparison is None:
        _compute_comparison(inputs, pairs[0])
    plan = _plan(inputs, options, pairs, volume_structure, case_structure)
    steps = _Steps(
        7 + 2 * len(plan.structures) + sum(len(v) for v in plan.viewer_cases.values()), progress
    )
    result = ReportResult(out=target, index=target / "index.html")
    with atomic_dir(target, replace=overwrite) as tmp:
        w = _Writer(tmp)
        table_entries = _write_tables(w, inputs, plan)
        steps.tick("tables")
        figs = _Figures(w, options.dpi)
        _case_figures(figs, inputs, options, plan, steps)
        _structure_figures(figs, inputs, options, plan, steps)
        _overview_figures(figs, inputs, plan, steps)
        viewer_entries = _write_viewers(w, inputs, options, plan, steps)
        for entry in viewer_entries:
            result.viewers[entry["cohort"]] = target / entry["href"]
        summary = summarize(
            plan.comparison,
            inputs.metrics,
            pairs=plan.pairs,
            cohorts=plan.cohorts,
            volume_structure=plan.volume_structure,
            meta=inputs.comparison_meta,
        )
        provenance = _provenance(inputs, options, plan.volume_structure)
        context = _html_context(
            inputs,
            options,
            plan,
            summary,
            provenance,
            qa,
            table_entries=table_entries,
            figure_entries=figs.entries,
            viewer_entries=viewer_entries,
        )
        w.text("index.html", render_report(context))
        steps.tick("HTML report")
        files = sorted([*w.files, "report.json"])
        write_json(
            tmp / "report.json",
            {
                **provenance,
                "files": files,
                "summary": summary.paragraphs(),
                "prediction_qa": qa["models"],
            },
        )
        result.files = files
    return result


def _refuse_existing(target: Path) -> NoReturn:
    """Refuse to write over an existing report unless asked to (``overwrite``)."""
    raise ReportError(
        "report folder already exists",
        where=str(target),
        expected="a new folder",
        found="an existing " + ("folder" if target.is_dir() else "file"),
        fix="choose another --out, or pass --overwrite to replace it",
    )


@dataclass(frozen=True)
class _Plan:
    """What the report shows, resolved from the inputs and the options."""

    pairs: list[tuple[str, str]]
    comparison: pd.DataFrame
    models: list[str]  # compared models first, then the others of the metrics table
    cohorts: list[str]
    structures: list[str]
    volume_structure: str
    case_structure: str
    colours: dict[str, str]
    colour_names: dict[str, str]
    showcase: dict[str, list[str]]  # cases of the representative-slices figure, per cohort
    viewer_cases: dict[str, list[str]]  # cases of the viewer, per cohort (none: no viewer)


def _plan(
    inputs: ReportInputs,
    options: ReportOptions,
    pairs: list[tuple[str, str]],
    volume_structure: str,
    case_structure: str,
) -> _Plan:
    """Models in colour-role order, cohorts, structures, colours and the cases to show."""
    comparison = inputs.comparison
    assert comparison is not None
    models = list(dict.fromkeys([m for pair in pairs for m in pair] + inputs.model_names))
    cohorts = inputs.cohort_names
    palette = get_palette(options.palette)
    metrics = inputs.metrics
    return _Plan(
        pairs=pairs,
        comparison=comparison,
        models=models,
        cohorts=cohorts,
        structures=inputs.structure_names,
        volume_structure=volume_structure,
        case_structure=case_structure,
        colours=palette.colours(models),
        colour_names=palette.names(models),
        showcase=_showcase_cases(metrics, cohorts, options, case_structure),
        viewer_cases=(
            {c: sorted(set(metrics.loc[metrics["cohort"] == c, "case_id"])) for c in cohorts}
            if options.viewer
            else {}
        ),
    )


class _Steps:
    """Counts the steps done and reports them to the progress callback."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self.progress = progress

    def tick(self, label: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, label)


def _write_tables(w: _Writer, inputs: ReportInputs, plan: _Plan) -> list[dict[str, Any]]:
    """Table 1 (cohorts), Table 2 of each compared pair and the volume table."""
    entries = []
    t1 = tables.cohort_table(inputs.dataset, plan.cohorts)
    entries.append(
        {
            "id": "table1",
            "short": "Cohorts (Table 1)",
            "html": t1.to_html("table1"),
            "files": w.table("tables/table1_cohorts", t1),
        }
    )
    for i, pair in enumerate(plan.pairs):
        entries.append(_write_table2(w, inputs, plan, i, pair))
    volume = plan.volume_structure
    tv = tables.volume_table(
        inputs.metrics, volume, plan.models, plan.cohorts, plan.comparison, plan.pairs[0]
    )
    entries.append(
        {
            "id": "volume-table",
            "short": f"{volume} volumes",
            "html": tv.to_html("volume-table"),
            "files": w.table(f"tables/volume_{volume}", tv),
        }
    )
    return entries


def _write_table2(
    w: _Writer, inputs: ReportInputs, plan: _Plan, i: int, pair: tuple[str, str]
) -> dict[str, Any]:
    """Table 2 of the ``i``-th compared pair, rendered by the evaluation, shown in HTML."""
    a, b = pair
    comparison = plan.comparison
    rows = comparison[(comparison["model_a"] == a) & (comparison["model_b"] == b)]
    agreement = inputs.interobserver
    if agreement is not None:
        agreement = agreement[agreement["model_b"].isin([a, b])]
    stem = "table2" if len(plan.pairs) == 1 else f"table2_{_safe_name(b)}_vs_{_safe_name(a)}"
    files = [
        w.text(f"tables/{stem}.{fmt}", tables.table2(rows, fmt, plan.cohorts, agreement))
        for fmt in ("md", "tex", "csv")
    ]
    caption = _table2_caption(w.root / f"tables/{stem}.md")
    t2 = tables.table2_display(
        (w.root / f"tables/{stem}.csv").read_text(encoding="utf-8"),
        f"Table 2. {b} against {a}: metrics per structure (mean ± SD) and the paired "
        "test's p-values, per cohort",
        [caption] if caption else [],
    )
    anchor = "table2" if i == 0 else f"table2-{i + 1}"
    return {
        "id": anchor,
        "short": f"Results (Table 2, {b} vs {a})",
        "html": t2.to_html(anchor),
        "files": files,
    }


class _Figures:
    """Writes the report's figures (PNG and SVG) and collects their entries for the HTML."""

    def __init__(self, writer: _Writer, dpi: int) -> None:
        self.writer = writer
        self.dpi = dpi
        self.entries: list[dict[str, Any]] = []

    def add(self, stem: str, fig: Any, short: str, title: str, caption: str) -> None:
        files = self.writer.figure(f"figures/{stem}", fig, self.dpi)
        uri, width, height = png_data_uri(self.writer.root / files[0])
        scale = 96.0 / self.dpi  # CSS pixels at the figure's physical size
        self.entries.append(
            {
                "id": f"fig-{stem}",
                "short": short,
                "title": title,
                "caption": caption,
                "alt": title,
                "data_uri": uri,
                "width": round(width * scale),
                "height": round(height * scale),
                "files": files,
            }
        )


def _colour_text(plan: _Plan) -> str:
    """The colours of the captions: "GT red, VPM blue, …"."""
    return ", ".join(f"{s} {plan.colour_names[s]}" for s in [GROUND_TRUTH, *plan.models])


def _case_figures(
    figs: _Figures, inputs: ReportInputs, options: ReportOptions, plan: _Plan, steps: _Steps
) -> None:
    """Representative slices (the seed paper's Fig. 3) and the volume profile (Fig. 4)."""
    colour_text = _colour_text(plan)
    loaded = [
        load_case_images(inputs, cid, plan.structures)
        for cid in [c for ids in plan.showcase.values() for c in ids]
    ]
    how = (
        f"the case whose {plan.case_structure} DSC is closest to the cohort median"
        if options.cases[0] == "median"
        else f"the case with the lowest {plan.case_structure} DSC"
        if options.cases[0] == "worst"
        else "cases chosen by id"
    )
    figs.add(
        "slices",
        figures.representative_slices(
            loaded, plan.colours, structures=plan.structures, n_slices=options.n_slices
        ),
        "Representative slices",
        "Representative cases",
        f"Axial CT slices, a row per case ({how}; "
        + "; ".join(f"{c}: {', '.join(ids)}" for c, ids in plan.showcase.items())
        + f"), with the contours of {colour_text}. Slices chosen to show as many "
        "structures as possible; soft-tissue window (level 40 HU, width 400 HU); "
        "radiological view. The seed paper's Fig. 3.",
    )
    del loaded
    steps.tick("representative slices")
    volume = plan.volume_structure
    figs.add(
        f"volume_profile_{volume}",
        figures.volume_profile(inputs.metrics, volume, plan.models, plan.cohorts, plan.colours),
        f"{volume} volume profile",
        f"{volume} volume per case",
        f"Upper panels: {volume} volume of GT and each model per case, cases "
        "sorted by GT volume. Lower panels: relative volume error (V − V_GT) / V_GT of each "
        f"model. {colour_text}. The seed paper's Fig. 4.",
    )
    steps.tick("volume profile")


def _structure_figures(
    figs: _Figures, inputs: ReportInputs, options: ReportOptions, plan: _Plan, steps: _Steps
) -> None:
    """Per structure: metric distributions with p-values (Fig. 5), then Bland–Altman plots."""
    metrics = inputs.metrics
    metric_names = ", ".join(metric_info(m).short for m in options.metrics)
    test_text = _test_text(plan.comparison, plan.pairs)
    for name in plan.structures:
        figs.add(
            f"distributions_{name}",
            figures.metric_distributions(
                metrics,
                name,
                options.metrics,
                plan.models,
                plan.cohorts,
                plan.colours,
                comparison=plan.comparison,
                pairs=plan.pairs,
            ),
            f"{name} metric distributions",
            f"{name}: distributions of {metric_names}",
            f"{name}: {metric_names} per model, a row per cohort. Boxes: median and "
            "quartiles; whiskers: 1.5 × IQR; dots: cases. Brackets: "
            + test_text
            + " (bold: significant). The seed paper's Fig. 5.",
        )
        steps.tick(f"distributions {name}")
    for name in plan.structures:
        figs.add(
            f"bland_altman_{name}",
            figures.bland_altman(metrics, name, plan.models, plan.cohorts, plan.colours),
            f"{name} volume agreement",
            f"{name}: volume agreement with GT",
            f"Bland–Altman plot of each model's {name} volume against GT: difference "
            "(model − GT) over the mean of the two. Solid line: bias (value at the right); "
            "dashed lines: 95 % limits of agreement (bias ± 1.96 SD).",
        )
        steps.tick(f"Bland-Altman {name}")


def _overview_figures(figs: _Figures, inputs: ReportInputs, plan: _Plan, steps: _Steps) -> None:
    """The DSC heat map, and the learning curves of each model trained in the study."""
    figs.add(
        "dsc_heatmap",
        figures.dsc_heatmap(inputs.metrics, plan.structures, plan.models, plan.cohorts),
        "DSC heat map",
        "DSC of every case and structure",
        "DSC per structure (rows) and case (columns, grouped by cohort), a panel per "
        "model; grey: undefined (both masks empty).",
    )
    steps.tick("DSC heat map")
    for model, run_dir in inputs.training_runs.items():
        figs.add(
            f"learning_curves_{_safe_name(model)}",
            learning_curves_figure(json.loads((run_dir / "cv.json").read_text(encoding="utf-8"))),
            f"{model} learning curves",
            f"{model}: learning curves",
            f"Training of {model}, a panel per cross-validation fold: training loss "
            "(solid) and validation loss (dashed) per epoch on the left "
            "axis (log scale); validation DSC of each structure on the model grid (thin) and "
            "their mean (thick) on the right axis; dotted line: the epoch the fold kept.",
        )
    if inputs.training_runs:
        steps.tick("learning curves")


def _write_viewers(
    w: _Writer, inputs: ReportInputs, options: ReportOptions, plan: _Plan, steps: _Steps
) -> list[dict[str, Any]]:
    """The contour viewer, one page per cohort; their entries (cohort, href, n_cases)."""
    entries: list[dict[str, Any]] = []
    for cohort, ids in plan.viewer_cases.items():
        rel = f"viewer/{_safe_name(cohort)}.html"

        def load(case_id: str) -> CaseImages:
            return load_case_images(inputs, case_id, plan.structures)

        def case_done(case_id: str, cohort: str = cohort) -> None:
            steps.tick(f"viewer {cohort} {case_id}")

        html = render_viewer(
            cohort,
            ids,
            load,
            inputs.metrics,
            colours=plan.colours,
            structures=plan.structures,
            max_px=options.viewer_max_px,
            image_format=options.viewer_format,
            title=f"{options.title} — {cohort}",
            progress=case_done,
        )
        w.text(rel, html)
        entries.append({"cohort": cohort, "href": rel, "n_cases": len(ids)})
    return entries


def _html_context(
    inputs: ReportInputs,
    options: ReportOptions,
    plan: _Plan,
    summary: Summary,
    provenance: dict[str, Any],
    qa: dict[str, Any],
    *,
    table_entries: list[dict[str, Any]],
    figure_entries: list[dict[str, Any]],
    viewer_entries: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the HTML template shows: the entries of the tables, figures and viewer pages
    with the summary, QA, definitions, settings and provenance."""
    metrics = inputs.metrics
    return {
        "title": options.title,
        "version": __version__,
        "models": plan.models,
        "cohorts": [
            {"name": c, "n": int(metrics.loc[metrics["cohort"] == c, "case_id"].nunique())}
            for c in plan.cohorts
        ],
        "structures": plan.structures,
        "summary": {
            "cohorts": [c.outline() for c in summary.cohorts],
            "volumes": summary.volumes,
            "notes": summary.notes,
            "method": summary.method,
        },
        "tables": table_entries,
        "qa": qa,
        "figures": figure_entries,
        "viewers": viewer_entries,
        "definitions": _definitions(inputs.metrics_meta),
        "metric_settings": _flatten(
            {k: v for k, v in inputs.metrics_meta.items() if k not in _NOT_SETTINGS}
        ),
        "statistics_settings": _flatten(inputs.comparison_meta.get("settings", {})),
        "provenance": [(k, v) for k, v in _provenance_rows(provenance)],
    }


def _table2_caption(markdown: Path) -> str:
    """The caption the evaluation's renderer put under its Markdown table (the test and the
    correction used), to show under the HTML table too."""
    lines = markdown.read_text(encoding="utf-8").rstrip().splitlines()
    last = lines[-1].strip() if lines else ""
    return "" if not last or last.startswith("|") else last.strip("*_ ")


def _showcase_cases(
    metrics: pd.DataFrame, cohorts: Sequence[str], options: ReportOptions, structure: str
) -> dict[str, list[str]]:
    """Cases of the representative-slices figure, per cohort, in row order."""
    rule = options.cases[0]
    if rule in ("median", "worst"):
        return {
            c: choose_cases(metrics, c, rule=rule, structure=structure, n=options.cases_per_cohort)
            for c in cohorts
        }
    by_cohort: dict[str, list[str]] = {}
    cohort_of = metrics.drop_duplicates("case_id").set_index("case_id")["cohort"]
    for case_id in options.cases:
        by_cohort.setdefault(str(cohort_of[case_id]), []).append(case_id)
    return {c: by_cohort[c] for c in cohorts if c in by_cohort}


def _test_text(comparison: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> str:
    tests = ", ".join(sorted(set(comparison["test"].astype(str))))
    corrections = sorted(set(comparison["correction"].astype(str)))
    correction = (
        "no correction"
        if corrections in (["none"], [""], ["nan"])
        else "adjusted p, " + ", ".join(corrections) + " correction"
    )
    pair_text = ", ".join(f"{b} vs {a}" for a, b in pairs)
    return f"p-value of the paired {tests} test, {pair_text} ({correction})"


def _provenance(inputs: ReportInputs, options: ReportOptions, volume: str) -> dict[str, Any]:
    dataset = inputs.dataset
    return {
        "software": {"name": "dlas", "version": __version__},
        "metrics_software": inputs.metrics_meta.get("software"),
        "models": inputs.models,
        "config": inputs.config,
        "dataset": {
            "name": dataset.name,
            "n_cases": len(dataset),
            "structure_set": dataset.structure_set.name,
            "structure_set_sha256": dataset.structure_set.sha256(),
        },
        "inputs": dict(sorted(inputs.sources.items())),
        "options": {**asdict(options), "volume_structure": volume},
    }


def _provenance_rows(provenance: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = [("Report written by", f"dlas {provenance['software']['version']}")]
    software = provenance.get("metrics_software")
    if software:
        rows.append(("Metrics computed by", json.dumps(software, sort_keys=True)))
    for model in provenance["models"]:
        digest = model.get("sha256") or "not recorded"
        rows.append((f"Model {model['name']}", f"sha256 {digest} ({model.get('source', '')})"))
    config = provenance.get("config")
    rows.append(
        (
            "Configuration",
            f"{config['path']} sha256 {config['sha256']}"
            if config
            else "not recorded (report built from a metrics table)",
        )
    )
    ds = provenance["dataset"]
    rows.append(
        (
            "Data set",
            f"{ds['name']}: {ds['n_cases']} cases, structure set "
            f"{ds['structure_set']} (sha256 {ds['structure_set_sha256']})",
        )
    )
    for name, digest in provenance["inputs"].items():
        rows.append((f"Input {name}", f"sha256 {digest}"))
    rows.append(("Report options", json.dumps(provenance["options"], sort_keys=True)))
    return rows
