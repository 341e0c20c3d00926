"""The README's demo study on this machine: wall time, peak memory, and the paper's pattern.

Runs ``dlas study --preset demo`` (the embedded synthetic replica: vendor model pretrained on the
vendor cohort, fine-tuned with 5-fold CV on the local training cohort, both evaluated on ExVal
and GenEva) in a fresh process, then checks what issue 7 asks the demo to show:

* the fine-tuned model's CTV DSC beats the vendor model's on ExVal and on GenEva, and the
  Wilcoxon signed-rank test finds the difference significant (p < 0.05);
* the vendor model over-contours the CTV (mean relative volume error at least +10 %), the
  fine-tuned model does not (within ±5 %);
* bladder and femoral-head DSC of the two models within a few hundredths (0.06);
* GenEva not clearly worse than ExVal for either model (mean CTV DSC within 0.03).

Usage::

    python benchmarks/bench_demo_study.py [--out DIR] [--write]

``--write`` records the result in ``benchmarks/results/demo-study.{md,json}``. The script exits
with status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _checks(root: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import pandas as pd

    metrics = pd.read_csv(root / "metrics.csv", keep_default_na=False, na_values=["nan"])
    comparison = pd.read_csv(root / "comparison" / "comparison.csv")
    mean = metrics.groupby(["structure", "model", "cohort"])[
        ["dsc", "volume_error_pct", "hd95_mm", "sensitivity"]
    ].mean()
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, value: str) -> None:
        checks.append({"check": name, "passed": bool(ok), "value": value})

    for cohort in ("ExVal", "GenEva"):
        row = comparison[
            (comparison.cohort == cohort)
            & (comparison.structure == "CTV")
            & (comparison.metric == "dsc")
        ].iloc[0]
        check(
            f"CTV DSC LFT > VPM, Wilcoxon p < 0.05 ({cohort})",
            row.mean_b > row.mean_a and row.p_value < 0.05,
            f"{row.mean_a:.3f} -> {row.mean_b:.3f}, p = {row.p_value:.4f}",
        )
        vpm = mean.loc[("CTV", "VPM", cohort), "volume_error_pct"]
        lft = mean.loc[("CTV", "LFT", cohort), "volume_error_pct"]
        check(f"VPM over-contours the CTV ({cohort})", vpm >= 10.0, f"{vpm:+.1f} %")
        check(f"LFT CTV volume within ±5 % ({cohort})", abs(lft) <= 5.0, f"{lft:+.1f} %")
        for structure in ("Bladder", "FemoralHead_L", "FemoralHead_R"):
            a = mean.loc[(structure, "VPM", cohort), "dsc"]
            b = mean.loc[(structure, "LFT", cohort), "dsc"]
            check(
                f"{structure} DSC of both models within 0.06 ({cohort})",
                abs(a - b) <= 0.06,
                f"VPM {a:.3f}, LFT {b:.3f}",
            )
    for model in ("VPM", "LFT"):
        ex = mean.loc[("CTV", model, "ExVal"), "dsc"]
        ge = mean.loc[("CTV", model, "GenEva"), "dsc"]
        check(
            f"{model}: GenEva not clearly worse than ExVal (CTV DSC)",
            ge >= ex - 0.03,
            f"ExVal {ex:.3f}, GenEva {ge:.3f}",
        )
    table = {
        f"{s}|{m}|{c}": {k: round(float(v), 4) for k, v in mean.loc[(s, m, c)].items()}
        for s, m, c in mean.index
    }
    return checks, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="study folder (default: a temp)")
    parser.add_argument("--write", action="store_true", help="record results in results/")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="dlas-demo-")) / "study"
    if out.exists():
        shutil.rmtree(out)
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dlas", "--quiet", "study", "--out", str(out)], check=True
    )
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    steps = {
        p.stem: json.loads(p.read_text())["seconds"] for p in sorted((out / ".steps").glob("*"))
    }
    checks, table = _checks(out)
    import torch

    result = {
        "date": dt.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": [round(x, 2) for x in load_before],
        },
        "wall_seconds": round(wall, 1),
        "peak_memory_mb": round(peak_mb, 1),
        "step_seconds": steps,
        "checks": checks,
        "means": table,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "means"}, indent=2))
    if args.write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "demo-study.json").write_text(json.dumps(result, indent=2) + "\n")
        lines = [
            "# The demo study (`dlas study`, preset demo) on a 2-core CPU",
            "",
            f"Date {result['date']}; {result['machine']['platform']}, "
            f"{result['machine']['cpus']} CPUs, load average before "
            f"{result['machine']['load_average_before']}. "
            "Script: `benchmarks/bench_demo_study.py --write`.",
            "",
            f"**Wall time {wall / 60:.1f} min, peak memory {peak_mb:.0f} MB** (largest process).",
            "",
            "| step | seconds |",
            "|---|---|",
            *[f"| {k} | {v:.0f} |" for k, v in steps.items()],
            "",
            "| check (issue 7) | passed | value |",
            "|---|---|---|",
            *[
                f"| {c['check']} | {'yes' if c['passed'] else 'NO'} | {c['value']} |"
                for c in checks
            ],
            "",
        ]
        (RESULTS / "demo-study.md").write_text("\n".join(lines))
    failed = [c for c in checks if not c["passed"]]
    for c in failed:
        print(f"FAILED: {c['check']}: {c['value']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
