"""GPU benchmark: DpnUNet training throughput vs segmentation_models_pytorch's Unet("dpn68").

One script, one run, one card: for each model and batch size it checks and times a training step
(forward, class-weighted cross-entropy, backward, Adam) on 512x512 slices with 3 input slices and
6 classes, bf16 autocast and channels-last on CUDA, in these modes:

``dlas-step``     dlas's own training step (``prepare_step`` / ``_Step.run``, what ``dlas train``
                  runs) with the recipe's runtime switches at auto: on CUDA bf16 autocast,
                  channels-last, training slices resident on the device, fused Adam, no host
                  synchronisation per step; checked against the same step with host data;
``dlas-folds5``   dlas's concurrent folds (``concurrent_folds: on``, ``dlas.training.folds``):
                  five folds' networks stacked and stepped together, each with its own batch
                  of ``batch`` slices; checked against each fold's step run alone;
``eager``         plain PyTorch;
``compile``       ``torch.compile(model)``;
``cudagraphs``    ``torch.compile(model, mode="reduce-overhead")`` (CUDA graphs; CUDA only);
``folds5``        DpnUNet only: the five cross-validation folds trained concurrently, one model
                  per fold stacked into one set of tensors and run with ``torch.func.vmap``
                  (each fold keeps batch-4 semantics; Adam is element-wise, so one Adam over the
                  stacked tensors equals five separate ones). Throughput counts the slices of
                  all five folds.

Checks before timing: the loss of the first step of every mode equals eager's within bf16
tolerance (a compiled or vmapped step that computes something else would otherwise look fast),
and in ``folds5`` each fold's loss equals that of the same fold model run alone.

Then inference per patient: ``Predictor.predict_labels`` on a 512x512x100 CT with the full
preset (bf16 on CUDA), eager.

The baseline ``segmentation_models_pytorch.Unet("dpn68", encoder_weights=None)`` is a pure-Python
package (its needs timm, torchvision and huggingface-hub are on the accelerator machine). Without
it the baseline rows are marked unavailable. The accelerator machine lacks it and dlas's own
needs (pydantic, pydicom, SimpleITK ...): ``benchmarks/device_kit.py --smp`` packs them and
``benchmarks/device_run.sh gpu`` runs this script there with them.

Usage::

    bash benchmarks/device_run.sh gpu                                  # on the accelerator
    python benchmarks/gpu_bench.py --out benchmarks/results           # on a GPU with dlas installed
    python benchmarks/gpu_bench.py --smoke                             # CPU, tiny sizes

``--smoke`` runs everything at 64x64 with few steps on the CPU to prove the script works; its
numbers say nothing about GPU speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NUM_CLASSES = 6
IN_SLICES = 3


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(name: str, device: Any) -> Any:
    import torch

    if name == "dpnunet-full":
        from dlas.model import PRESETS, DpnUNet, DpnUNetConfig

        config = DpnUNetConfig.model_validate({**PRESETS["full"], "num_classes": NUM_CLASSES})
        torch.manual_seed(0)
        return DpnUNet(config).to(device)
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    return smp.Unet("dpn68", encoder_weights=None, in_channels=IN_SLICES, classes=NUM_CLASSES).to(
        device
    )


def _data(batch: int, size: int, device: Any, seed: int = 0) -> tuple[Any, Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, IN_SLICES, size, size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=g)
    w = torch.linspace(0.5, 2.0, NUM_CLASSES)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device), y.to(device), w.to(device)


def _step_fn(model: Any, forward: Callable[[Any], Any], device: Any) -> Callable[..., Any]:
    import torch
    import torch.nn.functional as tnf

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    amp = device.type == "cuda"

    def step(x: Any, y: Any, w: Any) -> Any:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = forward(x)
        loss = tnf.cross_entropy(logits.float(), y, weight=w)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _folds_step(name: str, folds: int, device: Any) -> tuple[Callable[..., Any], list[Any]]:
    """A step training ``folds`` copies of the model at once (vmap over stacked weights)."""
    import copy

    import torch
    import torch.nn.functional as tnf
    from torch.func import functional_call, stack_module_state

    base = _build(name, device)
    models = []
    for k in range(folds):
        torch.manual_seed(k)
        model = copy.deepcopy(base)
        model.reset_parameters()  # folds5 is measured for DpnUNet only
        models.append(model)
    params, buffers = stack_module_state(models)
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    skeleton = copy.deepcopy(models[0]).to("meta")
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-4)
    amp = device.type == "cuda"

    def one(p: Any, b: Any, x: Any) -> Any:
        return functional_call(skeleton, (p, b), (x,))

    batched = torch.vmap(one, in_dims=(0, 0, 0))

    def step(x: Any, y: Any, w: Any) -> Any:
        # x: (folds, B, C, H, W), y: (folds, B, H, W)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = batched(params, buffers, x)
        losses = torch.stack(
            [tnf.cross_entropy(logits[k].float(), y[k], weight=w) for k in range(x.shape[0])]
        )
        losses.sum().backward()
        optimizer.step()
        return losses.detach()

    return step, models


def _time(
    step: Callable[..., Any], args: tuple[Any, ...], warmup: int, steps: int, device: Any
) -> float:
    for _ in range(warmup):
        step(*args)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*args)
    _sync(device)
    return (time.perf_counter() - start) / steps


def bench_training(
    name: str, batch: int, mode: str, size: int, warmup: int, steps: int, device: Any
) -> dict[str, Any]:
    """Check and time one (model, batch, mode)."""
    import torch

    row: dict[str, Any] = {"model": name, "batch": batch, "mode": mode, "size": size}
    if mode == "folds5":
        folds = 5
        step, models = _folds_step(name, folds, device)
        xs, ys = [], []
        for k in range(folds):
            x, y, w = _data(batch, size, device, seed=k)
            xs.append(x)
            ys.append(y)
        args = (torch.stack(xs), torch.stack(ys), w)
        # Check: each fold's loss equals its model run alone (before any update).
        with torch.no_grad():
            alone = []
            for k, model in enumerate(models):
                with torch.autocast(
                    device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
                ):
                    logits = model(xs[k])
                alone.append(
                    float(torch.nn.functional.cross_entropy(logits.float(), ys[k], weight=w))
                )
        first = step(*args).tolist()
        tol = 2e-2 if device.type == "cuda" else 1e-4
        row["check"] = all(
            abs(a - b) <= tol * max(1.0, abs(a)) for a, b in zip(alone, first, strict=True)
        )
        row["check_detail"] = {"alone": alone, "vmapped": first}
        seconds = _time(step, args, warmup, steps, device)
        row["slices_per_s"] = round(folds * batch / seconds, 1)
        row["ms_per_step"] = round(seconds * 1000, 2)
        return row
    model = _build(name, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x, y, w = _data(batch, size, device)
    reference = model
    if mode == "compile":
        forward = torch.compile(model)
    elif mode == "cudagraphs":
        forward = torch.compile(model, mode="reduce-overhead")
    else:
        forward = model
    # Check: the first loss equals eager's on the same weights and data.
    with (
        torch.no_grad(),
        torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
        ),
    ):
        expected = float(torch.nn.functional.cross_entropy(reference(x).float(), y, weight=w))
    step = _step_fn(model, forward, device)
    first = float(step(x, y, w))
    tol = 2e-2 if device.type == "cuda" else 1e-4
    row["check"] = abs(first - expected) <= tol * max(1.0, abs(expected))
    row["check_detail"] = {"eager_loss": expected, "mode_loss": first}
    seconds = _time(step, (x, y, w), warmup, steps, device)
    row["slices_per_s"] = round(batch / seconds, 1)
    row["ms_per_step"] = round(seconds * 1000, 2)
    return row


def _dlas_step(batch: int, size: int, device: Any, **switches: Any) -> tuple[Any, Any]:
    """dlas's own training step (``dlas.training.loop.prepare_step``) on synthetic slices: the
    step ``dlas train`` runs, with the recipe's runtime switches (``switches`` override them)."""
    import numpy as np
    import torch

    from dlas.model import PRESETS, DpnUNet, DpnUNetConfig
    from dlas.training.config import load_recipe
    from dlas.training.data import PreparedCase, SliceSet
    from dlas.training.distributed import DistContext
    from dlas.training.loop import FoldSetup, prepare_step

    rng = np.random.default_rng(0)
    cases = []
    for k in range(4):
        labels = rng.integers(0, NUM_CLASSES, size=(24, size, size)).astype(np.uint8)
        image = rng.normal(size=(24, size, size)).astype(np.float32)
        cases.append(PreparedCase(f"c{k}", image, labels, np.ones(NUM_CLASSES, dtype=bool)))
    recipe = load_recipe({"batch_size": batch, "augmentation": {"flip_lr": False}, **switches})
    setup = FoldSetup(
        index=1,
        folds=1,
        folder=Path("."),
        train=SliceSet(cases, IN_SLICES),
        validation=[],
        class_weights=np.linspace(0.5, 2.0, NUM_CLASSES),
        structure_names=[f"s{c}" for c in range(1, NUM_CLASSES)],
        swap=None,
        run_sha256="0" * 64,
        epochs=1,
    )
    config = DpnUNetConfig.model_validate({**PRESETS["full"], "num_classes": NUM_CLASSES})
    torch.manual_seed(0)
    step = prepare_step(DpnUNet(config), setup, recipe, device=device, dist=DistContext())
    return step, torch.Generator().manual_seed(0)


