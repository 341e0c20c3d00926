"""Calibration of the replica against the seed study, measured on generated patients.

The numbers asserted here are the ones that make the paper's pattern learnable: the vendor's CTV
is 12–25 % larger than the local one for the same anatomy, small bowel is contoured less
completely by the vendor, bladder and femoral heads agree, observer variation caps the DSC a
perfect model can reach near the paper's values, scanner A is noisier than B, and ground-truth
structures never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations, pairwise

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from dlas.phantom import (
    LOCAL,
    SCANNERS,
    STRUCTURES,
    VENDOR,
    acquire,
    contour,
    make_patient,
    preset,
)
from dlas.phantom.render import render_ct
from dlas.structures import StructureSet

Mask = npt.NDArray[np.bool_]

N_PATIENTS = 4


def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@dataclass
class Contoured:
    """Ground truth of one patient at paper resolution (no image rendered)."""

    voxel_cm3: float
    observed: dict[str, Mask]  # local style, with observer variation
    mean: dict[str, dict[str, Mask]]  # style → mean contour, without observer variation


@pytest.fixture(scope="module")
def contoured() -> list[Contoured]:
    config = preset("paper")
    out = []
    for index in range(N_PATIENTS):
        patient = make_patient(config, "training", index)
        out.append(
            Contoured(
                voxel_cm3=float(np.prod(patient.grid.spacing)) / 1000.0,
                observed=patient.ground_truth(LOCAL),
                mean={
                    s.name: contour(patient.anatomy, patient.grid, s, None) for s in (LOCAL, VENDOR)
                },
            )
        )
    return out


def test_vendor_ctv_is_12_to_25_percent_larger(contoured: list[Contoured]) -> None:
    ratios = [c.mean["vendor"]["CTV"].sum() / c.mean["local"]["CTV"].sum() for c in contoured]
    assert all(1.12 <= r <= 1.25 for r in ratios), ratios


def test_vendor_ctv_differs_in_shape_as_much_as_the_papers_vendor_model(
    contoured: list[Contoured],
) -> None:
    # The seed paper's vendor model reached a CTV DSC of 0.79 against local contours, its
    # fine-tuned model 0.88. A perfect model of each style must leave room for that gap.
    vendor = np.mean([_dsc(c.mean["vendor"]["CTV"], c.observed["CTV"]) for c in contoured])
    local = np.mean([_dsc(c.mean["local"]["CTV"], c.observed["CTV"]) for c in contoured])
    assert 0.76 <= vendor <= 0.84, vendor
    assert local - vendor >= 0.06, (local, vendor)


def test_structure_volumes_are_plausible_at_paper_scale(contoured: list[Contoured]) -> None:
    for c in contoured:
        v = {k: float(m.sum()) * c.voxel_cm3 for k, m in c.observed.items()}
        assert 300.0 <= v["CTV"] <= 1100.0, v
        assert 25.0 <= v["Femur_Head_L"] <= 70.0, v
        assert 25.0 <= v["Femur_Head_R"] <= 70.0, v
        assert 60.0 <= v["Bladder"] <= 520.0, v
        assert 50.0 <= v["Bowel_Small"] <= 2000.0, v


def test_bladder_and_femoral_heads_agree_between_styles(contoured: list[Contoured]) -> None:
    for c in contoured:
        for name in ("Bladder", "Femur_Head_L", "Femur_Head_R"):
            assert _dsc(c.mean["vendor"][name], c.mean["local"][name]) >= 0.95, name


def test_vendor_small_bowel_is_less_complete(contoured: list[Contoured]) -> None:
    sens = []
    for c in contoured:
        v, loc = c.mean["vendor"]["Bowel_Small"], c.mean["local"]["Bowel_Small"]
        sens.append((v & loc).sum() / loc.sum())
        assert v.sum() < loc.sum()
    assert 0.75 <= float(np.mean(sens)) <= 0.95, sens


def test_observer_variation_caps_dsc_near_the_paper(contoured: list[Contoured]) -> None:
    ranges = {
        "CTV": (0.85, 0.93),
        "Bladder": (0.94, 0.985),
        "Femur_Head_L": (0.94, 0.99),
        "Femur_Head_R": (0.94, 0.99),
        "Bowel_Small": (0.78, 0.93),
    }
    for name, (lo, hi) in ranges.items():
        ceiling = np.mean([_dsc(c.mean["local"][name], c.observed[name]) for c in contoured])
        assert lo <= ceiling <= hi, (name, ceiling)


def test_ground_truth_structures_never_overlap(contoured: list[Contoured]) -> None:
    rectal = StructureSet.builtin("rectal")
    for c in contoured:
        for masks in (c.observed, c.mean["vendor"], c.mean["local"]):
            for a, b in combinations(STRUCTURES, 2):
                if b in rectal[a].may_overlap or a in rectal[b].may_overlap:
                    continue
                assert not (masks[a] & masks[b]).any(), (a, b)


def test_scanner_a_is_noisier_and_b_is_offset() -> None:
    patient = make_patient(preset("demo"), "GenEva", 0)
    clean = render_ct(patient.anatomy, patient.grid)
    # Urine: a uniform region; eroded so that partial volume at the wall stays out.
    bladder = contour(patient.anatomy, patient.grid, LOCAL, None)["Bladder"]
    inner = ndimage.binary_erosion(bladder, iterations=2)
    assert inner.sum() > 50
    spacing = (patient.grid.spacing[1], patient.grid.spacing[2])
    images = {
        key: acquire(
            clean,
            spacing,
            SCANNERS[key],
            np.random.default_rng(5),
            body_width_mm=patient.anatomy.body_width_mm,
        )
        for key in ("A", "B")
    }
    sd = {k: float(im[inner].std()) for k, im in images.items()}
    mean = {k: float(im[inner].mean()) for k, im in images.items()}
    assert sd["A"] > 1.5 * sd["B"], sd
    assert mean["B"] - mean["A"] == pytest.approx(SCANNERS["B"].hu_offset, abs=3.0)


def test_noise_is_textured_not_independent_pixels() -> None:
    """CT noise has no power at zero frequency, a peak set by the kernel, and a finer grain on
    the sharper scanner — unlike independent pixel noise, whose spectrum is flat."""
    flat = np.zeros((4, 256, 256), dtype=np.float32)
    spacing = 1.2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(256, spacing), np.fft.fftfreq(256, spacing)))
    bins = np.linspace(0.0, 0.4, 21)
    peaks = {}
    for key in ("A", "B"):
        noise = acquire(
            flat, (spacing, spacing), SCANNERS[key], np.random.default_rng(0), body_width_mm=350.0
        )
        noise -= SCANNERS[key].hu_offset  # calibration offset, not noise
        power = (np.abs(np.fft.fft2(noise)) ** 2).mean(axis=0)
        radial = np.array([power[(f >= lo) & (f < hi)].mean() for lo, hi in pairwise(bins)])
        assert radial[0] < 0.25 * radial.max(), key
        peaks[key] = float(bins[int(np.argmax(radial))])
    assert peaks["A"] > peaks["B"], peaks


def test_intensity_alone_does_not_separate_bladder_bowel_and_muscle() -> None:
    patient = make_patient(preset("demo"), "ExVal", 1)
    image = patient.image()
    truth = patient.ground_truth()
    grid = patient.grid
    psoas = next(layer.shape for layer in patient.anatomy.layers if layer.name == "psoas")
    muscle = ndimage.binary_erosion(psoas.evaluate(grid, 4.0).inside(grid.shape))
    bladder = ndimage.binary_erosion(truth["Bladder"])
    m_lo, m_hi = np.percentile(image[muscle], [5, 95])
    b_lo, b_hi = np.percentile(image[bladder], [5, 95])
    assert max(m_lo, b_lo) < min(m_hi, b_hi), ((m_lo, m_hi), (b_lo, b_hi))
    bowel = image[truth["Bowel_Small"]]
    share = float(((bowel > m_lo) & (bowel < m_hi)).mean())
    assert share > 0.2, share
