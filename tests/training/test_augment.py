"""Augmentation: mirroring swaps sided labels; rotation keeps images and labels aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlas.model import lr_swap_table
from dlas.structures import StructureSet
from dlas.training import Augmentation
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
        "FemoralHead_L": "FemoralHead_R",
        "FemoralHead_R": "FemoralHead_L",
        "SmallBowel": "SmallBowel",
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
    from dlas.training.loop import _epoch_order

    labels = np.zeros((40, 8, 8), dtype=np.uint8)
    labels[10:20, 3, 3] = 1
    case = PreparedCase("c", np.zeros((40, 8, 8), dtype=np.float32), labels)
    slices = SliceSet([case], 3)
    order = _epoch_order(slices, fraction, torch.Generator().manual_seed(0))
    chosen = {slices.items[i][1] for i in order}
    assert set(range(10, 20)) <= chosen
    empty = len(chosen - set(range(10, 20)))
    assert {0.0: empty == 0, 0.5: 5 < empty < 25, 1.0: empty == 30}[fraction]
