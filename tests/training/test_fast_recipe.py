"""Training runs with the parts of the fast recipe: partial labels, one set of class weights,
patches with sliding-window prediction, fitted normalisation, and time budgets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from dlas.model import read_model_info
from dlas.prediction import Predictor
from dlas.training import TrainingConfigError, TrainingEvent, train
from helpers.synthetic_data import TINY_NETWORK

QUICK = {
    "epochs": 2,
    "folds": 2,
    "learning_rate": 3e-3,
    "lr_decay": 0.95,
    "model": TINY_NETWORK,
}


def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _dataset_without(synthetic: ModuleType, root: Path, n: int, missing: dict[int, str]) -> object:
    """``n`` synthetic cases; case ``i`` lacks structure ``missing[i]``."""
    dataset = synthetic.make_dataset(root, 0)
    for i in range(n):
        ct, masks = synthetic.make_case(i)
        masks.pop(missing.get(i, ""), None)
        dataset.write_case(f"case{i:02d}", "A", ct, masks, {})
    return dataset


def test_cases_without_some_structures_train_as_partial_labels(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    dataset = _dataset_without(synthetic, tmp_path / "ds", 4, {0: "Bladder", 1: "Bladder"})
    train(dataset, tmp_path / "model", config=QUICK, device="cpu")
    run = json.loads((tmp_path / "model" / "run.json").read_text())
    assert run["dataset"]["cases"] == 4
    assert run["notes"] == [
        "case case00 trains without Bladder (unknown there)",
        "case case01 trains without Bladder (unknown there)",
    ]
    # The validation Dice of the bladder counts only the validation cases that have it.
    for fold in read_model_info(tmp_path / "model").training["folds"]:
        split = next(f for f in run["split"]["folds"] if f["fold"] == fold["fold"])
        with_bladder = [c for c in split["validation"] if c not in ("case00", "case01")]
        per = fold["history"][-1]["val_dsc_per_structure"]
        assert (per["Bladder"] is None) == (not with_bladder)


def test_case_without_any_structure_is_left_out(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 3)
    ct, _ = synthetic.make_case(9)
    dataset.write_case("case09", "A", ct, {}, {})
    train(dataset, tmp_path / "model", config={**QUICK, "folds": 1, "epochs": 1}, device="cpu")
    run = json.loads((tmp_path / "model" / "run.json").read_text())
    assert run["dataset"]["cases"] == 3
    assert "case case09 left out" in run["notes"][0]


@pytest.mark.slow
def test_partial_labels_still_learn_the_structure_some_cases_lack(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    # Half of the training cases have the bladder drawn in the CT but not delineated. Counted as
    # background they would teach the network to omit it; as unknown they do not.
    dataset = _dataset_without(synthetic, tmp_path / "ds", 4, {0: "Bladder", 2: "Bladder"})
    train(
        dataset,
        tmp_path / "model",
        config={
            "base": "fast",
            "folds": 1,
            "epochs": 6,
            "steps_per_epoch": 25,
            "batch_size": 4,
            "learning_rate": 3e-3,
            "augmentation": {"flip_lr": False},
            "model": {"preset": "cpu", "coordinates": True},
        },
        device="cpu",
    )
    predictor = Predictor(tmp_path / "model", device="cpu")
    ct, masks = synthetic.make_case(77)
    predicted = predictor.predict(ct)
    assert _dsc(predicted["Bladder"].array, masks["Bladder"].array) > 0.8


def test_class_weights_are_computed_once_for_every_fold(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    # Per-fold weights put fold validation losses on different scales (the fold with the
    # rarest structures looked worst); one set for the whole cohort keeps them comparable.
    dataset = _dataset_without(synthetic, tmp_path / "ds", 6, {0: "Femur_Head_L"})
    config = {**QUICK, "folds": 3, "epochs": 1, "class_weights": "inverse_frequency"}
    train(dataset, tmp_path / "model", config=config, device="cpu")
    info = read_model_info(tmp_path / "model")
    weights = info.training["class_weights"]
    assert len(weights) == 4 and weights[0] < min(weights[1:])
    for k in (1, 2, 3):
        state = json.loads((tmp_path / "model" / "folds" / f"fold-{k}" / "state.json").read_text())
        assert state["class_weights"] == weights
    assert json.loads((tmp_path / "model" / "cv.json").read_text())["class_weights"] == weights


def test_patch_training_predicts_by_tiles(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    config = {
        **QUICK,
        "folds": 1,
        "foreground_fraction": 0.5,
        "steps_per_epoch": 3,
        "preprocessing": {"patch": [24, 24]},
    }
    train(dataset, tmp_path / "model", config=config, device="cpu")
    info = read_model_info(tmp_path / "model")
    assert info.preprocessing.patch == (24, 24)
    assert info.preprocessing.canvas is not None and min(info.preprocessing.canvas) >= 24
    case = dataset.load_case(dataset.case_ids()[0])
    masks = Predictor(tmp_path / "model", device="cpu").predict(case.ct)
    assert all(mask.same_grid(case.ct) for mask in masks.values())


def test_patch_width_in_millimetres_becomes_pixels_of_the_model_grid(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    config = {**QUICK, "folds": 1, "epochs": 1, "steps_per_epoch": 2, "patch_mm": 37.0}
    train(dataset, tmp_path / "model", config=config, device="cpu")
    info = read_model_info(tmp_path / "model")
    # 37 mm at 2 mm pixels: 18.5 pixels, rounded to the tiny network's multiple of 4.
    assert info.preprocessing.patch == (20, 20)
    wide = {**config, "patch_mm": 400.0}
    train(dataset, tmp_path / "wide", config=wide, device="cpu")
    assert read_model_info(tmp_path / "wide").preprocessing.patch is None  # whole slices


def test_patch_that_does_not_fit_the_network_is_refused(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    with pytest.raises(TrainingConfigError, match=r"patch size does not fit.*multiples of 4"):
        train(
            dataset,
            tmp_path / "model",
            config={**QUICK, "folds": 1, "preprocessing": {"patch": [30, 24]}},
            device="cpu",
        )


def test_fine_tuning_keeps_the_fitted_normalisation_of_the_pretrained_model(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 3)
    train(
        dataset,
        tmp_path / "vpm",
        config={**QUICK, "base": "fast", "folds": 1, "epochs": 1, "steps_per_epoch": 2},
        device="cpu",
    )
    pretrained = read_model_info(tmp_path / "vpm").preprocessing
    assert pretrained.intensity == "percentile" and pretrained.mean_hu is not None
    other = synthetic.make_dataset(tmp_path / "ds2", 3, seed=5)
    train(
        other,
        tmp_path / "lft",
        config={**QUICK, "folds": 1, "epochs": 1},
        pretrained=tmp_path / "vpm",
        device="cpu",
    )
    tuned = read_model_info(tmp_path / "lft").preprocessing
    assert (tuned.mean_hu, tuned.std_hu, tuned.hu_min, tuned.hu_max) == (
        pretrained.mean_hu,
        pretrained.std_hu,
        pretrained.hu_min,
        pretrained.hu_max,
    )
    # The fast base's five input slices are the pretrained model's, kept by a paper fine-tune.
    assert read_model_info(tmp_path / "vpm").architecture.in_slices == 5
    assert read_model_info(tmp_path / "lft").architecture.in_slices == 5


def test_time_budget_sizes_the_run_and_records_the_plan(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 4)
    events: list[TrainingEvent] = []
    started = time.perf_counter()
    train(
        dataset,
        tmp_path / "model",
        config={**QUICK, "steps_per_epoch": 4},
        device="cpu",
        time_budget="20s",
        progress=events.append,
    )
    elapsed = time.perf_counter() - started
    run = json.loads((tmp_path / "model" / "run.json").read_text())
    plan = run["budget"]
    assert plan["budget_s"] == 20.0 and plan["folds"] == 2
    assert plan["expected_s"] <= 20.0
    schedule = read_model_info(tmp_path / "model").training["schedule"]
    assert schedule["epochs"] == plan["epochs"] >= 1
    assert schedule["time_budget"] == plan
    epochs = [e for e in events if e.kind == "epoch"]
    assert len(epochs) == sum(schedule["epochs_trained"])
    assert all(n >= 1 for n in schedule["epochs_trained"])
    # The last epoch event of each fold reports the fold's final count.
    for fold, trained in zip((1, 2), schedule["epochs_trained"], strict=True):
        assert [e.epochs for e in epochs if e.fold == fold][-1] == trained
    # Generous: the point is that the run is sized to the budget, not a timing benchmark.
    assert elapsed < 2 * 20.0


def test_resumed_budget_run_keeps_its_recorded_plan(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 4)
    config = {**QUICK, "steps_per_epoch": 2, "time_budget": "15s"}

    class KilledError(Exception):
        pass

    def kill(event: TrainingEvent) -> None:
        if event.kind == "epoch" and event.fold == 2:
            raise KilledError

    with pytest.raises(KilledError):
        train(dataset, tmp_path / "model", config=config, device="cpu", progress=kill)
    plan = json.loads((tmp_path / "model" / "run.json").read_text())["budget"]
    train(dataset, tmp_path / "model", config=config, device="cpu", resume=True)
    assert json.loads((tmp_path / "model" / "run.json").read_text())["budget"] == plan
    assert read_model_info(tmp_path / "model").training["schedule"]["time_budget"] == plan


def test_epochs_and_a_time_budget_together_are_refused(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    with pytest.raises(TrainingConfigError, match="both a number of epochs and a time budget"):
        train(dataset, tmp_path / "model", config=QUICK, epochs=3, time_budget="1m")
