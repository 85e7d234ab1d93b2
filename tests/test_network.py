"""Tests of sgm.core.network: grid handling, presets, zero-initialised output."""

from __future__ import annotations

import pytest
import torch

from sgm.core.network import (
    PRESETS,
    UNet,
    build_unet,
    count_parameters,
    crop_padding,
    group_count,
    pad_to_multiple,
)
from sgm.core.precond import EDMPrecond, edm_coefficients


def _randomise_output(net: UNet) -> None:
    """Give the zero-initialised layers random weights so the output depends on the input."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("hw", [(37, 49), (36, 48), (9, 12), (32, 32), (3, 5)])
def test_output_keeps_any_grid(hw: tuple[int, int]) -> None:
    net = UNet(3, 2, base_channels=8, channel_mult=(1, 2, 2))
    _randomise_output(net)
    x = torch.randn(2, 3, *hw)
    out = net(x, torch.tensor([0.1, -0.5]))
    assert out.shape == (2, 2, *hw)
    assert out.abs().amax() > 0  # non-trivial once the zero-init layers are randomised
    assert torch.isfinite(out).all()


def test_pad_crop_roundtrip_and_modes() -> None:
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    padded, pads = pad_to_multiple(x, 4)
    assert padded.shape[-2:] == (8, 8)
    assert pads == (0, 1, 1, 2)  # (left, right, top, bottom)
    assert torch.equal(crop_padding(padded, pads), x)
    # reflect: the row above the first one mirrors row 1
    assert torch.equal(padded[:, :, 0, :7], x[:, :, 1, :])
    # a grid too small to reflect falls back to replicate
    tiny, pads = pad_to_multiple(torch.ones(1, 1, 2, 2), 8)
    assert tiny.shape[-2:] == (8, 8) and torch.equal(tiny, torch.ones(1, 1, 8, 8))
    assert torch.equal(crop_padding(tiny, pads), torch.ones(1, 1, 2, 2))


def test_group_count_divides() -> None:
    for ch, expected in [(16, 4), (32, 8), (64, 16), (128, 32), (256, 32), (12, 3), (3, 1)]:
        assert group_count(ch) == expected
        assert ch % group_count(ch) == 0


@pytest.mark.parametrize(
    "preset,low,high", [("tiny", 0.15e6, 0.3e6), ("small", 0.7e6, 1.5e6), ("base", 8e6, 15e6)]
)
def test_preset_sizes(preset: str, low: float, high: float) -> None:
    n = count_parameters(build_unet(preset, 3, 1))
    assert low <= n <= high, n


def test_build_unet_overrides_and_unknown() -> None:
    net = build_unet("tiny", 2, 1, base_channels=8)
    assert net.config["base_channels"] == 8
    assert count_parameters(net) < count_parameters(build_unet("tiny", 2, 1))
    assert set(PRESETS) >= {"tiny", "small", "base"}
    with pytest.raises(KeyError):
        build_unet("huge", 2, 1)


def test_fresh_precond_returns_c_skip_x() -> None:
    net = build_unet("tiny", 3, 1)
    assert not net.conv_out.weight.any() and not net.conv_out.bias.any()
    precond = EDMPrecond(net, sigma_data=0.5)
    x = torch.randn(3, 1, 9, 12)
    cond = torch.randn(3, 2, 9, 12)
    sigma = torch.tensor([0.01, 0.5, 20.0])
    c_skip = edm_coefficients(sigma, 0.5)[0]
    assert torch.equal(precond(x, sigma, cond), c_skip[:, None, None, None] * x)


def test_noise_label_changes_output() -> None:
    torch.manual_seed(0)
    net = UNet(1, 1, base_channels=8, channel_mult=(1, 2))
    _randomise_output(net)
    x = torch.randn(1, 1, 8, 8)
    a = net(x, torch.tensor([-1.0]))
    b = net(x, torch.tensor([1.0]))
    assert (a - b).abs().max() > 1e-3
