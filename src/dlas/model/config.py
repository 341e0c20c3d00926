"""Typed configuration of a DpnUNet and of the preprocessing stored with it (no torch needed).

Both are pydantic models with a schema version; their canonical JSON form is written into every
model file, and its hash identifies the configuration. Nothing here imports torch, so reading a
model's metadata (``dlas info``, reports) stays fast.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from dlas.config_files import canonical_sha256

__all__ = [
    "PRESETS",
    "ArchitectureSpec",
    "DpnUNetConfig",
    "Preprocessing",
    "config_sha256",
]


#: SHA-256 of the canonical JSON form of a configuration (pydantic model or JSON-ready data).
config_sha256 = canonical_sha256


class DpnUNetConfig(BaseModel):
    """Architecture of a DpnUNet (see :mod:`dlas.model.dpn_unet` for the drawing).

    Attributes
    ----------
    in_slices
        Adjacent axial slices given to the network as channels (odd; 1 = plain 2-D, 3 = the
        slice and one neighbour on each side).
    num_classes
        Output classes: background plus one per structure of the structure set.
    widths
        Residual-path width (channels) of each resolution level, finest first; the number of
        levels is ``len(widths)`` and the input size must be a multiple of ``2**(levels - 1)``.
    blocks
        Dual-path blocks per encoder level.
    growth
        Dense-path growth (channels added by each block) per level.
    decoder_blocks
        Dual-path blocks per decoder level.
    groups
        Cardinality of the grouped 3x3 convolution (ResNeXt path).
    bottleneck
        Width of the grouped convolution relative to the residual width.
    norm_groups
        Groups of the group normalisation (reduced to a divisor of each layer's channels).
    coordinates
        Append two channels with each pixel's row and column position relative to the centre of
        the input (in units of 32 pixels; the model grid is centred on the body) — CoordConv,
        Liu et al. 2018. Without them a convolutional network tells the left femoral head from
        the right one only through zero-padding effects at the image border, which it learns
        slowly: on the tiny synthetic test cases a short run separated left from right for 2 of
        3 seeds without coordinates and 3 of 3 with them. Off by default: on real head-and-neck
        CT (OpenKBP) three short runs with coordinates failed to learn the mandible and spinal
        cord at all, for reasons not yet understood, while the same runs without them did.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1
    in_slices: int = Field(3, ge=1, le=15)
    num_classes: int = Field(ge=2, le=255)
    widths: tuple[int, ...] = Field(min_length=2, max_length=7)
    blocks: tuple[int, ...]
    growth: tuple[int, ...]
    decoder_blocks: int = Field(1, ge=1, le=8)
    groups: int = Field(8, ge=1)
    bottleneck: float = Field(1.0, gt=0, le=4)
    norm_groups: int = Field(8, ge=1)
    coordinates: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> DpnUNetConfig:
        if self.in_slices % 2 != 1:
            raise ValueError(
                f"in_slices must be odd (the slice plus neighbours), got {self.in_slices}"
            )
        levels = len(self.widths)
        if len(self.blocks) != levels or len(self.growth) != levels:
            raise ValueError(
                f"widths, blocks and growth need one entry per level: {levels}, "
                f"{len(self.blocks)} and {len(self.growth)} given"
            )
        if any(w < 1 for w in self.widths) or any(b < 1 for b in self.blocks):
            raise ValueError("widths and blocks must be positive")
        if any(g < 1 for g in self.growth):
            raise ValueError("growth must be positive")
        return self

    @property
    def levels(self) -> int:
        """Number of resolution levels."""
        return len(self.widths)

    @property
    def size_multiple(self) -> int:
        """In-plane sizes must be multiples of this (one halving per level below the first)."""
        return int(2 ** (self.levels - 1))

    def mid_width(self, width: int) -> int:
        """Width of the grouped convolution of a block whose residual width is ``width``
        (``width * bottleneck`` rounded to a multiple of ``groups``, at least ``groups``)."""
        return max(self.groups, round(width * self.bottleneck / self.groups) * self.groups)


#: Architecture presets (everything but ``num_classes``). ``cpu`` trains and predicts on a
#: laptop; ``full`` is the GPU model. Parameter counts and speeds: see :mod:`dlas.model.dpn_unet`.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "in_slices": 3,
        "widths": (16, 32, 48, 64, 96),
        "blocks": (1, 1, 1, 2, 2),
        "growth": (8, 8, 8, 16, 16),
        "decoder_blocks": 1,
        "groups": 8,
        "bottleneck": 1.0,
        "norm_groups": 8,
    },
    "full": {
        "in_slices": 3,
        "widths": (32, 64, 128, 256, 384),
        "blocks": (1, 2, 2, 3, 2),
        "growth": (16, 16, 32, 32, 64),
        "decoder_blocks": 1,
        "groups": 16,
        "bottleneck": 1.0,
        "norm_groups": 16,
    },
}


