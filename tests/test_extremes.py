"""Extremes: the heavy-tailed oracle and its transform, the Wasserstein regulariser, the tail
scores and quantile mapping, each against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import Tensor, nn

from sgm.core.heavy_tailed import CensoredPowerField, CensoredPowerTransform
from sgm.core.loss import EDMLoss
from sgm.core.quantile_mapping import QuantileMapping, knot_levels
from sgm.core.tail_scores import (
    contingency_scores,
    csi_scores,
    qq_points,
    quantile_errors,
    reliability,
    tail_scores,
    wasserstein_1,
)
from sgm.core.wasserstein import (
    WassersteinEDMLoss,
    marginal_wasserstein,
    sliced_wasserstein,
    wasserstein_1d,
    wasserstein_term,
)

# --------------------------------------------------------------------------- heavy-tailed oracle


@pytest.fixture(scope="module")
def oracle() -> CensoredPowerField:
    return CensoredPowerField((16, 16), length_scale=2.0)


def test_marginal_closed_forms(oracle: CensoredPowerField) -> None:
    s, c, g = 4.0, -0.3, 3.0
    p0 = norm.cdf(0.3)
    assert oracle.zero_fraction == pytest.approx(p0, rel=1e-14)
    # Q(u) = s (Φ⁻¹(u) + c)^γ above the dry fraction, 0 at or below it.
    assert oracle.quantile(0.99) == pytest.approx(s * (norm.ppf(0.99) + c) ** g, rel=1e-12)
    assert oracle.quantile(0.999) == pytest.approx(86.8922573, rel=1e-8)
    np.testing.assert_array_equal(oracle.quantile([0.0, 0.3, p0]), 0.0)
    assert oracle.return_level(1000.0) == pytest.approx(oracle.quantile(0.999), rel=1e-12)
    # F and Q invert each other on the wet part; the atom: F(0) = Φ(−c), F(0⁻) = 0.
    u = np.array([0.65, 0.8, 0.95, 0.999, 0.99999])
    np.testing.assert_allclose(oracle.cdf(oracle.quantile(u)), u, rtol=1e-12)
    assert oracle.cdf(0.0) == pytest.approx(p0) and oracle.cdf(-1e-9) == 0.0
    np.testing.assert_allclose(oracle.sf([1.0, 50.0]), 1 - oracle.cdf([1.0, 50.0]), rtol=1e-10)


def test_samples_match_the_exact_marginal(oracle: CensoredPowerField) -> None:
    """Fields are independent, pixels within one are not: the Monte-Carlo error of a pooled
    fraction is the spread of the per-field fractions over √n."""
    x = oracle.sample(1500, np.random.default_rng(0))
    assert x.shape == (1500, 16, 16) and x.min() == 0.0
    for value, level in ((0.0, oracle.zero_fraction), (oracle.quantile(0.99), 0.99),
                         (oracle.quantile(0.999), 0.999)):
        per_field = (x <= value).mean(axis=(1, 2))
        se = per_field.std(ddof=1) / math.sqrt(per_field.size)
        assert abs(per_field.mean() - level) < 4 * se, (value, level)


def test_transform_round_trip_and_non_negativity(oracle: CensoredPowerField) -> None:
    tr = oracle.transform
    p = oracle.sample(20, np.random.default_rng(1))
    z = tr.forward(p)
    np.testing.assert_allclose(tr.inverse(z), p, rtol=1e-12, atol=0)
    m0 = -norm.pdf(0.3) / norm.cdf(0.3)  # E[z | z ≤ 0.3]
    assert tr.dry_value == pytest.approx(m0) and m0 < 0.3  # below the dry cut −c = 0.3
    np.testing.assert_array_equal(z[p == 0], m0)
    assert np.all(z[p > 0] > 0.3)
    # T⁻¹ of any real value is ≥ 0 and non-decreasing; torch and numpy agree.
    grid = np.concatenate([[-np.inf, -1e6], np.linspace(-8, 8, 1001), [1e3]])
    out = tr.inverse(grid)
    assert np.all(out >= 0) and np.all(np.diff(out) >= 0)
    np.testing.assert_allclose(tr.inverse(torch.as_tensor(grid)).numpy(), out, rtol=1e-12)
    np.testing.assert_allclose(tr.forward(torch.as_tensor(p)).numpy(), z, rtol=1e-12)


def test_inverse_of_gaussian_draws_is_the_exact_marginal(oracle: CensoredPowerField) -> None:
    tr, n = oracle.transform, 400_000
    z = np.random.default_rng(2).standard_normal(n)
    p = tr.inverse(z)
    assert p.min() >= 0
    for value, level in ((0.0, oracle.zero_fraction), (oracle.quantile(0.99), 0.99),
                         (oracle.quantile(0.999), 0.999)):
        assert abs(np.mean(p <= value) - level) < 4 * math.sqrt(level * (1 - level) / n)
    # T(P) has mean E[z] = 0 and variance 1 − Φ(−c) − c φ(c) + φ(c)²/Φ(−c) (c = −0.3).
    t = tr.forward(p)
    var = 1 - norm.cdf(0.3) + 0.3 * norm.pdf(0.3) + norm.pdf(0.3) ** 2 / norm.cdf(0.3)
    assert abs(t.mean()) < 4 * math.sqrt(var / n)
    assert t.var() == pytest.approx(var, rel=0.01)


def test_fit_recovers_the_oracle_and_is_plain_data(oracle: CensoredPowerField) -> None:
    fit = CensoredPowerTransform.fit(oracle.sample(800, np.random.default_rng(3)))
    assert fit.offset == pytest.approx(-0.3, abs=0.02)
    assert fit.scale == pytest.approx(4.0, rel=0.05)
    assert fit.exponent == pytest.approx(3.0, rel=0.03)
    assert CensoredPowerTransform.from_dict(fit.to_dict()) == fit
    # With a wet threshold t the wet values are t + s (z + c)^γ: fitted back, round trip exact.
    wet = CensoredPowerTransform(2.0, 0.5, 1.5, threshold=0.5)
    p = wet.inverse(np.random.default_rng(4).standard_normal(200_000))
    assert np.all((p == 0) | (p > 0.5))
    refit = CensoredPowerTransform.fit(p, threshold=0.5)
    assert (refit.offset, refit.scale, refit.exponent) == pytest.approx((0.5, 2.0, 1.5), rel=0.02)
    np.testing.assert_allclose(wet.inverse(wet.forward(p)), p, rtol=1e-12)
    with pytest.raises(ValueError, match="dry and wet"):
        CensoredPowerTransform.fit(np.zeros(100))


# --------------------------------------------------------------------------- Wasserstein


def test_w1_of_shifted_gaussians_is_the_shift() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, generator=gen, dtype=torch.float64)
    for d in (-0.7, 0.0, 1.3):
        assert float(wasserstein_1d(x, x + d)) == pytest.approx(abs(d), abs=1e-12)
    # Two independent samples of N(0, 1) and N(d, 1): W₁ → |d|, error O(n^(-1/2)).
    y = torch.randn(20_000, generator=gen, dtype=torch.float64) + 0.5
    assert float(wasserstein_1d(x, y)) == pytest.approx(0.5, abs=0.03)


def test_marginal_and_sliced_zero_iff_identical() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 8, 8, generator=gen)
    assert torch.equal(marginal_wasserstein(x, x), torch.zeros(6))
    assert float(sliced_wasserstein(x, x, 50, gen)) == 0.0
    # A pixel permutation keeps the marginal (zero) but not the field (sliced > 0).
    perm = x.flatten(2)[..., torch.randperm(64, generator=gen)].reshape(x.shape)
    assert float(marginal_wasserstein(x, perm).abs().max()) < 1e-6
    assert float(sliced_wasserstein(x, perm, 50, gen)) > 0.1
    y = x.clone()
    y[2, 1, 3, 3] += 1.0
    w = marginal_wasserstein(x, y)
    assert w[2] > 0 and torch.equal(w[[0, 1, 3, 4, 5]], torch.zeros(5))


def test_sliced_w1_of_a_shift_closed_form() -> None:
    """y = x + v shifts every projection by ⟨θ, v⟩, so SW₁ = mean_k |⟨θ_k, v⟩|, whose mean
    for θ uniform on S^(D−1) is ‖v‖ Γ(D/2) / (√π Γ((D+1)/2)); for D = 1 it is |v| exactly."""
    gen = torch.Generator().manual_seed(2)
    x1 = torch.randn(50, 1, 1, 1, generator=gen, dtype=torch.float64)
    assert float(sliced_wasserstein(x1, x1 - 0.8, 7, gen)) == pytest.approx(0.8, abs=1e-12)
    d, k = 64, 4000
    x = torch.randn(20, 1, 8, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 1, 8, 8, generator=gen, dtype=torch.float64)
    norm_v = float(v.norm())
    mean = norm_v * math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
    se = math.sqrt(norm_v**2 / d - mean**2) / math.sqrt(k)
    assert abs(float(sliced_wasserstein(x, x + v, k, gen)) - mean) < 4 * se


def test_wasserstein_term_gradients_and_sigma_mask() -> None:
    gen = torch.Generator().manual_seed(3)
    clean = torch.randn(4, 1, 8, 8, generator=gen)
    sigma = torch.tensor([0.05, 0.3, 2.0, 0.01])
    for kind in ("marginal", "sliced"):
        den = (clean + 0.3 * torch.randn(4, 1, 8, 8, generator=gen)).requires_grad_()
        term = wasserstein_term(den, clean, sigma, sigma_max=0.5, kind=kind, generator=gen)
        assert term.shape == (4,) and term[2] == 0 and torch.all(term[[0, 1, 3]] > 0)
        term.sum().backward()
        grad = den.grad.abs().flatten(1).sum(dim=1)
        assert torch.isfinite(den.grad).all() and grad[2] == 0 and torch.all(grad[[0, 1, 3]] > 0)
    none_low = wasserstein_term(clean, clean + 1, torch.full((4,), 9.0), 0.5, kind="sliced")
    assert torch.equal(none_low, torch.zeros(4))
    with pytest.raises(ValueError, match="unknown"):
        wasserstein_term(clean, clean, sigma, 0.5, kind="emd")


class _Scale(nn.Module):
    """D(x; σ) = w x: a one-parameter stand-in for the preconditioned network."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.7))

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.w * x


