"""Benchmark: ``dlas evaluate`` end to end on NIfTI files, against surface-distance on the same.

The case set: ``--cases`` cases of 512 x 512 x 100 voxels at 1.27 x 1.27 x 5 mm, each with the
five structures of ``bench_metrics.py`` (Bladder, CTV, Bowel_Small, both femoral heads; shifted
by a few voxels from case to case), written as ``dlas import`` and ``dlas predict`` write them: a
dlas data set (``ct.nii.gz`` and ``structures/<Name>.nii.gz``, gzip NIfTI, masks uint8) and one
prediction folder ``<case_id>/structures/<Name>.nii.gz``.

Timed: the wall-clock time of a fresh process, so Python start-up, imports, reading (and for
dlas hashing every mask and writing the table and its sidecar) are all included:

* dlas: ``dlas --quiet evaluate --reference DATA --prediction M=PRED --out metrics.csv
  --workers W`` for each ``--workers`` value (all 12 metrics of every structure);
* DeepMind ``surface-distance``: a script that, case after case and structure after structure,
  loads the reference and the prediction with nibabel (``np.asanyarray(img.dataobj) != 0``,
  spacing from the header) and computes ``compute_surface_distances`` +
  ``compute_robust_hausdorff(95)`` + ``compute_dice_coefficient`` (DSC + 95HD only), writing a
  CSV: what a user of surface-distance writes around it.

The DSC of every (case, structure) is checked to agree between the two tables. The tools run
in turn in each round, so that a change of load on a shared machine falls on all of them.
``--baseline-src`` adds ``dlas evaluate --workers 1`` of another source tree (e.g. the last
commit, to measure a change in the same rounds).

Run: ``python benchmarks/bench_evaluate_io.py [--cases 6] [--repeat 3] [--workers 1 --workers
auto] [--baseline-src DIR] [--folder DIR] [--write]``; ``--write`` stores the section "End to
end: files to metrics table, N cases" with machine and date in ``benchmarks/results/metrics.md``
(the rest of that file is left as it is).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_metrics as bm  # the masks and the machine description

RESULTS = bm.RESULTS
BASELINE = "dlas before (--baseline-src) --workers 1"

_SD_SCRIPT = """
import csv, sys
from pathlib import Path

import nibabel as nib
import numpy as np
import surface_distance as sd

data, predictions, out = (Path(a) for a in sys.argv[1:4])
rows = []
for case in sorted((data / "cases").iterdir()):
    for ref_path in sorted((case / "structures").glob("*.nii.gz")):
        ref_image = nib.load(ref_path)
        pred_image = nib.load(predictions / case.name / "structures" / ref_path.name)
        ref = np.asanyarray(ref_image.dataobj) != 0
        pred = np.asanyarray(pred_image.dataobj) != 0
        spacing = tuple(float(z) for z in ref_image.header.get_zooms()[:3])
        distances = sd.compute_surface_distances(ref, pred, spacing)
        rows.append(
            (
                case.name,
                ref_path.name[: -len(".nii.gz")],
                sd.compute_dice_coefficient(ref, pred),
                sd.compute_robust_hausdorff(distances, 95),
            )
        )
with open(out, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["case_id", "structure", "dsc", "hd95_mm"])
    writer.writerows(rows)
