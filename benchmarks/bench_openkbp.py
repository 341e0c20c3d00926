"""Model quality on real head-and-neck CT per CPU-minute: OpenKBP, a fixed split, dlas's recipes
against a plain MONAI baseline trained on the same data for the same time.

Data: ``../shared/data/openkbp-hn`` (60 patients, clinical contours, ~4 x 4 x 2.5-3 mm), imported
once with ``examples/openkbp-hn/structures.yaml`` (Bone_Mandible, Brainstem, SpinalCord, Parotid_L,
Parotid_R; missing structures are trained on as unknown). The split is fixed here (seeded
permutation of the sorted patient ids, written out below): 15 ``test`` patients never used for
any choice; of the 45 training patients, 9 (``tuneval``) serve as the validation set of recipe
selection (train on the other 36, ``tune``).

Usage::

    # recipe selection: train on `tune` (36), score on `tuneval` (9)
    python benchmarks/bench_openkbp.py run --phase select --recipe fast --steps 2000 \
        --label fast-2000 --record benchmarks/results/openkbp-selection.jsonl
    # the target: train on all 45 within 20 minutes, score on the 15 test patients
    python benchmarks/bench_openkbp.py run --phase test --recipe fast --time-budget 20m \
        --record benchmarks/results/openkbp.jsonl
    # nnU-Net v2 2-D driven by dlas (engine: nnunet), same budget (pip install 'dlas[nnunet]')
    python benchmarks/bench_openkbp.py nnunet --phase test --time-budget 20m \
        --record benchmarks/results/openkbp-nnunet.jsonl
    # on a GPU (--device cuda; the data from another folder with --source): see
    # benchmarks/device_run.sh openkbp, which runs `run` and `nnunet` with the same budget
    # the plain baseline (MONAI BasicUNet 2-D, Dice + CE, Adam 1e-3, uniform slices)
    python benchmarks/bench_openkbp.py baseline --phase test --time-budget 10m \
        --record benchmarks/results/openkbp.jsonl
    python benchmarks/bench_openkbp.py summarize benchmarks/results/openkbp.jsonl
    # a prediction-time choice on a trained selection run (mirror TTA)
    python benchmarks/bench_openkbp.py rescore --phase select --run p64-in5-select-s0 --tta \
        --label tta --record benchmarks/results/openkbp-selection.jsonl
    # quality against time: every method at every budget, then the figure and table
    python benchmarks/bench_openkbp.py curve --budgets 2.5m,5m,10m,20m \
        --methods fast,paper,baseline --record benchmarks/results/openkbp-curve.jsonl
    python benchmarks/bench_openkbp.py figure benchmarks/results/openkbp-curve.jsonl \
        --out benchmarks/results/openkbp-curve.png

``--set key=value`` overrides recipe fields (YAML values; dotted keys for sections, e.g.
``--set augmentation.gamma=0``). Every run appends one JSON line (recipe, budget, machine, times,
per-patient and mean DSC / 95HD per structure) to ``--record``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "openkbp-hn"
STRUCTURES = ROOT / "examples" / "openkbp-hn" / "structures.yaml"
NAMES = ("Bone_Mandible", "Brainstem", "SpinalCord", "Parotid_L", "Parotid_R")

#: numpy.random.default_rng(2026).permutation(sorted patient ids): the first 15 are the test
#: set, the last 9 of the remaining 45 the selection-validation set. Written out so that the
#: split never depends on a library version.
TEST = [
    "pt_5",
    "pt_13",
    "pt_14",
    "pt_28",
    "pt_51",
    "pt_70",
    "pt_84",
    "pt_86",
    "pt_106",
    "pt_114",
    "pt_122",
    "pt_141",
    "pt_144",
    "pt_176",
    "pt_190",
]
TUNEVAL = ["pt_24", "pt_35", "pt_41", "pt_74", "pt_96", "pt_111", "pt_120", "pt_180", "pt_193"]


def _split(source: Path) -> dict[str, str]:
    index = json.loads((source / "index.json").read_text())
    cohort = {}
    for entry in index:
        pid = entry["patient"]
        cohort[pid] = "test" if pid in TEST else "tuneval" if pid in TUNEVAL else "tune"
    return cohort


def dataset(work: Path, source: Path = SOURCE) -> Path:
    """The imported data set (made once per work folder, from ``source``)."""
    from dlas.dataset import ImportOptions, import_source
    from dlas.structures import StructureSet

    root = work / "dataset"
    if (root / "dataset.json").is_file():
        return root
    work.mkdir(parents=True, exist_ok=True)
    csv = work / "cohorts.csv"
    csv.write_text("folder,cohort\n" + "".join(f"{p},{c}\n" for p, c in _split(source).items()))
    import_source(
        source,
        root,
        ImportOptions(
            structure_set=StructureSet.from_yaml(STRUCTURES),
            cohort_by=f"csv:{csv}",
            keep_ids=True,
        ),
    )
    return root


def _cohorts(phase: str) -> tuple[list[str], str]:
    return (["tune"], "tuneval") if phase == "select" else (["tune", "tuneval"], "test")


def _overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def _score(ds_root: Path, pred: Path, cohort: str, name: str) -> dict[str, Any]:
    from dlas.evaluation import evaluate

    table = evaluate(ds_root, {name: pred}, cohorts=[cohort]).table
    per_structure = {}
    for structure in NAMES:
        rows = table[table.structure == structure]
        per_structure[structure] = {
            "n": len(rows),
            "dsc": round(float(rows.dsc.mean()), 4),
            "dsc_sd": round(float(rows.dsc.std()), 4),
            "hd95_mm": round(float(rows.hd95_mm.replace(float("inf"), float("nan")).mean()), 2),
            "misses": int((rows.dsc == 0).sum()),
            "per_case": {r.case_id: round(float(r.dsc), 4) for r in rows.itertuples()},
        }
    return per_structure


def run_dlas(args: argparse.Namespace) -> dict[str, Any]:
    """Train with a dlas recipe, predict the scored cohort, evaluate."""
    import torch

    torch.set_num_threads(args.threads)
    ds_root = dataset(args.work, args.source)
    train_cohorts, scored = _cohorts(args.phase)
    config: dict[str, Any] = {"base": args.recipe, "folds": 1, "seed": args.seed}
    config.update(_overrides(args.set))
    if args.steps:
        config["steps_per_epoch"] = config.get("steps_per_epoch", 50)
        config["epochs"] = max(1, args.steps // config["steps_per_epoch"])
    out, model, train_s, predict_s = _train_and_predict(
        args, config, ds_root, train_cohorts, scored
    )
    return {
        "kind": "dlas",
        "recipe": model["training"]["recipe"],
        "schedule": model["training"]["schedule"],
        "preprocessing": model["preprocessing"],
        "train_seconds": round(train_s, 1),
        "predict_seconds": round(predict_s, 1),
        "scores": _score(ds_root, out / "pred", scored, "dlas"),
    }


def _train_and_predict(
    args: argparse.Namespace,
    config: dict[str, Any],
    ds_root: Path,
    train_cohorts: list[str],
    scored: str,
) -> tuple[Path, dict[str, Any], float, float]:
    """Train ``config`` on the training cohorts (within ``--time-budget``) into a fresh run
    folder and predict the scored cohort; the folder, its model.json and both times (s)."""
    from dlas.prediction import predict
    from dlas.training import train

    out = args.work / "runs" / f"{args.label}-{args.phase}-s{args.seed}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    started = time.perf_counter()
    train(
        ds_root,
        out / "model",
        config=config,
        cohorts=train_cohorts,
        device=args.device,
        time_budget=args.time_budget,
    )
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    predict(
        out / "model", ds_root, out / "pred", cohorts=[scored], device=args.device, tta=args.tta
    )
    predict_s = time.perf_counter() - started
    model = json.loads((out / "model" / "model.json").read_text())
    return out, model, train_s, predict_s


def run_nnunet(args: argparse.Namespace) -> dict[str, Any]:
    """nnU-Net v2 (2-D by default) driven by dlas (``engine: nnunet``) with the same budget:
    planning and preprocessing count against it, as case preparation does for ``run``."""

    ds_root = dataset(args.work, args.source)
    train_cohorts, scored = _cohorts(args.phase)
    config: dict[str, Any] = {
        "engine": "nnunet",
        "folds": 1,
        "seed": args.seed,
        "steps_per_epoch": 50,
        "nnunet": {"configuration": "2d", "val_steps_per_epoch": 5},
    }
    config.update(_overrides(args.set))
    out, model, train_s, predict_s = _train_and_predict(
        args, config, ds_root, train_cohorts, scored
    )
    plan = model["plans"]["configurations"][model["configuration"]]
    return {
        "kind": "nnunet",
        "recipe": model["training"]["recipe"],
        "schedule": model["training"]["schedule"],
        "cases_trained": model["training"]["dataset"]["cases"],
        "plans": {k: plan.get(k) for k in ("patch_size", "spacing", "batch_size")},
        "train_seconds": round(train_s, 1),
        "predict_seconds": round(predict_s, 1),
        "scores": _score(ds_root, out / "pred", scored, "dlas"),
    }


def rescore(args: argparse.Namespace) -> dict[str, Any]:
    """Predict the scored cohort again with a run's trained model (e.g. with ``--tta``): a
    prediction-time choice, judged on the selection split like every other."""
    import torch

    from dlas.prediction import predict

    torch.set_num_threads(args.threads)
    ds_root = dataset(args.work, args.source)
    _, scored = _cohorts(args.phase)
    run = args.work / "runs" / args.run
    pred = run / f"pred-{args.label}"
    started = time.perf_counter()
    predict(run / "model", ds_root, pred, cohorts=[scored], device=args.device, tta=args.tta)
    predict_s = time.perf_counter() - started
    model = json.loads((run / "model" / "model.json").read_text())
    return {
        "kind": "rescore",
        "run": args.run,
        "recipe": model["training"]["recipe"],
        "schedule": model["training"]["schedule"],
        "train_seconds": 0.0,
        "predict_seconds": round(predict_s, 1),
        "scores": _score(ds_root, pred, scored, "dlas"),
    }


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """MONAI BasicUNet (2-D, 3 adjacent slices as channels) with Dice + CE, Adam 1e-3 at a
    constant rate, batch 8, slices drawn uniformly, no augmentation, trained until the time
    budget is spent: the plain recipe that a new user would write. Same preprocessed data (the
    seed study's HU window, the data's median spacing, body crop) and the same inference and
    evaluation path as dlas models."""
    import numpy as np
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    from dlas.dataset import CaseDataset
    from dlas.io import write_mask
    from dlas.model.checkpoint import LoadedModel, ModelInfo
    from dlas.model.config import DpnUNetConfig, Preprocessing
    from dlas.prediction.engine import Predictor
    from dlas.training.api import _median_spacing, _prepare, _with_canvas
    from dlas.training.config import parse_duration
    from dlas.training.data import SliceSet

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    budget = parse_duration(args.time_budget or "10m")
    started = time.perf_counter()
    ds_root = dataset(args.work, args.source)
    ds = CaseDataset.open(ds_root)
    train_cohorts, scored = _cohorts(args.phase)
    ids = [c for cohort in train_cohorts for c in ds.case_ids(cohort)]
    classes = ["background", *ds.structure_set.names]
    # A 5-level stand-in architecture: only in_slices and the size multiple (16) are used.
    arch = DpnUNetConfig(
        in_slices=3, num_classes=len(classes), widths=(8,) * 5, blocks=(1,) * 5, growth=(4,) * 5
    )
    pre = Preprocessing(spacing_mm=_median_spacing(ds, ids))
    prepared = _prepare(ds, ids, arch, pre, lambda event: None)
    pre = _with_canvas(pre, prepared)
    slices = SliceSet(list(prepared.values()), 3)
    net = BasicUNet(spatial_dims=2, in_channels=3, out_channels=len(classes))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    rng = np.random.default_rng(args.seed)
    steps = 0
    net.train()
    while time.perf_counter() - started < budget:
        images, labels, _ = slices.batch(rng.integers(0, len(slices), 8))
        logits = net(torch.from_numpy(images))
        loss = loss_fn(logits, torch.from_numpy(labels)[:, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    train_s = time.perf_counter() - started
    net.eval()
    info = ModelInfo(
        folder=args.work,
        name="BasicUNet",
        architecture=arch,
        preprocessing=pre,
        structure_set=ds.structure_set,
        classes=classes,
        weights=[],
        model_sha256="baseline",
        software={},
        training={},
        created="",
    )
    predictor = Predictor(
        LoadedModel(info, [net], torch.device("cpu")),  # type: ignore[list-item]
        device="cpu",
        tta=args.tta,
    )
    out = args.work / "runs" / f"{args.label}-{args.phase}-s{args.seed}"
    started = time.perf_counter()
    for case_id in ds.case_ids(scored):
        case = ds.load_case(case_id)
        for name, mask in predictor.predict(case.ct).items():
            write_mask(mask, out / "pred" / case_id / "structures" / f"{name}.nii.gz")
    predict_s = time.perf_counter() - started
    return {
        "kind": "baseline",
        "recipe": {
            "network": "monai BasicUNet 2-D, features (32, 32, 64, 128, 256, 32)",
            "loss": "DiceCELoss(softmax)",
            "optimizer": "Adam 1e-3 constant",
            "batch_size": 8,
            "sampling": "uniform slices",
            "augmentation": "none",
        },
        "schedule": {"steps": steps, "budget_s": budget},
        "preprocessing": pre.model_dump(mode="json"),
        "train_seconds": round(train_s, 1),
        "predict_seconds": round(predict_s, 1),
        "scores": _score(ds_root, out / "pred", scored, "baseline"),
    }


def _record(args: argparse.Namespace, result: dict[str, Any], wall: float) -> None:
    entry = {
        "label": args.label,
        "phase": args.phase,
        "seed": args.seed,
        "time_budget": args.time_budget,
        "tta": args.tta,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": _machine(),
        "wall_seconds": round(wall, 1),
        **result,
    }
    means = {s: v["dsc"] for s, v in result["scores"].items()}
    print(json.dumps({"label": args.label, "phase": args.phase, "dsc": means}))
    if args.record:
        with open(args.record, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def summarize(path: Path) -> str:
    """A Markdown table of the recorded runs."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "| label | phase | seed | budget | train s | " + " | ".join(NAMES) + " | mean |",
        "|---|---|---|---|---|" + "---|" * (len(NAMES) + 1),
    ]
    for r in rows:
        dscs = [r["scores"][s]["dsc"] for s in NAMES]
        lines.append(
            f"| {r['label']} | {r['phase']} | {r['seed']} | {r['time_budget'] or '-'} | "
            f"{r['train_seconds']:.0f} | "
            + " | ".join(f"{d:.3f}" for d in dscs)
            + f" | {sum(dscs) / len(dscs):.3f} |"
        )
    return "\n".join(lines)


