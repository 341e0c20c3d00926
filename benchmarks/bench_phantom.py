"""Speed of the synthetic replica (`dlas.phantom`): one `paper` patient, the whole `demo` preset.

Targets (issue 3): one paper-preset patient (512x512x53) in at most a few seconds on one core;
the whole demo preset (40 patients, DICOM) well under a minute on 2 cores.

Run::

    python benchmarks/bench_phantom.py            # both parts
    python benchmarks/bench_phantom.py --quick    # 2 paper patients, demo preset with workers=2

BLAS is pinned to one thread so that "one core" means one core. Prints a Markdown table with the
machine and date; results are recorded in ``benchmarks/results/phantom.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Before numpy is imported (inside the functions): one BLAS thread per process, inherited by
# the worker processes.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def _paper_patient(index: int) -> dict[str, float]:
    """Seconds per stage for one paper-preset patient (generation, then DICOM writing)."""
    import numpy as np

    from dlas.phantom import make_patient, preset
    from dlas.phantom.generate import PhantomCase, write_dicom_case
    from dlas.phantom.render import render_ct
    from dlas.phantom.scanners import acquire

    config = preset("paper")
    t0 = time.perf_counter()
    patient = make_patient(config, "training", index)
    t1 = time.perf_counter()
    clean = render_ct(patient.anatomy, patient.grid)
    t2 = time.perf_counter()
    half = patient.grid.shape[1] / 2
    image = acquire(
        clean,
        (patient.grid.spacing[1], patient.grid.spacing[2]),
        patient.scanner,
        patient.scanner_rng,
        body_width_mm=patient.anatomy.body_width_mm,
        fov_radius_px=(half, half),
    )
    t3 = time.perf_counter()
    masks = patient.ground_truth()
    t4 = time.perf_counter()
    case = PhantomCase(patient, patient.volume(image), masks)
    with tempfile.TemporaryDirectory() as tmp:
        write_dicom_case(case, Path(tmp) / "case")
    t5 = time.perf_counter()
    assert np.isfinite(image).all()
    return {
        "anatomy": t1 - t0,
        "render": t2 - t1,
        "scanner": t3 - t2,
        "ground truth": t4 - t3,
        "generation": t4 - t0,
        "DICOM write": t5 - t4,
    }


def _demo_preset(workers: int) -> dict[str, float]:
    from dlas.phantom import generate, preset

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = generate(Path(tmp) / "demo", preset("demo"), workers=workers)
        wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (
        after.ru_utime
        - before.ru_utime
        + after.ru_stime
        - before.ru_stime
        + self_after.ru_utime
        - self_before.ru_utime
    )
    return {"patients": len(manifest["patients"]), "wall": wall, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer paper patients")
    parser.add_argument("--workers", type=int, default=2, help="workers for the demo preset")
    args = parser.parse_args()

    import dlas

    n = 2 if args.quick else 5
    _paper_patient(99)  # warm-up: imports, FFT plans
    runs = [_paper_patient(i) for i in range(n)]
    demo = _demo_preset(args.workers)

    print(f"# dlas.phantom benchmark — {dt.date.today().isoformat()}")
    print()
    print(
        f"- machine: {platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{platform.platform()}; Python {sys.version.split()[0]}; dlas {dlas.__version__}"
    )
    print("- BLAS threads: 1 per process")
    print()
    print(f"## One `paper` patient (512x512x53, 1 core), median of {n}")
    print()
    print("| stage | seconds |")
    print("|---|---|")
    for key in runs[0]:
        print(f"| {key} | {statistics.median(r[key] for r in runs):.2f} |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"| peak memory of the process, incl. DICOM round trip (MB) | {rss:.0f} |")
    print()
    print(
        f"## Whole `demo` preset ({demo['patients']:.0f} patients, DICOM, --workers {args.workers})"
    )
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| wall time (s) | {demo['wall']:.1f} |")
    print(f"| CPU time, all processes (s) | {demo['cpu']:.1f} |")
    print(f"| CPU time per patient (s) | {demo['cpu'] / demo['patients']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
