"""Augmentation: mirroring swaps sided labels; rotation keeps images and labels aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlas.model import lr_swap_table
from dlas.structures import StructureSet
from dlas.training import Augmentation, Recipe
from dlas.training.augment import AugmentParams, apply_augmentation, draw_params


def _params(n: int, **values: float | bool) -> AugmentParams:
    def full(name: str, default: float) -> torch.Tensor:
        value = values.get(name, default)
        dtype = torch.bool if isinstance(value, bool) else torch.float64
        return torch.full((n,), value, dtype=dtype)

    return AugmentParams(
        full("flip", False),
        full("angle", 0.0),
        full("scale", 1.0),
        full("shift", 0.0),
        full("contrast", 1.0),
    )


def test_swap_table_pairs_left_and_right_structures() -> None:
    ss = StructureSet.builtin("rectal")
    table = lr_swap_table(ss)
    assert table is not None
    names = ["background", *ss.names]
    assert {names[i]: names[int(table[i])] for i in range(len(names))} == {
        "background": "background",
        "CTV": "CTV",
        "Bladder": "Bladder",
        "Femur_Head_L": "Femur_Head_R",
        "Femur_Head_R": "Femur_Head_L",
        "Bowel_Small": "Bowel_Small",
    }
    lonely = StructureSet.from_data(
        {"schema_version": 1, "name": "x", "structures": [{"name": "Parotid_L"}]}
    )
    assert lr_swap_table(lonely) is None


def test_mirror_flips_images_and_swaps_sided_labels() -> None:
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
    labels = torch.tensor([[[1, 0, 2], [0, 0, 0]], [[1, 0, 2], [0, 0, 0]]])
    swap = torch.tensor([0, 2, 1])
    params = _params(2)
    params = AugmentParams(
        torch.tensor([True, False]),
        *(getattr(params, k) for k in ("angle", "scale", "shift", "contrast")),
    )
    out_images, out_labels = apply_augmentation(images, labels, params, swap)
    assert torch.equal(out_images[0], images[0].flip(-1))
    assert torch.equal(out_images[1], images[1])
    assert out_labels[0, 0].tolist() == [1, 0, 2]  # mirrored [2, 0, 1], then L <-> R swapped
    assert torch.equal(out_labels[1], labels[1])


def test_rotation_moves_images_and_labels_together() -> None:
    yy, xx = np.mgrid[:32, :32]
    square = (abs(yy - 10) < 4) & (abs(xx - 20) < 4)
    images = torch.from_numpy(np.where(square, 1.0, -1.0).astype(np.float32))[None, None]
    labels = torch.from_numpy(square.astype(np.int64))[None]
    out_images, out_labels = apply_augmentation(
        images, labels, _params(1, angle=0.3, scale=1.1), None
    )
    assert not torch.equal(out_labels, labels)
    inside = out_images[0, 0][out_labels[0] == 1]
    assert float(inside.mean()) > 0.8
    assert float(out_images[0, 0][out_labels[0] == 0].mean()) < -0.8


def test_intensity_jitter_changes_contrast_and_offset() -> None:
    images = torch.ones(1, 1, 4, 4)
    out, _ = apply_augmentation(
        images, torch.zeros(1, 4, 4, dtype=torch.long), _params(1, shift=0.1, contrast=1.5), None
    )
    assert torch.allclose(out, torch.full_like(out, 1.6))


def test_parameters_are_reproducible_and_respect_the_recipe() -> None:
    aug = Augmentation(rotation_deg=5, scale=0.05, intensity_shift=0.0, intensity_scale=0.0)
    a = draw_params(torch.Generator().manual_seed(1), 64, aug, can_flip=True)
    b = draw_params(torch.Generator().manual_seed(1), 64, aug, can_flip=True)
    assert torch.equal(a.angle, b.angle) and torch.equal(a.flip, b.flip)
    assert float(a.angle.abs().max()) <= np.radians(5)
    assert float((a.scale - 1).abs().max()) <= 0.05
    assert torch.equal(a.shift, torch.zeros(64, dtype=torch.float64))
    assert 10 < int(a.flip.sum()) < 54
    none = draw_params(torch.Generator().manual_seed(1), 64, aug, can_flip=False)
    assert not bool(none.flip.any())
    assert torch.equal(none.angle, a.angle)  # the same random stream either way


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_empty_slice_fraction_keeps_every_slice_with_structures(fraction: float) -> None:
    from dlas.training.data import PreparedCase, SliceSet
    from dlas.training.loop import epoch_order

    labels = np.zeros((40, 8, 8), dtype=np.uint8)
    labels[10:20, 3, 3] = 1
    case = PreparedCase("c", np.zeros((40, 8, 8), dtype=np.float32), labels, np.ones(2, bool))
    slices = SliceSet([case], 3)
    recipe = Recipe(empty_slice_fraction=fraction, batch_size=2)
    order = epoch_order(slices, recipe, torch.Generator().manual_seed(0), None)
    chosen = {slices.items[i][1] for i, _ in order}
    assert set(range(10, 20)) <= chosen
    empty = len(chosen - set(range(10, 20)))
    assert {0.0: empty == 0, 0.5: 5 < empty < 25, 1.0: empty == 30}[fraction]
    assert len(order) == len(set(order))  # one pass: every slice at most once


def _moments_axis_ratio(mask: np.ndarray) -> float:
    """Ratio of the principal axes of a 2-D mask (1 for a disc)."""
    yy, xx = np.nonzero(mask)
    cov = np.cov(np.stack([yy, xx]).astype(np.float64))
    low, high = np.linalg.eigvalsh(cov)
    return float(np.sqrt(high / low))


@pytest.mark.parametrize("angle_deg", [10.0, 30.0, 45.0])
@pytest.mark.parametrize("shape", [(64, 128), (128, 64)])
def test_rotation_keeps_a_disc_round_on_a_non_square_canvas(
    angle_deg: float, shape: tuple[int, int]
) -> None:
    # Rotating in normalised affine_grid coordinates sheared such slices (a disc became an
    # ellipse of axis ratio about 1.3 on 64 x 128 at 10 degrees); rotation is in pixel space.
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2 < 20.0**2
    images = torch.from_numpy(np.where(disc, 1.0, -1.0).astype(np.float32))[None, None]
    labels = torch.from_numpy(disc.astype(np.int64))[None]
    _, out = apply_augmentation(
        images, labels, _params(1, angle=float(np.radians(angle_deg)), scale=1.2), None
    )
    rotated = out[0].numpy() == 1
    assert _moments_axis_ratio(rotated) < 1.02
    # Scaling by 1.2 enlarges the area by 1.44.
    assert rotated.sum() == pytest.approx(1.44 * disc.sum(), rel=0.03)


def test_rotation_turns_a_bar_by_the_drawn_angle_on_a_non_square_canvas() -> None:
    h, w = 48, 144
    yy, xx = np.mgrid[:h, :w]
    bar = (abs(yy - h / 2 + 0.5) < 2) & (abs(xx - w / 2 + 0.5) < 20)
    images = torch.from_numpy(np.where(bar, 1.0, -1.0).astype(np.float32))[None, None]
    labels = torch.from_numpy(bar.astype(np.int64))[None]
    _, out = apply_augmentation(images, labels, _params(1, angle=float(np.radians(30))), None)
    ys, xs = np.nonzero(out[0].numpy() == 1)
    slope = np.polyfit(xs - xs.mean(), ys - ys.mean(), 1)[0]
    assert np.degrees(np.arctan(abs(slope))) == pytest.approx(30.0, abs=2.0)


def test_rotation_pads_with_the_air_value_of_the_normalisation() -> None:
    images = torch.full((1, 1, 16, 32), 0.5)
    labels = torch.zeros((1, 16, 32), dtype=torch.int64)
    out, _ = apply_augmentation(images, labels, _params(1, angle=0.6), None, air=-3.2)
    corners = out[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.allclose(corners, torch.full((4,), -3.2))


def test_gamma_bends_intensities_and_keeps_their_range() -> None:
    images = torch.linspace(-2, 3, 64).reshape(1, 1, 8, 8)
    labels = torch.zeros((1, 8, 8), dtype=torch.int64)
    params = AugmentParams(*(getattr(_params(1), k) for k in _FIELDS), torch.tensor([2.0]))
    out, _ = apply_augmentation(images, labels, params, None)
    assert float(out.min()) == pytest.approx(-2.0) and float(out.max()) == pytest.approx(3.0)
    # Exponent 2 pushes the middle of the range down: 0.5 -> 0.25 of the span.
    middle = images.flatten()[32]
    unit = float((middle + 2) / 5)
    assert float(out.flatten()[32]) == pytest.approx(-2 + 5 * unit**2, abs=1e-5)
    assert draw_params(torch.Generator(), 4, Augmentation(gamma=0.0), can_flip=True).gamma is None
    drawn = draw_params(
        torch.Generator().manual_seed(0), 256, Augmentation(gamma=0.5), can_flip=True
    )
    assert drawn.gamma is not None
    assert float(drawn.gamma.min()) >= 1 / 1.5 - 1e-9 and float(drawn.gamma.max()) <= 1.5 + 1e-9


_FIELDS = ("flip", "angle", "scale", "shift", "contrast")
