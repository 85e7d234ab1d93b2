"""Tests of sgm.core.precond (EDM Table 1) and sgm.core.loss (EDM Eq. 8)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from sgm.core.loss import EDMLoss
from sgm.core.precond import EDMPrecond, edm_coefficients


class ZeroNet(nn.Module):
    """F = 0, recording its last inputs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.seen: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        self.seen = (x.clone(), c_noise.clone())
        return torch.zeros(x.shape[0], self.out_channels, *x.shape[2:])


class ExactGaussianNet(nn.Module):
    """F such that c_skip x + c_out F = E[x0 | x] = x s^2 / (s^2 + sigma^2) for x0 ~ N(0, s^2).

    It recovers sigma = exp(4 c_noise) and x = input / c_in from its inputs, so it only
    works behind EDMPrecond, as a trained network would.
    """

    def __init__(self, s: float, sigma_data: float) -> None:
        super().__init__()
        self.s, self.sigma_data = s, sigma_data
        self.in_channels = self.out_channels = 1

    def forward(self, net_in: Tensor, c_noise: Tensor) -> Tensor:
        sigma = (4 * c_noise).exp()[:, None, None, None]
        c_skip, c_out, c_in, _ = edm_coefficients(sigma, self.sigma_data)
        x = net_in / c_in
        exact = x * self.s**2 / (self.s**2 + sigma**2)
        return (exact - c_skip * x) / c_out


@pytest.mark.parametrize("sigma", [0.002, 0.3, 1.0, 80.0])
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_coefficients_match_table_1(sigma: float, sigma_data: float) -> None:
    c_skip, c_out, c_in, c_noise = edm_coefficients(
        torch.tensor([sigma], dtype=torch.float64), sigma_data
    )
    denom = sigma**2 + sigma_data**2
    assert c_skip.item() == pytest.approx(sigma_data**2 / denom, rel=1e-12)
    assert c_out.item() == pytest.approx(sigma * sigma_data / math.sqrt(denom), rel=1e-12)
    assert c_in.item() == pytest.approx(1 / math.sqrt(denom), rel=1e-12)
    assert c_noise.item() == pytest.approx(math.log(sigma) / 4, rel=1e-12)


def test_zero_net_gives_c_skip_x_and_sees_scaled_input_with_raw_cond() -> None:
    net = ZeroNet(in_channels=3, out_channels=1)
    precond = EDMPrecond(net, sigma_data=0.5)
    assert (precond.channels, precond.cond_channels) == (1, 2)
    x = torch.randn(4, 1, 5, 7)
    cond = torch.randn(4, 2, 5, 7)
    sigma = torch.tensor([0.01, 0.2, 1.0, 50.0])
    out = precond(x, sigma, cond)
    c_skip = 0.25 / (sigma**2 + 0.25)
    assert torch.equal(out, c_skip[:, None, None, None] * x)

    seen_in, seen_noise = net.seen
    c_in = 1 / (sigma**2 + 0.25).sqrt()
    torch.testing.assert_close(seen_in[:, :1], c_in[:, None, None, None] * x)
    assert torch.equal(seen_in[:, 1:], cond)  # conditioning is NOT scaled by c_in
    torch.testing.assert_close(seen_noise, sigma.log() / 4)


def test_scalar_sigma_broadcasts_and_bad_cond_raises() -> None:
    precond = EDMPrecond(ZeroNet(2, 1))
    x, cond = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    assert torch.equal(precond(x, 2.0, cond), precond(x, torch.full((3,), 2.0), cond))
    with pytest.raises(ValueError):
        precond(x, 2.0, None)
    with pytest.raises(ValueError):
        precond(x, 2.0, torch.randn(3, 2, 4, 4))


def test_weight_formula() -> None:
    loss = EDMLoss(sigma_data=0.5)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    expected = torch.tensor([(0.01 + 0.25) / (0.05**2), 1.25 / 0.25, 100.25 / 25.0])
    torch.testing.assert_close(loss.weight(sigma), expected)