def test_wasserstein_edm_loss_combines_with_the_edm_loss() -> None:
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(5, 1, 8, 8, generator=gen)
    noise = torch.randn(5, 1, 8, 8, generator=gen)
    sigma = torch.tensor([0.02, 0.1, 0.4, 1.0, 5.0])
    net = _Scale()
    dsm = EDMLoss().loss_at(net, x0, None, sigma, noise)
    plain = WassersteinEDMLoss(weight=0.0).loss_at(net, x0, None, sigma, noise)
    torch.testing.assert_close(plain, dsm)
    loss = WassersteinEDMLoss(weight=0.2, sigma_max=0.5).loss_at(net, x0, None, sigma, noise)
    den = net(x0 + sigma[:, None, None, None] * noise, sigma)
    extra = wasserstein_term(den, x0, sigma, 0.5)
    torch.testing.assert_close(loss, 0.8 * dsm + 0.2 * extra)
    assert torch.all(extra[:3] > 0) and torch.equal(extra[3:], torch.zeros(2))
    loss.mean().backward()
    assert net.w.grad is not None and torch.isfinite(net.w.grad) and net.w.grad != 0
    sliced = WassersteinEDMLoss(sigma_max=0.5, kind="sliced", projections=20, generator=gen)
    assert sliced.loss_at(net, x0, None, sigma, noise).shape == (5,)
    with pytest.raises(ValueError):
        WassersteinEDMLoss(weight=1.5)


