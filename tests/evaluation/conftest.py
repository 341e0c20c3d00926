"""A small data set with two prediction folders, written the way `dlas predict` writes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dlas.dataset import CaseDataset
from dlas.io import Volume, write_mask
from dlas.structures import StructureSet

SHAPE = (10, 32, 32)
SPACING = (3.0, 1.5, 1.5)
COHORTS = {"ExVal": ["EX001", "EX002", "EX003"], "GenEva": ["GE001", "GE002", "GE003"]}
MODELS = ("VPM", "LFT")


@dataclass(frozen=True)
class Study:
    """Paths of the fixture: the data set and the prediction folders by model name."""

    dataset: Path
    predictions: dict[str, Path]


def _ellipsoid(centre: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    q = sum(
        ((c - m) * s / r) ** 2 for c, m, s, r in zip((z, y, x), centre, SPACING, radii, strict=True)
    )
    return np.asarray(q <= 1.0)


def reference_masks(index: int) -> dict[str, np.ndarray]:
    """Reference structures of case ``index`` (GE003 has no left femoral head)."""
    shift = index % 3
    masks = {
        "CTV": _ellipsoid((5, 20 + shift, 16), (9.0, 8.0, 12.0)),
        "Bladder": _ellipsoid((5, 9, 16 + shift), (7.0, 6.0, 8.0)),
        "Femur_Head_L": _ellipsoid((5, 16, 4), (5.0, 4.5, 4.5)),
    }
    if index == 5:
        del masks["Femur_Head_L"]
    return masks


def predicted_masks(
    model: str, reference: dict[str, np.ndarray], index: int
) -> dict[str, np.ndarray]:
    """VPM over-segments by one voxel in-plane; LFT is shifted by one voxel along x, and
    misses the bladder of EX002 entirely (an existing but empty mask)."""
    from scipy import ndimage

    out = {}
    for name, mask in reference.items():
        if model == "VPM":
            out[name] = ndimage.binary_dilation(mask, np.ones((1, 3, 3), dtype=bool))
        else:
            out[name] = np.roll(mask, 1, axis=2)
    if model == "LFT" and index == 1:
        out["Bladder"] = np.zeros(SHAPE, dtype=bool)
    return out


def _ct(masks: dict[str, np.ndarray]) -> Volume:
    ct = np.full(SHAPE, -1000.0)
    ct[:, 2:30, 1:31] = 0.0  # the body fills most of the field of view
    for mask in masks.values():
        ct[mask] = 40.0
    return Volume(ct, np.array(SPACING), np.array([-24.0, -24.0, 0.0]))


def build_study(root: Path) -> Study:
    """Write the data set and the prediction folders under ``root``."""
    dataset = CaseDataset.open_or_create(
        root / "data", StructureSet.builtin("rectal"), name="evaluation-fixture"
    )
    predictions = {m: root / "predictions" / m for m in MODELS}
    index = 0
    for cohort, case_ids in COHORTS.items():
        for case_id in case_ids:
            masks = reference_masks(index)
            ct = _ct(masks)
            dataset.write_case(
                case_id,
                cohort,
                ct,
                {k: ct.with_array(v) for k, v in masks.items()},
                {"case_id": case_id, "cohort": cohort},
            )
            for model in MODELS:
                for name, mask in predicted_masks(model, masks, index).items():
                    write_mask(
                        ct.with_array(mask),
                        predictions[model] / case_id / "structures" / f"{name}.nii.gz",
                    )
            index += 1
    return Study(root / "data", predictions)


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """The fixture study, written once per session (read-only for the tests)."""
    return build_study(tmp_path_factory.mktemp("evaluation-study"))


@pytest.fixture
def own_study(tmp_path: Path) -> Study:
    """A private copy of the study, for tests that damage it."""
    return build_study(tmp_path)
