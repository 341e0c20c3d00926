"""Choosing the demo study's recipe on training data only: the vendor and training cohorts of
the replica, never ExVal or GenEva.

The demo preset's pretraining (the vendor model) and fine-tuning recipes are compared here by
cross-validation: pretraining variants by 4-fold cross-validation on the vendor cohort,
fine-tuning variants by the study's own 5-fold cross-validation on the training cohort (mean
validation Dice of the folds' last epochs, on the model grid). The evaluation cohorts are not
even generated.

Usage::

    python benchmarks/bench_demo_recipe.py vpm --label base --record R.jsonl [--set k=v ...]
    python benchmarks/bench_demo_recipe.py lft --vpm base --label lr1e-3 --record R.jsonl \
        --set learning_rate=1e-3
    python benchmarks/bench_demo_recipe.py summarize R.jsonl

``vpm --folds 1`` trains the vendor model that ``lft`` runs start from (``--folds 4`` scores a
pretraining variant instead). ``--set`` takes recipe fields as YAML values (dotted keys for
sections). Each run appends one JSON line to ``--record``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_openkbp import _overrides


def dataset(work: Path) -> Path:
    """The replica's vendor and training cohorts (demo preset, seed 0) as a NIfTI data set."""
    from dlas.phantom import generate
    from dlas.phantom.config import preset

    root = work / "dataset"
    if (root / "dataset.json").is_file():
        return root
    # Only the vendor and training cohorts: the evaluation cohorts are never generated here.
    counts = {"vendor": 16, "training": 12, "ExVal": 0, "GenEva": 0}
    generate(root, preset("demo").with_seed(0).with_counts(counts), fmt="nifti", workers=2)
    return root


def _cv_scores(model_dir: Path) -> dict[str, Any]:
    cv = json.loads((model_dir / "cv.json").read_text())
    last: dict[str, list[float]] = {}
    best: list[float] = []
    for fold in cv["folds"]:
        entry = fold["history"][-1]
        for name, value in (entry.get("val_dsc_per_structure") or {}).items():
            if value is not None:
                last.setdefault(name, []).append(value)
        if fold["best_score"] is not None:
            best.append(fold["best_score"])
    per = {name: round(sum(v) / len(v), 4) for name, v in last.items()}
    return {
        "val_dsc_last": per,
        "val_dsc_last_mean": round(sum(per.values()) / len(per), 4) if per else None,
        "val_dsc_best_mean": round(sum(best) / len(best), 4) if best else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant; return its cross-validation scores."""
    import shutil

    import torch

    from dlas.training import train

    torch.set_num_threads(2)
    root = dataset(args.work)
    config: dict[str, Any] = {"base": "fast", "seed": args.seed, "folds": args.folds}
    config.update(_overrides(args.set))
    out = args.work / f"{args.command}-{args.label}"
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    train(
        root,
        out,
        config=config,
        cohorts=["vendor" if args.command == "vpm" else "training"],
        pretrained=(args.work / f"vpm-{args.vpm}") if args.command == "lft" else None,
        device="cpu",
    )
    seconds = time.perf_counter() - started
    model = json.loads((out / "model.json").read_text())
    return {
        "step": args.command,
        "label": args.label,
        "vpm": args.vpm if args.command == "lft" else None,
        "seed": args.seed,
        "recipe": model["training"]["recipe"],
        "seconds": round(seconds, 1),
        **(_cv_scores(out) if args.folds > 1 else {}),
    }


def summarize(path: Path) -> str:
    """A Markdown table of the recorded variants."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    names: list[str] = []
    for r in rows:
        names += [n for n in r.get("val_dsc_last", {}) if n not in names]
    lines = [
        "| step | label | from | seconds | " + " | ".join(names) + " | mean (last) | mean (best) |",
        "|---|---|---|---|" + "---|" * (len(names) + 2),
    ]
    for r in rows:
        per = r.get("val_dsc_last", {})
        lines.append(
            f"| {r['step']} | {r['label']} | {r['vpm'] or '-'} | {r['seconds']:.0f} | "
            + " | ".join(f"{per[n]:.3f}" if n in per else "-" for n in names)
            + f" | {r.get('val_dsc_last_mean') or '-'} | {r.get('val_dsc_best_mean') or '-'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("vpm", "lft"):
        p = sub.add_parser(name)
        p.add_argument("--label", required=True)
        p.add_argument("--vpm", default="base")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--folds", type=int, default=1 if name == "vpm" else 5)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--work", type=Path, default=Path("/tmp/dlas-demo-recipe"))
        p.add_argument("--record", type=Path, default=None)
    s = sub.add_parser("summarize")
    s.add_argument("record", type=Path)
    args = parser.parse_args()
    if args.command == "summarize":
        print(summarize(args.record))
        return 0
    result = run(args)
    result["date"] = dt.datetime.now().isoformat(timespec="seconds")
    result["machine"] = platform.platform()
    result["command"] = " ".join(sys.argv)
    print(json.dumps({k: result.get(k) for k in ("label", "seconds", "val_dsc_last")}))
    if args.record:
        with open(args.record, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
