"""Commands of the synthetic replica: ``dlas phantom`` and ``dlas phantom-preview``."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from dlas.cli._common import progress_callback, settings, stdout

__all__ = ["register"]


def _usable_cpus() -> int:
    """CPU cores this process may run on (``os.cpu_count`` counts the whole host)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def phantom(
    out: Path = typer.Argument(..., help="New or empty folder for the replica."),
    preset_name: str = typer.Option(
        "demo",
        "--preset",
        help="demo (small, for a CPU) or paper (the study's sizes, 512x512, 5 mm).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
    cohort: list[str] = typer.Option(
        [], "--cohort", help="Cohort size NAME=COUNT (vendor, training, ExVal, GenEva); repeatable."
    ),
    fmt: str = typer.Option(
        "dicom",
        "--format",
        help="dicom (CT series + RTSTRUCT per patient) or nifti (a dlas data set, for fast tests).",
    ),
    workers: int = typer.Option(1, "--workers", help="Patients generated in parallel (processes)."),
    preview: Path | None = typer.Option(
        None,
        "--preview",
        help="Also draw representative slices with both contouring styles to this PNG.",
    ),
) -> None:
    """Generate the study's cohorts as pelvic CT phantoms with ground-truth RTSTRUCTs.

    Four cohorts mirror the seed study: vendor (pretraining, the vendor's contouring style and
    scanners), training and ExVal (local style, scanner A, earlier and later dates) and GenEva
    (local style, scanner B). Then: `dlas import OUT DATASET --cohort-by csv:OUT/cohorts.csv`.
    """
    from dlas.phantom import generate, parse_cohort_counts, preset, render_preview
    from dlas.phantom.config import PhantomError

    config = preset(preset_name).with_seed(seed)
    config = config.with_counts(parse_cohort_counts(cohort, config))
    if fmt not in ("dicom", "nifti"):
        raise PhantomError(
            "unknown output format",
            where=f"--format {fmt}",
            expected="dicom or nifti",
            found=repr(fmt),
            fix="use --format dicom (default) or --format nifti",
        )
    if workers == 0:
        workers = min(_usable_cpus(), 8)
    with progress_callback("phantom") as progress:
        manifest = generate(
            out,
            config,
            fmt="dicom" if fmt == "dicom" else "nifti",
            workers=workers,
            progress=progress,
        )
    if preview is not None:
        # The first ExVal and GenEva patients, as in the paper's figure; else whatever was made.
        made = [c.name for c in config.cohorts if c.count > 0]
        shown = [name for name in ("ExVal", "GenEva") if name in made] or made[:2]
        render_preview(config, preview, cases=[(name, 0) for name in shown])
    if not settings().quiet:
        counts = ", ".join(f"{name}: {c['count']}" for name, c in manifest["cohorts"].items())
        stdout().print(
            f"wrote {len(manifest['patients'])} patient(s) to {out} ({counts}); "
            f"preset {config.preset}, seed {config.seed}, format {fmt}"
        )
        if fmt == "dicom":
            stdout().print(
                f"import with: dlas import {out} DATASET --cohort-by "
                f"csv:{Path(out) / 'cohorts.csv'}"
            )
        if preview is not None:
            stdout().print(f"preview: {preview}")


def phantom_preview(
    figure: Path = typer.Argument(..., help="Image file to write (PNG, PDF or SVG)."),
    preset_name: str = typer.Option("demo", "--preset", help="demo or paper."),
    seed: int = typer.Option(0, "--seed", help="Random seed (as for `dlas phantom`)."),
    case: list[str] = typer.Option(
        [],
        "--case",
        help="Patient COHORT:INDEX to show; repeatable (default ExVal:0 and GenEva:0).",
    ),
) -> None:
    """Draw representative slices of phantom patients with both contouring styles (Fig. 3).

    Red: the local institution's contours (the ground truth of training, ExVal and GenEva);
    blue: the vendor's contours of the same anatomy. Nothing else is written.
    """
    from dlas.phantom import preset, render_preview
    from dlas.phantom.config import PhantomError

    config = preset(preset_name).with_seed(seed)
    cases: list[tuple[str, int]] = []
    for item in case:
        name, _, index = item.rpartition(":")
        if not name or not index.isdigit():
            raise PhantomError(
                "malformed --case",
                where=f"--case {item}",
                expected="COHORT:INDEX, e.g. GenEva:3",
                found=repr(item),
                fix="give the cohort name and the patient index (from 0)",
            )
        config.cohort(name)
        cases.append((name, int(index)))
    render_preview(config, figure, cases=cases or (("ExVal", 0), ("GenEva", 0)))
    if not settings().quiet:
        stdout().print(f"wrote {figure}")


def register(app: typer.Typer) -> None:
    """Add the phantom commands to the application."""
    app.command("phantom")(phantom)
    app.command("phantom-preview")(phantom_preview)