# --------------------------------------------------------------------------- tail scores


def test_quantile_errors_and_w1_of_a_shift() -> None:
    rng = np.random.default_rng(5)
    truth = rng.gamma(0.5, 5.0, size=(10, 8, 8))
    q = quantile_errors(truth[None], truth)
    assert q["q99"]["error"] == 0.0 and q["q99.9"]["per_field_mae"] == 0.0
    shifted = truth[None] + 2.5
    q = quantile_errors(shifted, truth)
    assert q["q99"]["error"] == pytest.approx(2.5) and q["q99.9"]["error"] == pytest.approx(2.5)
    assert q["q99.9"]["per_field_mae"] == pytest.approx(2.5)
    assert q["q99"]["truth"] == pytest.approx(np.quantile(truth, 0.99))
    # Per field the members are pooled: two members, truth and truth + 10.
    two = np.stack([truth, truth + 10.0])
    direct = np.mean([abs(np.quantile(two[:, i], 0.99) - np.quantile(truth[i], 0.99))
                      for i in range(10)])
    assert quantile_errors(two, truth)["q99"]["per_field_mae"] == pytest.approx(direct)
    assert direct > 5.0
    w = wasserstein_1(shifted, truth)
    assert w["pooled"] == pytest.approx(2.5) and w["per_field"] == pytest.approx(2.5)
    # W₁({0, 1}, {0, 3}) = (|0 − 0| + |1 − 3|) / 2 = 1, with a two-member ensemble pooled.
    ens = np.array([[[0.0, 3.0]], [[3.0, 0.0]]])
    assert wasserstein_1(ens, np.array([[0.0, 1.0]]))["pooled"] == pytest.approx(1.0)