"""


def _write_case_set(root: Path, cases: int) -> tuple[Path, Path]:
    """Write the data set and the prediction folder under ``root``; returns both."""
    from dlas.dataset import CaseDataset
    from dlas.io import Volume, write_mask
    from dlas.structures import StructureSet

    masks = bm.make_masks()
    dataset = CaseDataset.open_or_create(
        root / "data", StructureSet.builtin("rectal"), name="bench-evaluate-io"
    )
    predictions = root / "predictions"
    rng = np.random.default_rng(0)
    y, x = np.ogrid[: bm.SHAPE[1], : bm.SHAPE[2]]
    body = ((y - 300) / 190) ** 2 + ((x - 256) / 240) ** 2 <= 1
    for index in range(cases):
        shift = 2 * index  # voxels along x: no two cases alike
        ct_array = np.where(body, 40, -1000) + rng.normal(0, 10, bm.SHAPE)
        ct = Volume(
            np.roll(np.round(ct_array), shift, axis=2).astype(np.int16),
            np.array(bm.SPACING),
            np.array([-325.0, -380.0, 0.0]),
        )
        case_id = f"C{index:03d}"
        dataset.write_case(
            case_id,
            "bench",
            ct,
            {n: ct.with_array(np.roll(r, shift, axis=2)) for n, (r, _) in masks.items()},
            {"case_id": case_id, "cohort": "bench"},
        )
        for name, (_, pred) in masks.items():
            write_mask(
                ct.with_array(np.roll(pred, shift, axis=2)),
                predictions / case_id / "structures" / f"{name}.nii.gz",
            )
        print(f"wrote case {case_id}", file=sys.stderr)
    return root / "data", predictions


def _time(
    commands: dict[str, tuple[list[str], dict[str, str]]], repeat: int
) -> dict[str, list[float]]:
    """Wall-clock times of each command (with its extra environment), ``repeat`` rounds in
    turn, so that a change of load on a shared machine falls on all of them alike."""
    times: dict[str, list[float]] = {label: [] for label in commands}
    for round_ in range(repeat):
        for label, (command, env) in commands.items():
            print(f"round {round_ + 1}/{repeat}: {label} ...", file=sys.stderr)
            start = time.perf_counter()
            subprocess.run(
                command, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore", **env}
            )
            times[label].append(time.perf_counter() - start)
    return times


def _dlas_command(data: Path, predictions: Path, out: Path, workers: str) -> list[str]:
    exe = shutil.which("dlas") or str(Path(sys.executable).parent / "dlas")
    return [
        exe,
        "--quiet",
        "evaluate",
        "--reference",
        str(data),
        "--prediction",
        f"M={predictions}",
        "--out",
        str(out),
        "--workers",
        workers,
        "--overwrite",
    ]


def _check_dsc(dlas_csv: Path, sd_csv: Path) -> int:
    """Compare the DSC of every (case, structure) of the two tables; returns the row count."""
    import pandas as pd

    ours = pd.read_csv(dlas_csv, dtype={"case_id": str})[["case_id", "structure", "dsc"]]
    theirs = pd.read_csv(sd_csv, dtype={"case_id": str})[["case_id", "structure", "dsc"]]
    joined = ours.merge(theirs, on=["case_id", "structure"], how="outer", suffixes=("", "_sd"))
    if joined.isna().any().any() or not np.allclose(joined["dsc"], joined["dsc_sd"], atol=1e-9):
        raise SystemExit(f"DSC of dlas and surface-distance disagree:\n{joined}")
    return len(joined)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _decoder() -> str:
    """The gzip decoder dlas uses here (see :mod:`dlas.io.nifti`)."""
    import importlib.util

    if importlib.util.find_spec("zlib_ng") is not None:
        return f"zlib-ng {bm._package('zlib-ng')}"
    return "gzip (standard library)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=6, help="cases in the set")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument(
        "--workers",
        action="append",
        default=[],
        help="--workers value(s) of dlas evaluate (repeatable; default 1)",
    )
    parser.add_argument("--folder", type=Path, help="keep the case set here (reused if present)")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also time `dlas evaluate --workers 1` of another dlas source tree (its src/ "
        "folder, e.g. `git archive HEAD src | tar -x -C /tmp/dlas-head`), in the same rounds",
    )
    parser.add_argument("--write", action="store_true", help=f"write the section into {RESULTS}")
    args = parser.parse_args()
    workers = args.workers or ["1"]
    machine = bm._machine()

    with tempfile.TemporaryDirectory(prefix="dlas-bench-io-") as tmp:
        root = args.folder or Path(tmp)
        if (root / "data" / "dataset.json").is_file():
            data, predictions = root / "data", root / "predictions"
        else:
            print("writing the case set ...", file=sys.stderr)
            data, predictions = _write_case_set(root, args.cases)
        cases = len(list((data / "cases").iterdir()))
        out = Path(tmp)
        script = out / "surface_distance_eval.py"
        script.write_text(_SD_SCRIPT, encoding="utf-8")
        sd_csv = out / "sd.csv"
        commands = {
            "surface-distance": (
                [sys.executable, str(script), str(data), str(predictions), str(sd_csv)],
                {},
            )
        }
        if args.baseline_src is not None:
            commands[BASELINE] = (
                _dlas_command(data, predictions, out / "dlas-baseline.csv", "1"),
                {"PYTHONPATH": str(args.baseline_src.resolve())},
            )
        for w in workers:
            commands[f"dlas --workers {w}"] = (
                _dlas_command(data, predictions, out / f"dlas-{w}.csv", w),
                {},
            )
        runs = _time(commands, args.repeat)
        rows = max(_check_dsc(out / f"dlas-{w}.csv", sd_csv) for w in workers)
        machine += f"; load average at the end {os.getloadavg()[0]:.1f}"
    text = _report(machine, cases, rows, args.repeat, runs)
    print(text)
    if args.write:
        _write_section(text)
        print(f"wrote the section into {RESULTS}", file=sys.stderr)


def _report(machine: str, cases: int, rows: int, repeat: int, runs: dict[str, list[float]]) -> str:
    base = statistics.median(runs["surface-distance"])
    lines = [
        _section(cases),
        "",
        f"Date: {dt.date.today().isoformat()}. Machine: {machine}; `--workers auto` = "
        f"{min(_usable_cpus(), 8)} here. gzip decoder of dlas: {_decoder()}.",
        "",
        "Versions: "
        + ", ".join(
            f"{p} {bm._package(p)}"
            for p in ("dlas", "numpy", "scipy", "nibabel", "surface-distance")
        )
        + ".",
        "",
        f"{cases} cases x 5 structures ({rows} pairs of 512 x 512 x 100 masks, gzip NIfTI "
        "uint8) and their CTs, as `dlas import` and `dlas predict` write them. Time: wall clock "
        f"of a fresh process, median of {repeat} runs (start-up, imports, reading, hashing and "
        "writing the tables included), the tools in turn in each round; DSC checked equal in "
        "both tables. Command: `python benchmarks/bench_evaluate_io.py "
        + " ".join(sys.argv[1:])
        + "`.",
        "",
        *(
            [
                "`dlas before`: the same command with the dlas sources of `--baseline-src` "
                "(e.g. `git archive HEAD src | tar -x -C /tmp/dlas-head` before a change).",
                "",
            ]
            if BASELINE in runs
            else []
        ),
        "| tool | computes | time (s) | runs (s) | speed-up of dlas |",
        "|---|---|---|---|---|",
    ]
    for tool, times in runs.items():
        what = "DSC + 95HD (max)" if tool == "surface-distance" else "all 12 metrics + hashes"
        median = statistics.median(times)
        ratio = "" if tool == "surface-distance" else f"{base / median:.1f}x"
        listed = ", ".join(f"{t:.1f}" for t in times)
        lines.append(f"| {tool} | {what} | {median:.2f} | {listed} | {ratio} |")
    return "\n".join(lines) + "\n"


def _section(cases: int) -> str:
    """The title of the section of a case set; these sections end RESULTS."""
    return f"{bm.END_TO_END}: files to metrics table, {cases} cases"


def _write_section(text: str) -> None:
    """Put ``text`` in place of the old section of the same title (or at the end)."""
    title = text.splitlines()[0]
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    start = old.find(title)
    if start < 0:
        RESULTS.write_text(old.rstrip("\n") + "\n\n" + text, encoding="utf-8")
        return
    end = old.find("\n## ", start + len(title))
    rest = old[end + 1 :] if end >= 0 else ""
    RESULTS.write_text(old[:start] + text + ("\n" + rest if rest else ""), encoding="utf-8")


if __name__ == "__main__":
    main()