def curve(args: argparse.Namespace) -> None:
    """Every method at every budget, each run in a fresh process, appended to ``--record``."""
    import subprocess

    for budget in args.budgets.split(","):
        for method in args.methods.split(","):
            command = [
                sys.executable,
                __file__,
                "baseline" if method == "baseline" else "run",
                "--phase",
                args.phase,
                "--time-budget",
                budget,
                "--seed",
                str(args.seed),
                "--label",
                f"{method}-{budget}",
                "--work",
                str(args.work),
                "--record",
                str(args.record),
            ]
            if method != "baseline":
                command += ["--recipe", method]
            print(" ".join(command), flush=True)
            subprocess.run(command, check=True)


def figure(path: Path, out: Path) -> str:
    """Quality against training time per method (figure and Markdown table) from a record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlas.training.config import parse_duration

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # Runs of one method and budget (several seeds) are averaged.
    runs: dict[tuple[str, float], list[dict[str, float]]] = {}
    for r in rows:
        if not r.get("time_budget"):
            continue
        method = r["label"].rsplit("-", 1)[0]
        minutes = parse_duration(r["time_budget"]) / 60
        runs.setdefault((method, minutes), []).append({s: r["scores"][s]["dsc"] for s in NAMES})
    by_method: dict[str, list[tuple[float, float, dict[str, float]]]] = {}
    seeds: dict[tuple[str, float], int] = {}
    for (method, minutes), scores in runs.items():
        dscs = {s: sum(d[s] for d in scores) / len(scores) for s in NAMES}
        seeds[(method, minutes)] = len(scores)
        by_method.setdefault(method, []).append((minutes, sum(dscs.values()) / len(NAMES), dscs))
    fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    for method, points in sorted(by_method.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    ax.set_xscale("log")
    ticks = sorted({p[0] for pts in by_method.values() for p in pts})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training budget (minutes, 2-core CPU, preparation included)")
    ax.set_ylabel("mean test DSC (5 OARs)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out, dpi=120)
    lines = [
        "| method | budget (min) | runs | " + " | ".join(NAMES) + " | mean |",
        "|---|---|---|" + "---|" * (len(NAMES) + 1),
    ]
    for method, points in sorted(by_method.items()):
        for minutes, mean, dscs in sorted(points):
            lines.append(
                f"| {method} | {minutes:g} | {seeds[(method, minutes)]} | "
                + " | ".join(f"{dscs[s]:.3f}" for s in NAMES)
                + f" | {mean:.3f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "baseline", "rescore", "nnunet"):
        p = sub.add_parser(name)
        p.add_argument("--phase", choices=("select", "test"), default="select")
        p.add_argument("--recipe", default="fast")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--steps", type=int, default=0, help="total training steps (fixed)")
        p.add_argument("--time-budget", default=None)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--tta", action="store_true")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--label", default=name)
        p.add_argument("--work", type=Path, default=Path("/tmp/dlas-openkbp"))
        p.add_argument("--record", type=Path, default=None)
        p.add_argument("--source", type=Path, default=SOURCE, help="the openkbp-hn folder")
        if name != "baseline":  # the baseline trains and predicts on the CPU
            p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
        if name == "rescore":
            p.add_argument("--run", required=True, help="folder under WORK/runs")
    s = sub.add_parser("summarize")
    s.add_argument("record", type=Path)
    c = sub.add_parser("curve")
    c.add_argument("--budgets", default="2.5m,5m,10m,20m")
    c.add_argument("--methods", default="fast,paper,baseline")
    c.add_argument("--phase", choices=("select", "test"), default="test")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--work", type=Path, default=Path("/tmp/dlas-openkbp"))
    c.add_argument("--record", type=Path, required=True)
    f = sub.add_parser("figure")
    f.add_argument("record", type=Path)
    f.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "summarize":
        print(summarize(args.record))
        return 0
    if args.command == "curve":
        curve(args)
        return 0
    if args.command == "figure":
        print(figure(args.record, args.out))
        return 0
    started = time.perf_counter()
    commands = {"run": run_dlas, "baseline": run_baseline, "rescore": rescore, "nnunet": run_nnunet}
    result = commands[args.command](args)
    _record(args, result, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
