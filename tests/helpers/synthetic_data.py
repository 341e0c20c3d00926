"""Tiny synthetic data sets for the model, training and prediction tests (``tests/`` is on
pytest's python path; the ``synthetic`` fixture hands this module over).

A case is a small axial CT: an elliptic body of soft tissue (40 HU, noise) in air, a "bladder"
(a sphere of 180 HU) and two "femoral heads" (spheres of 700 HU) left and right, with positions
and sizes jittered per case from a seed. Optionally a "Rod" (a bone cylinder) for structure sets
with a class that another set lacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlas.dataset import CaseDataset
from dlas.io import Volume
from dlas.structures import StructureSet

SHAPE = (12, 48, 48)
SPACING = (3.0, 2.0, 2.0)


def structure_set(*, with_rod: bool = False, name: str = "tiny") -> StructureSet:
    """Bladder, Femur_Head_L, Femur_Head_R (and Rod)."""
    structures: list[dict[str, Any]] = [
        {
            "name": "Bladder",
            "priority": 40,
            "colour": [255, 255, 0],
            "postprocess": {"largest_component": True, "fill_holes": True},
        },
        {
            "name": "Femur_Head_L",
            "priority": 50,
            "colour": [0, 200, 0],
            "postprocess": {"largest_component": True, "fill_holes": True},
        },
        {
            "name": "Femur_Head_R",
            "priority": 50,
            "colour": [0, 160, 255],
            "postprocess": {"largest_component": True, "fill_holes": True},
        },
    ]
    if with_rod:
        structures.append({"name": "Rod", "priority": 60, "colour": [200, 0, 200]})
    return StructureSet.from_data({"schema_version": 1, "name": name, "structures": structures})


def make_case(
    seed: int,
    *,
    shape: Sequence[int] = SHAPE,
    with_rod: bool = False,
    origin: Sequence[float] = (-47.0, -47.0, -16.5),
) -> tuple[Volume, dict[str, Volume]]:
    """CT (HU) and masks of one synthetic case (canonical axial, LPS)."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    zz, yy, xx = np.mgrid[:nz, :ny, :nx].astype(np.float64)
    cy, cx = ny / 2 + rng.uniform(-1.5, 1.5), nx / 2 + rng.uniform(-1.5, 1.5)
    body = ((yy - cy) / (ny * 0.40)) ** 2 + ((xx - cx) / (nx * 0.44)) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 8, size=shape) * body

    def sphere(z: float, y: float, x: float, r: float) -> np.ndarray:
        return ((zz - z) * SPACING[0] / SPACING[1]) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < r**2

    bladder = sphere(nz / 2 + rng.uniform(-1, 1), cy - ny * 0.12, cx, rng.uniform(6.5, 8.5))
    head_r = sphere(nz / 2, cy + ny * 0.08, cx - nx * 0.27, rng.uniform(4.0, 5.0))
    head_l = sphere(nz / 2, cy + ny * 0.08, cx + nx * 0.27, rng.uniform(4.0, 5.0))
    hu[bladder] = 180.0 + rng.normal(0, 8, size=int(bladder.sum()))
    hu[head_l | head_r] = 700.0
    masks = {"Bladder": bladder, "Femur_Head_L": head_l, "Femur_Head_R": head_r}
    if with_rod:
        rod = ((yy - (cy + ny * 0.25)) ** 2 + (xx - cx) ** 2 < 2.5**2) & body
        hu[rod] = 900.0
        masks["Rod"] = rod
    ct = Volume(np.round(hu).astype(np.float32), spacing=SPACING, origin=origin)
    return ct, {k: ct.with_array(v) for k, v in masks.items()}


def make_dataset(
    root: Path,
    n: int,
    *,
    with_rod: bool = False,
    cohorts: Sequence[str] = ("A",),
    seed: int = 0,
    shape: Sequence[int] = SHAPE,
) -> CaseDataset:
    """A data set of ``n`` synthetic cases, cohorts assigned round-robin."""
    ds = CaseDataset.open_or_create(root, structure_set(with_rod=with_rod))
    for i in range(n):
        ct, masks = make_case(seed * 1000 + i, with_rod=with_rod, shape=shape)
        cohort = cohorts[i % len(cohorts)]
        ds.write_case(
            f"case{i:02d}", cohort, ct, masks, {"case_id": f"case{i:02d}", "cohort": cohort}
        )
    return ds


#: A three-level network: tests of the machinery, not of the learning.
TINY_NETWORK: dict[str, Any] = {
    "preset": "cpu",
    "widths": [8, 16, 24],
    "blocks": [1, 1, 1],
    "growth": [4, 4, 4],
    "groups": 4,
    "norm_groups": 4,
}


class _OpensAFile:
    """Unpickling this object calls ``open(path, "w")``: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def write_malicious_pickle(path: Path, marker: Path) -> None:
    """Write a pickle at ``path`` whose loading would create ``marker``."""
    import pickle

    path.write_bytes(pickle.dumps(_OpensAFile(marker)))
