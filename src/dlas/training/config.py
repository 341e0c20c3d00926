"""The training recipe: a typed, validated configuration, starting from one of two built-in bases.

``base: paper`` (the default) is the seed study's recipe (Geng et al. 2024), exactly:
class-weighted cross-entropy, Adam, batch size 4, initial learning rate 1e-4 multiplied by 0.9
after every epoch, 60 epochs, 5-fold cross-validation split by patient, and the fold model with
the lowest validation loss is the output.

``base: fast`` is the recipe for real work on a limited budget, built from what the field knows
works (nnU-Net, Isensee et al. 2021): Dice + cross-entropy loss, class-balanced foreground
oversampling, training on crops of about 25 cm with sliding-window prediction, five adjacent
slices as input, AdamW with a linear warm-up and a polynomial decay over the whole run, CT
intensities standardised with percentiles fitted to the training data, rotation, scaling, gamma
and intensity augmentation, selection by validation Dice. How its values were chosen (on
training data and cross-validation only) is recorded in ``benchmarks/results/recipe-selection.md``.
A base fills every field the recipe does not set; ``augmentation`` is merged key by key. The
base's ``preprocessing`` and ``model`` values apply to models trained from scratch only: a
fine-tuned model keeps its pretrained model's, unless the recipe sets them explicitly.

``patch_mm``: the training crop (and prediction tile) side in millimetres, resolved to pixels of
the model grid (rounded to the network's size multiple, at most the whole canvas) and stored
as ``preprocessing.patch`` with the model; ``preprocessing: {patch: [h, w]}`` sets it in pixels.

A recipe is YAML (or JSON) data, never code::

    schema_version: 1
    base: paper                   # paper | fast: the values of every field not given here
    seed: 0
    epochs: 60
    steps_per_epoch: null         # null: one pass over the training slices; N: N batches
    time_budget: null             # e.g. 15m, 1h30m, 900: epochs sized to finish in this time
    patch_mm: null                # train on crops about this wide (mm), predict by tiles
    batch_size: 4
    optimizer: adam               # adam | adamw (decoupled weight decay)
    learning_rate: 1.0e-4
    lr_schedule: exponential      # exponential (x lr_decay per epoch) | poly | cosine
    lr_decay: 0.9
    warmup: 0.0                   # share of all steps with a linear learning-rate warm-up
    weight_decay: 0.0
    loss: ce                      # ce (class-weighted cross-entropy) | dice_ce (Dice + CE)
    class_weights: inverse_sqrt_frequency   # | inverse_frequency | uniform | [w0, w1, ...]
    foreground_fraction: 0.0      # share of samples drawn from slices showing a chosen structure
    empty_slice_fraction: 1.0     # share of slices without any structure used per epoch
    missing_structures: partial   # partial | skip-case | error
    folds: 5
    stratify_by_cohort: true
    selection: val_loss           # val_loss | val_dsc | last
    ensemble: false               # output the fold ensemble instead of the selected fold
    freeze_encoder_epochs: 0
    train_parts: all              # all | decoder (decoder and head only)
    augmentation: {flip_lr: true, rotation_deg: 10, scale: 0.1, intensity_shift: 0.05,
                   intensity_scale: 0.05, gamma: 0}
    model: {preset: auto}         # auto | cpu | full, plus optional overrides
    preprocessing: {intensity: window, hu_min: -1000, hu_max: 1000, spacing_mm: null}
    mixed_precision: auto         # auto (bf16 on CUDA) | off
    channels_last: auto           # auto (on CUDA) | off
    compile: false                # torch.compile the network (CUDA)
    device_data: auto             # auto (on CUDA) | on | off: training slices kept on the device
    fused_optimizer: auto         # auto (fused Adam on CUDA) | off
    concurrent_folds: off         # on: the CV folds train together, one batched network (GPU)
    deterministic: auto           # auto (on CPU) | on | off
    engine: dpnunet               # dpnunet | nnunet (nnU-Net v2 drives the training)
    nnunet: {configuration: 2d}   # nnU-Net settings (engine: nnunet only), see below

``engine: nnunet`` trains with nnU-Net v2 (:mod:`dlas.engines.nnunet`; ``pip install
'dlas[nnunet]'``): nnU-Net plans the network, patch, spacing and normalisation, and trains with
its own loss, optimiser and augmentation. Of this recipe it uses ``seed``, ``epochs``,
``steps_per_epoch`` (nnU-Net's iterations per epoch; null: nnU-Net's 250), ``folds``,
``stratify_by_cohort``, ``selection`` (``val_dsc``: nnU-Net's pseudo Dice; ``val_loss``;
``last``), ``ensemble``, ``freeze_encoder_epochs``, ``time_budget`` (each fold gets its share of
what is left after planning; a short first epoch of 3 steps is timed and the epochs, and
nnU-Net's learning-rate decay with them, fitted to the share — or one shorter epoch when a whole
one does not fit) and ``missing_structures`` (nnU-Net has no
partial labels: ``partial`` and ``skip-case`` both leave cases that lack a structure out, with a
warning); setting any field that only the DpnUNet engine uses (``base: fast``, the optimiser,
loss, augmentation, ``model``, ``preprocessing`` ...) is refused. ``nnunet:`` holds
``configuration`` (``2d`` by default, which trains on a CPU; ``3d_fullres`` or ``3d_lowres`` on a
GPU), ``initial_lr`` (null: nnU-Net's 0.01), ``val_steps_per_epoch`` (null: nnU-Net's 50),
``pretrained_fold`` (which fold of a pretrained nnU-Net result folder to fine-tune; null: the
first), ``batch_size`` (null: nnU-Net's plan, sized for a GPU's memory — 196 slices of 128²
for OpenKBP in 2-D; set it lower on a CPU) and ``keep_work`` (keep nnU-Net's own raw,
preprocessed and results folders in ``OUT/nnunet-work``, to use the model with nnU-Net's tools;
by default they are removed).

``missing_structures``: a clinical export rarely has every structure for every patient.
``partial`` (the default) trains on such cases: a structure a case lacks is *unknown* there, not
background — its voxels are not counted as negatives of that class (the marginal loss of Shi et
al., Med Image Anal 2021: the probabilities of the unknown classes are added to the background's),
and it is left out of that case's Dice terms. ``skip-case`` leaves such cases out; ``error``
refuses them.

``selection``: each fold keeps its best epoch, and the output is the best fold, by ``val_dsc``
(mean validation Dice over the structures) or by ``val_loss`` (the seed study's rule). The class
weights are computed once for the whole training cohort, so the validation losses of different
folds are on one scale; ``last`` keeps every fold's last epoch.

``time_budget``: the whole ``dlas train`` run (preparing the cases, every fold, validation) is
sized to finish within it on the machine at hand: the first training steps are timed, the number
of epochs (of ``steps_per_epoch`` steps) follows, and the learning-rate schedule spans them. The
choice is logged and recorded in ``run.json`` and ``model.json``; the same numbers need the same
machine, or the recorded epochs given explicitly instead of a budget.

The resolved recipe and its hash are written next to every trained model; ``--resume`` refuses a
run whose recipe hash changed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dlas.config_files import read_yaml_mapping, validation_error
from dlas.errors import DlasError
from dlas.model.config import ArchitectureSpec, Preprocessing, config_sha256

__all__ = [
    "BASES",
    "NNUNET_FIELDS",
    "Augmentation",
    "NnUNetSettings",
    "Recipe",
    "TrainingConfigError",
    "load_recipe",
    "parse_duration",
]


class TrainingConfigError(DlasError):
    """An invalid training recipe or training request."""


class Augmentation(BaseModel):
    """Random augmentation of training slices (validation slices are never augmented).

    Attributes
    ----------
    flip_lr
        Mirror left-right with probability 0.5, swapping the labels of left/right structure
        pairs (Femur_Head_L ↔ Femur_Head_R). Anterior-posterior and cranio-caudal flips are
        never applied: anatomy is not symmetric along those axes.
    rotation_deg
        In-plane rotation drawn uniformly from ±rotation_deg degrees.
    scale
        Isotropic in-plane scaling drawn uniformly from 1 ± scale.
    intensity_shift
        Offset added to the normalised intensities (range [-1, 1]), uniform in ±intensity_shift.
    intensity_scale
        Contrast factor drawn uniformly from 1 ± intensity_scale.
    gamma
        Gamma correction of each slice's intensities (rescaled to [0, 1] over the slice), the
        exponent drawn log-uniformly from ``[1 / (1 + gamma), 1 + gamma]``; 0 switches it off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    flip_lr: bool = True
    rotation_deg: float = Field(10.0, ge=0.0, le=45.0)
    scale: float = Field(0.1, ge=0.0, lt=0.5)
    intensity_shift: float = Field(0.05, ge=0.0, le=0.5)
    intensity_scale: float = Field(0.05, ge=0.0, lt=0.5)
    gamma: float = Field(0.0, ge=0.0, le=1.0)

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is applied."""
        return bool(
            self.flip_lr
            or self.rotation_deg
            or self.scale
            or self.intensity_shift
            or self.intensity_scale
            or self.gamma
        )


#: The built-in bases. ``paper`` is the class defaults (the seed study's recipe); ``fast`` the
#: recipe for real work. Values chosen by cross-validation on training data only: see
#: ``benchmarks/results/recipe-selection.md``.
BASES: dict[str, dict[str, Any]] = {
    "paper": {},
    "fast": {
        "epochs": 40,
        "steps_per_epoch": 50,
        "patch_mm": 256.0,
        "batch_size": 8,
        "optimizer": "adamw",
        "learning_rate": 2e-3,
        "lr_schedule": "poly",
        "warmup": 0.05,
        "weight_decay": 1e-4,
        "loss": "dice_ce",
        "class_weights": "uniform",
        "foreground_fraction": 0.5,
        "selection": "val_dsc",
        "augmentation": {
            "flip_lr": True,
            "rotation_deg": 15.0,
            "scale": 0.15,
            "intensity_shift": 0.1,
            "intensity_scale": 0.1,
            "gamma": 0.3,
        },
    },
}

#: Preprocessing and architecture of a model trained from scratch with each base (a fine-tuned
#: model keeps its pretrained model's; fields set in the recipe override both).
BASE_PREPROCESSING: dict[str, dict[str, Any]] = {
    "paper": {},
    "fast": {"intensity": "percentile"},
}
BASE_MODEL: dict[str, dict[str, Any]] = {
    "paper": {},
    "fast": {"in_slices": 5},
}

_DURATION = re.compile(
    r"^\s*(?:(?P<h>\d+(?:\.\d+)?)\s*h)?\s*(?:(?P<m>\d+(?:\.\d+)?)\s*m(?:in)?)?"
    r"\s*(?:(?P<s>\d+(?:\.\d+)?)\s*s)?\s*$"
)


def parse_duration(value: str | float) -> float:
    """Seconds of a duration: a number of seconds, or text such as ``15m``, ``1h30m``, ``90s``.

    Raises
    ------
    ValueError
        Text that is not such a duration, or a duration that is not positive.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value)
        match = _DURATION.match(text)
        if text.strip().replace(".", "", 1).isdigit():
            seconds = float(text)
        elif match is None or not any(match.groupdict().values()):
            raise ValueError(
                f"{text!r} is not a duration; write e.g. 15m, 1h30m, 90s or a number of seconds"
            )
        else:
            parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
            seconds = parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    if not seconds > 0:
        raise ValueError(f"a time budget must be positive, got {value!r}")
    return seconds


