"""Pack what a GPU run of dlas needs and the accelerator machine's image lacks.

The accelerator machine (see ``benchmarks/results/gpu_bench.md``) has PyTorch, NumPy, SciPy,
pandas, scikit-image, matplotlib, Typer, Rich and safetensors, but not pydantic, pydicom,
highdicom, SimpleITK, nibabel or nnU-Net, and it cannot reach a package registry. Without them
``dlas`` does not import there. This script, run here (with the network), downloads the wheels
of the versions dlas's tests ran with, installs them for the machine's Python (3.12, x86-64
Linux) into one folder and packs that folder as ``.device/site.tar.xz`` (xz, because SimpleITK's
library is 260 MB unpacked and everything that travels with a call must fit in 64 MiB).
``--openkbp`` also copies the OpenKBP data (``../shared/data/openkbp-hn``, which does not
travel by itself) to ``.device/openkbp-hn``. ``.device/`` is ignored by git; name it in the
call's ``carry``. ``benchmarks/device_run.sh`` unpacks it there and runs the measurements.

Usage (here)::

    python benchmarks/device_kit.py --nnunet --smp --openkbp
    # the same set for this machine's Python, to try the kit on the CPU first:
    python benchmarks/device_kit.py --nnunet --smp --python 3.11 --out /tmp/kit311
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPENKBP = ROOT.parent / "shared" / "data" / "openkbp-hn"
LIMIT_MIB = 64

#: dlas's runtime needs that the machine's image has (its package list, 2026-11-17; see
#: /work/.library/device/KINDS.md where the device tool is lent). A test keeps every dependency
#: of pyproject.toml either here or in the kit.
ON_THE_MACHINE = [
    "numpy", "scipy", "scikit-image", "typer", "rich", "pyyaml", "pandas", "matplotlib",
    "jinja2", "pillow", "threadpoolctl", "torch", "safetensors", "filelock",
]  # fmt: skip

#: What the machine's image lacks, at the versions this project's tests ran with (2026-12-03).
#: Left out on purpose: imagecodecs (26 MB; tifffile falls back without it), pyjpegls (JPEG-LS
#: encoding only) and batchgenerators' unused Python 2 helpers (future, unittest2).
CORE = [
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "pydicom==3.0.2",
    "pylibjpeg==2.1.0",
    "pylibjpeg-openjpeg==2.6.0",
    "highdicom==0.28.2",
    "simpleitk==2.5.7",
    "nibabel==5.4.2",
]
NNUNET = [
    "nnunetv2==2.8.1",
    "acvl-utils==0.2.6",
    "dynamic-network-architectures==0.4.4",
    "batchgenerators==0.25.5",
    "batchgeneratorsv2==0.3.6",
    "fft-conv-pytorch==1.2.0",
    "yacs==0.1.8",
    "blosc2==4.15.0",
    "ndindex==1.10.1",
    "connected-components-3d==4.1.1",
    "graphviz==0.21",
]
SMP = ["segmentation-models-pytorch==0.6.0"]

PLATFORMS = [
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_35_x86_64",
]


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )


def _target(python: str) -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for tag in PLATFORMS:
        flags += ["--platform", tag]
    return flags


def fetch(specs: list[str], python: str, wheels: Path) -> None:
    """A wheel of every spec for ``python`` on x86-64 Linux: the registry's binary, or, for a
    package published only as source, a wheel built here (it must be pure Python)."""
    for spec in specs:
        got = _pip("download", "-q", "--no-deps", *_target(python), "-d", str(wheels), spec)
        if got.returncode == 0:
            continue
        before = set(wheels.iterdir())
        built = _pip("wheel", "-q", "--no-deps", "-w", str(wheels), spec)
        new = set(wheels.iterdir()) - before
        if (
            built.returncode != 0
            or not new
            or not all(p.name.endswith("-none-any.whl") for p in new)
        ):
            why = (built.stderr or got.stderr).strip()[-300:]
            raise SystemExit(f"device kit: no wheel for {spec}: {why}")


def install(wheels: Path, python: str, site: Path) -> None:
    got = _pip(
        "install", "-q", "--no-deps", "--no-compile", "--target", str(site), *_target(python),
        *sorted(str(w) for w in wheels.glob("*.whl")),
    )  # fmt: skip
    if got.returncode != 0:
        raise SystemExit("device kit: install failed: " + got.stderr.strip()[-500:])
    shutil.rmtree(site / "bin", ignore_errors=True)


def pack(site: Path, archive: Path) -> None:
    """``site`` as one xz-compressed tar (GNU tar and xz here; Python's tarfile unpacks it)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["tar", "-C", str(site), "-cJf", str(archive), "."],
        check=True,
        env={**os.environ, "XZ_OPT": "-9 -T0"},
    )


def _size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def _tree_mib() -> float:
    """What travels besides .device: the files git tracks or would track."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    names = [n for n in listed.decode().split("\0") if n]
    return sum((ROOT / n).stat().st_size for n in names if (ROOT / n).is_file()) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nnunet", action="store_true", help="add nnU-Net v2 and its needs")
    parser.add_argument("--smp", action="store_true", help="add segmentation_models_pytorch")
    parser.add_argument("--openkbp", action="store_true", help="copy the OpenKBP data")
    parser.add_argument("--python", default="3.12", help="the machine's Python (3.12)")
    parser.add_argument("--out", type=Path, default=ROOT / ".device")
    args = parser.parse_args()
    specs = CORE + (NNUNET if args.nnunet else []) + (SMP if args.smp else [])
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        wheels.mkdir()
        fetch(specs, args.python, wheels)
        install(wheels, args.python, site)
        (site / "dlas-device-kit.txt").write_text(
            f"python {args.python}\n" + "".join(f"{s}\n" for s in specs), encoding="utf-8"
        )
        pack(site, args.out / "site.tar.xz")
    if args.openkbp:
        shutil.rmtree(args.out / "openkbp-hn", ignore_errors=True)
        shutil.copytree(OPENKBP, args.out / "openkbp-hn")
        for path in [args.out / "openkbp-hn", *(args.out / "openkbp-hn").rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)  # the source is read-only; a rerun replaces it
    kit, tree = _size_mib(args.out), _tree_mib()
    print(f"{args.out}: {kit:.1f} MiB; with the working tree ({tree:.1f} MiB) "
          f"{kit + tree:.1f} of the {LIMIT_MIB} MiB a call may carry")  # fmt: skip
    return 0 if kit + tree < LIMIT_MIB else 1


if __name__ == "__main__":
    raise SystemExit(main())