def test_sigma_distribution_is_lognormal() -> None:
    loss = EDMLoss(P_mean=-1.2, P_std=1.2)
    sigma, noise = loss.draw(torch.zeros(20000, 1, 1, 1), torch.Generator().manual_seed(0))
    # standard errors: 1.2 / sqrt(20000) = 0.0085 for the mean, ~0.006 for the std
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.04)
    assert sigma.log().std().item() == pytest.approx(1.2, abs=0.03)
    assert noise.std().item() == pytest.approx(1.0, abs=0.03)


def test_exact_denoiser_has_the_analytic_loss_and_beats_wrong_ones() -> None:
    """x0 ~ N(0, s^2) i.i.d. with s = 2, sigma_d = 1. The posterior-mean denoiser has
    per-pixel MSE s^2 sigma^2 / (s^2 + sigma^2), so its loss is lambda(sigma) times that."""
    s, sigma_data = 2.0, 1.0
    g = torch.Generator().manual_seed(1)
    x0 = s * torch.randn(64, 1, 48, 48, generator=g)
    loss_fn = EDMLoss(sigma_data=sigma_data)

    exact = EDMPrecond(ExactGaussianNet(s, sigma_data), sigma_data)
    zero = EDMPrecond(ZeroNet(1, 1), sigma_data)  # D = c_skip x: optimal only if s = sigma_d
    wrong_s = EDMPrecond(ExactGaussianNet(1.5, sigma_data), sigma_data)

    seed = 7
    sigma, _ = loss_fn.draw(x0, torch.Generator().manual_seed(seed))
    losses = {
        name: loss_fn(p, x0, None, torch.Generator().manual_seed(seed))
        for name, p in (("exact", exact), ("zero", zero), ("wrong_s", wrong_s))
    }
    expected = loss_fn.weight(sigma) * s**2 * sigma**2 / (s**2 + sigma**2)
    # 2304 pixels per sample: relative std of the per-sample MSE is sqrt(2 / 2304) = 3 %
    ratio = losses["exact"] / expected
    assert (ratio - 1).abs().max() < 0.15
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.02)
    # D = c_skip (x0 + sigma n): per-pixel MSE (c_skip - 1)^2 s^2 + c_skip^2 sigma^2
    c_skip = edm_coefficients(sigma, sigma_data)[0]
    expected_zero = loss_fn.weight(sigma) * ((c_skip - 1) ** 2 * s**2 + c_skip**2 * sigma**2)
    assert (losses["zero"] / expected_zero).mean().item() == pytest.approx(1.0, abs=0.02)
    assert losses["exact"].mean() < 0.9 * losses["zero"].mean()
    assert losses["exact"].mean() < losses["wrong_s"].mean()
    # the exact denoiser is the per-sample minimiser, not just on average
    assert (losses["exact"] <= losses["zero"] * 1.01).all()


def test_loss_is_reproducible_with_generator() -> None:
    torch.manual_seed(0)
    x0 = torch.randn(6, 1, 8, 8)
    cond = torch.randn(6, 1, 8, 8)
    net = nn.Conv2d(2, 1, 3, padding=1)

    class Net(nn.Module):
        in_channels, out_channels = 2, 1

        def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
            return net(x) * c_noise[:, None, None, None]

    precond = EDMPrecond(Net())
    loss_fn = EDMLoss()
    a = loss_fn(precond, x0, cond, torch.Generator().manual_seed(3))
    b = loss_fn(precond, x0, cond, torch.Generator().manual_seed(3))
    c = loss_fn(precond, x0, cond, torch.Generator().manual_seed(4))
    assert a.shape == (6,)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # __call__ is draw() followed by loss_at()
    sigma, noise = loss_fn.draw(x0, torch.Generator().manual_seed(3))
    assert torch.equal(a, loss_fn.loss_at(precond, x0, cond, sigma, noise))
