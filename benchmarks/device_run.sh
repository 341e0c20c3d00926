#!/usr/bin/env bash
# The GPU measurements of issues 12 and 15 in one call on the accelerator machine.
#
# Here, first: python benchmarks/device_kit.py --nnunet --smp --openkbp   (fills .device/)
# Then one device `run`, from the repository root, with carry [".device"]:
#   bash benchmarks/device_run.sh gpu       # issue 12: gpu_bench.py, every mode (~5 min)
#   bash benchmarks/device_run.sh openkbp   # issue 15: `fast` and nnU-Net 2-D on OpenKBP,
#                                           # the same GPU budget each (BUDGET, default 2m)
#   bash benchmarks/device_run.sh check     # the kit imports and sees the GPU (seconds)
# DEVICE=cpu runs the openkbp job on a CPU (to try the kit here, in an environment like the
# machine's: see gpu_bench.md).
# Results go to $OUT (the device tool's folder that comes back); copy them to benchmarks/results.
set -euo pipefail
job=${1:?usage: device_run.sh gpu|openkbp|check}
out=${OUT:-/tmp/dlas-device-out}
mkdir -p "$out"
site=/tmp/dlas-site
if [ ! -f "$site/dlas-device-kit.txt" ]; then
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
        .device/site.tar.xz "$site"
fi
export PYTHONPATH="$site:$PWD/src" PYTHONUNBUFFERED=1
python3 - <<'EOF'
import importlib, torch
for name in ("dlas.training", "dlas.prediction", "dlas.study", "dlas.engines.nnunet.train",
             "nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "segmentation_models_pytorch"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a report, then the job runs what it can
        print(f"device kit: {name} does not import: {type(exc).__name__}: {exc}")
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
case "$job" in
    check) ;;
    gpu)
        python3 benchmarks/gpu_bench.py --out "$out" 2>&1 | tee "$out/gpu_bench.log"
        ;;
    openkbp)
        budget=${BUDGET:-2m}
        common=(--phase test --time-budget "$budget" --device "${DEVICE:-cuda}" --source .device/openkbp-hn
                --work /tmp/dlas-openkbp --threads 8 --record "$out/openkbp-gpu.jsonl")
        python3 benchmarks/bench_openkbp.py run --recipe fast --label "fast-gpu-$budget" \
            "${common[@]}" 2>&1 | tee "$out/openkbp-fast.log"
        python3 benchmarks/bench_openkbp.py nnunet --label "nnunet-2d-gpu-$budget" \
            "${common[@]}" 2>&1 | tee "$out/openkbp-nnunet.log"
        ;;
    *) echo "device_run.sh: unknown job $job (gpu, openkbp or check)" >&2; exit 2 ;;
esac
