"""Prediction of DICOM series, NIfTI CTs and data sets: outputs, geometry, provenance, errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
import pytest

from dlas.dataset import CaseDataset
from dlas.errors import DicomSeriesError
from dlas.io import (
    AXIAL_DIRECTION,
    CTSeriesSpec,
    Volume,
    read_ct_series,
    read_mask,
    read_rtstruct,
    write_ct_series,
    write_nifti,
)
from dlas.model import ModelFileError, read_model_info
from dlas.prediction import PredictionError, Predictor, predict
from helpers.synthetic_data import write_malicious_pickle


def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def _dicom(tmp_path: Path, synthetic: ModuleType, seed: int, name: str = "dicom") -> Path:
    ct, _ = synthetic.make_case(seed)
    folder = tmp_path / name
    write_ct_series(
        ct,
        folder,
        CTSeriesSpec(patient_name="DOE^JANE", patient_id="PID-123", uid_seed=f"series-{seed}"),
    )
    return folder


def test_dicom_series_prediction_writes_a_valid_rtstruct(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path, dciodvfy
) -> None:
    folder = _dicom(tmp_path, synthetic, 21)
    report = predict(
        trained_model, folder, tmp_path / "out", formats="rtstruct,seg,nifti", device="cpu"
    )
    (item,) = report.items
    assert item.status == "written" and item.id.startswith("series-")
    result = tmp_path / "out" / item.id
    assert sorted(p.name for p in result.iterdir()) == [
        "RTSTRUCT.dcm",
        "SEG.dcm",
        "prediction.json",
        "qa.json",
        "structures",
    ]
    assert dciodvfy(result / "RTSTRUCT.dcm") == []
    assert dciodvfy(result / "SEG.dcm") == []

    info = read_model_info(trained_model)
    series = read_ct_series(folder)
    ds = pydicom.dcmread(result / "RTSTRUCT.dcm")
    referenced = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert referenced.RTReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    for roi in ds.StructureSetROISequence:
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
        ident = roi.ROIDerivationAlgorithmIdentificationSequence[0]
        assert ident.AlgorithmName == "dlas test model"
        assert ident.AlgorithmVersion == info.version
        assert info.model_sha256 in ident.AlgorithmParameters
    # Round trip: the RTSTRUCT rasterises back to the masks written as NIfTI.
    rois = read_rtstruct(result / "RTSTRUCT.dcm", series).by_name()
    assert sorted(rois) == ["Bladder", "Femur_Head_L", "Femur_Head_R"]
    for name, (roi,) in rois.items():
        mask = read_mask(result / "structures" / f"{name}.nii.gz", reference=series.volume)
        assert mask.array.sum() > 20, name
        assert _dsc(roi.mask, mask.array) >= 0.99, name
    record = json.loads((result / "prediction.json").read_text())
    assert record["model"]["model_sha256"] == info.model_sha256
    assert record["input"] == {"kind": "dicom", "id": item.id, "series": item.id}
    text = (result / "prediction.json").read_text() + (
        tmp_path / "out" / "predictions.json"
    ).read_text()
    assert "DOE" not in text and "PID-123" not in text


def test_prediction_is_accurate_and_on_the_ct_grid(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    ct, truth = synthetic.make_case(31)
    masks = Predictor(trained_model, device="cpu").predict(ct)
    for name, mask in masks.items():
        assert mask.same_grid(ct) and mask.array.dtype == bool
        assert _dsc(mask.array, truth[name].array) > 0.6, name


def test_nifti_in_another_orientation_gets_masks_on_its_own_grid(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    ct, _ = synthetic.make_case(41)
    write_nifti(ct, tmp_path / "canonical.nii.gz")
    direction = AXIAL_DIRECTION.copy()
    direction[2] *= -1  # columns stored right-to-left... of the image, i.e. x reversed
    flipped = Volume(
        ct.array[:, :, ::-1].copy(),
        ct.spacing,
        ct.index_to_physical([0, 0, ct.shape[2] - 1]),
        direction,
    )
    write_nifti(flipped, tmp_path / "flipped.nii.gz")
    predict(trained_model, tmp_path / "canonical.nii.gz", tmp_path / "out", device="cpu")
    predict(trained_model, tmp_path / "flipped.nii.gz", tmp_path / "out", device="cpu")
    for name in ("Bladder", "Femur_Head_L"):
        a = read_mask(tmp_path / "out" / "canonical" / "structures" / f"{name}.nii.gz")
        b = read_mask(tmp_path / "out" / "flipped" / "structures" / f"{name}.nii.gz")
        assert b.same_grid(flipped)
        assert np.array_equal(b.array, a.array[:, :, ::-1])


def test_dataset_prediction_has_the_layout_evaluation_reads(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 3, cohorts=("ExVal", "GenEva"), seed=3)
    report = predict(
        trained_model, tmp_path / "ds", tmp_path / "out", device="cpu", cohorts=["ExVal"]
    )
    assert [i.id for i in report.items] == dataset.case_ids("ExVal") == ["case00", "case02"]
    for case_id in ["case00", "case02"]:
        folder = tmp_path / "out" / case_id / "structures"
        assert sorted(p.name for p in folder.iterdir()) == [
            "Bladder.nii.gz",
            "Femur_Head_L.nii.gz",
            "Femur_Head_R.nii.gz",
        ]
        ct = dataset.load_case(case_id).ct
        assert read_mask(folder / "Bladder.nii.gz", reference=ct).array.any()
    assert not (tmp_path / "out" / "case01").exists()
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [i["status"] for i in summary["items"]] == ["written", "written"]
    record = json.loads((tmp_path / "out" / "case00" / "prediction.json").read_text())
    assert record["input"]["cohort"] == "ExVal"
    assert record["structures"]["Bladder"]["volume_cm3"] > 1.0


def test_empty_structures_are_written_as_empty_masks(tmp_path: Path, trained_model: Path) -> None:
    air = Volume(np.full((6, 40, 40), -1000.0, dtype=np.float32), (3.0, 2.0, 2.0), (0, 0, 0))
    write_nifti(air, tmp_path / "air.nii.gz")
    report = predict(trained_model, tmp_path / "air.nii.gz", tmp_path / "out", device="cpu")
    assert report.items[0].structures["Bladder"]["voxels"] == 0
    mask = read_mask(tmp_path / "out" / "air" / "structures" / "Femur_Head_R.nii.gz")
    assert mask.same_grid(air) and not mask.array.any()


def test_test_time_mirroring_is_left_right_equivariant(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    ct, _ = synthetic.make_case(51)
    mirrored = ct.with_array(ct.array[:, :, ::-1].copy())
    predictor = Predictor(trained_model, device="cpu", tta=True)
    assert predictor.tta
    a = predictor.predict(ct)
    b = predictor.predict(mirrored)
    assert _dsc(b["Bladder"].array, a["Bladder"].array[:, :, ::-1]) > 0.99
    assert _dsc(b["Femur_Head_L"].array, a["Femur_Head_R"].array[:, :, ::-1]) > 0.99
    assert _dsc(b["Femur_Head_R"].array, a["Femur_Head_L"].array[:, :, ::-1]) > 0.99


def test_existing_predictions_are_kept_unless_overwritten(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    synthetic.make_dataset(tmp_path / "ds", 1)
    predict(trained_model, tmp_path / "ds", tmp_path / "out", device="cpu")
    marker = tmp_path / "out" / "case00" / "structures" / "Bladder.nii.gz"
    stamp = marker.stat().st_mtime_ns
    again = predict(trained_model, tmp_path / "ds", tmp_path / "out", device="cpu")
    assert again.items[0].status == "exists"
    assert marker.stat().st_mtime_ns == stamp
    record = tmp_path / "out" / "case00" / "prediction.json"
    data = json.loads(record.read_text())
    data["model"]["model_sha256"] = "0" * 64
    record.write_text(json.dumps(data))
    with pytest.raises(PredictionError, match="output folder holds another prediction"):
        predict(trained_model, tmp_path / "ds", tmp_path / "out", device="cpu")
    redone = predict(trained_model, tmp_path / "ds", tmp_path / "out", device="cpu", overwrite=True)
    assert redone.items[0].status == "written"


def test_folder_with_a_broken_series_predicts_the_others(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    root = tmp_path / "export"
    _dicom(root, synthetic, 61, "good")
    broken = _dicom(root, synthetic, 62, "broken")
    sorted(broken.iterdir())[5].unlink()  # a missing slice
    report = predict(trained_model, root, tmp_path / "out", device="cpu")
    statuses = sorted((i.status, i.reason.split(";")[0]) for i in report.items)
    assert statuses[0][0] == "failed" and "missing slice" in statuses[0][1]
    assert statuses[1] == ("written", "")
    written = next(i for i in report.items if i.status == "written")
    assert (tmp_path / "out" / written.id / "RTSTRUCT.dcm").is_file()
    failed = next(i for i in report.items if i.status == "failed")
    assert not (tmp_path / "out" / failed.id).exists()


def test_single_broken_series_raises_the_readers_error(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    folder = _dicom(tmp_path, synthetic, 63)
    sorted(folder.iterdir())[4].unlink()
    with pytest.raises(DicomSeriesError, match="missing slice"):
        predict(trained_model, folder, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_folder_without_ct_is_refused(tmp_path: Path, trained_model: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(DicomSeriesError, match="no CT series found"):
        predict(trained_model, tmp_path / "notes", tmp_path / "out", device="cpu")


def test_rtstruct_for_nifti_input_is_refused(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    synthetic.make_dataset(tmp_path / "ds", 1)
    with pytest.raises(PredictionError, match="rtstruct needs a DICOM input"):
        predict(
            trained_model, tmp_path / "ds", tmp_path / "out", formats="rtstruct,nifti", device="cpu"
        )


def test_unknown_format_is_refused(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    folder = _dicom(tmp_path, synthetic, 71)
    with pytest.raises(PredictionError, match=r"unknown output format.*found stl"):
        predict(trained_model, folder, tmp_path / "out", formats="rtstruct,stl", device="cpu")


def test_unknown_cohort_is_refused(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    synthetic.make_dataset(tmp_path / "ds", 1)
    with pytest.raises(PredictionError, match=r"unknown cohort.*found GenEva"):
        predict(trained_model, tmp_path / "ds", tmp_path / "out", cohorts=["GenEva"], device="cpu")


def test_missing_input_is_refused(tmp_path: Path, trained_model: Path) -> None:
    with pytest.raises(PredictionError, match="input not found"):
        predict(trained_model, tmp_path / "none", tmp_path / "out", device="cpu")


def test_malicious_pickle_as_model_is_refused_without_execution(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    marker = tmp_path / "pwned"

    write_malicious_pickle(tmp_path / "model.pt", marker)
    folder = _dicom(tmp_path, synthetic, 81)
    with pytest.raises(ModelFileError, match="refusing to load a pickled model file"):
        predict(tmp_path / "model.pt", folder, tmp_path / "out", device="cpu")
    assert not marker.exists()


def test_dataset_cases_keep_their_own_grids(
    tmp_path: Path, synthetic: ModuleType, trained_model: Path
) -> None:
    dataset = CaseDataset.open_or_create(tmp_path / "ds", synthetic.structure_set())
    ct, masks = synthetic.make_case(91, shape=(7, 56, 40), origin=(-30.0, -60.0, 10.0))
    dataset.write_case("odd", "A", ct, masks, {})
    predict(trained_model, tmp_path / "ds", tmp_path / "out", device="cpu")
    mask = read_mask(tmp_path / "out" / "odd" / "structures" / "Bladder.nii.gz")
    assert mask.same_grid(ct)
