"""Commands about data: ``dlas info``, ``dlas import``, ``dlas inspect``."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import typer

from dlas import __version__
from dlas.cli._common import print_json, progress_callback, settings, stdout

__all__ = ["register"]

_PACKAGES = (
    "numpy",
    "scipy",
    "pydicom",
    "highdicom",
    "SimpleITK",
    "scikit-image",
    "pydantic",
    "typer",
    "rich",
    "PyYAML",
    "torch",
    "pandas",
    "matplotlib",
)


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def collect_info() -> dict[str, Any]:
    """Versions, devices and configuration, for bug reports."""
    from dlas.structures import BUILTIN_STRUCTURE_SETS

    torch_info: dict[str, Any] | None = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch_info = {
            "version": torch.__version__,
            "cuda_available": bool(torch.cuda.is_available()),
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "threads": torch.get_num_threads(),
        }
        from dlas.model.runtime import resolve_device
        from dlas.training.loop import describe_step

        torch_info["training_step"] = describe_step(resolve_device("auto"))
    return {
        "dlas": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": {name: _package_version(name) for name in _PACKAGES},
        "torch": torch_info,
        "structure_sets": sorted(BUILTIN_STRUCTURE_SETS),
        "dciodvfy": shutil.which("dciodvfy"),
    }


def info(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print versions, compute devices and configuration (paste this into bug reports)."""
    data = collect_info()
    if json_out:
        print_json(data)
        return
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_row("dlas", data["dlas"])
    table.add_row("python", f"{data['python']} on {data['platform']}")
    table.add_row("cpus", str(data["cpu_count"]))
    for name, value in data["packages"].items():
        table.add_row(name, value or "not installed")
    torch_info = data["torch"]
    device = "cpu"
    if torch_info and torch_info["cuda_available"]:
        device = "cuda: " + ", ".join(torch_info["devices"])
    table.add_row("device", device)
    if torch_info:
        table.add_row("training step", torch_info["training_step"])
    table.add_row("structure sets", ", ".join(data["structure_sets"]))
    table.add_row("dciodvfy", data["dciodvfy"] or "not found")
    stdout().print(table)


def import_(
    source: Path = typer.Argument(
        ...,
        help="Folder of DICOM files (any depth) and/or NIfTI "
        "case folders (<case>/ct.nii.gz + structures/).",
    ),
    dataset: Path = typer.Argument(..., help="Data set folder to create or add to."),
    structures: str = typer.Option(
        "rectal", "--structures", help="Structure set: a YAML file or a built-in name."
    ),
    cohort_by: str = typer.Option(
        "none",
        "--cohort-by",
        help="none, scanner, scanner+station, date, date:YYYY-MM-DD[,...] or csv:FILE.",
    ),
    keep_unmapped: bool = typer.Option(
        False,
        "--keep-unmapped",
        help="Also write ROIs that match no structure, under their own names.",
    ),
    keep_ids: bool = typer.Option(
        False,
        "--keep-ids",
        help="Keep patient ids, UIDs and real dates instead of pseudonyms (identifying!).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace cases already in the data set."
    ),
    pseudonym_key: Path | None = typer.Option(
        None,
        "--pseudonym-key",
        help="Key file of the pseudonyms (default: DATASET/.dlas-pseudonym-key).",
    ),
    contour_set: list[str] | None = typer.Option(
        None,
        "--contour-set",
        help="NAME=COND[,COND...]: keep the RTSTRUCTs/SEGs matching COND as contour set NAME "
        "(approved, unapproved, any, kind:rtstruct|seg, date:YYYYMMDD[-YYYYMMDD], "
        "manufacturer|model|label|description|operator:TEXT); repeatable.",
    ),
    reference_set: str | None = typer.Option(
        None,
        "--reference-set",
        help="The contour set that is the reference (with --contour-set).",
    ),
) -> None:
    """Import planning CTs and RTSTRUCTs into a clean, de-identified data set."""
    from dlas.dataset import ContourSetRules, ImportOptions, import_source
    from dlas.errors import DatasetError
    from dlas.structures import load_structure_set

    options = ImportOptions(
        structure_set=load_structure_set(structures),
        cohort_by=cohort_by,
        keep_unmapped=keep_unmapped,
        keep_ids=keep_ids,
        overwrite=overwrite,
        key_file=str(pseudonym_key) if pseudonym_key else None,
        contour_sets=ContourSetRules.from_options(contour_set or [], reference_set),
    )
    with progress_callback("import") as progress:
        report = import_source(source, dataset, options, progress=progress)
    if not settings().quiet:
        _print_import_report(report)
    present = [i for i in report.items if i.status in ("imported", "exists")]
    if not present:
        first = report.skipped[0].reason if report.skipped else "no case found"
        raise DatasetError(
            "no case could be imported",
            where=str(source),
            expected="at least one readable CT series",
            found=f"{len(report.skipped)} refused; the first: {first}",
            fix=f"see {Path(dataset) / 'import-report.json'} for every reason",
        )


