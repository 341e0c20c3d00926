"""Kill-and-resume: an interrupted run, resumed, ends with the weights of an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from dlas.model import file_sha256, read_model_info
from dlas.training import TrainingConfigError, TrainingEvent, train
from helpers.synthetic_data import TINY_NETWORK

TINY = TINY_NETWORK
# Augmentation on: the resumed run must replay the same random draws.
RECIPE = {
    "epochs": 3,
    "folds": 2,
    "learning_rate": 3e-3,
    "lr_decay": 0.9,
    "model": TINY,
    "empty_slice_fraction": 0.5,
}


class _KilledError(Exception):
    """Stands in for the process being killed right after an epoch's checkpoint."""


def _kill_after(fold: int, epoch: int):  # type: ignore[no-untyped-def]
    def callback(event: TrainingEvent) -> None:
        if event.kind == "epoch" and event.fold == fold and event.epoch == epoch:
            raise _KilledError

    return callback


def _curves(folder: Path) -> list[list[tuple[float, float | None]]]:
    cv = json.loads((folder / "cv.json").read_text())
    return [[(h["train_loss"], h["val_loss"]) for h in f["history"]] for f in cv["folds"]]


def test_killed_and_resumed_run_equals_an_uninterrupted_run(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 4)
    reference = train(dataset, tmp_path / "ref", config=RECIPE, device="cpu")

    out = tmp_path / "run"
    with pytest.raises(_KilledError):
        train(dataset, out, config=RECIPE, device="cpu", progress=_kill_after(1, 1))
    state = json.loads((out / "folds" / "fold-1" / "state.json").read_text())
    assert state["epochs_done"] == 1 and not state["complete"]
    assert (out / "folds" / "fold-1" / state["state_file"]).is_file()
    assert not (out / "model.json").exists()
    # Killed again in the middle of the second fold, after the first one finished.
    with pytest.raises(_KilledError):
        train(dataset, out, config=RECIPE, device="cpu", resume=True, progress=_kill_after(2, 2))
    resumed = train(dataset, out, config=RECIPE, device="cpu", resume=True)

    assert resumed.model_sha256 == reference.model_sha256
    assert file_sha256(out / "model.safetensors") == file_sha256(
        tmp_path / "ref" / "model.safetensors"
    )
    assert _curves(out) == _curves(tmp_path / "ref")
    assert (
        read_model_info(out).training["selection"]
        == read_model_info(tmp_path / "ref").training["selection"]
    )


def test_resume_with_a_changed_recipe_is_refused(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 4)
    out = tmp_path / "run"
    with pytest.raises(_KilledError):
        train(dataset, out, config=RECIPE, device="cpu", progress=_kill_after(1, 1))
    with pytest.raises(TrainingConfigError, match=r"cannot resume.*changed: recipe"):
        train(dataset, out, config=RECIPE, epochs=5, device="cpu", resume=True)


def test_resume_with_a_changed_split_is_refused(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 4)
    out = tmp_path / "run"
    with pytest.raises(_KilledError):
        train(dataset, out, config=RECIPE, device="cpu", progress=_kill_after(1, 1))
    ct, masks = synthetic.make_case(77)
    dataset.write_case("case77", "A", ct, masks, {})
    with pytest.raises(TrainingConfigError, match=r"cannot resume.*changed: dataset, split"):
        train(dataset, out, config=RECIPE, device="cpu", resume=True)


def test_resume_with_another_ensemble_choice_repackages_the_folds(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 4)
    recipe = {**RECIPE, "epochs": 1}
    single = train(dataset, tmp_path / "run", config=recipe, device="cpu")
    both = train(dataset, tmp_path / "run", config=recipe, device="cpu", resume=True, ensemble=True)
    assert not single.ensemble and both.ensemble
    assert [w.fold for w in read_model_info(tmp_path / "run").weights] == [1, 2]
