"""Commands about evaluation: ``dlas evaluate`` and ``dlas compare``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from dlas.cli._common import progress_callback, settings, stdout

__all__ = ["register"]


def evaluate(
    reference: Path = typer.Option(
        ...,
        "--reference",
        help="The data set holding the reference structures (dataset.json); with --dicom, "
        "the data set to import into first (created if needed).",
    ),
    prediction: list[str] | None = typer.Option(
        None,
        "--prediction",
        help="NAME=DIR: predictions "
        "DIR/<case_id>/structures/<Name>.nii.gz under a model "
        "name, or NAME alone: the data set's contour set NAME; repeat for several models "
        "(default: every contour set of the data set other than the reference).",
    ),
    reference_set: str | None = typer.Option(
        None,
        "--reference-set",
        help="Contour set to measure against (default: the data set's reference set); with "
        "--dicom also the set imported as the reference.",
    ),
    dicom: Path | None = typer.Option(
        None,
        "--dicom",
        help="A DICOM export (CT series with RTSTRUCTs/SEGs) to import into --reference "
        "first, its objects sorted into sets by --contour-set rules.",
    ),
    contour_set: list[str] | None = typer.Option(
        None,
        "--contour-set",
        help="With --dicom: NAME=COND[,COND...] rules as for `dlas import` (repeatable).",
    ),
    labels: list[str] | None = typer.Option(
        None,
        "--labels",
        help="NAME=TABLE: prediction NAME is a folder of label maps DIR/<case_id>.nii.gz "
        "(nnU-Net, TotalSegmentator, MONAI) with this label table (classes.json, dataset.json "
        "or CSV label,name); names are matched to the structure set like ROI names.",
    ),
    observer: list[str] | None = typer.Option(
        None,
        "--observer",
        help="Another clinician's contours (a contour set NAME, or NAME=DIR), evaluated as the "
        "inter-observer reference: `dlas compare` shows each model against it (repeatable).",
    ),
    structures_file: str = typer.Option(
        "rectal",
        "--structures",
        help="With --dicom: structure set of a new data set (a YAML file or a built-in name).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Metrics table to write (.csv); the sidecar "
        "with definitions and hashes goes next to it (.json).",
    ),
    hd95: str = typer.Option(
        "pooled",
        "--hd95",
        help="95HD variant: pooled (the paper's "
        "equation, MedPy), max (MONAI, DeepMind) or mean (3D Slicer).",
    ),
    specificity_domain: str = typer.Option(
        "reference-bbox",
        "--specificity-domain",
        help="True negatives counted in: reference-bbox, union-bbox, body or image.",
    ),
    specificity_margin: float = typer.Option(
        10.0, "--specificity-margin-mm", help="Growth of the reference bounding box (mm)."
    ),
    tolerance: float = typer.Option(
        2.0, "--tolerance-mm", help="Tolerance of surface DSC and added path length (mm)."
    ),
    cohort: list[str] | None = typer.Option(
        None, "--cohort", help="Evaluate only this cohort (repeatable)."
    ),
    case: list[str] | None = typer.Option(
        None, "--case", help="Evaluate only this case (repeatable)."
    ),
    structure: list[str] | None = typer.Option(
        None, "--structure", help="Evaluate only this structure (repeatable)."
    ),
    resample: bool = typer.Option(
        False,
        "--resample",
        help="Resample predictions on another "
        "grid onto the reference grid (nearest neighbour, flagged) "
        "instead of refusing them.",
    ),
    workers: str = typer.Option(
        "auto",
        "--workers",
        help="Processes evaluating cases in parallel: a number, or auto (one per usable CPU "
        "core, at most 8).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing metrics table and its sidecar."
    ),
) -> None:
    """Compute every metric of every structure, case and model into one long table.

    From a DICOM export in one command: --dicom EXPORT --reference DATASET --contour-set
    clinical=approved --contour-set VPM=manufacturer:ACME --reference-set clinical.
    """
    from dlas.dataset import CaseDataset
    from dlas.evaluation import MetricOptions, parse_prediction
    from dlas.evaluation import evaluate as run_evaluation
    from dlas.io.atomic import check_output

    n_workers = _worker_count(workers)
    check_output(
        out,
        folder=False,
        option="--out",
        overwrite=overwrite,
        existing=(out.with_suffix(".json").name,),
    )

    options = MetricOptions(
        hd95=hd95,  # type: ignore[arg-type]  # validated by MetricOptions
        specificity_domain=specificity_domain,  # type: ignore[arg-type]
        specificity_margin_mm=specificity_margin,
        tolerance_mm=tolerance,
    )
    if dicom is not None:
        _import_for_evaluation(dicom, reference, contour_set or [], reference_set, structures_file)
    elif contour_set:
        from dlas.errors import EvaluationError

        raise EvaluationError(
            "contour-set rules without a DICOM export",
            where="--contour-set",
            expected="--dicom EXPORT with the rules, or contour sets already imported",
            found="--contour-set without --dicom",
            fix="add --dicom EXPORT, or name the imported sets with --prediction NAME",
        )
    dataset = CaseDataset.open(reference)
    specs = list(prediction or _all_sets(dataset, reference_set, observer or []))
    sources = _with_labels(
        [parse_prediction(p, dataset) for p in [*specs, *(observer or [])]], labels or []
    )
    with progress_callback("evaluate") as progress:
        result = run_evaluation(
            dataset,
            sources,
            options=options,
            cohorts=cohort or None,
            cases=case or None,
            structures=structure or None,
            resample=resample,
            workers=n_workers,
            progress=progress,
            reference_set=reference_set,
            observers=[s.name for s in sources[len(specs) :]],
        )
    csv_path, sidecar = result.write(out)
    if not settings().quiet:
        _print_summary(result.table, options.hd95)
        stdout().print(f"wrote {csv_path} and {sidecar}")


def _import_for_evaluation(
    dicom: Path, dataset: Path, rules: list[str], reference_set: str | None, structures: str
) -> None:
    """`dlas import` of a DICOM export with contour-set rules, as `dlas evaluate --dicom`."""
    from dlas.dataset import CaseDataset, ContourSetRules, ImportOptions, import_source
    from dlas.structures import load_structure_set

    structure_set = (
        CaseDataset.open(dataset).structure_set
        if (dataset / "dataset.json").is_file()
        else load_structure_set(structures)
    )
    options = ImportOptions(
        structure_set=structure_set,
        contour_sets=ContourSetRules.from_options(rules, reference_set),
    )
    with progress_callback("import") as progress:
        report = import_source(dicom, dataset, options, progress=progress)
    if not settings().quiet:
        stdout().print(
            f"imported {len(report.imported)} case(s) into {dataset}"
            + (
                f", {len(report.skipped)} refused (see import-report.json)"
                if report.skipped
                else ""
            )
        )


def _with_labels(sources: list[Any], specs: list[str]) -> list[Any]:
    """The predictions with ``--labels NAME=TABLE`` applied to the folders they name."""
    import dataclasses

    from dlas.errors import EvaluationError

    tables: dict[str, Path] = {}
    for spec in specs:
        name, sep, table = spec.partition("=")
        if not sep or not table.strip() or name.strip() not in {s.name for s in sources}:
            raise EvaluationError(
                "cannot read the label-table option",
                where=f"--labels {spec}",
                expected="NAME=TABLE with NAME one of the predictions: "
                + ", ".join(s.name for s in sources),
                found=repr(spec),
                fix="write e.g. --prediction TS=ts-out --labels TS=ts-out/classes.json",
            )
        tables[name.strip()] = Path(table.strip())
    return [
        dataclasses.replace(s, labels=tables[s.name]) if s.name in tables else s for s in sources
    ]


def _all_sets(dataset: Any, reference_set: str | None, observers: list[str]) -> list[str]:
    """Every contour set of the data set other than the one measured against and observers."""
    from dlas.errors import EvaluationError

    names = [
        n
        for n in dataset.contour_sets()
        if n != reference_set and n not in {o.partition("=")[0] for o in observers}
    ]
    if not names:
        raise EvaluationError(
            "no prediction given",
            where="--prediction",
            expected="NAME=DIR, or a data set with contour sets other than the reference",
            found=f"{dataset.root} has no other contour set",
            fix="add e.g. --prediction VPM=predictions/vpm",
        )
    return names


def _worker_count(text: str) -> int:
    """``--workers``: a number of 1 or more, or ``auto``: one per CPU core this process may
    use, at most 8 (each worker holds a case's masks in memory)."""
    from dlas.cli.phantom import _usable_cpus
    from dlas.errors import EvaluationError

    if text.strip().lower() == "auto":
        return min(_usable_cpus(), 8)
    count = int(text) if text.strip().isdigit() else 0
    if count < 1:
        raise EvaluationError(
            "invalid number of workers",
            where=f"--workers {text}",
            expected="a whole number of 1 or more, or auto",
            found=repr(text),
            fix="pass e.g. --workers 4, or --workers auto (one per usable CPU core)",
        )
    return count


def _print_summary(table: Any, hd95: str) -> None:
    from rich.table import Table

    summary = Table(title=f"mean per model and structure (95HD: {hd95})", title_justify="left")
    for name in ("model", "structure", "n", "DSC", "95HD (mm)", "flagged"):
        summary.add_column(name)
    for (model, structure), group in table.groupby(["model", "structure"], sort=False):
        dsc = group["dsc"].to_numpy(dtype=float)
        hd = group["hd95_mm"].to_numpy(dtype=float)
        summary.add_row(
            str(model),
            str(structure),
            str(len(group)),
            _mean(dsc),
            _mean(hd),
            str(int((group["flags"] != "").sum())),
        )
    stdout().print(summary)


def _mean(values: Any) -> str:
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return f"{sum(finite) / len(finite):.3f}" if finite else "n/a"


def compare(
    metrics: Path = typer.Argument(..., help="Metrics table written by `dlas evaluate`."),
    a: str = typer.Option(..., "--a", help="Model A (e.g. the vendor model, VPM)."),
    b: str = typer.Option(
        ..., "--b", help="Model B (e.g. the fine-tuned model, LFT); differences are B − A."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Folder for comparison.csv, table2.md/.tex/.csv and comparison.json."
    ),
    correction: str = typer.Option(
        "none", "--correction", help="Multiple-testing correction over all tests: none, holm or bh."
    ),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level."),
    bootstrap: int = typer.Option(
        10000,
        "--bootstrap",
        help="Bootstrap resamples for the 95 % CI of the mean difference (0: none).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    zero_method: str = typer.Option(
        "wilcox",
        "--zero-method",
        help="Zero differences in the Wilcoxon test: wilcox (dropped), pratt or zsplit.",
    ),
    table_metric: list[str] | None = typer.Option(
        None,
        "--table-metric",
        help="Metric column "
        "of Table 2 (repeatable; default dsc, "
        "hd95_mm, sensitivity, specificity).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the comparison files already in --out."
    ),
) -> None:
    """Paired statistics of model B against model A per cohort, structure and metric.

    When the metrics table holds other clinicians' contours (`dlas evaluate --observer`), each
    model is also compared with them (interobserver.csv) and Table 2 shows the observers' rows.
    """
    from dlas.evaluation import (
        COMPARISON_FILES,
        interobserver,
        read_observers,
        render_table2,
        write_comparison,
    )
    from dlas.evaluation import compare as run_compare
    from dlas.io.atomic import check_output

    check_output(out, folder=True, option="--out", overwrite=overwrite, existing=COMPARISON_FILES)

    result = run_compare(
        metrics,
        a,
        b,
        correction=correction,  # type: ignore[arg-type]  # validated by compare
        alpha=alpha,
        bootstrap=bootstrap,
        seed=seed,
        zero_method=zero_method,  # type: ignore[arg-type]
    )
    observers = [o for o in read_observers(metrics) if o not in (a, b)]
    agreement = (
        interobserver(metrics, observers, [a, b], alpha=alpha, zero_method=zero_method)  # type: ignore[arg-type]
        if observers
        else None
    )
    # Render first: an unknown --table-metric is refused before anything is written.
    render_table2(result, "markdown", metrics=table_metric or None, interobserver=agreement)
    paths = write_comparison(
        result,
        out,
        source=metrics,
        table_metrics=table_metric or None,
        interobserver=agreement,
    )
    if not settings().quiet:
        console = stdout()
        console.print(
            render_table2(
                result,
                "markdown",
                metrics=table_metric or None,
                caption=False,
                interobserver=agreement,
            ),
            markup=False,
        )
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` and ``compare`` to the application."""
    app.command("evaluate")(evaluate)
    app.command("compare")(compare)