def _print_import_report(report: Any) -> None:
    out = stdout()
    imported = report.imported
    cohorts: dict[str, int] = {}
    for item in imported:
        cohorts[item.cohort] = cohorts.get(item.cohort, 0) + 1
    out.print(
        f"imported {len(imported)} case(s) into {report.dataset}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(cohorts.items()))})" if cohorts else "")
    )
    existing = [i for i in report.items if i.status == "exists"]
    if existing:
        out.print(f"{len(existing)} case(s) already present, left untouched")
    sets: dict[str, int] = {}
    for item in imported:
        for name in item.contour_sets:
            sets[name] = sets.get(name, 0) + 1
    if sets:
        out.print(
            "contour sets (cases): " + ", ".join(f"{k} ({v})" for k, v in sorted(sets.items()))
        )
    _print_refusals(report)
    unmatched = report.unmatched_names()
    if unmatched:
        out.print(
            "names matching no structure (cases): "
            + ", ".join(
                f"{name if len(name) <= 64 else name[:63] + '…'} ({n})"
                for name, n in sorted(unmatched.items())
            )
        )
    warnings = report.warning_counts()
    if warnings:
        out.print(
            "warnings: "
            + ", ".join(f"{code} x{n}" for code, n in sorted(warnings.items()))
            + f" (details in {Path(report.dataset) / 'import-report.json'})"
        )


def _print_refusals(report: Any) -> None:
    """The cases refused and the files not used by an import, as tables."""
    from collections import Counter

    from rich.table import Table

    if report.skipped:
        table = Table(title="cases not imported", title_justify="left")
        table.add_column("source")
        table.add_column("reason", overflow="fold")
        for item in report.skipped:
            table.add_row(item.source, item.reason)
        stdout().print(table)
    if report.skipped_files:
        reasons = Counter(s.reason for s in report.skipped_files)
        table = Table(title="files not used", title_justify="left")
        table.add_column("files", justify="right")
        table.add_column("reason", overflow="fold")
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            table.add_row(str(n), reason)
        stdout().print(table)