class ArchitectureSpec(BaseModel):
    """The ``model:`` section of a training recipe: a preset plus optional overrides.

    ``preset: auto`` picks ``cpu`` when training on a CPU and ``full`` on a GPU. The resolved
    :class:`DpnUNetConfig` (with the number of classes of the data set) is what a model records.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    preset: Literal["auto", "cpu", "full"] = "auto"
    in_slices: int | None = None
    widths: tuple[int, ...] | None = None
    blocks: tuple[int, ...] | None = None
    growth: tuple[int, ...] | None = None
    decoder_blocks: int | None = None
    groups: int | None = None
    bottleneck: float | None = None
    norm_groups: int | None = None
    coordinates: bool | None = None

    def overrides(self) -> dict[str, Any]:
        """The fields given explicitly (everything except the preset)."""
        return {k: v for k, v in self.model_dump().items() if k != "preset" and v is not None}

    def resolve(self, num_classes: int, device_type: str) -> DpnUNetConfig:
        """The architecture for ``num_classes`` classes on a device of type ``cpu``/``cuda``."""
        preset = self.preset
        if preset == "auto":
            preset = "full" if device_type == "cuda" else "cpu"
        data = {**PRESETS[preset], **self.overrides(), "num_classes": num_classes}
        return DpnUNetConfig.model_validate(data)


class Preprocessing(BaseModel):
    """How a CT becomes network input; stored with the model and applied again at prediction.

    Attributes
    ----------
    intensity
        How clipped HU become network input. ``window``: ``[hu_min, hu_max]`` maps linearly to
        [-1, 1] (the seed study's fixed window). ``percentile``: nnU-Net's CT normalisation
        (Isensee et al., Nature Methods 2021) — ``hu_min``/``hu_max`` are the 0.5th and 99.5th
        percentiles and ``mean_hu``/``std_hu`` the mean and standard deviation of the HU inside
        the training cases' structures, fitted once when a model is trained from scratch (a
        fine-tuned model keeps its pretrained model's values); input is ``(HU - mean) / std``.
    hu_min, hu_max
        HU clipping range. Voxels outside the CT (padding) count as ``hu_min`` ("air").
    mean_hu, std_hu
        Centre and scale of the ``percentile`` normalisation (fitted; ``None`` for ``window``).
    spacing_mm
        In-plane pixel size of the model grid in mm (rows and columns alike). ``None`` in a
        recipe means: the median in-plane spacing of the training cases (resolved at training).
    crop_to_body
        Crop each CT in-plane to the bounding box of the body before resampling.
    body_threshold_hu
        Voxels above this belong to the body (largest connected component).
    body_margin_mm
        Margin around the body's bounding box.
    canvas
        Smallest model-grid size (rows, columns) in pixels: every CT's grid is at least this
        large (centred on the body, extra pixels are air). Resolved at training as the largest
        grid the training cases need, so that a prediction sees the field of view the network
        was trained on (group normalisation takes its statistics over the whole slice).
    patch
        Tile size (rows, columns) in model pixels, or ``None`` for whole slices. With a patch
        the network trains on crops of this size (centred on a structure for the oversampled
        share of samples) and predicts by overlapping tiles of the same size, blended with
        Gaussian weights (:mod:`dlas.model.inference`), so that it always sees the field of view
        it was trained on. Multiples of the network's size multiple.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1
    intensity: Literal["window", "percentile"] = "window"
    hu_min: float = -1000.0
    hu_max: float = 1000.0
    mean_hu: float | None = None
    std_hu: float | None = Field(None, gt=0)
    spacing_mm: float | None = Field(None, gt=0.05, le=20.0)
    crop_to_body: bool = True
    body_threshold_hu: float = -500.0
    body_margin_mm: float = Field(10.0, ge=0.0)
    canvas: tuple[int, int] | None = None
    patch: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _window(self) -> Preprocessing:
        if not self.hu_max > self.hu_min:
            raise ValueError(f"hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")
        if self.intensity == "window" and (self.mean_hu is not None or self.std_hu is not None):
            raise ValueError("mean_hu and std_hu belong to intensity: percentile, not window")
        if self.patch is not None and min(self.patch) < 8:
            raise ValueError(f"a patch must be at least 8 x 8 pixels, got {list(self.patch)}")
        return self

    @model_serializer(mode="wrap")
    def _serialise(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        # Fields added after the first release are left out while they hold their defaults, so
        # that the recorded form (and the model hash) of earlier models stays what it was.
        data: dict[str, Any] = handler(self)
        for key, default in _LATER_FIELDS.items():
            if key in data and data[key] == default:
                del data[key]
        return data

    @property
    def fitted(self) -> bool:
        """Whether the intensity normalisation is complete (``percentile`` needs its fit)."""
        return self.intensity == "window" or (self.mean_hu is not None and self.std_hu is not None)

    def intensity_affine(self) -> tuple[float, float]:
        """``(scale, air)``: network input = ``(clip(HU) - hu_min) * scale + air``, so that
        ``air`` is the input value of ``hu_min`` and of everything outside the CT."""
        if self.intensity == "window":
            return 2.0 / (self.hu_max - self.hu_min), -1.0
        if self.mean_hu is None or self.std_hu is None:
            raise ValueError("percentile normalisation has not been fitted (mean_hu, std_hu)")
        return 1.0 / self.std_hu, (self.hu_min - self.mean_hu) / self.std_hu

    @property
    def air_value(self) -> float:
        """Network input of air (``hu_min``) and of padding."""
        return self.intensity_affine()[1]


#: Preprocessing fields added after the first release, with the defaults that leave them out of
#: the recorded form.
_LATER_FIELDS: dict[str, Any] = {
    "intensity": "window",
    "mean_hu": None,
    "std_hu": None,
    "patch": None,
}
