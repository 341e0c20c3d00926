"""Sliding-window inference: tiles cover the slice, and blending them reproduces a whole-slice
pass of a network whose output at a pixel depends only on that pixel."""

from __future__ import annotations

import itertools

import pytest
import torch

from dlas.model.inference import gaussian_weights, slice_logits, tile_starts


@pytest.mark.parametrize(("size", "tile"), [(64, 64), (96, 64), (160, 64), (100, 48), (17, 8)])
def test_tiles_cover_the_slice_with_half_overlap(size: int, tile: int) -> None:
    starts = tile_starts(size, tile)
    assert starts[0] == 0 and starts[-1] == size - tile
    assert all(b - a <= tile // 2 for a, b in itertools.pairwise(starts))
    covered = set()
    for s in starts:
        covered |= set(range(s, s + tile))
    assert covered == set(range(size))


def test_tile_larger_than_the_slice_is_refused() -> None:
    with pytest.raises(ValueError, match="smaller than the tile"):
        tile_starts(32, 64)


def test_blended_tiles_equal_the_whole_slice_for_a_pointwise_network() -> None:
    conv = torch.nn.Conv2d(3, 4, 1)
    images = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        whole = conv(images)
        tiled = slice_logits(conv, images, (64, 64))
    assert torch.allclose(whole, tiled, atol=1e-5)


def test_tiles_see_only_their_own_field_of_view() -> None:
    seen: list[tuple[int, ...]] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x[:, :1] * 0 + x.shape[-1]

    out = slice_logits(forward, torch.zeros(1, 3, 64, 128), (64, 64))
    assert set(seen) == {(1, 3, 64, 64)} and len(seen) == 3
    assert torch.allclose(out, torch.full_like(out, 64.0))
    assert slice_logits(forward, torch.zeros(1, 3, 64, 64), None).shape == (1, 1, 64, 64)


def test_gaussian_weights_peak_in_the_centre() -> None:
    w = gaussian_weights((32, 48), device=torch.device("cpu"), dtype=torch.float32)
    assert w.shape == (32, 48)
    assert float(w.max()) == pytest.approx(1.0, abs=0.02)
    assert float(w.min()) >= 1e-3
    assert float(w[16, 24]) > float(w[0, 0])
