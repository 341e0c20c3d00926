"""Network output on whole model-grid slices: one pass, or overlapping tiles (sliding window).

A network trained on crops (``Preprocessing.patch``) predicts a slice by tiles of that size,
placed at half-tile steps so that they cover it, and blended with Gaussian importance weights
(centre pixels count more than edge pixels, which saw less context), as nnU-Net does. The
logits are blended, so validation (loss and Dice) and prediction (softmax, ensembles, mirroring)
see the same output. Arrays are (N, C, H, W) on the model grid.

Why our own code: MONAI's ``sliding_window_inference`` does the same but would make MONAI a
dependency of the model stage for twenty lines; the tiling here is tested against a whole-slice
pass of a translation-equivariant network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["gaussian_weights", "slice_logits", "tile_starts"]


def tile_starts(size: int, tile: int, overlap: float = 0.5) -> list[int]:
    """Start indices of tiles of length ``tile`` covering ``size`` with at least ``overlap``."""
    if size < tile:
        raise ValueError(f"image size {size} is smaller than the tile {tile}")
    if size == tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    count = math.ceil((size - tile) / stride) + 1
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def gaussian_weights(
    tile: tuple[int, int], *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Importance map (H, W): a Gaussian with sigma 1/8 of the tile, peak 1, floor 1e-3."""
    import torch

    axes = []
    for n in tile:
        x = torch.arange(n, device=device, dtype=torch.float64) - (n - 1) / 2.0
        axes.append(torch.exp(-0.5 * (x / (n / 8.0)) ** 2))
    weights = axes[0][:, None] * axes[1][None, :]
    return (weights / weights.max()).clamp_min(1e-3).to(dtype)


def slice_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    patch: tuple[int, int] | None,
    *,
    overlap: float = 0.5,
) -> torch.Tensor:
    """Logits (N, C, H, W) of ``images`` (N, in_slices, H, W): ``forward(images)`` when ``patch``
    is ``None`` or the whole slice, else Gaussian-blended tiles of size ``patch``."""
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if patch is None or (h, w) == tuple(patch):
        return forward(images)
    ph, pw = int(patch[0]), int(patch[1])
    rows, cols = tile_starts(h, ph, overlap), tile_starts(w, pw, overlap)
    total: torch.Tensor | None = None
    norm: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    for r in rows:
        for c in cols:
            out = forward(images[..., r : r + ph, c : c + pw])
            if total is None:
                weights = gaussian_weights((ph, pw), device=out.device, dtype=out.dtype)
                total = out.new_zeros((out.shape[0], out.shape[1], h, w))
                norm = out.new_zeros((h, w))
            assert weights is not None and norm is not None
            total[..., r : r + ph, c : c + pw] += out * weights
            norm[r : r + ph, c : c + pw] += weights
    assert total is not None and norm is not None
    return total / norm