def bench_dlas_step(batch: int, size: int, warmup: int, steps: int, device: Any) -> dict[str, Any]:
    """Check and time the product's step with its runtime switches at auto (on CUDA: bf16,
    channels-last, device-resident data, fused Adam) against the same step with data from the
    host and the unfused optimiser: the first losses must agree."""
    row: dict[str, Any] = {"model": "dpnunet-full", "batch": batch, "mode": "dlas-step"}
    row["size"] = size
    items = [(k % 90, 0) for k in range(batch)]
    plain, gen_plain = _dlas_step(batch, size, device, device_data="off", fused_optimizer="off")
    # On a CPU (--smoke) the switches at auto keep the host path: ask for device data there.
    fast, gen_fast = _dlas_step(
        batch, size, device, **({} if device.type == "cuda" else {"device_data": "on"})
    )
    row["runtime"] = fast.rt.describe(False)
    expected = float(plain.run(items, gen_plain, 1e-4, False)[0])
    first = float(fast.run(items, gen_fast, 1e-4, False)[0])
    tol = 2e-2 if device.type == "cuda" else 1e-6
    row["check"] = abs(first - expected) <= tol * max(1.0, abs(expected))
    row["check_detail"] = {"host_data_ce_sum": expected, "fast_ce_sum": first}

    def one() -> None:
        fast.run(items, gen_fast, 1e-4, False)

    seconds = _time(one, (), warmup, steps, device)
    row["slices_per_s"] = round(batch / seconds, 1)
    row["ms_per_step"] = round(seconds * 1000, 2)
    return row


