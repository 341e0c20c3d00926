"""Batch augmentation on the training device: left-right mirror, rotation, scaling, intensity.

Random parameters are drawn for the *global* batch from a generator seeded by (seed, fold,
epoch), before the batch is split over distributed processes, so that a run on several processes
sees exactly the augmentations of a run on one, and a resumed run those of an uninterrupted one.
Geometry: images and labels are (B, C, h, w) / (B, h, w) on the model grid; the last axis runs
along patient left (+x in LPS), so a left-right mirror flips that axis.
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

    def part(self, start: int, stop: int) -> AugmentParams:
        """The parameters of samples ``start:stop`` (one process's share)."""
        return AugmentParams(
            self.flip[start:stop],
            self.angle[start:stop],
            self.scale[start:stop],
            self.shift[start:stop],
            self.contrast[start:stop],
        )


def draw_params(
    generator: torch.Generator, batch: int, aug: Augmentation, *, can_flip: bool
) -> AugmentParams:
    """Draw the parameters of a global batch; always the same number of draws, so the random
    stream does not depend on which augmentations are enabled."""
    import torch

    u = torch.rand((5, batch), generator=generator, dtype=torch.float64)
    flip = (u[0] < 0.5) if (aug.flip_lr and can_flip) else torch.zeros(batch, dtype=torch.bool)
    angle = (u[1] * 2 - 1) * math.radians(aug.rotation_deg)
    scale = 1 + (u[2] * 2 - 1) * aug.scale
    shift = (u[3] * 2 - 1) * aug.intensity_shift
    contrast = 1 + (u[4] * 2 - 1) * aug.intensity_scale
    return AugmentParams(flip, angle, scale, shift, contrast)


def apply_augmentation(
    images: torch.Tensor,
    labels: torch.Tensor,
    params: AugmentParams,
    swap: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch (images normalised to [-1, 1], air = -1; labels int64).

    ``swap`` maps each class to its mirror class (left ↔ right structures).
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
        cos, sin = torch.cos(params.angle), torch.sin(params.angle)
        inv = 1.0 / params.scale
        theta = torch.zeros((images.shape[0], 2, 3), dtype=torch.float64)
        theta[:, 0, 0] = cos * inv
        theta[:, 0, 1] = -sin * inv
        theta[:, 1, 0] = sin * inv
        theta[:, 1, 1] = cos * inv
        grid = tnf.affine_grid(
            theta.to(device=dev, dtype=images.dtype), list(images.shape), align_corners=False
        )
        # Shift so that padding (0) is air (-1) after shifting back.
        images = tnf.grid_sample(images + 1.0, grid, mode="bilinear", align_corners=False) - 1.0
        labels = (
            tnf.grid_sample(
                labels[:, None].to(images.dtype), grid, mode="nearest", align_corners=False
            )[:, 0]
            .round()
            .long()
        )
    shift = params.shift.to(device=dev, dtype=images.dtype)[:, None, None, None]
    contrast = params.contrast.to(device=dev, dtype=images.dtype)[:, None, None, None]
    images = images * contrast + shift
    return images, labels
