"""A whole `dlas study` on this machine: wall time, peak memory, outcome tables, checks.

Without ``--config`` it runs the README's demo study (``dlas study``, the embedded synthetic
replica: vendor model pretrained on the vendor cohort, fine-tuned with 5-fold CV on the local
training cohort, both evaluated on ExVal and GenEva) and checks what issue 10 asks the demo to
show, on both ExVal and GenEva:

* CTV DSC gain LFT - VPM of at least 0.05, significant (Wilcoxon p < 0.05);
* the vendor model over-contours the CTV (mean relative volume error at least +15 %), the
  fine-tuned model does not (within ±5 %);
* bladder and femoral heads DSC >= 0.90 for both models, no significant loss > 0.02 after
  fine-tuning; small bowel DSC >= 0.75;
* the whole study within 10 minutes.

``--seed N`` runs the demo with recipe seed N for pretraining and fine-tuning (the replica stays
the same), recorded as ``demo-study-seedN``; ``--spread`` tabulates every recorded seed into
``demo-study-seeds.md`` (the spread that a claim in the README must survive).

With ``--config FILE`` it runs that study (e.g. ``examples/openkbp-hn/study.yaml``) and records
its tables without checks.

Usage::

    python benchmarks/bench_study.py [--config FILE] [--seed N] [--out DIR] [--write]
    python benchmarks/bench_study.py [--config FILE] --out DIR --write --summarize-only
    python benchmarks/bench_study.py --spread

``--write`` records ``benchmarks/results/<name>.{md,json}`` (``demo-study``, or
``<config's name>-study``). ``--summarize-only`` reads an existing study folder again and keeps
the timing recorded in the results JSON (to change what is summarised without training again).
The script exits with status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
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
STEPS = ("data", "pretrain", "finetune", "predict", "evaluate", "compare", "report")
METRICS = ("dsc", "hd95_mm", "sensitivity", "specificity", "volume_error_pct")


def _summary(root: Path) -> dict[str, Any]:
    """Means per structure, model and cohort; Wilcoxon p of the DSC difference; models."""
    import pandas as pd
    import yaml

    metrics = pd.read_csv(root / "metrics.csv", keep_default_na=False, na_values=["nan"])
    comparison = pd.read_csv(root / "comparison" / "comparison.csv")
    config = yaml.safe_load((root / "study.yaml").read_text(encoding="utf-8"))
    a, b = config["models"]["vendor"], config["models"]["finetuned"]
    rows = []
    for (structure, cohort), group in metrics.groupby(["structure", "cohort"], sort=False):
        row: dict[str, Any] = {"structure": structure, "cohort": cohort}
        row["n"] = int(group.case_id.nunique())
        for model in (a, b):
            means = group[group.model == model][list(METRICS)].mean()
            for metric in METRICS:
                row[f"{metric}|{model}"] = round(float(means[metric]), 4)
        test = comparison[
            (comparison.cohort == cohort)
            & (comparison.structure == structure)
            & (comparison.metric == "dsc")
        ]
        row["dsc_p_value"] = round(float(test.p_value.iloc[0]), 4) if len(test) else None
        rows.append(row)
    return {"models": [a, b], "name": config["name"], "rows": rows}


def _demo_checks(summary: dict[str, Any], wall_seconds: float | None) -> list[dict[str, Any]]:
    """The targets of issue 10 for the demo study (the seed paper's pattern, clearly)."""
    rows = {(r["structure"], r["cohort"]): r for r in summary["rows"]}
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, value: str) -> None:
        checks.append({"check": name, "passed": bool(ok), "value": value})

    for cohort in ("ExVal", "GenEva"):
        ctv = rows[("CTV", cohort)]
        before, after, p = ctv["dsc|VPM"], ctv["dsc|LFT"], ctv["dsc_p_value"]
        check(
            f"CTV DSC gain LFT - VPM >= 0.05, Wilcoxon p < 0.05 ({cohort})",
            after - before >= 0.05 and p is not None and p < 0.05,
            f"{before:.3f} -> {after:.3f} ({after - before:+.3f}), p = {p:.4f}",
        )
        vpm, lft = ctv["volume_error_pct|VPM"], ctv["volume_error_pct|LFT"]
        check(f"VPM CTV volume error >= +15 % ({cohort})", vpm >= 15.0, f"{vpm:+.1f} %")
        check(f"LFT CTV volume within ±5 % ({cohort})", abs(lft) <= 5.0, f"{lft:+.1f} %")
        for structure in ("Bladder", "Femur_Head_L", "Femur_Head_R"):
            r = rows[(structure, cohort)]
            v, f, p = r["dsc|VPM"], r["dsc|LFT"], r["dsc_p_value"]
            check(
                f"{structure} DSC >= 0.90 for both, no significant loss > 0.02 ({cohort})",
                min(v, f) >= 0.90 and not (f - v < -0.02 and p is not None and p < 0.05),
                f"VPM {v:.3f}, LFT {f:.3f}, p = {p:.4f}",
            )
        bowel = rows[("Bowel_Small", cohort)]
        check(
            f"Bowel_Small DSC >= 0.75 for both ({cohort})",
            min(bowel["dsc|VPM"], bowel["dsc|LFT"]) >= 0.75,
            f"VPM {bowel['dsc|VPM']:.3f}, LFT {bowel['dsc|LFT']:.3f}",
        )
    if wall_seconds is not None:
        check("whole study within 10 minutes", wall_seconds <= 600, f"{wall_seconds / 60:.1f} min")
    return checks


