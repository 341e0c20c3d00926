"""Training runs on tiny synthetic data: learning, outputs, determinism and refused requests."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from dlas.model import read_model_info
from dlas.prediction import Predictor
from dlas.training import TrainingConfigError, TrainingEvent, train
from dlas.training.data import class_weights
from helpers.synthetic_data import TINY_NETWORK

NO_AUGMENTATION = {
    "flip_lr": False,
    "rotation_deg": 0,
    "scale": 0,
    "intensity_shift": 0,
    "intensity_scale": 0,
}
TINY = TINY_NETWORK
FAST = {"epochs": 2, "folds": 2, "learning_rate": 3e-3, "lr_decay": 0.95, "model": TINY}


def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.slow
def test_small_model_overfits_two_patients(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    events: list[TrainingEvent] = []
    train(
        dataset,
        tmp_path / "model",
        config={
            # Coordinate channels: left and right femoral heads look alike (see DpnUNetConfig).
            "model": {"preset": "cpu", "coordinates": True},
            "epochs": 25,
            "folds": 1,
            "learning_rate": 3e-3,
            "lr_decay": 0.95,
            "augmentation": NO_AUGMENTATION,
        },
        device="cpu",
        progress=events.append,
    )
    losses = [e.train_loss for e in events if e.kind == "epoch"]
    assert len(losses) == 25
    assert losses[-1] < 0.25 * losses[0]
    predictor = Predictor(tmp_path / "model", device="cpu")
    for case_id in dataset.case_ids():
        case = dataset.load_case(case_id)
        masks = predictor.predict(case.ct)
        for name, mask in masks.items():
            assert mask.same_grid(case.ct)
            assert _dsc(mask.array, case.structures[name].array) > 0.9, (case_id, name)


def test_training_writes_model_and_cross_validation_curves(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 4, cohorts=("A", "B"))
    result = train(dataset, tmp_path / "model", config=FAST, device="cpu", name="tiny model")
    out = tmp_path / "model"
    info = read_model_info(out)
    assert info.model_sha256 == result.model_sha256
    assert info.name == "tiny model"
    assert info.classes == ["background", "Bladder", "Femur_Head_L", "Femur_Head_R"]
    assert info.preprocessing.spacing_mm == 2.0  # the median spacing of the cases
    training = info.training
    assert training["dataset"]["sha256"] == dataset.sha256(dataset.case_ids())
    assert training["dataset"]["cohorts"] == {"A": 2, "B": 2}
    assert training["recipe"]["epochs"] == 2
    assert training["selection"]["rule"] == "val_loss"
    cv = json.loads((out / "cv.json").read_text())
    assert [f["fold"] for f in cv["folds"]] == [1, 2]
    # Stratified: each fold validates one case of each cohort.
    for fold in cv["folds"]:
        assert sorted(dataset.record(c).cohort for c in fold["validation"]) == ["A", "B"]
    best = {f["fold"]: f["best_score"] for f in cv["folds"]}
    assert result.selected_fold == min(best, key=lambda k: best[k])
    assert cv["selection"]["epoch"] == cv["folds"][result.selected_fold - 1]["best_epoch"]
    rows = list(csv.DictReader((out / "cv.csv").open()))
    assert len(rows) == 4
    assert set(rows[0]) >= {"fold", "epoch", "train_loss", "val_loss", "val_dsc_Bladder"}
    # Only the best weights of a finished fold stay; no optimizer state.
    for k in (1, 2):
        files = sorted(p.name for p in (out / "folds" / f"fold-{k}").iterdir())
        assert files[0].startswith("best-e") and files[1] == "state.json" and len(files) == 2


def test_same_seed_gives_identical_weights(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    config = {**FAST, "folds": 1, "epochs": 1}
    a = train(dataset, tmp_path / "a", config=config, device="cpu")
    b = train(dataset, tmp_path / "b", config=config, device="cpu")
    c = train(dataset, tmp_path / "c", config={**config, "seed": 1}, device="cpu")
    assert a.model_sha256 == b.model_sha256
    assert a.model_sha256 != c.model_sha256


def test_ensemble_output_has_one_member_per_fold(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 4)
    result = train(
        dataset, tmp_path / "model", config={**FAST, "epochs": 1}, device="cpu", ensemble=True
    )
    info = read_model_info(tmp_path / "model")
    assert result.ensemble and result.selected_fold is None
    assert [w.fold for w in info.weights] == [1, 2]
    assert len(Predictor(tmp_path / "model", device="cpu").model.networks) == 2


def test_selection_by_dice_and_last_epoch(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 4)
    train(dataset, tmp_path / "last", config={**FAST, "selection": "last"}, device="cpu")
    info = read_model_info(tmp_path / "last")
    assert info.weights[0].epoch == 2
    train(dataset, tmp_path / "dsc", config={**FAST, "selection": "val_dsc"}, device="cpu")
    folds = read_model_info(tmp_path / "dsc").training["folds"]
    for fold in folds:
        dscs = [h["val_dsc"] for h in fold["history"]]
        assert fold["best_epoch"] == int(np.argmax(dscs)) + 1


def test_output_folder_that_is_not_empty_is_refused(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("x")
    with pytest.raises(TrainingConfigError, match="output folder is not empty"):
        train(dataset, tmp_path / "model", config=FAST, device="cpu")


def test_resume_without_a_run_is_refused(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    with pytest.raises(TrainingConfigError, match="nothing to resume"):
        train(dataset, tmp_path / "model", config=FAST, device="cpu", resume=True)


def test_case_missing_a_structure_is_refused_when_asked(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 3)
    ct, masks = synthetic.make_case(50)
    del masks["Femur_Head_R"]
    dataset.write_case("case99", "A", ct, masks, {})
    with pytest.raises(
        TrainingConfigError,
        match=r"case case99: case lacks structures.*Femur_Head_R.*missing_structures: partial",
    ):
        train(dataset, tmp_path / "model", config={**FAST, "missing_structures": "error"})
    train(
        dataset,
        tmp_path / "skip",
        config={**FAST, "missing_structures": "skip-case", "epochs": 1},
        device="cpu",
    )
    run = json.loads((tmp_path / "skip" / "run.json").read_text())
    assert run["dataset"]["cases"] == 3
    assert run["notes"] == ["case case99 left out: no Femur_Head_R"]


def test_unknown_cohort_is_refused(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    with pytest.raises(TrainingConfigError, match=r"unknown cohort.*found GenEva"):
        train(dataset, tmp_path / "model", config=FAST, device="cpu", cohorts=["GenEva"])


def test_training_on_one_cohort_uses_only_its_cases(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 4, cohorts=("train", "ExVal"))
    train(
        dataset, tmp_path / "model", config={**FAST, "epochs": 1}, device="cpu", cohorts=["train"]
    )
    run = json.loads((tmp_path / "model" / "run.json").read_text())
    assert run["dataset"]["cohorts"] == {"train": 2}


def test_batch_larger_than_the_data_is_refused(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 1)
    from dlas.training import TrainingError

    with pytest.raises(TrainingError, match="too few training slices for one batch"):
        train(
            dataset, tmp_path / "model", config={**FAST, "folds": 1, "batch_size": 64}, device="cpu"
        )


def test_unavailable_cuda_is_refused(tmp_path: Path, synthetic: ModuleType) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    from dlas.model import DeviceError

    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        train(dataset, tmp_path / "model", config=FAST, device="cuda")


def test_class_weights_from_frequencies() -> None:
    freq = np.array([0.9, 0.09, 0.01, 0.0])
    inverse = class_weights("inverse_frequency", freq)
    assert inverse[3] == 0.0
    assert inverse[1] / inverse[0] == pytest.approx(10.0)
    assert inverse[:3].mean() == pytest.approx(1.0)
    root = class_weights("inverse_sqrt_frequency", freq)
    assert root[2] / root[0] == pytest.approx(np.sqrt(90.0))
    assert class_weights("uniform", freq).tolist() == [1.0, 1.0, 1.0, 0.0]
    assert class_weights((1, 2, 3, 4), freq).tolist() == [1, 2, 3, 4]
    with pytest.raises(TrainingConfigError, match="wrong number of class weights"):
        class_weights((1, 2), freq)
