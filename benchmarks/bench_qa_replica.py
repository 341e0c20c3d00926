"""Prediction QA on a finished study of the replica: how often it flags real predictions, and
that it flags planted defects and the report lists them.

1. Every prediction of every model in the study is checked again with the thresholds of the
   built-in structure set as it is now (the study's models carry the set they were trained
   with) and the model's own QA reference: flags per code and model (what a reviewer would see).
2. Into copies of the first three predictions of the fine-tuned model, three defects are
   planted — femoral heads swapped left/right, a CTV with a detached island, a bladder grown by
   10 mm — and checked.
3. A copy of the study folder gets the planted predictions (masks and qa.json) and
   `dlas report` is run on it: the report's Prediction QA section must list the three cases
   with their codes.

Usage::

    dlas study --out /tmp/demo-study                       # the README's demo (10 min)
    python benchmarks/bench_qa_replica.py /tmp/demo-study [--write]

``--write`` records ``benchmarks/results/qa-replica.md``. Exit status 1 when a planted defect
is not flagged or not listed in the report.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

RESULTS = Path(__file__).resolve().parent / "results"


def _masks(folder: Path, reference: Any) -> dict[str, Any]:
    from dlas.io import read_mask

    return {
        p.name[: -len(".nii.gz")]: read_mask(p, reference=reference)
        for p in sorted((folder / "structures").glob("*.nii.gz"))
    }


def _plant(kind: str, ct: Any, masks: dict[str, Any]) -> dict[str, Any]:
    out = dict(masks)
    if kind == "swapped femoral heads":
        out["Femur_Head_L"], out["Femur_Head_R"] = masks["Femur_Head_R"], masks["Femur_Head_L"]
    elif kind == "CTV island":
        ctv = masks["CTV"].array.astype(bool)
        z = int(np.flatnonzero(ctv.any(axis=(1, 2))).mean())
        y, x = (int(v) for v in np.argwhere(ctv[z]).mean(axis=0))
        island = np.zeros_like(ctv)
        island[z - 1 : z + 2, y - 3 : y + 3, x + 30 : x + 36] = True
        out["CTV"] = ct.with_array(ctv | (island & ~ndimage.binary_dilation(ctv, iterations=2)))
    elif kind == "bladder grown by 10 mm":
        steps = np.ceil(10.0 / np.asarray(ct.spacing)).astype(int)
        grown = ndimage.binary_dilation(
            masks["Bladder"].array.astype(bool),
            structure=np.ones(tuple(2 * s + 1 for s in steps), dtype=bool),
        )
        out["Bladder"] = ct.with_array(grown)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    import dlas
    from dlas.dataset import CaseDataset
    from dlas.io import write_json, write_mask
    from dlas.model import read_model_info
    from dlas.prediction import check_prediction
    from dlas.structures import StructureSet

    study: Path = args.study
    rectal = StructureSet.builtin("rectal")
    dataset = CaseDataset.open(study / "data")
    predictions = study / "predictions"
    models = sorted(p.name for p in predictions.iterdir() if (study / "models" / p.name).is_dir())
    started = time.perf_counter()
    counts: dict[str, collections.Counter[str]] = {}
    flagged_cases: dict[str, int] = {}
    cases_per_model: dict[str, int] = {}
    seconds: list[float] = []
    for model in models:
        info = read_model_info(study / "models" / model)
        counts[model] = collections.Counter()
        flagged_cases[model] = 0
        folders = sorted(p for p in (predictions / model).iterdir() if p.is_dir())
        cases_per_model[model] = len(folders)
        for folder in folders:
            ct = dataset.load_case(folder.name).ct
            t = time.perf_counter()
            report = check_prediction(ct, _masks(folder, ct), rectal, info.qa)
            seconds.append(time.perf_counter() - t)
            flagged_cases[model] += report.status == "flagged"
            counts[model].update(f"{f.structure or 'input'} {f.code}" for f in report.flags)

    lft = next(m for m in models if m != "VPM") if "VPM" in models else models[-1]
    info = read_model_info(study / "models" / lft)
    planted_rows = []
    plants = ["swapped femoral heads", "CTV island", "bladder grown by 10 mm"]
    expected = {
        "swapped femoral heads": ("Femur_Head_L", "laterality"),
        "CTV island": ("CTV", "fragments"),
        "bladder grown by 10 mm": ("Bladder", "volume-out-of-range"),
    }
    folders = sorted(p for p in (predictions / lft).iterdir() if p.is_dir())[:3]
    ok = True
    with tempfile.TemporaryDirectory(prefix="qa-replica-") as tmp:
        copy = Path(tmp) / "study"
        shutil.copytree(study, copy, ignore=shutil.ignore_patterns("report", "source"))
        for kind, folder in zip(plants, folders, strict=True):
            ct = dataset.load_case(folder.name).ct
            masks = _plant(kind, ct, _masks(folder, ct))
            report = check_prediction(ct, masks, rectal, info.qa)
            structure, code = expected[kind]
            hit = code in report.codes(structure)
            ok &= hit
            planted_rows.append((kind, folder.name, report.describe(), hit))
            target = copy / "predictions" / lft / folder.name
            for name, mask in masks.items():
                write_mask(mask, target / "structures" / f"{name}.nii.gz")
            write_json(target / "qa.json", report.to_data())
        result = subprocess.run(
            [sys.executable, "-m", "dlas", "--quiet", "report", str(copy), "--out", f"{copy}/r"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1
        html = (copy / "r" / "index.html").read_text(encoding="utf-8")
        section = html[html.index('id="prediction-qa"') :]
        section = section[: section.index("</section>")]
        listed = {
            kind: folder.name in section and expected[kind][1] in section
            for kind, folder in zip(plants, folders, strict=True)
        }
        ok &= all(listed.values())

    lines = [
        "# Prediction QA on the replica",
        "",
        f"{dt.date.today().isoformat()} · dlas {dlas.__version__} · "
        f"{platform.processor() or platform.machine()} (2-core CPU)"
        " · `python benchmarks/bench_qa_replica.py STUDY` on the README's demo study "
        "(recipe seed 0). Thresholds: the built-in rectal set as committed; QA reference: each "
        "model's own `model.json`.",
        "",
        "## How often QA flags the study's own predictions",
        "",
        "| model | cases | flagged | flags (structure code: count) |",
        "|---|---|---|---|",
    ]
    for model in models:
        flags = ", ".join(f"{k}: {v}" for k, v in sorted(counts[model].items())) or "none"
        lines.append(f"| {model} | {cases_per_model[model]} | {flagged_cases[model]} | {flags} |")
    lines += [
        "",
        f"QA time per case: median {np.median(seconds):.2f} s (max {max(seconds):.2f} s) on the "
        "demo grid.",
        "",
        f"## Planted defects (copies of three {lft} predictions)",
        "",
        "| defect | case | flags | flagged as expected | listed in the report |",
        "|---|---|---|---|---|",
    ]
    for kind, case, described, hit in planted_rows:
        lines.append(
            f"| {kind} | {case} | {described.replace('|', '/')} | {'yes' if hit else 'NO'} | "
            f"{'yes' if listed[kind] else 'NO'} |"
        )
    lines += ["", f"Run time {time.perf_counter() - started:.0f} s.", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        (RESULTS / "qa-replica.md").write_text(text, encoding="utf-8")
        print(f"wrote {RESULTS / 'qa-replica.md'}")
    print(json.dumps({"ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