def _markdown(result: dict[str, Any]) -> str:
    summary = result["summary"]
    a, b = summary["models"]
    machine = result["machine"]
    command = "dlas study" + (f" {result['config']}" if result["config"] else "")
    steps = [s for s in STEPS if s in result["step_seconds"]]
    lines = [
        f"# `{command}` on a {machine['cpus']}-core CPU",
        "",
        f"Date {result['date']}; {machine['platform']}, {machine['cpus']} CPUs"
        + _cpu_text(machine)
        + f", torch {machine['torch']} with {machine['torch_threads']} threads, load average "
        f"before {machine['load_average_before']}. Script: `benchmarks/bench_study.py"
        + (f" --config {result['config']}" if result["config"] else "")
        + " --write`.",
        "",
        f"**Wall time {result['wall_seconds'] / 60:.1f} min"
        + (
            f", peak memory {result['peak_memory_mb']:.0f} MB** (largest process)."
            if result["peak_memory_mb"] is not None
            else "** (the sum of the study's steps; peak memory not measured)."
        ),
        "",
        "| step | " + " | ".join(steps) + " |",
        "|---|" + "---|" * len(steps),
        "| seconds | " + " | ".join(f"{result['step_seconds'][s]:.0f}" for s in steps) + " |",
        "",
    ]
    if result.get("checks"):
        lines += [
            "| check (issue 10) | passed | value |",
            "|---|---|---|",
            *[
                f"| {c['check']} | {'yes' if c['passed'] else 'NO'} | {c['value']} |"
                for c in result["checks"]
            ],
            "",
        ]
    lines += [
        f"Means over the patients of each cohort ({a} → {b}); p: two-sided Wilcoxon "
        "signed-rank test of the paired DSC differences. 95HD pooled, specificity in the "
        "reference box + 10 mm, volume error 100·(V − V_ref)/V_ref.",
        "",
        "| cohort | structure | n | DSC | 95HD (mm) | sensitivity | specificity "
        "| volume error (%) | p (DSC) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pair(row: dict[str, Any], metric: str, digits: int) -> str:
        return f"{row[f'{metric}|{a}']:.{digits}f} → {row[f'{metric}|{b}']:.{digits}f}"

    for row in sorted(summary["rows"], key=lambda r: (r["cohort"], r["structure"])):
        p = row["dsc_p_value"]
        lines.append(
            f"| {row['cohort']} | {row['structure']} | {row['n']} | {pair(row, 'dsc', 3)} "
            f"| {pair(row, 'hd95_mm', 1)} | {pair(row, 'sensitivity', 3)} "
            f"| {pair(row, 'specificity', 3)} | {pair(row, 'volume_error_pct', 1)} "
            f"| {'n/a' if p is None else f'{p:.4f}'} |"
        )
    return "\n".join(lines) + "\n"


def _seeded_demo(seed: int, folder: Path) -> Path:
    """The demo preset as a YAML with recipe seed ``seed`` for both trainings."""
    import yaml

    from dlas.study.config import PRESETS

    data = json.loads(json.dumps(PRESETS["demo"]))
    data["name"] = f"demo-replica-seed{seed}"
    for step in ("pretrain", "finetune"):
        data[step] = {**data.get(step, {}), "seed": seed}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"demo-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _spread() -> str:
    """CTV results and checks of every recorded demo seed, with mean and SD."""
    import statistics

    records = sorted(RESULTS.glob("demo-study*.json"))
    rows = []
    for path in records:
        result = json.loads(path.read_text(encoding="utf-8"))
        summary = {(r["structure"], r["cohort"]): r for r in result["summary"]["rows"]}
        seed = 0 if path.stem == "demo-study" else int(path.stem.rsplit("seed", 1)[1])
        row: dict[str, Any] = {"seed": seed, "minutes": result["wall_seconds"] / 60}
        for cohort in ("ExVal", "GenEva"):
            ctv = summary[("CTV", cohort)]
            row[f"{cohort} gain"] = ctv["dsc|LFT"] - ctv["dsc|VPM"]
            row[f"{cohort} p"] = ctv["dsc_p_value"]
            row[f"{cohort} VPM vol"] = ctv["volume_error_pct|VPM"]
            row[f"{cohort} LFT vol"] = ctv["volume_error_pct|LFT"]
        failed = [c["check"] for c in result["checks"] if not c["passed"]]
        row["checks"] = f"{len(result['checks']) - len(failed)}/{len(result['checks'])}"
        row["failed"] = "; ".join(failed) or "-"
        rows.append(row)
    keys = [k for k in rows[0] if k not in ("seed", "checks", "failed")] if rows else []
    lines = [
        "# Demo study over recipe seeds",
        "",
        "`python benchmarks/bench_study.py --seed N --write` per seed (seed 0 is the README's "
        "`dlas study`); this table: `python benchmarks/bench_study.py --spread`. CTV DSC gain "
        "LFT - VPM, its Wilcoxon p, and the CTV volume errors (%) per cohort.",
        "",
        "| seed | " + " | ".join(keys) + " | checks passed | failed |",
        "|---|" + "---|" * (len(keys) + 2),
    ]
    for row in sorted(rows, key=lambda r: r["seed"]):
        lines.append(
            f"| {row['seed']} | "
            + " | ".join(
                f"{row[k]:.4f}"
                if " p" in k
                else f"{row[k]:+.3f}"
                if "gain" in k
                else f"{row[k]:.1f}"
                for k in keys
            )
            + f" | {row['checks']} | {row['failed']} |"
        )
    if len(rows) > 1:
        lines.append(
            "| mean ± SD | "
            + " | ".join(
                f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
                for values in ([r[k] for r in rows] for k in keys)
            )
            + " | | |"
        )
    return "\n".join(lines) + "\n"


def _cpu_text(machine: dict[str, Any]) -> str:
    cpu = machine.get("cpu")
    if not cpu:
        return ""
    return (
        f" ({cpu.get('model name', '?')}, family {cpu.get('cpu family', '?')} model "
        f"{cpu.get('model', '?')} stepping {cpu.get('stepping', '?')}; torch kernels "
        f"{machine.get('torch_cpu_capability', '?')})"
    )


def _machine() -> dict[str, Any]:
    """The machine, down to the CPU's family and model and the kernels torch dispatches to:
    two "AMD EPYC" virtual machines of the same kind can differ there, and with them the
    last bits of a convolution, which training then amplifies (demo-study-hosts.md)."""
    import torch

    cpu: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "stepping") and key not in cpu:
                cpu[key] = value.strip()
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="study YAML (default: demo)")
    parser.add_argument("--out", type=Path, default=None, help="study folder (default: a temp)")
    parser.add_argument("--write", action="store_true", help="record results in results/")
    parser.add_argument(
        "--summarize-only", action="store_true", help="summarise an existing --out folder again"
    )
    parser.add_argument("--seed", type=int, default=0, help="demo: recipe seed (default 0)")
    parser.add_argument("--spread", action="store_true", help="tabulate the recorded seeds")
    parser.add_argument(
        "--record-as",
        default=None,
        help="with --summarize-only: record an existing --out folder run on this machine as "
        "results/demo-study-NAME.json (wall time: the sum of its steps)",
    )
    args = parser.parse_args()
    if args.spread:
        text = _spread()
        print(text)
        (RESULTS / "demo-study-seeds.md").write_text(text, encoding="utf-8")
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="dlas-study-")) / "study"
    config = str(args.config) if args.config else None
    stem = "demo" if config is None else Path(config).parent.name or Path(config).stem
    record = RESULTS / f"{stem}-study.json"
    seed_config = None
    if config is None and args.seed:
        seed_config = _seeded_demo(args.seed, out.parent)
        record = RESULTS / f"demo-study-seed{args.seed}.json"
    if args.record_as:
        record = RESULTS / f"demo-study-{args.record_as}.json"
    if args.summarize_only and args.record_as:
        import torch

        steps = [json.loads(p.read_text())["seconds"] for p in (out / ".steps").glob("*")]
        result = {
            "date": dt.date.today().isoformat(),
            "config": config,
            "machine": {**_machine(), "load_average_before": None},
            "wall_seconds": round(sum(steps), 1),
            "peak_memory_mb": None,
        }
    elif args.summarize_only:
        result = json.loads(record.read_text(encoding="utf-8"))
        result.setdefault("config", config)
        if "torch" not in result["machine"]:
            import torch

            result["machine"]["torch"] = torch.__version__
    else:
        if out.exists():
            shutil.rmtree(out)
        load_before = os.getloadavg()
        start = time.perf_counter()
        command = [sys.executable, "-m", "dlas", "--quiet", "study", "--out", str(out)]
        given = config or (str(seed_config) if seed_config else None)
        subprocess.run(command + ([given] if given else []), check=True)
        import torch

        result = {
            "date": dt.date.today().isoformat(),
            "config": config,
            "machine": {
                **_machine(),
                "load_average_before": [round(x, 2) for x in load_before],
            },
            "wall_seconds": round(time.perf_counter() - start, 1),
            "peak_memory_mb": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
            ),
        }
    result["step_seconds"] = {
        p.stem: json.loads(p.read_text())["seconds"] for p in sorted((out / ".steps").glob("*"))
    }
    result["summary"] = _summary(out)
    result["checks"] = (
        _demo_checks(result["summary"], result.get("wall_seconds")) if config is None else []
    )
    print(_markdown(result))
    if args.write:
        RESULTS.mkdir(exist_ok=True)
        record.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        record.with_suffix(".md").write_text(_markdown(result), encoding="utf-8")
    failed = [c for c in result["checks"] if not c["passed"]]
    for c in failed:
        print(f"FAILED: {c['check']}: {c['value']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
