"""The training recipe: study defaults, YAML loading and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlas.training import Recipe, TrainingConfigError, load_recipe


def test_defaults_are_the_study_recipe() -> None:
    recipe = load_recipe(None)
    assert recipe.learning_rate == 1e-4
    assert recipe.lr_decay == 0.9
    assert recipe.batch_size == 4
    assert recipe.epochs == 60
    assert recipe.folds == 5
    assert recipe.selection == "val_loss"
    assert recipe.class_weights == "inverse_sqrt_frequency"


def test_recipe_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "epochs: 3\nclass_weights: [0.5, 1, 2]\naugmentation: {flip_lr: false}\n"
        "preprocessing: {spacing_mm: 2.5}\nmodel: {preset: cpu, widths: [8, 16, 24, 32]}\n"
    )
    recipe = load_recipe(path)
    assert recipe.epochs == 3
    assert recipe.class_weights == (0.5, 1.0, 2.0)
    assert not recipe.augmentation.flip_lr
    assert recipe.preprocessing.spacing_mm == 2.5
    assert recipe.model.overrides() == {"widths": (8, 16, 24, 32)}


def test_overrides_keep_track_of_explicit_fields() -> None:
    recipe = load_recipe({"preprocessing": {"spacing_mm": 2.0}}).with_overrides(
        epochs=4, folds=None
    )
    assert recipe.epochs == 4 and recipe.folds == 5
    assert recipe.preprocessing.model_fields_set == {"spacing_mm"}
    assert recipe.model.model_fields_set == set()


def test_hash_changes_with_the_recipe_and_ignores_ensemble_for_training() -> None:
    recipe = Recipe()
    assert recipe.sha256() != recipe.with_overrides(epochs=59).sha256()
    assert recipe.training_sha256() == recipe.with_overrides(ensemble=True).training_sha256()


def test_recipe_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("epochs: 3\nlearnig_rate: 0.1\n")
    with pytest.raises(
        TrainingConfigError,
        match=r"recipe.yaml, at learnig_rate: invalid training recipe.*Extra inputs",
    ):
        load_recipe(path)


def test_recipe_invalid_value_is_refused() -> None:
    with pytest.raises(TrainingConfigError, match="at selection"):
        load_recipe({"selection": "best"})
    with pytest.raises(TrainingConfigError, match="at batch_size"):
        load_recipe({"batch_size": 0})


def test_recipe_invalid_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("epochs: [3\n")
    with pytest.raises(TrainingConfigError, match="recipe is not valid YAML"):
        load_recipe(path)


def test_recipe_file_not_found_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "none.yaml")


def test_recipe_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(TrainingConfigError, match="recipe is not a mapping"):
        load_recipe(path)


def test_invalid_command_line_override_is_refused() -> None:
    with pytest.raises(TrainingConfigError, match="command-line options, at epochs"):
        Recipe().with_overrides(epochs=0)
