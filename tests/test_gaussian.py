"""Tests of the Gaussian oracle in sgm.core.gaussian against dense linear algebra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from sgm.core.gaussian import (
    GaussianRandomField,
    conditional_denoiser,
    exact_posterior,
    expected_crps_gaussian,
    ode_output_law,
    oracle_statistics,
)
from sgm.core.operators import Coarsen, SparseMask


def test_spectrum_normalisation_and_matern_correlation() -> None:
    grf = GaussianRandomField((128, 128), length_scale=4.0, nu=1.5, variance=2.5)
    assert grf.spectrum().mean() == pytest.approx(2.5, rel=1e-12)
    c = np.fft.ifft2(grf.spectrum()).real / 2.5
    # With l << domain the lattice field has the Matern-3/2 correlation (1 + √3 r/l) e^{-√3 r/l}.
    r = np.array([2, 4, 8, 16])
    matern = (1 + math.sqrt(3) * r / 4.0) * np.exp(-math.sqrt(3) * r / 4.0)
    np.testing.assert_allclose(c[0, r], matern, atol=3e-3)
    np.testing.assert_allclose(c[r, 0], matern, atol=3e-3)


def test_covariance_is_the_circulant_of_the_spectrum() -> None:
    grf = GaussianRandomField((8, 6), length_scale=2.0, mean=0.3)
    cov = grf.covariance()
    assert cov.shape == (48, 48)
    np.testing.assert_allclose(np.diag(cov), 1.0, rtol=1e-12)
    np.testing.assert_allclose(cov, cov.T, atol=1e-14)
    # Its eigenvalues are the spectrum values.
    np.testing.assert_allclose(
        np.sort(np.linalg.eigvalsh(cov)), np.sort(grf.spectrum().ravel()), atol=1e-12
    )
    # Stationary on the torus: cov between (0, 0) and (1, 5) equals that of (7, 1) and (0, 0).
    assert cov[0, 1 * 6 + 5] == pytest.approx(cov[7 * 6 + 1, 0], abs=1e-14)


def test_sample_covariance_matches() -> None:
    grf = GaussianRandomField((16, 16), length_scale=3.0, variance=2.0, mean=-1.0)
    x = grf.sample(20000, np.random.default_rng(0)).reshape(20000, -1)
    # Marginal variance per pixel: SE ≈ 2 * sqrt(2/20000) = 0.02 (1 %); averaged over pixels.
    var = x.var(axis=0, ddof=1)
    assert var.mean() == pytest.approx(2.0, rel=0.03)
    assert np.all(np.abs(var / 2.0 - 1.0) < 0.06)  # each pixel within ~6 SE
    assert abs(x.mean() + 1.0) < 0.05
    # Full covariance: entries have SE ≲ 2 * sqrt(2/20000) = 0.02.
    emp = np.cov(x, rowvar=False)
    assert np.abs(emp - grf.covariance()).max() < 0.12


def test_fourier_denoiser_equals_dense_formula() -> None:
    grf = GaussianRandomField((8, 8), length_scale=2.0, variance=1.5, mean=0.4)
    c = grf.covariance()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=gen) * 2.0
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    d = grf.denoise(x, sigma)
    for b in range(3):
        s2 = float(sigma[b]) ** 2
        xf = x[b].reshape(-1).numpy() - 0.4
        expected = 0.4 + c @ np.linalg.solve(c + s2 * np.eye(64), xf)
        np.testing.assert_allclose(d[b].reshape(-1).numpy(), expected, atol=1e-10)
    # A scalar sigma equals the per-sample one; float32 in, float32 out.
    torch.testing.assert_close(grf.denoise(x[1], 1.0), d[1])
    d32 = grf.denoise(x[1].float(), 1.0)
    assert d32.dtype == torch.float32
    torch.testing.assert_close(d32, d[1].float())


def test_grf_dict_round_trip() -> None:
    grf = GaussianRandomField((12, 10), length_scale=2.5, nu=0.5, variance=3.0, mean=1.0)
    clone = GaussianRandomField.from_dict(grf.to_dict())
    assert clone.to_dict() == grf.to_dict()
    np.testing.assert_array_equal(clone.spectrum(), grf.spectrum())


def _problem(op_kind: str) -> tuple[GaussianRandomField, np.ndarray, np.ndarray, float]:
    grf = GaussianRandomField((8, 8), length_scale=1.5, variance=1.2, mean=0.5)
    op = Coarsen((8, 8), 2) if op_kind == "coarsen" else SparseMask((8, 8), fraction=0.2, seed=1)
    a = op.matrix()
    rng = np.random.default_rng(2)
    x = grf.sample(1, rng).reshape(-1)
    eta = 0.1
    y = np.stack([a @ x + eta * rng.standard_normal(a.shape[0]) for _ in range(2)])
    return grf, a, y, eta


@pytest.mark.parametrize("op_kind", ["coarsen", "sparse"])
def test_exact_posterior_matches_information_form(op_kind: str) -> None:
    grf, a, y, eta = _problem(op_kind)
    mean, cov = exact_posterior(grf, a, eta, y)
    c_inv = np.linalg.inv(grf.covariance())
    prec = c_inv + a.T @ a / eta**2
    cov_ref = np.linalg.inv(prec)
    mean_ref = np.linalg.solve(prec, (c_inv @ grf.mean_vector())[:, None] + (a.T @ y.T) / eta**2).T
    np.testing.assert_allclose(cov, cov_ref, atol=1e-9)
    np.testing.assert_allclose(mean, mean_ref, atol=1e-8)
    # Posterior std is below prior std everywhere, and far below it where observed.
    std = np.sqrt(np.diag(cov))
    assert np.all(std <= math.sqrt(1.2) + 1e-12)
    if op_kind == "sparse":
        observed = a.argmax(axis=1)
        assert np.all(std[observed] < eta)
        assert np.all(std[observed] < 0.2 * math.sqrt(1.2))


def test_conditional_denoiser_equals_dense_formula() -> None:
    grf, a, y, eta = _problem("sparse")
    mean, cov = exact_posterior(grf, a, eta, y)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=gen)
    sigma = torch.tensor([0.05, 3.0], dtype=torch.float64)
    d_shared = conditional_denoiser(torch.as_tensor(mean[0]), cov)(x, sigma)
    d_each = conditional_denoiser(mean, cov)(x, sigma)  # one posterior mean per sample
    for b in range(2):
        s2 = float(sigma[b]) ** 2
        xf = x[b].reshape(-1).numpy()
        for mu, d in ((mean[0], d_shared), (mean[b], d_each)):
            expected = mu + cov @ np.linalg.solve(cov + s2 * np.eye(64), xf - mu)
            np.testing.assert_allclose(d[b].reshape(-1).numpy(), expected, atol=1e-10)
    # The prior's conditional denoiser (A = 0) is the Fourier denoiser.
    prior = conditional_denoiser(grf.mean_vector(), grf.covariance())
    torch.testing.assert_close(prior(x, sigma), grf.denoise(x, sigma))


def test_ode_output_law() -> None:
    lam = np.array([0.01, 1.0, 4.0])
    mu = np.array([1.0, -2.0, 3.0])
    mean, cov = ode_output_law(mu, np.diag(lam), sigma_max=10.0)
    np.testing.assert_allclose(mean, mu * (1 - np.sqrt(lam / (lam + 100.0))), atol=1e-12)
    np.testing.assert_allclose(cov, np.diag(lam * 100.0 / (lam + 100.0)), atol=1e-12)
    mean, cov = ode_output_law(mu, np.diag(lam), sigma_max=1e8)
    np.testing.assert_allclose(mean, mu, atol=1e-7)
    np.testing.assert_allclose(cov, np.diag(lam), atol=1e-7)


def test_expected_crps_gaussian_by_monte_carlo() -> None:
    s = 1.7
    z = np.random.default_rng(0).standard_normal(400_000)
    crps = s * (
        z * (2 * scipy.stats.norm.cdf(z) - 1) + 2 * scipy.stats.norm.pdf(z) - 1 / math.sqrt(math.pi)
    )
    # CRPS has std ≈ 0.6 s, so the MC SE is ~1.6e-3: the 1 % tolerance is ~6 SE.
    assert crps.mean() == pytest.approx(expected_crps_gaussian(s), rel=0.01)
    assert expected_crps_gaussian(s) == pytest.approx(s / math.sqrt(math.pi))


def test_oracle_statistics_on_exact_draws() -> None:
    rng = np.random.default_rng(0)
    mean, std = np.array([0.0, 5.0, -1.0]), np.array([1.0, 0.1, 3.0])
    x = mean + std * rng.standard_normal((40000, 3))
    st = oracle_statistics(x, mean, std, level=0.9)
    assert np.all(np.abs(st.mean_z) < 4.0)
    np.testing.assert_allclose(st.std_ratio, 1.0, atol=0.02)
    np.testing.assert_allclose(st.coverage, 0.9, atol=0.01)
    # A 10 % too wide ensemble is seen by all three statistics' expected direction.
    wide = oracle_statistics(mean + 1.1 * (x - mean), mean, std)
    np.testing.assert_allclose(wide.std_ratio, 1.1 * st.std_ratio)
    assert np.all(wide.coverage < 0.88)
