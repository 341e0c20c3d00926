"""The DpnUNet network: shapes, channel arithmetic, presets, initialisation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from dlas.model import PRESETS, ArchitectureSpec, DpnUNet, DpnUNetConfig, count_parameters
from dlas.model.dpn_unet import DualPathBlock


def _config(**changes: object) -> DpnUNetConfig:
    return DpnUNetConfig.model_validate({**PRESETS["cpu"], "num_classes": 4, **changes})


@pytest.mark.parametrize("preset", ["cpu", "full"])
def test_presets_map_slices_to_logits_of_the_same_size(preset: str) -> None:
    config = DpnUNetConfig.model_validate({**PRESETS[preset], "num_classes": 6})
    net = DpnUNet(config).eval()
    size = 2 * config.size_multiple
    with torch.no_grad():
        out = net(torch.zeros(2, config.in_slices, size, 3 * config.size_multiple))
    assert out.shape == (2, 6, size, 3 * config.size_multiple)


def test_preset_parameter_counts_are_the_documented_ones() -> None:
    # The module docstring of dlas.model.dpn_unet quotes these (6 classes, 3 slices).
    counts = {
        name: count_parameters(DpnUNet(DpnUNetConfig.model_validate({**p, "num_classes": 6})))
        for name, p in PRESETS.items()
    }
    assert counts == {"cpu": 296_214, "full": 3_575_334}
    import dlas.model.dpn_unet as module

    assert "0.30 M parameters (296,214)" in (module.__doc__ or "")
    assert "3.58 M parameters (3,575,334)" in (module.__doc__ or "")


def test_dual_path_block_adds_residual_and_concatenates_dense_features() -> None:
    block = DualPathBlock(10, width=8, growth=4, mid=8, groups=4, project=True, norm_groups=2)
    x = torch.randn(1, 10, 6, 6)
    out = block(x)
    # projection: 8 residual + 2*4 dense; the block adds 4 dense channels
    assert out.shape == (1, 8 + 8 + 4, 6, 6)
    second = DualPathBlock(20, width=8, growth=4, mid=8, groups=4, project=False, norm_groups=2)
    y = second(out)
    assert y.shape == (1, 24, 6, 6)
    # The dense features of the input pass through unchanged (concatenated, not mixed).
    assert torch.equal(y[:, 8:20], out[:, 8:20])


def test_strided_block_halves_the_resolution() -> None:
    block = DualPathBlock(8, width=8, growth=4, mid=8, groups=4, project=True, stride=2)
    assert block(torch.randn(1, 8, 8, 8)).shape == (1, 20, 4, 4)


def test_input_size_not_a_multiple_is_refused() -> None:
    net = DpnUNet(_config())
    with pytest.raises(ValueError, match="not a multiple of 16"):
        net(torch.zeros(1, 3, 24, 16))


def test_even_number_of_input_slices_is_refused() -> None:
    with pytest.raises(ValidationError, match="in_slices must be odd"):
        _config(in_slices=2)


def test_levels_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValidationError, match="one entry per level"):
        _config(blocks=(1, 1))


def test_grouped_width_is_rounded_to_a_multiple_of_groups() -> None:
    config = _config(widths=(12, 32, 48, 64, 96), groups=8)
    assert config.mid_width(12) == 16
    assert config.mid_width(4) == 8
    DpnUNet(config)(torch.zeros(1, 3, 16, 16))


def test_initialisation_is_seeded_and_starts_from_uniform_scores() -> None:
    torch.manual_seed(3)
    a = DpnUNet(_config())
    torch.manual_seed(3)
    b = DpnUNet(_config())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.equal(va, vb)
    with torch.no_grad():
        probs = torch.softmax(a.eval()(torch.randn(1, 3, 16, 16)), dim=1)
    assert torch.allclose(probs, torch.full_like(probs, 0.25), atol=0.1)


def test_reset_head_changes_only_the_head() -> None:
    net = DpnUNet(_config())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.head.parameters():
            p.add_(1.0)
    net.reset_head()
    for key, value in net.state_dict().items():
        if key.startswith("head."):
            continue
        assert torch.equal(value, before[key])
    assert not torch.equal(net.head[-1].weight, before["head.2.weight"] + 1.0)


def test_parameter_groups_cover_every_parameter_once() -> None:
    net = DpnUNet(_config())
    groups = net.parameter_groups()
    ids = [id(p) for part in groups.values() for p in part]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))


def test_auto_preset_follows_the_device() -> None:
    spec = ArchitectureSpec()
    assert spec.resolve(4, "cpu").widths == PRESETS["cpu"]["widths"]
    assert spec.resolve(4, "cuda").widths == PRESETS["full"]["widths"]
    custom = ArchitectureSpec(preset="cpu", widths=(8, 16, 24, 32, 40))
    assert custom.resolve(4, "cuda").widths == (8, 16, 24, 32, 40)


def test_coordinate_channels_tell_left_from_right() -> None:
    from dlas.model.dpn_unet import _coordinates

    coords = _coordinates(torch.zeros(2, 3, 4, 6))
    assert coords.shape == (2, 2, 4, 6)
    assert torch.allclose(coords[0, 1, 0], (torch.arange(6.0) - 2.5) / 32)
    assert torch.allclose(coords[0, 0, :, 0], (torch.arange(4.0) - 1.5) / 32)
    plain = DpnUNet(_config())
    assert plain.stem.in_channels == 3
    assert DpnUNet(_config(coordinates=True)).stem.in_channels == 5
    # With coordinates, a mirrored input is no longer just a mirrored output.
    net = DpnUNet(_config(coordinates=True)).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(net(x.flip(-1)).flip(-1), net(x), atol=1e-6)
