"""``dlas study``: the whole study in one command."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from dlas.cli._common import settings, stderr, stdout
from dlas.study_layout import StudyLayout

__all__ = ["register"]


@contextmanager
def _study_log(path: Path) -> Iterator[None]:
    """Mirror the library's log records (INFO and up) into the study's log file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dlas")
    previous = root.level
    root.addHandler(handler)
    root.setLevel(min(previous or logging.WARNING, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


@contextmanager
def _progress_display() -> Iterator[Any]:
    console = stderr()
    if settings().quiet or not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.fields[step]:<9}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
    ) as progress:
        task = progress.add_task("study", total=1000, step="", note="")

        def update(event: Any) -> None:
            progress.update(
                task,
                completed=round(1000 * event.fraction),
                step=event.step,
                note=event.message[:60],
            )

        yield update


def study(
    config: Path | None = typer.Argument(
        None, help="Study configuration (YAML). Leave out to run the embedded replica study."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Study folder (new, or an interrupted study with --resume)."
    ),
    preset: str = typer.Option(
        "demo",
        "--preset",
        help="Embedded replica study when no "
        "CONFIG is given: tiny (tests), demo (2-core CPU, minutes), "
        "paper (full size, GPU).",
    ),
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="With a preset: train with dpnunet (default) or nnunet (nnU-Net v2, for a GPU; "
        "`pip install 'dlas[nnunet]'`). A configuration names its engine itself (engine:).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted study; completed steps are skipped."
    ),
) -> None:
    """Run the whole study: data, pretrain, fine-tune with CV, predict, evaluate, compare,
    report."""
    from dlas.study import check_study_folder, load_study_config, preset_config, run_study

    if config is not None and engine is not None:
        from dlas.errors import StudyError

        raise StudyError(
            "--engine together with a configuration",
            where=f"--engine {engine}",
            expected="--engine with a preset only",
            found=f"the configuration {config}",
            fix=f"write `engine: {engine}` into {config.name}, or leave out --engine",
        )
    resolved = (
        load_study_config(config)
        if config is not None
        else preset_config(preset, engine or "dpnunet")
    )
    check_study_folder(out, resolved, resume=resume)  # before the log file appears in it
    with _study_log(StudyLayout(out).log), _progress_display() as progress:
        result = run_study(resolved, out, device=device, resume=resume, progress=progress)
    if settings().quiet:
        return
    ran = [s for s, state in result.steps.items() if state == "ran"]
    skipped = [s for s, state in result.steps.items() if state == "skipped"]
    total = sum(result.seconds.values())
    console = stdout()
    console.print(f"study {resolved.name} complete in {result.root} ({total:.0f} s)")
    if skipped:
        console.print("already complete, skipped: " + ", ".join(skipped))
    console.print("ran: " + (", ".join(ran) or "nothing"))
    console.print(f"report: {result.report}")


def example_config(
    name: str = typer.Argument(
        ...,
        help="hospital (fine-tune and compare on your DICOM export) or contours "
        "(commission exported contours, no training).",
    ),
) -> None:
    """Print a commented example study configuration: dlas example-config hospital > study.yaml"""
    from dlas.study import example_config as text_of

    sys.stdout.write(text_of(name))


def register(app: typer.Typer) -> None:
    """Add ``study`` and ``example-config`` to the application."""
    app.command("study")(study)
    app.command("example-config")(example_config)