def bench_dlas_folds(
    batch: int, size: int, warmup: int, steps: int, device: Any, folds: int = 5
) -> dict[str, Any]:
    """Check and time dlas's concurrent folds (recipe ``concurrent_folds: on``): ``folds``
    networks stacked and stepped together by ``dlas.training.folds``; each fold's first loss
    must equal that of the same fold's step run alone (``dlas-step``)."""
    import copy

    import torch

    from dlas.training.distributed import DistContext
    from dlas.training.folds import _Together
    from dlas.training.loop import epoch_order, epoch_seed

    row: dict[str, Any] = {"model": "dpnunet-full", "batch": batch, "mode": f"dlas-folds{folds}"}
    row["size"] = size
    step, _ = _dlas_step(batch, size, device, concurrent_folds="on")
    setups = []
    for k in range(folds):
        setup = copy.copy(step.setup)
        setup.index, setup.folds, setup.epochs = k + 1, folds, 1
        setups.append(setup)
    nets = [copy.deepcopy(step.net) for _ in range(folds)]
    run = _Together(nets, setups, step.recipe, device, DistContext(), None)
    run._start_epoch(0)
    alone = []
    for k in range(folds):
        # The same fold alone: same weights, same random stream (seeded as the fold's epoch 1
        # and advanced past the epoch's sample order), same first batch.
        single, _ = _dlas_step(batch, size, device)
        single.net.load_state_dict(step.net.state_dict())
        generator = torch.Generator().manual_seed(epoch_seed(step.recipe.seed, k + 1, 0))
        order = epoch_order(single.setup.train, single.recipe, generator, None)
        alone.append(float(single.run(order[:batch], generator, 1e-4, False)[0]))
    run._step(0, 0)
    together = [float(f.sums[0]) for f in run.folds]  # type: ignore[index]
    tol = 2e-2 if device.type == "cuda" else 1e-4
    row["check"] = all(
        abs(a - b) <= tol * max(1.0, abs(a)) for a, b in zip(alone, together, strict=True)
    )
    row["check_detail"] = {"alone_ce_sum": alone, "together_ce_sum": together}
    i = [1]

    def one() -> None:
        run._step(0, i[0] % run.folds[0].steps)
        i[0] += 1

    seconds = _time(one, (), warmup, steps, device)
    row["slices_per_s"] = round(folds * batch / seconds, 1)
    row["ms_per_step"] = round(seconds * 1000, 2)
    return row


