"""The training recipe: a typed, validated configuration whose defaults are the seed study's.

Study recipe (Geng et al. 2024): class-weighted cross-entropy, Adam, batch size 4, initial
learning rate 1e-4 multiplied by 0.9 after every epoch, 60 epochs, 5-fold cross-validation split
by patient, and the model with the lowest validation loss is the output.

A recipe is YAML (or JSON) data, never code::

    schema_version: 1
    seed: 0
    epochs: 60
    batch_size: 4
    learning_rate: 1.0e-4
    lr_decay: 0.9                 # multiplied into the learning rate after every epoch
    weight_decay: 0.0
    folds: 5
    stratify_by_cohort: true
    selection: val_loss           # val_loss | val_dsc | last
    ensemble: false               # output the fold ensemble instead of the selected fold
    class_weights: inverse_sqrt_frequency   # | inverse_frequency | uniform | [w0, w1, ...]
    empty_slice_fraction: 1.0     # share of slices without any structure used per epoch
    missing_structures: error     # error | skip-case
    freeze_encoder_epochs: 0
    train_parts: all              # all | decoder (decoder and head only)
    augmentation: {flip_lr: true, rotation_deg: 10, scale: 0.1, intensity_shift: 0.05,
                   intensity_scale: 0.05}
    model: {preset: auto}         # auto | cpu | full, plus optional overrides
    preprocessing: {hu_min: -1000, hu_max: 1000, spacing_mm: null}
    mixed_precision: auto         # auto (bf16 on CUDA) | off
    channels_last: auto           # auto (on CUDA) | off
    compile: false                # torch.compile the network (CUDA)
    deterministic: auto           # auto (on CPU) | on | off

The resolved recipe and its hash are written next to every trained model; ``--resume`` refuses a
run whose recipe hash changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dlas.config_files import read_yaml_mapping, validation_error
from dlas.errors import DlasError
from dlas.model.config import ArchitectureSpec, Preprocessing, config_sha256

__all__ = [
    "Augmentation",
    "Recipe",
    "TrainingConfigError",
    "load_recipe",
]


class TrainingConfigError(DlasError):
    """An invalid training recipe or training request."""


class Augmentation(BaseModel):
    """Random augmentation of training slices (validation slices are never augmented).

    Attributes
    ----------
    flip_lr
        Mirror left-right with probability 0.5, swapping the labels of left/right structure
        pairs (FemoralHead_L ↔ FemoralHead_R). Anterior-posterior and cranio-caudal flips are
        never applied: anatomy is not symmetric along those axes.
    rotation_deg
        In-plane rotation drawn uniformly from ±rotation_deg degrees.
    scale
        Isotropic in-plane scaling drawn uniformly from 1 ± scale.
    intensity_shift
        Offset added to the normalised intensities (range [-1, 1]), uniform in ±intensity_shift.
    intensity_scale
        Contrast factor drawn uniformly from 1 ± intensity_scale.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    flip_lr: bool = True
    rotation_deg: float = Field(10.0, ge=0.0, le=45.0)
    scale: float = Field(0.1, ge=0.0, lt=0.5)
    intensity_shift: float = Field(0.05, ge=0.0, le=0.5)
    intensity_scale: float = Field(0.05, ge=0.0, lt=0.5)

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is applied."""
        return bool(
            self.flip_lr
            or self.rotation_deg
            or self.scale
            or self.intensity_shift
            or self.intensity_scale
        )


class Recipe(BaseModel):
    """A training recipe (see the module docstring for the YAML form and defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1
    seed: int = Field(0, ge=0)
    epochs: int = Field(60, ge=1, le=10000)
    batch_size: int = Field(4, ge=1, le=4096)
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    lr_decay: float = Field(0.9, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    folds: int = Field(5, ge=1, le=100)
    stratify_by_cohort: bool = True
    selection: Literal["val_loss", "val_dsc", "last"] = "val_loss"
    ensemble: bool = False
    class_weights: (
        Literal["inverse_sqrt_frequency", "inverse_frequency", "uniform"] | tuple[float, ...]
    ) = "inverse_sqrt_frequency"
    empty_slice_fraction: float = Field(1.0, ge=0.0, le=1.0)
    missing_structures: Literal["error", "skip-case"] = "error"
    freeze_encoder_epochs: int = Field(0, ge=0)
    train_parts: Literal["all", "decoder"] = "all"
    augmentation: Augmentation = Augmentation()
    model: ArchitectureSpec = ArchitectureSpec()
    preprocessing: Preprocessing = Preprocessing()
    mixed_precision: Literal["auto", "off"] = "auto"
    channels_last: Literal["auto", "off"] = "auto"
    compile: bool = False
    deterministic: Literal["auto", "on", "off"] = "auto"

    @field_validator("class_weights")
    @classmethod
    def _positive_weights(cls, value: Any) -> Any:
        if isinstance(value, tuple) and (not value or any(w < 0 for w in value)):
            raise ValueError("explicit class weights must be a non-empty list of numbers >= 0")
        return value

    def sha256(self) -> str:
        """Hash of the canonical JSON form."""
        return config_sha256(self)

    def training_sha256(self) -> str:
        """Hash of the fields that determine the trained weights (not ``ensemble``, which only
        chooses how the fold models are packaged); ``--resume`` compares this."""
        data = self.model_dump(mode="json")
        data.pop("ensemble")
        return config_sha256(data)

    def with_overrides(self, **overrides: Any) -> Recipe:
        """A copy with the given fields replaced (``None`` values are ignored), validated.

        Fields never set explicitly stay unset in the copy, so that fine-tuning can still tell
        which preprocessing and model fields the user chose and which it inherits.
        """
        data = self.model_dump(mode="json", exclude_unset=True)
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return Recipe.model_validate(data)
        except ValidationError as exc:
            raise _config_error(exc, "command-line options") from None


def _config_error(exc: ValidationError, source: str) -> TrainingConfigError:
    return validation_error(
        exc,
        TrainingConfigError,
        what="invalid training recipe",
        source=source,
        expected="the recipe schema in the dlas.training.config documentation",
        fix="correct the recipe",
    )


def load_recipe(source: str | os.PathLike[str] | Recipe | dict[str, Any] | None) -> Recipe:
    """A recipe from a YAML/JSON file, a mapping, a Recipe, or the defaults (``None``).

    Raises
    ------
    TrainingConfigError
        Missing file, invalid YAML, unknown keys or invalid values.
    """
    if source is None:
        return Recipe()
    if isinstance(source, Recipe):
        return source
    if isinstance(source, dict):
        data: Any = source
        where = "recipe"
    else:
        path = Path(source)
        where = str(path)
        data = read_yaml_mapping(
            path,
            TrainingConfigError,
            what="recipe",
            expected_keys="epochs, batch_size, learning_rate",
            missing_fix="check the path, or leave out --config to use the study's recipe",
            schema_fix="see the recipe schema in the dlas.training.config documentation",
            empty_is_mapping=True,
        )
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, where) from None
