"""Prediction QA end to end: the reference training records, qa.json beside every prediction,
marked RTSTRUCT/SEG, ``--qa-fail error`` and member agreement with test-time flipping."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
import pytest

from dlas.dataset import CaseDataset
from dlas.io import CTSeriesSpec, Volume, write_ct_series, write_nifti
from dlas.model import read_model_info
from dlas.prediction import PredictionQAError, Predictor, predict


@pytest.fixture
def dlas() -> Callable[[Sequence[str]], int]:
    """``dlas(args)`` → exit status, with the model commands registered."""
    from dlas import cli
    from dlas.cli import model

    if "predict" not in {c.name for c in cli.app.registered_commands}:
        model.register(cli.app)
    return cli.main


def _hu_shifted(synthetic: ModuleType, seed: int) -> Volume:
    """A synthetic CT whose body is 300 HU brighter than any training case (input-domain)."""
    ct, _ = synthetic.make_case(seed)
    return ct.with_array(np.where(ct.array > -500, ct.array + 300.0, ct.array))


def test_training_records_the_volume_reference(trained_model: Path) -> None:
    qa = read_model_info(trained_model).qa
    dataset = CaseDataset.open(trained_model.parent / "ds")
    for name in dataset.structure_set.names:
        volumes = sorted(
            float(np.count_nonzero(case.structures[name].array)) * case.ct.voxel_volume_mm3 / 1000.0
            for case in (dataset.load_case(c) for c in dataset.case_ids())
        )
        recorded = qa["structures"][name]
        assert recorded["n"] == 3
        assert recorded["min"] == pytest.approx(volumes[0], abs=1e-3)
        assert recorded["median"] == pytest.approx(volumes[1], abs=1e-3)
        assert recorded["max"] == pytest.approx(volumes[2], abs=1e-3)
    assert qa["input"]["slice_thickness_mm"]["min"] == 3.0
    assert qa["input"]["pixel_spacing_mm"]["max"] == 2.0
    assert qa["input"]["field_of_view_mm"]["median"] == 96.0
    assert qa["input"]["hu_p50"]["n"] == 3


def test_every_prediction_gets_qa_json_and_summaries(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2, seed=12)
    write_nifti(_hu_shifted(synthetic, 77), tmp_path / "bright.nii.gz")
    out = tmp_path / "out"
    report = predict(trained_model, dataset.root, out, device="cpu")
    report2 = predict(trained_model, tmp_path / "bright.nii.gz", out, device="cpu")
    for item in report.items + report2.items:
        qa = json.loads((out / item.id / "qa.json").read_text(encoding="utf-8"))
        record = json.loads((out / item.id / "prediction.json").read_text(encoding="utf-8"))
        assert qa["kind"] == "dlas-prediction-qa" and qa["notes"] == []
        assert sorted(qa["structures"]) == ["Bladder", "Femur_Head_L", "Femur_Head_R"]
        assert record["qa"] == item.qa and record["qa"]["status"] == qa["status"]
        assert "qa.json" in record["files"]
    (bright,) = report2.items
    assert bright.status == "written" and bright.flagged
    assert bright.qa["input"] == ["input-domain"]
    listed = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert listed["qa_fail"] == "warn"
    assert [f["id"] for f in listed["flagged"]] == ["bright"]
    assert listed["flagged"][0]["input"] == ["input-domain"]


def test_qa_fail_error_exits_2_and_writes_nothing_for_the_case(
    tmp_path: Path,
    synthetic: ModuleType,
    trained_model: Path,
    dlas,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_nifti(_hu_shifted(synthetic, 77), tmp_path / "bright.nii.gz")
    out = tmp_path / "out"
    args = ["predict", str(trained_model), str(tmp_path / "bright.nii.gz"), "--out", str(out)]
    status = dlas([*args, "--device", "cpu", "--qa-fail", "error"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert status == 2
    assert len(errors) == 1 and errors[0].startswith("error: input bright: ")
    assert "prediction flagged by QA" in errors[0] and "input input-domain: median HU" in errors[0]
    assert not (out / "bright").exists()
    assert not out.exists() or not any(out.iterdir())  # not even a hidden temporary
    with pytest.raises(PredictionQAError):
        predict(trained_model, tmp_path / "bright.nii.gz", out, device="cpu", qa_fail="error")


def test_qa_fail_error_fails_only_the_flagged_case_of_several(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2, seed=12)
    ct = dataset.load_case("case01").ct
    bright = np.where(ct.array > -500, ct.array + 300.0, ct.array)
    write_nifti(ct.with_array(bright.astype(np.float32)), dataset.case_dir("case01") / "ct.nii.gz")
    out = tmp_path / "out"
    report = predict(trained_model, dataset.root, out, device="cpu", qa_fail="error")
    status = {i.id: i.status for i in report.items}
    assert status == {"case00": "written", "case01": "failed"}
    assert "input-domain" in report.items[1].reason
    assert not (out / "case01").exists() and (out / "case00" / "qa.json").is_file()
    listed = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    (flagged,) = listed["flagged"]
    assert flagged["id"] == "case01" and flagged["status"] == "failed"
    assert flagged["input"] == ["input-domain"] and flagged["flags"] >= 3


def test_flagged_rtstruct_and_seg_are_marked(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ct, _ = synthetic.make_case(11000)  # a training case: its predicted volumes are in range
    write_ct_series(ct, tmp_path / "ct", CTSeriesSpec(uid_seed="qa-marks"))
    clean = predict(trained_model, tmp_path / "ct", tmp_path / "clean", formats="rtstruct,seg")
    (item,) = clean.items
    assert not item.flagged, item.qa
    rt = pydicom.dcmread(tmp_path / "clean" / item.id / "RTSTRUCT.dcm")
    assert rt.SeriesDescription == "dlas test model auto-segmentation"
    assert all("ROIDescription" not in roi for roi in rt.StructureSetROISequence)

    real = Predictor.predict

    def swapped(self: Predictor, volume: Volume, **kwargs: object) -> dict[str, Volume]:
        masks = real(self, volume)
        masks["Femur_Head_L"], masks["Femur_Head_R"] = (
            masks["Femur_Head_R"],
            masks["Femur_Head_L"],
        )
        return masks

    monkeypatch.setattr(Predictor, "predict", swapped)
    report = predict(trained_model, tmp_path / "ct", tmp_path / "out", formats="rtstruct,seg")
    (item,) = report.items
    assert item.status == "written"
    assert item.qa["structures"] == {
        "Femur_Head_L": ["laterality"],
        "Femur_Head_R": ["laterality"],
    }
    folder = tmp_path / "out" / item.id
    rt = pydicom.dcmread(folder / "RTSTRUCT.dcm")
    assert rt.SeriesDescription == "dlas test model auto-segmentation [QA: 2 flags]"
    comments = {roi.ROIName: roi.get("ROIDescription") for roi in rt.StructureSetROISequence}
    assert comments["Bladder"] is None
    assert comments["Femur_Head_L"].startswith("QA flags: laterality.")
    assert comments["Femur_Head_R"].startswith("QA flags: laterality.")
    seg = pydicom.dcmread(folder / "SEG.dcm")
    assert seg.SeriesDescription == rt.SeriesDescription
    segments = {s.SegmentLabel: s.get("SegmentDescription") for s in seg.SegmentSequence}
    assert segments == {
        "Bladder": None,
        "Femur_Head_L": "QA: laterality",
        "Femur_Head_R": "QA: laterality",
    }


def test_member_agreement_leaves_the_masks_unchanged(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    ct, _ = synthetic.make_case(31)
    predictor = Predictor(trained_model, device="cpu", tta=True)
    plain = predictor.predict(ct)
    masks, agreement = predictor.predict_with_agreement(ct)
    assert agreement.members == 2
    for name in plain:
        assert np.array_equal(plain[name].array, masks[name].array)
    assert agreement.disagreement is not None
    assert agreement.disagreement.same_grid(ct)
    assert agreement.disagreement.array.max() <= 1
    write_nifti(ct, tmp_path / "ct.nii.gz")
    report = predict(
        trained_model, tmp_path / "ct.nii.gz", tmp_path / "out", tta=True, uncertainty_map=True
    )
    qa = json.loads((tmp_path / "out" / "ct" / "qa.json").read_text(encoding="utf-8"))
    assert qa["members"] == 2
    assert 0.0 <= qa["structures"]["Bladder"]["measures"]["uncertainty"] < 0.2
    assert qa["uncertainty_map"]["file"] == "uncertainty.nii.gz"
    assert "uncertainty.nii.gz" in report.items[0].files
