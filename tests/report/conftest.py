"""A tiny study for the report tests: a data set of simple shapes, two models' predictions,
the metrics table and the comparison (both from the evaluation engine), laid out as
``dlas study`` lays out a study folder.

Shapes (on a 20 x 56 x 64 grid of 5 x 2.5 x 2.5 mm): a body ellipse, a bladder ellipsoid,
two femoral-head spheres, a CTV ellipsoid behind the bladder and a small-bowel blob above it.
Each case varies the sizes with a seeded generator. The "VPM" model over-contours the CTV
(about +20 % volume) and misses part of the small bowel; "LFT" is close to the ground truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from dlas.dataset import CaseDataset
from dlas.io import Volume, write_mask
from dlas.structures import StructureSet

SHAPE = (20, 56, 64)
SPACING = (5.0, 2.5, 2.5)
COHORTS = {"training": 2, "ExVal": 6, "GenEva": 6}
MODELS = ("VPM", "LFT")


@dataclass
class StudyFixture:
    """Paths of the fixture study."""

    root: Path
    dataset: Path
    predictions: dict[str, Path]
    metrics: Path
    comparison: Path


def _ellipsoid(
    centre: tuple[float, float, float], radii: tuple[float, float, float]
) -> npt.NDArray[np.bool_]:
    """Ellipsoid with centre and radii in mm, on the fixture grid (z, y, x)."""
    zz, yy, xx = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)), indexing="ij"
    )
    return (
        ((zz - centre[0]) / radii[0]) ** 2
        + ((yy - centre[1]) / radii[1]) ** 2
        + ((xx - centre[2]) / radii[2]) ** 2
    ) <= 1.0


def _anatomy(rng: np.random.Generator) -> dict[str, float]:
    return {
        "bladder_r": float(rng.uniform(14, 20)),
        "ctv_r": float(rng.uniform(18, 24)),
        "bowel_r": float(rng.uniform(10, 14)),
        "head_r": float(rng.uniform(9, 11)),
        "shift": float(rng.uniform(-3, 3)),
    }


def _structures(
    a: dict[str, float], style: str, rng: np.random.Generator
) -> dict[str, npt.NDArray[np.bool_]]:
    grow = {"gt": 1.0, "VPM": 1.07, "LFT": 1.0}[style]
    jitter = 0.0 if style == "gt" else float(rng.uniform(-1.5, 1.5))
    masks = {
        "CTV": _ellipsoid(
            (45 + jitter, 90, 80 + a["shift"]),
            (a["ctv_r"] * 1.4 * grow, a["ctv_r"] * grow, a["ctv_r"] * 1.2 * grow),
        ),
        "Bladder": _ellipsoid(
            (40, 55 + jitter, 80), (a["bladder_r"] * 1.2, a["bladder_r"], a["bladder_r"] * 1.3)
        ),
        "Femur_Head_L": _ellipsoid((30, 80, 130 + jitter), (a["head_r"],) * 3),
        "Femur_Head_R": _ellipsoid((30, 80, 30 - jitter), (a["head_r"],) * 3),
        "Bowel_Small": _ellipsoid(
            (75, 60, 80 + jitter), (a["bowel_r"] * 1.5, a["bowel_r"], a["bowel_r"] * 2.0)
        ),
    }
    if style == "VPM":
        # The vendor model misses the upper loops of small bowel.
        masks["Bowel_Small"][16:] = False
    return masks


def _ct(masks: dict[str, npt.NDArray[np.bool_]], rng: np.random.Generator) -> Volume:
    body = _ellipsoid((50, 75, 80), (200, 60, 75))
    ct = np.full(SHAPE, -1000.0)
    ct[body] = -80.0
    ct[_ellipsoid((50, 75, 80), (200, 48, 62))] = 40.0
    for name, value in (
        ("Bladder", 10.0),
        ("Femur_Head_L", 700.0),
        ("Femur_Head_R", 700.0),
        ("Bowel_Small", 25.0),
        ("CTV", -20.0),
    ):
        ct[masks[name]] = value
    ct[body] += rng.normal(0, 15, size=int(body.sum()))
    return Volume(np.round(ct), np.array(SPACING), np.array([-80.0, -90.0, -30.0]))


def build_study(root: Path) -> StudyFixture:
    """Write the fixture study under ``root`` (see the module docstring)."""
    structure_set = StructureSet.builtin("rectal")
    dataset = CaseDataset.open_or_create(root / "data", structure_set, name="fixture")
    predictions = {m: root / "predictions" / m for m in MODELS}
    rng = np.random.default_rng(7)
    scanners = {
        "training": ("SIEMENS", "Sensation Open", 120.0),
        "ExVal": ("SIEMENS", "Sensation Open", 120.0),
        "GenEva": ("Philips", "Big Bore", 120.0),
    }
    for cohort, n in COHORTS.items():
        for i in range(n):
            case_id = f"{cohort[:2].upper()}{i + 1:03d}"
            anatomy = _anatomy(rng)
            gt = _structures(anatomy, "gt", rng)
            ct = _ct(gt, rng)
            maker, model_name, kvp = scanners[cohort]
            info = {
                "case_id": case_id,
                "cohort": cohort,
                "patient": {"sex": "F" if i % 3 == 0 else "M", "age_years": 50 + 3 * i},
                "scanner": {
                    "Manufacturer": maker,
                    "ManufacturerModelName": model_name,
                    "KVP": kvp,
                    "PixelSpacing": [2.5, 2.5],
                    "SliceThickness": 5.0,
                },
                "geometry": ct.geometry(),
            }
            dataset.write_case(
                case_id, cohort, ct, {k: ct.with_array(v) for k, v in gt.items()}, info
            )
            if cohort == "training":
                continue
            for model in MODELS:
                pred = _structures(anatomy, model, rng)
                for name, mask in pred.items():
                    write_mask(
                        ct.with_array(mask),
                        predictions[model] / case_id / "structures" / f"{name}.nii.gz",
                    )
    # The metrics and the comparison come from the evaluation engine, as in a real study.
    from dlas.evaluation import compare, evaluate, write_comparison

    metrics_path = root / "metrics.csv"
    evaluate(dataset, predictions, cohorts=["ExVal", "GenEva"]).write(metrics_path)
    comparison = root / "comparison"
    write_comparison(
        compare(metrics_path, "VPM", "LFT", bootstrap=200), comparison, source=metrics_path
    )
    (root / "study.yaml").write_text("schema_version: 1\nname: fixture\n")
    models_dir = root / "models"
    models_dir.mkdir()
    for model in MODELS:
        (models_dir / f"{model}.json").write_text(
            json.dumps(
                {"name": model, "sha256": f"{model.lower()}{'0' * 61}", "architecture": "test"}
            )
        )
    return StudyFixture(root, root / "data", predictions, metrics_path, comparison)


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyFixture:
    """The fixture study, built once per test session."""
    return build_study(tmp_path_factory.mktemp("study"))


@pytest.fixture
def copy_study(study: StudyFixture, tmp_path: Path) -> Callable[[], StudyFixture]:
    """A private copy of the study, for tests that damage it."""
    import shutil

    def make() -> StudyFixture:
        root = tmp_path / "study"
        shutil.copytree(study.root, root)
        return StudyFixture(
            root,
            root / "data",
            {m: root / "predictions" / m for m in MODELS},
            root / "metrics.csv",
            root / "comparison",
        )

    return make


@pytest.fixture(scope="session")
def report(study: StudyFixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the fixture study, built once per test session (PNG figures at 100 dpi
    to keep the suite fast)."""
    from dlas.report import ReportOptions, build_report, load_study

    out = tmp_path_factory.mktemp("report") / "report"
    build_report(load_study(study.root), out, ReportOptions(dpi=100))
    return out