def test_csi_and_bias_closed_forms() -> None:
    truth = np.array([[0.0, 5.0, 12.0, 30.0, 1.0, 25.0]])
    perfect = csi_scores(truth[None], truth, thresholds=[10.0, 20.0])
    assert [s["csi"] for s in perfect] == [1.0, 1.0] and perfect[0]["bias"] == 1.0
    # Three members: the event is forecast where at least two of them exceed t = 10.
    ens = np.array([[[11, 11, 0, 40, 0, 0]], [[11, 0, 11, 40, 11, 0]], [[0, 0, 0, 0, 11, 0]]],
                   dtype=float)
    s = csi_scores(ens, truth, [10.0])[0]
    # Forecast at points 0, 3, 4; observed at 2, 3, 5: a = 1, b = 2, c = 2.
    assert (s["hits"], s["false_alarms"], s["misses"]) == (1, 2, 2)
    assert s["csi"] == pytest.approx(1 / 5) and s["bias"] == pytest.approx(3 / 3)
    # p = 1/2 counts as forecast (two members, one above t): a hit here.
    half = csi_scores(np.array([[[11.0, 0.0]], [[0.0, 0.0]]]), np.array([[12.0, 0.0]]), [10.0])
    assert half[0]["csi"] == 1.0
    assert math.isnan(contingency_scores(np.zeros(3, bool), np.zeros(3, bool))["csi"])


def test_brier_murphy_decomposition() -> None:
    rng = np.random.default_rng(6)
    q = rng.uniform(0, 1, size=(50, 20))
    truth = (rng.uniform(size=q.shape) < q).astype(float)
    ens = (rng.uniform(size=(7, *q.shape)) < q).astype(float)
    r = reliability(ens, truth, threshold=0.5)
    assert r["brier"] == pytest.approx(r["reliability"] - r["resolution"] + r["uncertainty"],
                                       abs=1e-12)
    assert sum(r["count"]) == truth.size and len(r["probability"]) == 8
    # A perfect point forecast: no reliability error, resolution = uncertainty, Brier 0.
    p = reliability(truth[None], truth, 0.5)
    assert p["brier"] == 0.0 and p["reliability"] == 0.0
    assert p["resolution"] == pytest.approx(p["uncertainty"]) and p["brier_fair"] is None
    # Climatology: every point has p = 1/4 and the event happens at a quarter of them.
    clim_truth = np.tile([1.0, 0.0, 0.0, 0.0], 10)
    clim = reliability(np.eye(4)[:, [0, 1, 2, 3] * 10], clim_truth, 0.5)
    assert clim["brier"] == pytest.approx(3 / 16) and clim["uncertainty"] == pytest.approx(3 / 16)
    assert clim["reliability"] == pytest.approx(0) and clim["resolution"] == pytest.approx(0)