class NnUNetSettings(BaseModel):
    """The ``nnunet:`` section of a recipe (``engine: nnunet``); see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    configuration: Literal["2d", "3d_fullres", "3d_lowres"] = "2d"
    initial_lr: float | None = Field(None, gt=0.0, le=1.0)
    val_steps_per_epoch: int | None = Field(None, ge=1, le=100_000)
    pretrained_fold: int | None = Field(None, ge=0, le=99)
    keep_work: bool = False
    batch_size: int | None = Field(None, ge=1, le=4096)


#: Recipe fields that the nnU-Net engine uses; setting any other field with ``engine: nnunet``
#: is refused (nnU-Net plans and trains those itself).
NNUNET_FIELDS = frozenset(
    {
        "schema_version",
        "seed",
        "epochs",
        "steps_per_epoch",
        "folds",
        "stratify_by_cohort",
        "selection",
        "ensemble",
        "freeze_encoder_epochs",
        "missing_structures",
        "engine",
        "nnunet",
        "deterministic",
        "time_budget",
    }
)


class Recipe(BaseModel):
    """A training recipe (see the module docstring for the YAML form and defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1
    base: Literal["paper", "fast"] = "paper"
    seed: int = Field(0, ge=0)
    epochs: int = Field(60, ge=1, le=10000)
    steps_per_epoch: int | None = Field(None, ge=1, le=1_000_000)
    time_budget: float | None = None
    patch_mm: float | None = Field(None, gt=0.0, le=2000.0)
    batch_size: int = Field(4, ge=1, le=4096)
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    lr_schedule: Literal["exponential", "poly", "cosine"] = "exponential"
    lr_decay: float = Field(0.9, gt=0.0, le=1.0)
    warmup: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    loss: Literal["ce", "dice_ce"] = "ce"
    folds: int = Field(5, ge=1, le=100)
    stratify_by_cohort: bool = True
    selection: Literal["val_loss", "val_dsc", "last"] = "val_loss"
    ensemble: bool = False
    class_weights: (
        Literal["inverse_sqrt_frequency", "inverse_frequency", "uniform"] | tuple[float, ...]
    ) = "inverse_sqrt_frequency"
    foreground_fraction: float = Field(0.0, ge=0.0, le=1.0)
    empty_slice_fraction: float = Field(1.0, ge=0.0, le=1.0)
    missing_structures: Literal["error", "skip-case", "partial"] = "partial"
    freeze_encoder_epochs: int = Field(0, ge=0)
    train_parts: Literal["all", "decoder"] = "all"
    augmentation: Augmentation = Augmentation()
    model: ArchitectureSpec = ArchitectureSpec()
    preprocessing: Preprocessing = Preprocessing()
    mixed_precision: Literal["auto", "off"] = "auto"
    channels_last: Literal["auto", "off"] = "auto"
    compile: bool = False
    device_data: Literal["auto", "on", "off"] = "auto"
    fused_optimizer: Literal["auto", "off"] = "auto"
    concurrent_folds: Literal["off", "on"] = "off"
    deterministic: Literal["auto", "on", "off"] = "auto"
    engine: Literal["dpnunet", "nnunet"] = "dpnunet"
    nnunet: NnUNetSettings = NnUNetSettings()

    @model_validator(mode="before")
    @classmethod
    def _fill_from_base(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("engine") == "nnunet":
            other = sorted(k for k in data if k not in NNUNET_FIELDS and k != "base")
            if data.get("base", "paper") != "paper":
                other.insert(0, f"base: {data['base']}")
            if other:
                raise ValueError(
                    "engine nnunet plans and trains these itself; remove "
                    + ", ".join(other)
                    + " (nnU-Net settings go under nnunet:)"
                )
            return data
        defaults = BASES.get(str(data.get("base", "paper")))
        if not defaults:
            return data
        merged = {**defaults, **data}
        if isinstance(data.get("augmentation"), dict):
            merged["augmentation"] = {**defaults.get("augmentation", {}), **data["augmentation"]}
        return merged

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    def new_model_preprocessing(self) -> Preprocessing:
        """The preprocessing of a model trained from scratch: the base's, then the fields this
        recipe sets."""
        explicit = {k: getattr(self.preprocessing, k) for k in self.preprocessing.model_fields_set}
        return Preprocessing.model_validate({**BASE_PREPROCESSING[self.base], **explicit})

    def new_model_architecture(self) -> ArchitectureSpec:
        """The ``model:`` section of a model trained from scratch: the base's, then the fields
        this recipe sets."""
        explicit = {k: getattr(self.model, k) for k in self.model.model_fields_set}
        return ArchitectureSpec.model_validate({**BASE_MODEL[self.base], **explicit})

    @field_validator("class_weights")
    @classmethod
    def _positive_weights(cls, value: Any) -> Any:
        if isinstance(value, tuple) and (not value or any(w < 0 for w in value)):
            raise ValueError("explicit class weights must be a non-empty list of numbers >= 0")
        return value

    def to_data(self) -> dict[str, Any]:
        """The canonical JSON form; a DpnUNet recipe leaves out the engine fields, so that its
        hash is the one recipes had before there was a second engine."""
        data = self.model_dump(mode="json")
        if self.engine == "dpnunet" and self.nnunet == NnUNetSettings():
            data.pop("engine")
            data.pop("nnunet")
        # The GPU fast-path switches, when left at auto, are left out too: on a CPU they change
        # nothing, and recipes keep the hash they had before the switches existed.
        for name in ("device_data", "fused_optimizer"):
            if data[name] == "auto":
                data.pop(name)
        if data["concurrent_folds"] == "off":
            data.pop("concurrent_folds")
        return data

    def sha256(self) -> str:
        """Hash of the canonical JSON form."""
        return config_sha256(self.to_data())

    def training_sha256(self) -> str:
        """Hash of the fields that determine the trained weights (not ``ensemble``, which only
        chooses how the fold models are packaged); ``--resume`` compares this."""
        data = self.to_data()
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
    """A recipe from a YAML/JSON file, a mapping, a Recipe, the name of a built-in base
    (``paper``, ``fast``), or the defaults (``None``: the seed study's recipe).

    Raises
    ------
    TrainingConfigError
        Missing file, invalid YAML, unknown keys or invalid values.
    """
    if source is None:
        return Recipe()
    if isinstance(source, Recipe):
        return source
    if isinstance(source, str) and source in BASES and not Path(source).exists():
        return Recipe.model_validate({"base": source})
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
            missing_fix="check the path, or name a built-in recipe (paper, fast)",
            schema_fix="see the recipe schema in the dlas.training.config documentation",
            empty_is_mapping=True,
        )
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, where) from None
