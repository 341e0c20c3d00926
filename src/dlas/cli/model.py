"""Commands about models: ``dlas train`` and ``dlas predict``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from dlas.cli._common import print_json, progress_bar, progress_callback, settings, stdout

if TYPE_CHECKING:
    from dlas.training import TrainingEvent

__all__ = ["register"]


@contextmanager
def _training_display() -> Iterator[Any]:
    """A callback for training events: a Rich progress bar per epoch and one line per epoch
    with its losses (nothing when quiet)."""
    if settings().quiet:
        yield lambda event: None
        return
    with progress_bar() as progress:
        task = progress.add_task("preparing cases", total=None)

        def on_event(event: TrainingEvent) -> None:
            if event.kind == "prepare":
                progress.update(
                    task, description="preparing cases", completed=event.step, total=event.steps
                )
            elif event.kind == "plan":
                progress.console.print(event.message)
            elif event.kind == "fold":
                resumed = f" (resuming after epoch {event.epoch})" if event.epoch else ""
                progress.console.print(f"fold {event.fold}/{event.folds}{resumed}")
            elif event.kind == "step":
                where = f"fold {event.fold}/{event.folds} epoch {event.epoch}/{event.epochs}"
                progress.update(
                    task,
                    description=where,
                    completed=event.step,
                    total=event.steps,
                )
            elif event.kind == "epoch":
                progress.console.print(f"  {event.summary()}")

        yield on_event


def train(
    dataset: Path = typer.Argument(
        ..., help="dlas data set to train on (its structure set defines the classes)."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Model folder to write (new or empty, or an interrupted run with --resume).",
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        help="Recipe: a built-in name (paper: the seed study's recipe, the default; fast: the "
        "recipe for real work) or a recipe YAML (which may start from one with `base:`).",
    ),
    pretrained: Path | None = typer.Option(
        None, "--from", help="Pretrained model folder to fine-tune."
    ),
    folds: int | None = typer.Option(
        None,
        "--folds",
        min=1,
        help="Cross-validation folds (1: train on all cases, no validation).",
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs per fold."),
    time_budget: str | None = typer.Option(
        None,
        "--time-budget",
        help="Finish the whole run within this time (e.g. 15m, 1h30m, 900): the first steps "
        "are timed and the epochs sized to fit; the choice is logged and recorded.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    ensemble: bool = typer.Option(
        False, "--ensemble", help="Output the fold ensemble instead of the selected fold."
    ),
    cohort: list[str] = typer.Option(
        [], "--cohort", help="Train on this cohort only (repeatable)."
    ),
    name: str | None = typer.Option(None, "--name", help="Model name written into RTSTRUCTs."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Pretrain or fine-tune a DpnUNet with k-fold cross-validation."""
    from dlas.training import train as run_training

    with _training_display() as on_event:
        result = run_training(
            dataset,
            out,
            config=config,
            pretrained=pretrained,
            folds=folds,
            epochs=epochs,
            time_budget=time_budget,
            device=device,
            resume=resume,
            cohorts=cohort or None,
            ensemble=True if ensemble else None,
            name=name,
            progress=on_event,
        )
    summary: dict[str, Any] = {
        "model": str(result.model_dir),
        "model_sha256": result.model_sha256,
        "selected_fold": result.selected_fold,
        "ensemble": result.ensemble,
        "folds": [
            {"fold": f["fold"], "best_epoch": f["best_epoch"], "best_score": f["best_score"]}
            for f in result.folds
        ],
    }
    if json_out:
        print_json(summary)
        return
    if settings().quiet:
        return
    console = stdout()
    chosen = "fold ensemble" if result.ensemble else f"fold {result.selected_fold}"
    console.print(
        f"model written to {result.model_dir} ({chosen}, sha256 {result.model_sha256[:12]})"
    )
    for f in summary["folds"]:
        score = "" if f["best_score"] is None else f", score {f['best_score']:.4f}"
        console.print(f"  fold {f['fold']}: best epoch {f['best_epoch']}{score}")


def predict(
    model: Path = typer.Argument(..., help="Model folder (from `dlas train`)."),
    source: Path = typer.Argument(
        ..., help="DICOM folder (one or many CT series), NIfTI CT, or dlas data set."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    formats: str | None = typer.Option(
        None,
        "--format",
        help="Comma-separated: rtstruct, seg, "
        "nifti (default: rtstruct for DICOM, nifti otherwise).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    tta: bool = typer.Option(False, "--tta", help="Test-time left-right mirroring (2x time)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Slices per forward pass."),
    cohort: list[str] = typer.Option(
        [], "--cohort", help="Data set input: predict this cohort only (repeatable)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace earlier predictions in --out."
    ),
    qa_fail: str = typer.Option(
        "warn",
        "--qa-fail",
        help="What a prediction flagged by QA does: warn (write it, marked in qa.json and in "
        "the RTSTRUCT/SEG descriptions) or error (write nothing for it, report it failed).",
    ),
    uncertainty_map: bool = typer.Option(
        False,
        "--uncertainty-map",
        help="Ensemble or --tta: also write uncertainty.nii.gz (members disagreeing, per voxel).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Predict structures on CTs and write RTSTRUCT / DICOM SEG / NIfTI masks; every
    prediction is checked by prediction QA (qa.json)."""
    from dlas.prediction import PredictionError
    from dlas.prediction import predict as run_prediction

    with progress_callback("predict") as progress:
        report = run_prediction(
            model,
            source,
            out,
            formats=formats,
            device=device,
            tta=tta,
            batch_size=batch_size,
            cohorts=cohort or None,
            overwrite=overwrite,
            progress=progress,
            qa_fail=qa_fail.strip().lower(),
            uncertainty_map=uncertainty_map,
        )
    if json_out:
        print_json(report.to_data())
    elif not settings().quiet:
        console = stdout()
        counts: dict[str, int] = {}
        for item in report.items:
            counts[item.status] = counts.get(item.status, 0) + 1
        console.print(
            f"{len(report.items)} input(s) with model {report.model_name} "
            f"({report.model_sha256[:12]}): "
            + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            + f"; results in {report.out}"
        )
        for item in report.items:
            if item.status != "written":
                console.print(f"  {item.id}: {item.status} — {item.reason}")
            elif item.flagged:
                codes = sorted(
                    {
                        *item.qa.get("input", []),
                        *(c for v in item.qa["structures"].values() for c in v),
                    }
                )
                console.print(
                    f"  {item.id}: written, flagged by QA ({item.qa['flags']} flag(s): "
                    f"{', '.join(codes)}; see qa.json)"
                )
    if report.failed:
        first = report.failed[0]
        raise PredictionError(
            "some inputs could not be predicted",
            where=str(source),
            expected="every CT predicted",
            found=f"{len(report.failed)} of {len(report.items)} failed; {first.id}: {first.reason}",
            fix=f"see {Path(out) / 'predictions.json'} for every reason",
        )


def register(app: typer.Typer) -> None:
    """Add the model commands to the application."""
    app.command("train")(train)
    app.command("predict")(predict)