def test_fair_brier_is_unbiased() -> None:
    """Members and truth iid Bernoulli(q): E BS(q) = q(1 − q); the ensemble-fraction Brier
    score exceeds it by q(1 − q)/M in expectation, the fair one does not."""
    rng = np.random.default_rng(7)
    q, m, n = 0.3, 4, 200_000
    truth = (rng.uniform(size=n) < q).astype(float)
    ens = (rng.uniform(size=(m, n)) < q).astype(float)
    r = reliability(ens, truth, 0.5)
    se = 1.0 / math.sqrt(n)
    assert abs(r["brier_fair"] - q * (1 - q)) < 4 * se
    assert abs(r["brier"] - q * (1 - q) * (1 + 1 / m)) < 4 * se


def test_qq_points_and_tail_scores_bundle() -> None:
    rng = np.random.default_rng(8)
    truth = rng.exponential(size=(4, 5, 5))
    qq = qq_points(truth[None], truth)
    assert max(qq["levels"]) <= 1 - 1 / 100 and qq["ensemble"] == qq["truth"]
    out = tail_scores(truth[None] * 2, truth, thresholds=[1.0, 3.0])
    assert set(out) == {"quantiles", "csi", "wasserstein_1", "qq", "reliability"}
    assert out["quantiles"]["q99"]["error"] == pytest.approx(np.quantile(truth, 0.99))
    assert [r["threshold"] for r in out["reliability"]] == [1.0, 3.0]


# --------------------------------------------------------------------------- quantile mapping


def test_qm_is_exact_for_a_monotone_affine_map_inside_and_additive_outside() -> None:
    x = np.random.default_rng(9).standard_normal(50_000)
    qm = QuantileMapping.fit(x, 2 * x + 1)
    inside = np.linspace(qm.source[0], qm.source[-1], 101)
    np.testing.assert_allclose(qm(inside), 2 * inside + 1, atol=1e-9)
    top, bottom = qm.source[-1], qm.source[0]
    assert qm(top + 7.0) == pytest.approx(top + 7.0 + (top + 1), rel=1e-12)
    assert qm(bottom - 7.0) == pytest.approx(bottom - 7.0 + (bottom + 1), rel=1e-12)
    # The outermost knots leave tail_min = 10 training values beyond them.
    assert np.sum(x > top) >= 10 and np.sum(x < bottom) >= 10


def test_qm_bounded_monotone_non_negative_on_the_oracle(oracle: CensoredPowerField) -> None:
    truth = oracle.sample(300, np.random.default_rng(10))
    blurred = 0.25 * sum(np.roll(truth, s, axis=a) for s in (-1, 1) for a in (1, 2))
    source = blurred + np.random.default_rng(11).normal(0, 0.5, truth.shape)
    qm = QuantileMapping.fit(source, truth, lower=0.0)
    grid = np.concatenate([np.linspace(-50, 200, 5001), [1e4, 1e6]])
    out = qm(grid)
    assert np.all(np.diff(out) >= 0) and out.min() == 0.0
    bound = np.max(np.abs(qm.target - qm.source))
    above = grid >= 0
    assert np.all(np.abs(out[above] - grid[above]) <= bound + 1e-9)
    assert out[-1] - 1e6 == pytest.approx(qm.target[-1] - qm.source[-1])
    # It corrects the marginal: W₁ to the truth shrinks several-fold.
    before = wasserstein_1(source[None], truth)["pooled"]
    after = wasserstein_1(qm(source)[None], truth)["pooled"]
    assert after < before / 4
    assert QuantileMapping.from_dict(qm.to_dict()).to_dict() == qm.to_dict()


def test_qm_merges_tied_source_knots() -> None:
    rng = np.random.default_rng(12)
    source = np.where(rng.uniform(size=20_000) < 0.5, 0.0, rng.exponential(size=20_000))
    target = np.sort(rng.exponential(2.0, size=20_000))
    qm = QuantileMapping.fit(source, target, lower=0.0)
    assert np.all(np.diff(qm.source) > 0) and np.all(np.diff(qm.target) >= 0)
    u = knot_levels(20_000)
    tied = np.quantile(source, u) == 0.0
    assert qm.source[0] == 0.0 and tied.sum() > 100
    assert qm(0.0) == pytest.approx(np.quantile(target, u[tied]).mean(), rel=1e-12)
    with pytest.raises(ValueError, match="increase"):
        QuantileMapping(np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 2.0]))
