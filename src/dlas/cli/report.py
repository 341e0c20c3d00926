"""``dlas report``: the study's tables, figures, HTML report and contour viewer."""

from __future__ import annotations

from pathlib import Path

import typer

from dlas.cli._common import progress_callback, settings, stdout

__all__ = ["register"]


def _parse_predictions(values: list[str]) -> dict[str, Path]:
    from dlas.report import ReportError

    out: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ReportError(
                "malformed --prediction",
                where=f"--prediction {value}",
                expected="NAME=DIR, e.g. VPM=predictions/VPM",
                found=repr(value),
                fix="write the model name, an equals sign, and the folder",
            )
        if name in out:
            raise ReportError(
                "model given twice",
                where=f"--prediction {value}",
                expected="one --prediction per model",
                found=f"{name} twice",
                fix="drop one of them",
            )
        out[name.strip()] = Path(folder.strip())
    return out


def report(
    source: Path = typer.Argument(
        ..., help="A study folder (with study.yaml), or a metrics CSV from `dlas evaluate`."
    ),
    out: Path = typer.Option(..., "--out", help="Report folder to create."),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="Data set of the metrics CSV (not with a study folder)."
    ),
    prediction: list[str] = typer.Option(
        [],
        "--prediction",
        help="NAME=DIR: prediction folder of a model of the metrics CSV (repeat).",
    ),
    comparison: Path | None = typer.Option(
        None,
        "--comparison",
        help="Folder (or file) of comparison.csv from `dlas compare`; computed when absent.",
    ),
    model_a: str | None = typer.Option(
        None, "--a", help="Reference model when no comparison is given (e.g. VPM)."
    ),
    model_b: str | None = typer.Option(None, "--b", help="Model compared with it (e.g. LFT)."),
    title: str = typer.Option("Auto-segmentation study report", "--title", help="Report heading."),
    volume_structure: str | None = typer.Option(
        None,
        "--volume-structure",
        help="Structure of the volume table and profile (default CTV, else the first).",
    ),
    cases: str = typer.Option(
        "median",
        "--cases",
        help="Cases of the representative-slices "
        "figure: median, worst (by DSC), or ids separated by commas.",
    ),
    cases_per_cohort: int = typer.Option(
        1, "--cases-per-cohort", help="Cases per cohort chosen by median/worst."
    ),
    case_structure: str | None = typer.Option(
        None,
        "--case-structure",
        help="Structure whose DSC chooses the cases (default: the volume structure).",
    ),
    slices: int = typer.Option(3, "--slices", help="Slices per case in that figure."),
    metric: list[str] = typer.Option(
        [],
        "--metric",
        help="Metric of the distribution "
        "figures (repeat; default dsc, sensitivity, "
        "specificity, hd95_mm).",
    ),
    palette: str = typer.Option(
        "paper", "--palette", help="paper (GT red, VPM blue, LFT green) or colorblind (Okabe-Ito)."
    ),
    dpi: int = typer.Option(200, "--dpi", help="Resolution of the PNG figures."),
    viewer: bool = typer.Option(True, "--viewer/--no-viewer", help="Write the contour viewer."),
    viewer_max_px: int = typer.Option(
        320, "--viewer-max-px", help="Longest side of the viewer's slice images."
    ),
    viewer_format: str = typer.Option("webp", "--viewer-format", help="webp, png or jpeg."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an existing report folder (only once the new one is complete).",
    ),
) -> None:
    """Write the study report: tables, figures, one self-contained HTML page and a viewer."""
    from dlas.report import ReportOptions, build_report, resolve_inputs

    inputs = resolve_inputs(
        source, dataset=dataset, predictions=_parse_predictions(prediction), comparison=comparison
    )
    options = ReportOptions(
        title=title,
        volume_structure=volume_structure,
        cases=tuple(c.strip() for c in cases.split(",") if c.strip()),
        cases_per_cohort=cases_per_cohort,
        case_structure=case_structure,
        n_slices=slices,
        metrics=tuple(metric) or ReportOptions.metrics,
        palette=palette,
        model_a=model_a,
        model_b=model_b,
        dpi=dpi,
        viewer=viewer,
        viewer_max_px=viewer_max_px,
        viewer_format=viewer_format,
    )
    with progress_callback("report") as progress:
        result = build_report(inputs, out, options, overwrite=overwrite, progress=progress)
    if not settings().quiet:
        console = stdout()
        console.print(f"report written to {result.index}")
        for cohort, path in result.viewers.items():
            console.print(f"viewer {cohort}: {path}")


def register(app: typer.Typer) -> None:
    """Add ``dlas report`` to the application."""
    app.command("report")(report)
