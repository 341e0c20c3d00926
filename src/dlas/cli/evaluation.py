"""Commands about evaluation: ``dlas evaluate`` and ``dlas compare``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from dlas.cli._common import SETTINGS, progress_callback, stdout

__all__ = ["register"]


def evaluate(
    reference: Path = typer.Option(
        ..., "--reference", help="The data set holding the reference structures (dataset.json)."
    ),
    prediction: list[str] = typer.Option(
        ...,
        "--prediction",
        help="NAME=DIR: predictions "
        "DIR/<case_id>/structures/<Name>.nii.gz under a model "
        "name; repeat for several models.",
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
    workers: int = typer.Option(1, "--workers", help="Worker processes (cases in parallel)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing metrics table and its sidecar."
    ),
) -> None:
    """Compute every metric of every structure, case and model into one long table."""
    from dlas.evaluation import MetricOptions, parse_prediction
    from dlas.evaluation import evaluate as run_evaluation
    from dlas.io.atomic import check_output

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
    sources = [parse_prediction(p) for p in prediction]
    with progress_callback("evaluate") as progress:
        result = run_evaluation(
            reference,
            sources,
            options=options,
            cohorts=cohort or None,
            cases=case or None,
            structures=structure or None,
            resample=resample,
            workers=workers,
            progress=progress,
        )
    csv_path, sidecar = result.write(out)
    if not SETTINGS.quiet:
        _print_summary(result.table, options.hd95)
        stdout().print(f"wrote {csv_path} and {sidecar}")


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
    """Paired statistics of model B against model A per cohort, structure and metric."""
    from dlas.evaluation import COMPARISON_FILES, render_table2, write_comparison
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
    # Render first: an unknown --table-metric is refused before anything is written.
    render_table2(result, "markdown", metrics=table_metric or None)
    paths = write_comparison(result, out, source=metrics, table_metrics=table_metric or None)
    if not SETTINGS.quiet:
        console = stdout()
        console.print(
            render_table2(result, "markdown", metrics=table_metric or None, caption=False),
            markup=False,
        )
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` and ``compare`` to the application."""
    app.command("evaluate")(evaluate)
    app.command("compare")(compare)
