"""The parts of the recipes: bases, learning-rate schedules, sampling, crops, fitted intensity
normalisation, and the time-budget arithmetic."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from dlas.model.config import Preprocessing
from dlas.training import Recipe, TrainingConfigError, TrainingError, load_recipe
from dlas.training.budget import plan_budget
from dlas.training.config import BASES, parse_duration
from dlas.training.data import PreparedCase, SliceSet, fit_intensity
from dlas.training.loop import epoch_order, learning_rate


def test_fast_base_fills_what_the_recipe_leaves_out() -> None:
    recipe = load_recipe({"base": "fast", "epochs": 3, "augmentation": {"gamma": 0.0}})
    assert recipe.epochs == 3
    assert recipe.loss == "dice_ce" and recipe.lr_schedule == "poly"
    assert recipe.steps_per_epoch == BASES["fast"]["steps_per_epoch"]
    # A section given in part keeps the base's other values.
    assert recipe.augmentation.gamma == 0.0
    assert recipe.augmentation.rotation_deg == BASES["fast"]["augmentation"]["rotation_deg"]
    assert recipe.new_model_preprocessing().intensity == "percentile"
    assert load_recipe("fast") == load_recipe({"base": "fast"})
    paper = load_recipe("paper")
    assert paper == Recipe() and paper.new_model_preprocessing() == Preprocessing()


def test_recipe_preprocessing_overrides_the_base() -> None:
    recipe = load_recipe({"base": "fast", "preprocessing": {"intensity": "window"}})
    assert recipe.new_model_preprocessing().intensity == "window"
    assert recipe.preprocessing.model_fields_set == {"intensity"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900.0), ("1h30m", 5400.0), ("90s", 90.0), ("2.5m", 150.0), ("600", 600.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert load_recipe({"time_budget": text}).time_budget == seconds


@pytest.mark.parametrize("text", ["15 minutes", "m", "-5m", "0", "1d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(TrainingConfigError, match="time_budget"):
        load_recipe({"time_budget": text})


def test_exponential_schedule_is_the_seed_studys() -> None:
    recipe = Recipe()
    assert learning_rate(recipe, 0, 0, 100, 60) == pytest.approx(1e-4)
    assert learning_rate(recipe, 5, 99, 100, 60) == pytest.approx(1e-4 * 0.9**5)


def test_poly_schedule_with_warmup_spans_the_run() -> None:
    recipe = Recipe(lr_schedule="poly", learning_rate=1e-2, warmup=0.1)
    rates = [learning_rate(recipe, e, s, 10, 10) for e in range(10) for s in range(10)]
    assert rates[0] == pytest.approx(1e-2 * (1 - 0 / 100) ** 0.9 / 10)
    assert np.argmax(rates) == 9  # the warm-up ends after 10 % of the steps
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert rates[-1] == pytest.approx(1e-2 * (1 / 100) ** 0.9)
    cosine = Recipe(lr_schedule="cosine", learning_rate=1.0)
    assert learning_rate(cosine, 5, 0, 10, 10) == pytest.approx(0.5)


def _case(labels: np.ndarray, name: str = "c") -> PreparedCase:
    return PreparedCase(
        name,
        np.zeros(labels.shape, dtype=np.float32),
        labels,
        np.ones(int(labels.max()) + 1, dtype=bool),
    )


def test_foreground_oversampling_balances_the_classes() -> None:
    labels = np.zeros((200, 8, 8), dtype=np.uint8)
    labels[:100, 2, 2] = 1  # common structure: half of the slices
    labels[150, 5, 5] = 2  # rare structure: one slice
    slices = SliceSet([_case(labels)], 1)
    recipe = Recipe(foreground_fraction=0.5, batch_size=10)
    order = epoch_order(slices, recipe, torch.Generator().manual_seed(0), 400)
    assert len(order) == 4000
    rare = sum(1 for item, _ in order if slices.items[item][1] == 150)
    # Half the draws are foreground, half of those the rare class: about a quarter.
    assert 0.2 < rare / len(order) < 0.3
    assert {focus for _, focus in order} == {0, 1, 2}
    assert all(slices.items[i][1] == 150 for i, focus in order if focus == 2)


def test_crops_are_centred_on_the_focus_structure() -> None:
    labels = np.zeros((3, 64, 96), dtype=np.uint8)
    labels[1, 50:54, 80:84] = 2
    slices = SliceSet([_case(labels)], 1)
    u = np.array([[0.5, 0.5, 0.5], [0.0, 0.0, 1.0]])
    images, crops, _ = slices.batch([1, 1], focus=[2, 2], patch=(32, 32), uniforms=u)
    assert images.shape == (2, 1, 32, 32) and crops.shape == (2, 32, 32)
    assert (crops == 2).sum(axis=(1, 2)).tolist() == [16, 16]  # whole structure in both crops
    _, anywhere, _ = slices.batch([0], focus=[0], patch=(32, 32), uniforms=u[:1])
    assert anywhere.shape == (1, 32, 32)
    with pytest.raises(ValueError, match="larger than the canvas"):
        slices.batch([0], focus=[0], patch=(128, 32), uniforms=u[:1])


def test_percentile_normalisation_is_fitted_inside_the_structures(
    synthetic: ModuleType,
) -> None:
    cases = []
    for seed in range(3):
        ct, masks = synthetic.make_case(seed)
        from dlas.dataset import Case

        cases.append(Case(f"c{seed}", "A", ct, masks, {}))
    pre = fit_intensity(cases, Preprocessing(intensity="percentile"))
    inside = np.concatenate(
        [c.ct.array[np.any([m.array for m in c.structures.values()], axis=0)] for c in cases]
    )
    low, high = np.percentile(inside, [0.5, 99.5])
    assert pre.hu_min == pytest.approx(low, abs=0.01) and pre.hu_max == pytest.approx(
        high, abs=0.01
    )
    clipped = np.clip(inside, pre.hu_min, pre.hu_max)
    assert pre.mean_hu == pytest.approx(clipped.mean(), abs=0.01)
    assert pre.std_hu == pytest.approx(clipped.std(), abs=0.01)
    _scale, air = pre.intensity_affine()
    assert air == pytest.approx((pre.hu_min - pre.mean_hu) / pre.std_hu)
    assert fit_intensity(cases, Preprocessing()) == Preprocessing()


def test_percentile_normalisation_without_structures_is_refused(synthetic: ModuleType) -> None:
    from dlas.dataset import Case

    ct, _ = synthetic.make_case(0)
    with pytest.raises(TrainingError, match="no structure voxels"):
        fit_intensity([Case("c", "A", ct, {}, {})], Preprocessing(intensity="percentile"))


def test_preprocessing_of_earlier_models_is_recorded_as_before() -> None:
    # Fields added later stay out of the recorded form while at their defaults, so the model
    # hashes of models written before them still verify.
    assert set(Preprocessing(spacing_mm=2.0).model_dump()) == {
        "schema_version",
        "hu_min",
        "hu_max",
        "spacing_mm",
        "crop_to_body",
        "body_threshold_hu",
        "body_margin_mm",
        "canvas",
    }
    fitted = Preprocessing(
        intensity="percentile", mean_hu=40.0, std_hu=100.0, patch=(64, 64), spacing_mm=2.0
    )
    assert Preprocessing.model_validate(fitted.model_dump()) == fitted


def test_window_preprocessing_with_fitted_statistics_is_refused() -> None:
    with pytest.raises(ValueError, match="belong to intensity: percentile"):
        Preprocessing(mean_hu=3.0, std_hu=2.0)


def test_budget_plan_fills_the_time_left() -> None:
    recipe = Recipe(steps_per_epoch=50)
    plan = plan_budget(
        recipe,
        budget_s=600,
        spent_s=30,
        step_s=0.2,
        validation_s=0.0,
        folds=1,
        pass_steps=400,
    )
    epoch_s = 50 * 0.2 + 0.5
    assert plan.epochs == int((600 - 30 - 18) // epoch_s)
    assert plan.steps_per_epoch == 50
    assert plan.expected_s <= 600


def test_budget_plan_keeps_validation_to_a_tenth_of_an_epoch() -> None:
    plan = plan_budget(
        Recipe(steps_per_epoch=10),
        budget_s=3600,
        spent_s=0,
        step_s=0.5,
        validation_s=20.0,
        folds=5,
        pass_steps=1000,
    )
    assert plan.steps_per_epoch == math.ceil(20 * 0.9 / (0.1 * 0.5))
    assert plan.validation_s / (plan.steps_per_epoch * 0.5 + 20) <= 0.1 + 1e-9
    assert plan.expected_s <= 3600


def test_budget_that_buys_less_than_an_epoch_shortens_it() -> None:
    plan = plan_budget(
        Recipe(),
        budget_s=60,
        spent_s=10,
        step_s=0.5,
        validation_s=0.0,
        folds=1,
        pass_steps=1000,
    )
    assert plan.epochs == 1 and 10 <= plan.steps_per_epoch < 100


def test_budget_too_short_is_refused_with_what_it_needs() -> None:
    with pytest.raises(TrainingError, match=r"time budget too short.*at least about \d+ s"):
        plan_budget(
            Recipe(),
            budget_s=20,
            spent_s=15,
            step_s=1.0,
            validation_s=0.0,
            folds=2,
            pass_steps=100,
        )


def test_unused_path_argument_stays_a_file_path(tmp_path: Path) -> None:
    # A file named like a base is read as a file.
    (tmp_path / "fast").write_text("epochs: 2\n")
    import os

    here = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert load_recipe("fast").epochs == 2
    finally:
        os.chdir(here)


def test_fold_epochs_are_refitted_to_the_time_left() -> None:
    import time

    from dlas.training.distributed import DistContext
    from dlas.training.loop import _replan
    from dlas.training.state import FoldState

    state = FoldState(fold=1, run_sha256="x")
    state.history = [{"epoch": k, "seconds": 10.0} for k in (1, 2, 3)]
    entry = {"epoch": 4, "seconds": 10.0}
    single = DistContext()
    # 10 s per epoch and 55 s left: 5 more epochs, whatever was planned before.
    assert _replan(state, entry, 20, time.perf_counter() + 55.0, single) == 9
    assert _replan(state, entry, 6, time.perf_counter() + 55.0, single) == 9
    # The deadline has passed: the fold ends with this epoch.
    assert _replan(state, entry, 20, time.perf_counter() - 1.0, single) == 4