def bench_inference(size: int, slices: int, device: Any) -> dict[str, Any]:
    """Predict one CT (labels on the CT grid) with the full preset."""
    import numpy as np

    from dlas.io import Volume
    from dlas.model import LoadedModel, Preprocessing
    from dlas.model.checkpoint import ModelInfo
    from dlas.prediction import Predictor
    from dlas.structures import StructureSet

    net = _build("dpnunet-full", device).eval()
    structures = StructureSet.builtin("rectal")
    info = ModelInfo(
        folder=Path("."),
        name="bench",
        architecture=net.config,
        preprocessing=Preprocessing(spacing_mm=1.27),
        structure_set=structures,
        classes=["background", *structures.names],
        weights=[],
        model_sha256="0" * 64,
    )
    predictor = Predictor(
        LoadedModel(info=info, networks=[net], device=device), device=str(device), batch_size=16
    )
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 20, size=(slices, size, size)).astype(np.float32)
    ct = Volume(hu, spacing=(5.0, 1.27, 1.27), origin=(0.0, 0.0, 0.0))
    predictor.predict_labels(Volume(hu[:8], ct.spacing, ct.origin))  # warm-up
    _sync(device)
    start = time.perf_counter()
    predictor.predict_labels(ct)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "ct_shape_zyx": [slices, size, size],
        "seconds": round(seconds, 3),
        "slices_per_s": round(slices / seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, 64x64, few steps")
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", default="4,32")
    parser.add_argument("--modes", default="dlas-step,dlas-folds5,eager,compile,cudagraphs,folds5")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if args.smoke:
        device = torch.device(args.device or "cpu")
        size, batches, warmup, steps, slices = 64, [2, 4], 1, 2, 8
        smoke_modes = ("dlas-step", "dlas-folds5", "eager", "folds5")
        modes = [m for m in args.modes.split(",") if m in smoke_modes]
    else:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        size, warmup, steps, slices = args.size, args.warmup, args.steps, args.slices
        batches = [int(b) for b in args.batches.split(",")]
        modes = args.modes.split(",")
    if device.type != "cuda":
        modes = [m for m in modes if m != "cudagraphs"]
    try:
        import segmentation_models_pytorch  # noqa: F401

        models = ["dpnunet-full", "smp-unet-dpn68"]
        baseline_note = None
    except Exception as exc:
        models = ["dpnunet-full"]
        baseline_note = f"segmentation_models_pytorch unavailable ({type(exc).__name__}: {exc})"
        print(baseline_note, file=sys.stderr)
    rows = []
    for name in models:
        for batch in batches:
            for mode in modes:
                if mode in ("folds5", "dlas-step", "dlas-folds5") and name != "dpnunet-full":
                    continue
                try:
                    if mode == "dlas-step":
                        row = bench_dlas_step(batch, size, warmup, steps, device)
                    elif mode == "dlas-folds5":
                        row = bench_dlas_folds(batch, size, warmup, steps, device)
                    else:
                        row = bench_training(name, batch, mode, size, warmup, steps, device)
                except Exception as exc:
                    row = {
                        "model": name,
                        "batch": batch,
                        "mode": mode,
                        "size": size,
                        "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                    }
                print(json.dumps(row), flush=True)
                rows.append(row)
    inference = bench_inference(size, slices, device)
    print(json.dumps({"inference": inference}), flush=True)
    failed = [r for r in rows if r.get("check") is False]
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    )
    record = {
        "benchmark": "DpnUNet training throughput vs smp Unet(dpn68); inference per patient",
        "date": dt.date.today().isoformat(),
        "smoke": args.smoke,
        "device": {"type": device.type, "name": device_name or platform.machine()},
        "software": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "baseline": baseline_note
        or "segmentation_models_pytorch Unet('dpn68', encoder_weights=None)",
        "training": rows,
        "inference": inference,
        "checks_failed": len(failed),
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "gpu_bench_smoke" if args.smoke else "gpu_bench"
        (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
