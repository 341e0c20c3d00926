"""Batch augmentation on the training device: left-right mirror, rotation, scaling, gamma,
intensity.

Random parameters are drawn for the *global* batch from a generator seeded by (seed, fold,
epoch), before the batch is split over distributed processes, so that a run on several processes
sees exactly the augmentations of a run on one, and a resumed run those of an uninterrupted one.
Geometry: images and labels are (B, C, h, w) / (B, h, w) on the model grid, whose pixels are
square (``Preprocessing.spacing_mm`` along rows and columns); the last axis runs along patient
left (+x in LPS), so a left-right mirror flips that axis. Rotation and scaling act in pixel (=
millimetre) space about the slice centre, so a disc stays a disc on any canvas shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dlas.training.config import Augmentation

if TYPE_CHECKING:
    import torch

__all__ = ["AugmentParams", "apply_augmentation", "draw_params"]


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters of one global batch (tensors of length B, on the CPU)."""

    flip: torch.Tensor
    angle: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    contrast: torch.Tensor
    gamma: torch.Tensor | None = None

    def part(self, start: int, stop: int) -> AugmentParams:
        """The parameters of samples ``start:stop`` (one process's share)."""
        return AugmentParams(
            self.flip[start:stop],
            self.angle[start:stop],
            self.scale[start:stop],
            self.shift[start:stop],
            self.contrast[start:stop],
            None if self.gamma is None else self.gamma[start:stop],
        )


def draw_params(
    generator: torch.Generator, batch: int, aug: Augmentation, *, can_flip: bool
) -> AugmentParams:
    """Draw the parameters of a global batch; always the same number of draws, so the random
    stream does not depend on which augmentations are enabled."""
    import torch

    u = torch.rand((6, batch), generator=generator, dtype=torch.float64)
    flip = (u[0] < 0.5) if (aug.flip_lr and can_flip) else torch.zeros(batch, dtype=torch.bool)
    angle = (u[1] * 2 - 1) * math.radians(aug.rotation_deg)
    scale = 1 + (u[2] * 2 - 1) * aug.scale
    shift = (u[3] * 2 - 1) * aug.intensity_shift
    contrast = 1 + (u[4] * 2 - 1) * aug.intensity_scale
    gamma = torch.exp((u[5] * 2 - 1) * math.log1p(aug.gamma)) if aug.gamma else None
    return AugmentParams(flip, angle, scale, shift, contrast, gamma)


def apply_augmentation(
    images: torch.Tensor,
    labels: torch.Tensor,
    params: AugmentParams,
    swap: torch.Tensor | None,
    *,
    air: float = -1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch (images normalised, ``air`` the input value of air; labels int64).

    ``swap`` maps each class to its mirror class (left ↔ right structures). Pixels that a
    rotation or scaling brings in from outside the slice are air and background.
    """
    import torch
    import torch.nn.functional as tnf

    dev = images.device
    flip = params.flip.to(dev)
    if bool(flip.any()):
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        mirrored = labels.flip(-1)
        if swap is not None:
            mirrored = swap.to(dev)[mirrored]
        labels = torch.where(flip[:, None, None], mirrored, labels)
    if bool((params.angle != 0).any() or (params.scale != 1).any()):
        grid = _rotation_grid(params.angle, params.scale, images.shape).to(
            device=dev, dtype=images.dtype
        )
        # Shift so that padding (0) is air after shifting back.
        images = tnf.grid_sample(images - air, grid, mode="bilinear", align_corners=False) + air
        labels = (
            tnf.grid_sample(
                labels[:, None].to(images.dtype), grid, mode="nearest", align_corners=False
            )[:, 0]
            .round()
            .long()
        )
    if params.gamma is not None and bool((params.gamma != 1).any()):
        images = _gamma(images, params.gamma.to(device=dev, dtype=images.dtype))
    shift = params.shift.to(device=dev, dtype=images.dtype)[:, None, None, None]
    contrast = params.contrast.to(device=dev, dtype=images.dtype)[:, None, None, None]
    images = images * contrast + shift
    return images, labels


def _rotation_grid(
    angle: torch.Tensor, scale: torch.Tensor, shape: torch.Size | tuple[int, ...]
) -> torch.Tensor:
    """Sampling grid of a rotation by ``angle`` and a scaling by ``scale`` about the centre, in
    pixel space.

    ``affine_grid`` works in normalised coordinates, in which a pixel is ``2 / w`` wide and
    ``2 / h`` high: a rotation written there directly shears a non-square slice. The
    off-diagonal terms are therefore scaled by the aspect ratio of the canvas.
    """
    import torch
    import torch.nn.functional as tnf

    h, w = int(shape[-2]), int(shape[-1])
    cos, sin = torch.cos(angle), torch.sin(angle)
    inv = 1.0 / scale
    theta = torch.zeros((angle.shape[0], 2, 3), dtype=torch.float64)
    theta[:, 0, 0] = cos * inv
    theta[:, 0, 1] = -sin * inv * (h / w)
    theta[:, 1, 0] = sin * inv * (w / h)
    theta[:, 1, 1] = cos * inv
    return tnf.affine_grid(theta, list(shape), align_corners=False)


def _gamma(images: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Gamma correction per sample over the sample's own intensity range."""
    flat = images.flatten(1)
    low = flat.min(dim=1).values[:, None, None, None]
    span = (flat.max(dim=1).values[:, None, None, None] - low).clamp_min(1e-6)
    unit = ((images - low) / span).clamp(0.0, 1.0)
    return unit ** gamma[:, None, None, None] * span + low