def inspect(
    path: Path = typer.Argument(..., help="A DICOM folder, a lone RTSTRUCT file, or a data set."),
    structures: str = typer.Option(
        "rectal", "--structures", help="Structure set used to show how ROI names map."
    ),
    contour_set: list[str] | None = typer.Option(
        None,
        "--contour-set",
        help="NAME=COND[,...] rules as for `dlas import`: show which set each object joins.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the series and ROIs in DICOM data (no CT needed for an RTSTRUCT) and how names map."""
    from dlas.dataset import inspect_path
    from dlas.dataset.contour_sets import ContourSetRule
    from dlas.structures import load_structure_set

    rules = [ContourSetRule.parse(r) for r in contour_set or []]
    data = inspect_path(path, load_structure_set(structures), rules=rules)
    if json_out:
        print_json(data)
        return
    _print_inspection(data)


def _print_inspection(data: dict[str, Any]) -> None:
    from rich.table import Table

    out = stdout()
    if data["kind"] == "dataset":
        out.print(
            f"data set {data['name']}: {data['n_cases']} case(s), structure set "
            f"{data['structure_set']}"
        )
        table = Table(
            "cohort",
            "cases",
            *data["structures"],
            title="cases per cohort with each structure",
            title_justify="left",
        )
        for cohort, row in data["cohorts"].items():
            table.add_row(
                cohort,
                str(row["cases"]),
                *[str(row["structures"].get(s, 0)) for s in data["structures"]],
            )
        out.print(table)
        if data.get("contour_sets"):
            out.print(
                f"reference contour set: {data['reference_set']}; other sets (cases): "
                + ", ".join(f"{k} ({v})" for k, v in data["contour_sets"].items())
            )
        return
    for series in data.get("series", []):
        out.print(
            f"CT series {series['series_instance_uid']}: {series['n_images']} image(s), "
            f"{series['manufacturer'] or '?'} {series['model'] or ''}, "
            f"pixel {series['pixel_spacing']}, slice {series['slice_thickness']} mm"
        )
    for rs in [*data.get("rtstructs", []), *data.get("segs", [])]:
        kind = str(rs["kind"]).upper()
        joins = f"; contour set {rs['contour_set']}" if rs.get("contour_set") else ""
        out.print(
            f"{kind} {rs['file']} ({rs['describe']}), drawn on series "
            f"{', '.join(rs['referenced_series']) or 'not stated'}{joins}"
        )
        if kind == "SEG":
            table = Table("segment", "label", "maps to")
            for roi in rs["rois"]:
                table.add_row(
                    str(roi["number"]),
                    roi["name"],
                    roi["maps_to"] or ("AMBIGUOUS: " + roi["error"] if roi.get("error") else "-"),
                )
            out.print(table)
            continue
        table = Table("ROI", "name", "type", "contours", "points", "maps to")
        for roi in rs["rois"]:
            table.add_row(
                str(roi["number"]),
                roi["name"],
                roi["interpreted_type"],
                str(roi["n_contours"]),
                str(roi["n_points"]),
                roi["maps_to"] or ("AMBIGUOUS: " + roi["error"] if roi.get("error") else "-"),
            )
        out.print(table)
    if data.get("skipped"):
        out.print("files not used: " + ", ".join(f"{n}x {r}" for r, n in data["skipped"].items()))


def export_nnunet(
    dataset: Path = typer.Argument(..., help="dlas data set to export."),
    out: Path = typer.Argument(..., help="nnU-Net raw folder to write DatasetNNN_NAME into."),
    dataset_id: int = typer.Option(..., "--dataset-id", help="nnU-Net data set id (1-999)."),
    name: str | None = typer.Option(
        None, "--name", help="NAME part of DatasetNNN_NAME (default: the data set's folder name)."
    ),
    cohort: list[str] = typer.Option([], "--cohort", help="Export this cohort only (repeatable)."),
    missing: str = typer.Option(
        "skip",
        "--missing",
        help="Cases lacking a structure: skip (leave out, listed), error, or background "
        "(nnU-Net then learns the structure as absent there).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export a data set in nnU-Net v2's raw format (imagesTr, labelsTr, dataset.json); label
    maps nnU-Net predicts come back with `dlas evaluate --labels NAME=dataset.json`."""
    from dlas.engines.nnunet import export_nnunet as run_export

    with progress_callback("export") as progress:
        result = run_export(
            dataset,
            out,
            dataset_id=dataset_id,
            name=name,
            cohorts=cohort or None,
            missing=missing.strip().lower(),
            progress=progress,
        )
    if json_out:
        print_json({"folder": str(result.folder), **result.to_data()})
    elif not settings().quiet:
        console = stdout()
        overlapping = sum(1 for v in result.overlaps.values() if v)
        console.print(
            f"{len(result.cases)} case(s) written to {result.folder}"
            + (f"; {len(result.skipped)} left out (see dlas-export.json)" if result.skipped else "")
            + (f"; overlaps resolved in {overlapping} case(s)" if overlapping else "")
        )


def register(app: typer.Typer) -> None:
    """Add the data commands to the application."""
    app.command("export-nnunet")(export_nnunet)
    app.command("info")(info)
    app.command("import")(import_)
    app.command("inspect")(inspect)
