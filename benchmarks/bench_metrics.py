"""Benchmark: all metrics of one structure with dlas against the peers' DSC + 95HD.

Masks of 512 x 512 x 100 voxels at 1.27 x 1.27 x 5 mm (z, y, x order of the arrays: 100 x 512 x
512) shaped like a bladder (ellipsoid with a wavy wall), a CTV (tapered posterior horseshoe
around the rectum) and small bowel (nine tubular loops, with missed loops and three false-positive
islands in the prediction), plus two femoral heads for the whole-case timing. Predictions are the
references deformed by a smooth random field, grown or shrunk, as a model would err.

Each (tool, structure) runs in its own Python process, which loads the masks, resets the
kernel's high-water mark of its resident memory (Linux ``/proc/self/clear_refs``), runs the
computation ``--repeat`` times (MedPy and plastimatch once) and reports the median time and the
peak resident memory above what the process held before the runs (the extra memory the
computation needed beyond its inputs; plastimatch runs as a child process of its own, so its
memory is not seen). Timed work, same for every tool:

* dlas: :func:`dlas.evaluation.compute_metrics` — *every* metric (DSC, 95HD, HD, sensitivity,
  specificity, volumes, volume error, surface DSC, ASSD, APL, centroid distance);
* DeepMind ``surface-distance``: ``compute_surface_distances`` + ``compute_robust_hausdorff(95)``
  + ``compute_dice_coefficient`` (DSC + 95HD only);
* MONAI: ``compute_hausdorff_distance(percentile=95)`` + ``compute_dice`` on tensors made from
  the arrays (DSC + 95HD only; the conversion is part of the call);
* MedPy: ``dc`` + ``hd95`` (DSC + 95HD only);
* plastimatch: ``plastimatch dice --all`` on .mha files written beforehand (its whole metric set
  including process start and file reading; 3D Slicer's engine).

Run: ``python benchmarks/bench_metrics.py [--repeat 7] [--skip medpy] [--write]``; ``--write``
stores the table with machine and date in ``benchmarks/results/metrics.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

SHAPE = (100, 512, 512)
SPACING = (5.0, 1.27, 1.27)
STRUCTURES = ("Bladder", "CTV", "Bowel_Small", "Femur_Head_L", "Femur_Head_R")
BENCH_STRUCTURES = ("Bladder", "CTV", "Bowel_Small")
TOOLS = ("dlas", "surface-distance", "monai", "medpy", "plastimatch")
RESULTS = Path(__file__).parent / "results" / "metrics.md"
END_TO_END = "## End to end"  # the last section of RESULTS, written by bench_evaluate_io.py


# ---------------------------------------------------------------------------------- shapes
def _mm_grid(box: tuple[int, int, int, int, int, int]) -> tuple[np.ndarray, ...]:
    z0, z1, y0, y1, x0, x1 = box
    z, y, x = np.ogrid[z0:z1, y0:y1, x0:x1]
    return z * SPACING[0], y * SPACING[1], x * SPACING[2]


def _noise(seed: int, box: tuple[int, ...], sigma_mm: float, amplitude_mm: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (box[1] - box[0], box[3] - box[2], box[5] - box[4])
    field = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), [sigma_mm / s for s in SPACING]
    )
    return field * (amplitude_mm / field.std())


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    inside = ndimage.distance_transform_edt(mask, sampling=SPACING)
    outside = ndimage.distance_transform_edt(~mask, sampling=SPACING)
    return (outside - inside).astype(np.float32)


def _place(box: tuple[int, ...], sub: np.ndarray) -> np.ndarray:
    out = np.zeros(SHAPE, dtype=bool)
    out[box[0] : box[1], box[2] : box[3], box[4] : box[5]] = sub
    return out


def _ellipsoid_sdf(
    box: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]
) -> np.ndarray:
    z, y, x = _mm_grid(box)
    q = np.sqrt(
        ((z - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((x - centre[2]) / radii[2]) ** 2
    )
    return (q - 1.0) * min(radii)  # approximately a distance in mm near the surface


def bladder(seed: int, grow_mm: float, shift_mm: tuple[float, float, float]) -> np.ndarray:
    box = (30, 72, 200, 400, 220, 430)
    centre = (250 + shift_mm[0], 300 + shift_mm[1], 325 + shift_mm[2])
    sdf = _ellipsoid_sdf(box, centre, (40.0, 35.0, 45.0))
    return _place(box, sdf - grow_mm + _noise(seed, box, 15.0, 1.5) < 0)


def ctv(seed: int, grow_mm: float) -> np.ndarray:
    box = (24, 72, 250, 480, 180, 470)
    z, y, x = _mm_grid(box)
    cy, cx = 385.0, 325.0
    taper = 1.0 - 0.3 * np.abs(np.clip((z - 130) / 200, 0, 1) - 0.5)
    shape = (((y - cy) / 26) ** 2 + ((x - cx) / 46) ** 2 < taper**2) & (z >= 140) & (z <= 340)
    rectum = (((y - cy - 8) / 14) ** 2 + ((x - cx) / 16) ** 2 < 1) & (z < 250)
    sdf = _signed_distance(shape & ~rectum)
    return _place(box, sdf - grow_mm + _noise(seed, box, 20.0, 1.5) < 0)


def small_bowel(seed: int, shrink_mm: float, drop: float, islands: int) -> np.ndarray:
    box = (36, 76, 120, 330, 170, 480)
    extent = np.array([box[1] - box[0], box[3] - box[2], box[5] - box[4]]) * SPACING
    rng = np.random.default_rng(123)  # the anatomy: the same loops for reference and prediction
    t = np.linspace(0, 1, 400)
    free = np.ones((box[1] - box[0], box[3] - box[2], box[5] - box[4]), dtype=bool)
    keep_rng = np.random.default_rng(seed)
    for _ in range(9):
        a = rng.uniform(-1, 1, (3, 4))
        phase = rng.uniform(0, 2 * np.pi, (3, 4))
        centre = rng.uniform(0.2, 0.8, 3) * extent
        amplitude = np.array([40.0, 60.0, 70.0])
        path = np.stack(
            [
                centre[i]
                + amplitude[i]
                * sum(a[i, j] * np.sin(2 * np.pi * (j + 1) * t + phase[i, j]) for j in range(4))
                / 2
                for i in range(3)
            ],
            axis=1,
        )
        if keep_rng.uniform() < drop:
            continue
        index = np.round(path / np.array(SPACING)).astype(int)
        ok = np.all((index >= 0) & (index < np.array(free.shape)), axis=1)
        free[tuple(index[ok].T)] = False
    distance = ndimage.distance_transform_edt(free, sampling=SPACING)
    out = _place(box, distance - 9.0 + shrink_mm + _noise(seed, box, 8.0, 1.5) < 0)
    for _ in range(islands):
        z, y, x = (int(v) for v in keep_rng.integers((10, 100, 100), (90, 400, 400)))
        out[z : z + 2, y : y + 8, x : x + 8] = True
    return out


def femoral_head(side: str, seed: int, grow_mm: float) -> np.ndarray:
    box = (4, 30, 200, 330, 60, 160) if side == "L" else (4, 30, 200, 330, 360, 460)
    cx = 130.0 if side == "L" else 520.0
    sdf = _ellipsoid_sdf(box, (85.0, 330.0, cx), (24.0, 24.0, 24.0))
    return _place(box, sdf - grow_mm + _noise(seed, box, 15.0, 0.8) < 0)


def make_masks() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reference and prediction of every structure (deterministic)."""
    return {
        "Bladder": (bladder(0, 0.0, (0, 0, 0)), bladder(1, 2.0, (2.0, 2.0, 0.0))),
        "CTV": (ctv(0, 0.0), ctv(1, 3.0)),
        "Bowel_Small": (small_bowel(0, 0.0, 0.0, 0), small_bowel(1, 1.0, 0.1, 3)),
        "Femur_Head_L": (femoral_head("L", 0, 0.0), femoral_head("L", 1, 0.5)),
        "Femur_Head_R": (femoral_head("R", 0, 0.0), femoral_head("R", 1, -0.5)),
    }


