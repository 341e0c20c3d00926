"""Prediction QA on synthetic masks: each check flags exactly the defect planted, nothing on a
clean case (``dlas.prediction.qa``); the QA reference a model records
(``dlas.model.qa_reference``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from dlas.io import Volume
from dlas.model.qa_reference import build_qa_reference, measure_case
from dlas.prediction import MemberAgreement, QAReport, check_prediction
from dlas.structures import StructureSet
from helpers import synthetic_data as sd

STRUCTURES = sd.structure_set()
#: The QA reference of a model trained on six synthetic cases.
REFERENCE = build_qa_reference(
    [measure_case(*sd.make_case(seed)) for seed in range(6)], STRUCTURES.names
)
CLEAN_SEEDS = (100, 101, 102, 103, 104)


def _case(seed: int = 100) -> tuple[Volume, dict[str, np.ndarray]]:
    ct, masks = sd.make_case(seed)
    return ct, {name: mask.array.copy() for name, mask in masks.items()}


def _check(
    ct: Volume,
    masks: dict[str, np.ndarray],
    structure_set: StructureSet = STRUCTURES,
    reference: dict[str, Any] | None = REFERENCE,
    **kwargs: Any,
) -> QAReport:
    return check_prediction(
        ct, {n: ct.with_array(m) for n, m in masks.items()}, structure_set, reference, **kwargs
    )


def _found(report: QAReport) -> dict[str, list[str]]:
    """Flag codes by structure ("input" for the CT), only where something was flagged."""
    found = {name: s.codes for name, s in report.structures.items() if s.flags}
    if report.input_flags:
        found["input"] = report.codes(None)
    return found


@pytest.mark.parametrize("seed", CLEAN_SEEDS)
def test_clean_case_passes(seed: int) -> None:
    report = _check(*_case(seed))
    assert report.status == "pass", report.describe()
    assert report.flags == [] and report.notes == []
    assert report.to_data()["status"] == "pass"


def test_swapped_femoral_heads_are_flagged_for_laterality_only() -> None:
    ct, masks = _case()
    masks["Femur_Head_L"], masks["Femur_Head_R"] = masks["Femur_Head_R"], masks["Femur_Head_L"]
    report = _check(ct, masks)
    assert _found(report) == {"Femur_Head_L": ["laterality"], "Femur_Head_R": ["laterality"]}
    (flag,) = report.structures["Femur_Head_L"].flags
    assert flag.values["expected_side"] == "L" and flag.values["found_side"] == "R"
    assert flag.values["centroid_from_midline_mm"] < -20  # 26 mm to the patient's right
    assert "patient's right" in flag.message
    assert report.status == "flagged"


def test_laterality_uses_patient_coordinates_not_array_order() -> None:
    """The same patient stored with the columns running right-to-left: still clean, and a swap
    is still caught."""
    ct, masks = _case()
    nx = ct.shape[2]
    origin = ct.origin.copy()
    origin[0] += (nx - 1) * float(ct.spacing[2])
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    flipped = Volume(ct.array[..., ::-1].copy(), ct.spacing, origin, direction)
    flipped_masks = {n: m[..., ::-1].copy() for n, m in masks.items()}
    assert _check(flipped, flipped_masks).flags == []
    flipped_masks["Femur_Head_L"], flipped_masks["Femur_Head_R"] = (
        flipped_masks["Femur_Head_R"],
        flipped_masks["Femur_Head_L"],
    )
    assert _found(_check(flipped, flipped_masks)) == {
        "Femur_Head_L": ["laterality"],
        "Femur_Head_R": ["laterality"],
    }


def test_fragmented_bladder_lists_the_fragment_volume() -> None:
    ct, masks = _case()
    zz, yy, xx = np.mgrid[: ct.shape[0], : ct.shape[1], : ct.shape[2]]
    blob = ((zz - 6) * 1.5) ** 2 + (yy - 34) ** 2 + (xx - 24) ** 2 <= 2.5**2  # posterior, apart
    assert not (ndimage.binary_dilation(blob, iterations=2) & masks["Bladder"]).any()
    masks["Bladder"] |= blob
    report = _check(ct, masks)
    assert _found(report) == {"Bladder": ["fragments"]}
    (flag,) = report.structures["Bladder"].flags
    assert flag.values["fragments_cm3"] == [pytest.approx(blob.sum() * 0.012, abs=1e-3)]
    assert flag.values["count"] == 1


def test_fragment_below_the_minimum_volume_is_ignored() -> None:
    ct, masks = _case()
    masks["Bladder"][6, 34, 24] = True  # one voxel: 0.012 cm³ < 0.1 cm³
    report = _check(ct, masks)
    assert report.flags == []
    assert report.structures["Bladder"].measures["fragments"] == 0


def test_fragments_allowed_by_the_structure_set_are_not_flagged() -> None:
    ct, masks = _case()
    zz, yy, xx = np.mgrid[: ct.shape[0], : ct.shape[1], : ct.shape[2]]
    masks["Bladder"] |= ((zz - 6) * 1.5) ** 2 + (yy - 34) ** 2 + (xx - 24) ** 2 <= 2.5**2
    data = STRUCTURES.to_data()
    data["structures"][0]["qa"] = {"max_fragments": 1}
    assert _check(ct, masks, StructureSet.from_data(data)).flags == []


def test_oversized_bladder_is_flagged_for_its_volume_only() -> None:
    ct, masks = _case(104)
    masks["Bladder"] = ndimage.binary_dilation(masks["Bladder"], iterations=2)
    report = _check(ct, masks)
    assert _found(report) == {"Bladder": ["volume-out-of-range"]}
    (flag,) = report.structures["Bladder"].flags
    training_max = REFERENCE["structures"]["Bladder"]["max"]
    assert flag.values["allowed_cm3"][1] == pytest.approx(training_max * 1.25, abs=1e-3)
    assert flag.values["volume_cm3"] > training_max * 1.25


def test_volume_is_not_checked_without_a_reference() -> None:
    ct, masks = _case(104)
    masks["Bladder"] = ndimage.binary_dilation(masks["Bladder"], iterations=2)
    report = _check(ct, masks, reference={})
    assert report.flags == []
    assert "no QA reference" in report.notes[0]


def test_empty_structure_is_flagged_missing_only() -> None:
    ct, masks = _case()
    masks["Femur_Head_R"][:] = False
    report = _check(ct, masks)
    assert _found(report) == {"Femur_Head_R": ["missing"]}


def test_z_gap_is_flagged_with_its_position() -> None:
    ct, masks = _case()
    ks = np.flatnonzero(masks["Bladder"].any(axis=(1, 2)))
    middle = int(ks[len(ks) // 2])
    masks["Bladder"][middle] = False
    report = _check(ct, masks)
    # A gap splits the structure in two, so it also counts as a fragment.
    assert _found(report) == {"Bladder": ["fragments", "z-gaps"]}
    gap = next(f for f in report.structures["Bladder"].flags if f.code == "z-gaps")
    z = float(ct.index_to_physical([middle, 0, 0])[2])
    assert gap.values["empty_slices"] == 1 and gap.values["gaps_z_mm"] == [[z, z]]


def test_enclosed_cavity_is_flagged_as_a_hole() -> None:
    ct, masks = _case()
    centre = np.round(ndimage.center_of_mass(masks["Bladder"])).astype(int)
    k, j, i = centre
    masks["Bladder"][k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2] = False
    report = _check(ct, masks)
    assert _found(report) == {"Bladder": ["holes"]}
    assert report.structures["Bladder"].flags[0].values["holes_cm3"] == [pytest.approx(0.324)]


def test_structure_leaving_the_body_is_flagged() -> None:
    ct, masks = _case()
    masks["Femur_Head_R"] = np.roll(masks["Femur_Head_R"], -7, axis=2)  # beyond the skin
    report = _check(ct, masks)
    assert _found(report) == {"Femur_Head_R": ["outside-body"]}
    assert report.structures["Femur_Head_R"].flags[0].values["fraction"] > 0.05


def test_wider_field_of_view_is_flagged_as_input_domain_only() -> None:
    ct, masks = _case()
    pad = ((0, 0), (40, 40), (40, 40))
    origin = ct.origin - np.array([40 * 2.0, 40 * 2.0, 0.0])
    wide = Volume(np.pad(ct.array, pad, constant_values=-1000.0), ct.spacing, origin)
    report = _check(wide, {n: np.pad(m, pad) for n, m in masks.items()})
    assert _found(report) == {"input": ["input-domain"]}
    (flag,) = report.input_flags
    assert flag.values["quantity"] == "field_of_view_mm" and flag.values["value"] == 256.0


def test_shifted_hu_is_flagged_as_input_domain_only() -> None:
    ct, masks = _case()
    body = ct.array > -500
    shifted = ct.with_array(np.where(body, ct.array + 300.0, ct.array))
    report = _check(shifted, masks)
    assert _found(report) == {"input": ["input-domain"]}
    assert [f.values["quantity"] for f in report.input_flags] == ["hu_p05", "hu_p50", "hu_p95"]


def _agreement(members: list[np.ndarray], labels: np.ndarray, classes: int) -> MemberAgreement:
    import torch

    agreement = MemberAgreement.empty(len(members), classes)
    agreement.add(torch.from_numpy(np.stack(members)), torch.from_numpy(labels))
    return agreement


def _labels(masks: dict[str, np.ndarray]) -> np.ndarray:
    labels = np.zeros(next(iter(masks.values())).shape, dtype=np.uint8)
    for c, name in enumerate(STRUCTURES.names, start=1):
        labels[masks[name]] = c
    return labels


def test_members_that_disagree_on_the_bladder_flag_its_uncertainty_only() -> None:
    ct, masks = _case()
    labels = _labels(masks)
    shifted = dict(masks, Bladder=np.roll(masks["Bladder"], 4, axis=2))
    other = _labels(shifted)
    agreement = _agreement([labels, other], labels, 4)
    a, b = masks["Bladder"], shifted["Bladder"]
    dsc = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert agreement.mean_pairwise_dsc(1) == pytest.approx(dsc)
    assert agreement.unagreed_fraction(1) == pytest.approx(1 - (a & b).sum() / (a | b).sum())
    report = _check(ct, masks, agreement=agreement)
    assert _found(report) == {"Bladder": ["uncertainty"]}
    assert report.structures["Bladder"].measures["uncertainty"] == pytest.approx(1 - dsc, abs=1e-4)
    assert report.structures["Femur_Head_L"].measures["uncertainty"] == 0.0
    assert report.members == 2


def test_members_that_agree_are_not_flagged() -> None:
    ct, masks = _case()
    labels = _labels(masks)
    agreement = _agreement([labels, labels, labels], labels, 4)
    assert _check(ct, masks, agreement=agreement).flags == []


def test_report_summary_and_one_line_description() -> None:
    ct, masks = _case()
    masks["Femur_Head_R"][:] = False
    report = _check(ct, masks)
    assert report.summary() == {
        "status": "flagged",
        "flags": 1,
        "input": [],
        "structures": {"Femur_Head_R": ["missing"]},
    }
    assert report.describe() == "Femur_Head_R missing: the prediction is empty"
    data = report.to_data()
    assert data["codes"]["structures"] == {"Femur_Head_R": ["missing"]}
    assert data["structures"]["Bladder"]["flags"] == []


def test_qa_reference_summarises_the_training_cases() -> None:
    ct, masks = sd.make_case(0)
    cases = [measure_case(ct, masks) for _ in range(4)]
    for case, volume in zip(cases, (1.0, 2.0, 3.0, 4.0), strict=True):
        case.volumes_cm3 = {"Bladder": volume}
    del cases[0].volumes_cm3["Bladder"]  # a case without the structure (partial labels)
    cases[1].volumes_cm3["Bladder"] = 10.0
    reference = build_qa_reference(cases, ["Bladder", "Rod"])
    assert reference["cases"] == 4
    assert reference["structures"]["Bladder"] == {
        "n": 3,
        "min": 3.0,
        "p5": 3.1,
        "median": 4.0,
        "p95": 9.4,
        "max": 10.0,
    }
    assert reference["structures"]["Rod"] == {"n": 0}
    assert reference["input"]["slice_thickness_mm"]["min"] == 3.0
    assert reference["input"]["field_of_view_mm"]["max"] == 96.0
