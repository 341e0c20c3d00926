"""CPU inference benchmark: one 512x512x~100 pelvic CT predicted with each DpnUNet preset.

What is timed, per preset and model spacing, in a fresh process each (so that peak memory is the
prediction's own): :meth:`dlas.prediction.Predictor.predict` end to end — canonical orientation,
body crop, resampling to the model grid, the network on every slice (batches of 8), resampling of
the class probabilities back to the CT grid, arg-max, and post-processing of every structure.

The CT is synthetic (an elliptic pelvis-sized body of 330 x 230 mm with soft tissue, bone and a
bladder, 1.27 x 1.27 x 5 mm like the study's scanner A). The weights are untrained, with the head
biased to background, so the post-processing inside ``predict`` sees empty masks; it is timed
apart (``postprocess_s``) on masks shaped like a bladder, a femoral head and bowel loops.

Peak memory: the process's peak resident set (VmHWM) minus the resident set just before the
prediction (torch, the model and the CT already loaded).

Also measured: training steps per second of the cpu preset on 64-128 pixel model grids (the
embedded demo study's sizes).

Run::

    python benchmarks/bench_inference_cpu.py --threads 2 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CASES = [
    {"preset": "cpu", "spacing_mm": 1.27},
    {"preset": "cpu", "spacing_mm": 2.54},
    {"preset": "full", "spacing_mm": 1.27},
]


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def _pelvis_ct(slices: int) -> Any:
    import numpy as np

    from dlas.io import Volume

    rng = np.random.default_rng(0)
    ny = nx = 512
    spacing = (5.0, 1.27, 1.27)
    yy, xx = np.mgrid[:ny, :nx].astype(np.float32)
    cy, cx = ny / 2, nx / 2
    ry, rx = 115 / spacing[1], 165 / spacing[2]
    body = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    couch = (yy > cy + ry + 15) & (yy < cy + ry + 25)
    heads = ((yy - cy - 10) ** 2 + (xx - cx - 70) ** 2 < 20**2) | (
        (yy - cy - 10) ** 2 + (xx - cx + 70) ** 2 < 20**2
    )
    hu = np.empty((slices, ny, nx), dtype=np.float32)
    for k in range(slices):  # slice by slice: the benchmark's own set-up stays small
        plane = np.where(body, 40.0, -1000.0).astype(np.float32)
        plane += rng.normal(0, 15, size=(ny, nx)).astype(np.float32) * body
        if abs(k - slices / 2) < 6:
            plane[heads] = 700.0
        dz = (k - slices / 2) * 4
        plane[((yy - cy + 30) ** 2 + (xx - cx) ** 2 + dz**2) < 35**2] = 10.0
        plane[couch] = 200.0
        hu[k] = plane
    return Volume(hu, spacing=spacing, origin=(-325.0, -325.0, 0.0))


def _realistic_masks(shape: tuple[int, int, int]) -> dict[str, Any]:
    import numpy as np

    nz, ny, nx = shape
    zz, yy, xx = np.mgrid[:nz, :ny, :nx].astype(np.float32)
    cy, cx = ny / 2, nx / 2
    bladder = ((yy - cy + 30) ** 2 + (xx - cx) ** 2 + ((zz - nz / 2) * 4) ** 2) < 35**2
    head = ((yy - cy - 10) ** 2 + (xx - cx - 70) ** 2 < 20**2) & (abs(zz - nz / 2) < 6)
    rng = np.random.default_rng(1)
    bowel = np.zeros(shape, dtype=bool)
    for _ in range(40):  # loops: many small blobs, the hard case for connected components
        z, y, x = rng.uniform(0, nz), rng.uniform(cy - 80, cy), rng.uniform(cx - 120, cx + 120)
        bowel |= ((zz - z) * 4) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < 12**2
    return {"bladder": bladder, "femoral_head": head, "small_bowel": bowel}


def run_one(preset: str, spacing: float, slices: int, threads: int) -> dict[str, Any]:
    """Time one prediction in this process."""
    import numpy as np
    import torch

    from dlas.io import Volume
    from dlas.model import PRESETS, DpnUNet, DpnUNetConfig, LoadedModel, Preprocessing
    from dlas.model.checkpoint import ModelInfo
    from dlas.prediction import Predictor, postprocess_mask
    from dlas.structures import Postprocess, StructureSet

    torch.set_num_threads(threads)
    structures = StructureSet.builtin("rectal")
    config = DpnUNetConfig.model_validate({**PRESETS[preset], "num_classes": 6})
    torch.manual_seed(0)
    net = DpnUNet(config).eval()
    with torch.no_grad():
        net.head[-1].bias[0] = 10.0  # background everywhere: post-processing timed apart
    info = ModelInfo(
        folder=Path("."),
        name=f"bench {preset}",
        architecture=config,
        preprocessing=Preprocessing(spacing_mm=spacing),
        structure_set=structures,
        classes=["background", *structures.names],
        weights=[],
        model_sha256="0" * 64,
    )
    predictor = Predictor(
        LoadedModel(info=info, networks=[net], device=torch.device("cpu")), device="cpu"
    )
    ct = _pelvis_ct(slices)
    predictor.predict(Volume(ct.array[:4], ct.spacing, ct.origin))  # warm-up (oneDNN)
    # Reset the peak resident set to the current one (Linux >= 4.0).
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    rss_before = _status_kb("VmRSS")
    start = time.perf_counter()
    masks = predictor.predict(ct)
    predict_s = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    assert all(not m.array.any() for m in masks.values())
    rule = Postprocess(largest_component=True, fill_holes=True)
    post: dict[str, float] = {}
    for name, mask in _realistic_masks(ct.shape).items():
        start = time.perf_counter()
        postprocess_mask(mask, rule)
        post[name] = round(time.perf_counter() - start, 3)
    return {
        "preset": preset,
        "parameters": sum(p.numel() for p in net.parameters()),
        "model_spacing_mm": spacing,
        "ct_shape_zyx": list(ct.shape),
        "threads": threads,
        "predict_s": round(predict_s, 2),
        "slices_per_s": round(slices / predict_s, 2),
        "peak_rss_mb": round(peak / 1024, 1),
        "peak_extra_mb": round((peak - rss_before) / 1024, 1),
        "postprocess_s": post,
        "numpy": np.__version__,
    }


def training_throughput(
    threads: int, sizes: tuple[int, ...] = (64, 96, 128)
) -> list[dict[str, Any]]:
    """Training steps per second of the cpu preset (batch 4, Adam, weighted cross-entropy) on
    square model grids: what the embedded demo study's CPU training runs at."""
    import torch
    import torch.nn.functional as tnf

    from dlas.model import PRESETS, DpnUNet, DpnUNetConfig

    torch.set_num_threads(threads)
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        net = DpnUNet(DpnUNetConfig.model_validate({**PRESETS["cpu"], "num_classes": 6}))
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        x = torch.randn(4, 3, size, size)
        y = torch.randint(0, 6, (4, size, size))
        w = torch.linspace(0.5, 2.0, 6)

        for i in range(3 + 10):
            if i == 3:  # after the warm-up steps (oneDNN primitives, Adam state)
                start = time.perf_counter()
            loss = tnf.cross_entropy(net(x), y, weight=w)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        steps = 10
        seconds = (time.perf_counter() - start) / steps
        rows.append(
            {
                "size": size,
                "batch": 4,
                "ms_per_step": round(seconds * 1000, 1),
                "slices_per_s": round(4 / seconds, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="folder for inference_cpu.json/.md")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--training", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.training:
        print(json.dumps(training_throughput(args.threads)))
        return
    if args.one:
        preset, spacing = args.one.split(":")
        print(json.dumps(run_one(preset, float(spacing), args.slices, args.threads)))
        return
    results = []
    for case in CASES:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                f"{case['preset']}:{case['spacing_mm']}",
                "--threads",
                str(args.threads),
                "--slices",
                str(args.slices),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(result))
        results.append(result)
    proc = subprocess.run(
        [sys.executable, __file__, "--training", "--threads", str(args.threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    training = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(training))
    import torch

    from dlas import __version__

    record = {
        "benchmark": "CPU inference per 512x512 patient (dlas Predictor.predict)",
        "date": dt.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
        },
        "software": {
            "dlas": __version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "results": results,
        "training_cpu_preset": training,
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "inference_cpu.json").write_text(json.dumps(record, indent=2) + "\n")
        load = ", ".join(f"{v:.1f}" for v in record["machine"]["load_average_at_start"])
        lines = [
            f"# CPU inference, {record['date']}",
            "",
            f"Machine: {record['machine']['platform']}, {record['machine']['cpu_count']} cores "
            f"(load average at start {load}); "
            f"torch {record['software']['torch']}, {results[0]['threads']} threads.",
            "",
            "| preset | parameters | model spacing (mm) | CT (z, y, x) | predict (s) | slices/s | "
            "peak extra memory (MB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results:
            lines.append(
                f"| {r['preset']} | {r['parameters']:,} | {r['model_spacing_mm']} | "
                f"{'x'.join(map(str, r['ct_shape_zyx']))} | {r['predict_s']} | "
                f"{r['slices_per_s']} | {r['peak_extra_mb']} |"
            )
        post = results[0]["postprocess_s"]
        lines += [
            "",
            "Training throughput of the cpu preset (batch 4, Adam, class-weighted cross-entropy, "
            "3 input slices, 6 classes):",
            "",
            "| model grid | ms per step | slices/s |",
            "|---|---|---|",
            *[
                f"| {t['size']}x{t['size']} | {t['ms_per_step']} | {t['slices_per_s']} |"
                for t in training
            ],
        ]
        lines += [
            "",
            "Post-processing (largest component + hole filling) of one structure on the same grid: "
            + ", ".join(f"{k} {v} s" for k, v in post.items())
            + ".",
            "",
            "Generated by `benchmarks/bench_inference_cpu.py` (its docstring says what is timed).",
        ]
        (args.out / "inference_cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