# ---------------------------------------------------------------------------------- workers
def _work(tool: str, names: list[str], folder: Path) -> Any:
    """The timed callable of a tool over the named structures (inputs loaded here)."""
    masks = {
        n: (np.load(folder / f"{n}_ref.npy"), np.load(folder / f"{n}_pred.npy")) for n in names
    }
    if tool == "dlas":
        from dlas.evaluation import compute_metrics

        return lambda: [compute_metrics(r, p, SPACING) for r, p in masks.values()]
    if tool == "surface-distance":
        import surface_distance as sd

        def run_sd() -> list[tuple[float, float]]:
            out = []
            for r, p in masks.values():
                distances = sd.compute_surface_distances(r, p, SPACING)
                out.append(
                    (sd.compute_dice_coefficient(r, p), sd.compute_robust_hausdorff(distances, 95))
                )
            return out

        return run_sd
    if tool == "monai":
        import torch
        from monai.metrics import compute_dice, compute_hausdorff_distance

        def run_monai() -> list[tuple[float, float]]:
            out = []
            for r, p in masks.values():
                y = torch.from_numpy(r[None, None])
                y_pred = torch.from_numpy(p[None, None])
                hd = compute_hausdorff_distance(
                    y_pred, y, include_background=True, percentile=95, spacing=list(SPACING)
                )
                dice = compute_dice(y_pred, y, include_background=True)
                out.append((float(dice), float(hd)))
            return out

        return run_monai
    if tool == "medpy":
        from medpy.metric import binary

        return lambda: [
            (binary.dc(p, r), binary.hd95(p, r, voxelspacing=SPACING)) for r, p in masks.values()
        ]
    if tool == "plastimatch":
        exe = shutil.which("plastimatch") or str(Path(sys.executable).parent / "plastimatch")

        def run_plastimatch() -> list[str]:
            return [
                subprocess.run(
                    [
                        exe,
                        "dice",
                        "--all",
                        str(folder / f"{n}_ref.mha"),
                        str(folder / f"{n}_pred.mha"),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                for n in names
            ]

        return run_plastimatch
    raise ValueError(tool)


def _peak_reset() -> float:
    """Reset the process's peak resident memory to the current one (Linux ``clear_refs``);
    returns the current resident memory in MB."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(tool: str, names: list[str], folder: Path, repeat: int) -> dict[str, Any]:
    """Runs inside a fresh process; returns its measurement (printed as JSON by the parent's
    command). Peak memory is the kernel's high-water mark of resident memory (VmHWM), reset
    just before the timed runs, so the inputs loaded before do not count."""
    work = _work(tool, names, folder)
    before_mb = _peak_reset()
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    peak_mb = _status_mb("VmHWM")
    summary: Any = None
    if tool == "dlas" and result is not None:
        summary = [{"dsc": m.dsc, "hd95": m.hd95_mm} for m in result]
    elif tool in ("surface-distance", "monai", "medpy") and result is not None:
        summary = [{"dsc": float(d), "hd95": float(h)} for d, h in result]
    return {
        "tool": tool,
        "structures": names,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "runs": repeat,
        "extra_peak_mb": peak_mb - before_mb,
        "values": summary,
    }


def _measure(tool: str, names: list[str], folder: Path, repeat: int) -> dict[str, Any]:
    here = str(Path(__file__).parent)
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); import bench_metrics as b; "
        f"print(json.dumps(b.child({tool!r}, {names!r}, b.Path({str(folder)!r}), {repeat})))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- report
def _available(tool: str) -> bool:
    modules = {
        "dlas": "dlas",
        "surface-distance": "surface_distance",
        "monai": "monai",
        "medpy": "medpy",
    }
    if tool == "plastimatch":
        return bool(
            shutil.which("plastimatch") or (Path(sys.executable).parent / "plastimatch").exists()
        )
    import importlib.util

    return importlib.util.find_spec(modules[tool]) is not None


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; load average at start {load:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs (median reported)")
    parser.add_argument("--skip", action="append", default=[], choices=TOOLS)
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS}")
    args = parser.parse_args()

    tools = [t for t in TOOLS if t not in args.skip and _available(t)]
    print("generating masks ...", file=sys.stderr)
    masks = make_masks()
    with tempfile.TemporaryDirectory(prefix="dlas-bench-") as tmp:
        folder = Path(tmp)
        shapes = {}
        for name, (ref, pred) in masks.items():
            np.save(folder / f"{name}_ref.npy", ref)
            np.save(folder / f"{name}_pred.npy", pred)
            voxel_cm3 = float(np.prod(SPACING)) / 1000
            shapes[name] = (
                ref.sum() * voxel_cm3,
                pred.sum() * voxel_cm3,
                2 * (ref & pred).sum() / (ref.sum() + pred.sum()),
            )
            if "plastimatch" in tools:
                import SimpleITK as sitk

                for kind, mask in (("ref", ref), ("pred", pred)):
                    image = sitk.GetImageFromArray(mask.astype(np.uint8))
                    image.SetSpacing(SPACING[::-1])
                    sitk.WriteImage(image, str(folder / f"{name}_{kind}.mha"))
        del masks
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for name in BENCH_STRUCTURES:
            for tool in tools:
                repeat = 1 if tool in ("medpy", "plastimatch") else args.repeat
                print(f"{tool} {name} ...", file=sys.stderr)
                rows[(tool, name)] = _measure(tool, [name], folder, repeat)
        case = {
            tool: _measure(tool, list(STRUCTURES), folder, args.repeat)
            for tool in ("dlas", "surface-distance")
            if tool in tools
        }
    text = _report(tools, rows, case, shapes, args.repeat)
    print(text)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        # bench_evaluate_io.py's section (reading files end to end) stays as it was.
        old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
        kept = old[old.index(END_TO_END) :] if END_TO_END in old else ""
        RESULTS.write_text(text + ("\n" + kept if kept else ""), encoding="utf-8")
        print(f"wrote {RESULTS}", file=sys.stderr)


def _report(
    tools: list[str],
    rows: dict[tuple[str, str], dict[str, Any]],
    case: dict[str, dict[str, Any]],
    shapes: dict[str, tuple[float, float, float]],
    repeat: int,
) -> str:
    what = {
        "dlas": "all 12 metrics",
        "surface-distance": "DSC + 95HD (max)",
        "monai": "DSC + 95HD (max)",
        "medpy": "DSC + 95HD (pooled)",
        "plastimatch": "its metric set, incl. process start and .mha reading",
    }
    lines = [
        "# Metrics benchmark",
        "",
        f"Date: {dt.date.today().isoformat()}. Machine: {_machine()}.",
        "",
        "Versions: "
        + ", ".join(
            f"{p} {_package(p)}"
            for p in (
                "dlas",
                "numpy",
                "scipy",
                "surface-distance",
                "monai",
                "torch",
                "MedPy",
                "plastimatch",
            )
        )
        + ".",
        "",
        "Masks 512 x 512 x 100 at 1.27 x 1.27 x 5 mm (script: `benchmarks/bench_metrics.py`). "
        f"Time: median of {repeat} runs in a fresh process (MedPy, plastimatch: one run); "
        "memory: peak resident memory during the runs above the memory held before them "
        "(inputs loaded; Linux VmHWM reset with clear_refs); plastimatch runs in a process of "
        "its own, whose memory is not measured.",
        "",
        "| structure | reference cm³ | prediction cm³ | DSC |",
        "|---|---|---|---|",
    ]
    for name, (vr, vp, dsc) in shapes.items():
        lines.append(f"| {name} | {vr:.0f} | {vp:.0f} | {dsc:.3f} |")
    lines += [
        "",
        "## One structure",
        "",
        "| structure | tool | computes | time (ms) | extra peak memory (MB) | speed-up of dlas |",
        "|---|---|---|---|---|---|",
    ]
    for name in BENCH_STRUCTURES:
        ours = rows.get(("dlas", name))
        for tool in tools:
            row = rows[(tool, name)]
            ratio = ""
            if ours and tool != "dlas":
                ratio = f"{row['median_s'] / ours['median_s']:.1f}x"
            memory = "n/a" if tool == "plastimatch" else f"{row['extra_peak_mb']:.1f}"
            lines.append(
                f"| {name} | {tool} | {what[tool]} | {1000 * row['median_s']:.1f} | "
                f"{memory} | {ratio} |"
            )
    lines += [
        "",
        "## Whole case (5 structures, sequential, one process)",
        "",
        "| tool | computes | time (ms) | extra peak memory (MB) |",
        "|---|---|---|---|",
    ]
    for tool, row in case.items():
        lines.append(
            f"| {tool} | {what[tool]} | {1000 * row['median_s']:.1f} | {row['extra_peak_mb']:.1f} |"
        )
    lines += ["", "## Goals of issue 5", ""]
    if all(("dlas", n) in rows and ("surface-distance", n) in rows for n in BENCH_STRUCTURES):
        ratios = [
            rows[("surface-distance", n)]["median_s"] / rows[("dlas", n)]["median_s"]
            for n in BENCH_STRUCTURES
        ]
        verdict = "met" if min(ratios) >= 5 else "NOT met"
        listed = ", ".join(f"{n} {r:.1f}x" for n, r in zip(BENCH_STRUCTURES, ratios, strict=True))
        lines.append(
            "* All metrics of a structure at least 5x faster than surface-distance's DSC + "
            f"95HD: {verdict} ({listed})."
        )
    if "dlas" in case:
        ms = 1000 * case["dlas"]["median_s"]
        lines.append(
            f"* A whole 5-structure case under 0.2 s: {'met' if ms < 200 else 'NOT met'} "
            f"({ms:.0f} ms, extra peak memory {case['dlas']['extra_peak_mb']:.0f} MB)."
        )
    lines.append(
        "* The machine is shared with other jobs (see the load average): repeated runs "
        "of this script vary by about ±30 % in time."
    )
    lines += [
        "",
        "## Values (same masks)",
        "",
        "95HD differs by definition: dlas default `pooled` (= MedPy), MONAI and "
        "surface-distance `max`; surface-distance measures between surface elements.",
        "",
        "| structure | tool | DSC | 95HD (mm) |",
        "|---|---|---|---|",
    ]
    for name in BENCH_STRUCTURES:
        for tool in tools:
            values = rows[(tool, name)].get("values")
            if values:
                lines.append(
                    f"| {name} | {tool} | {values[0]['dsc']:.4f} | {values[0]['hd95']:.3f} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
