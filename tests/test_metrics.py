"""Verification metrics: values checked against closed forms and direct implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chisquare

from sgm.core import metrics


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _calibrated(
    rng: np.random.Generator,
    m: int,
    shape: tuple[int, ...],
    spread: float = 1.0,
    hetero: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Truth and members drawn from the same N(mu, sd²) given a random per-point centre mu.

    sd = 1, or log-uniform on [0.1, 10] per point when ``hetero``. ``spread`` scales the
    members' deviation from mu: 1 is calibrated, < 1 under-dispersed.
    """
    mu = 3.0 * rng.standard_normal(shape)
    sd = np.exp(rng.uniform(np.log(0.1), np.log(10.0), shape)) if hetero else 1.0
    truth = mu + sd * rng.standard_normal(shape)
    ens = mu + spread * sd * rng.standard_normal((m, *shape))
    return ens, truth


def _crps_direct(ens: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fair CRPS by its O(M²) definition (Ferro 2014)."""
    m = ens.shape[0]
    skill = np.abs(ens - truth).mean(axis=0)
    pairs = np.abs(ens[:, None] - ens[None, :]).sum(axis=(0, 1))
    return skill - pairs / (2 * m * (m - 1))


def test_crps_fair_matches_direct_formula(rng: np.random.Generator) -> None:
    ens, truth = _calibrated(rng, 7, (4, 5))
    np.testing.assert_allclose(metrics.crps_fair(ens, truth), _crps_direct(ens, truth), rtol=1e-10)


def test_crps_fair_of_repeated_member_is_mae(rng: np.random.Generator) -> None:
    pred = rng.standard_normal((6, 3))
    truth = rng.standard_normal((6, 3))
    ens = np.repeat(pred[None], 5, axis=0)
    np.testing.assert_allclose(metrics.crps_fair(ens, truth), np.abs(pred - truth), atol=1e-12)
    np.testing.assert_allclose(metrics.crps_deterministic(pred, truth), np.abs(pred - truth))


def test_crps_fair_is_unbiased_for_gaussian(rng: np.random.Generator) -> None:
    """E CRPS(N(0,1), y) for y ~ N(0,1) is 1/√π; the fair estimator hits it even with M = 4."""
    ens, truth = _calibrated(rng, 4, (40_000,))
    assert metrics.crps_fair(ens, truth).mean() == pytest.approx(1 / math.sqrt(math.pi), rel=0.02)


def test_calibrated_ensemble_scores_as_calibrated(rng: np.random.Generator) -> None:
    m = 19
    ens, truth = _calibrated(rng, m, (20_000,), hetero=True)
    assert metrics.spread_skill_ratio(ens, truth) == pytest.approx(1.0, abs=0.03)
    counts = metrics.rank_histogram(ens, truth, rng)
    assert counts.shape == (m + 1,) and counts.sum() == truth.size
    assert chisquare(counts).pvalue > 0.001
    # (1 - 0.9)/2 · (M + 1) = 1: the [min, max] interval of 19 members is a 90 % interval.
    assert metrics.interval_coverage(ens, truth, 0.9) == pytest.approx(0.9, abs=0.01)
    assert metrics.interval_coverage(ens, truth, 0.5) == pytest.approx(0.5, abs=0.015)
    small, small_truth = _calibrated(rng, 3, (40_000,))  # (M+1)/M matters for few members
    assert metrics.spread_skill_ratio(small, small_truth) == pytest.approx(1.0, abs=0.03)
    bins = metrics.spread_skill_bins(ens, truth, n_bins=5)
    assert sum(bins["count"]) == truth.size
    # Sorting by the sampled spread biases the bins slightly low (selection on noise).
    np.testing.assert_allclose(bins["spread"], bins["rmse"], rtol=0.12)
    assert bins["spread"][-1] > 5 * bins["spread"][0]


def test_under_dispersed_ensemble_is_flagged(rng: np.random.Generator) -> None:
    m = 19
    ens, truth = _calibrated(rng, m, (20_000,), spread=0.4, hetero=True)
    assert metrics.spread_skill_ratio(ens, truth) < 0.6
    counts = metrics.rank_histogram(ens, truth, rng)
    edges, middle = counts[[0, -1]].mean(), counts[1:-1].mean()
    assert edges > 4 * middle  # U shape: the truth falls outside the ensemble too often
    assert metrics.interval_coverage(ens, truth, 0.9) < 0.6
    bins = metrics.spread_skill_bins(ens, truth, n_bins=5)
    assert all(s < r for s, r in zip(bins["spread"], bins["rmse"], strict=True))


def test_rank_histogram_breaks_ties_at_random(rng: np.random.Generator) -> None:
    """All members equal to the truth: ranks spread uniformly over 0..M."""
    truth = np.zeros(30_000)
    ens = np.zeros((3, 30_000))
    counts = metrics.rank_histogram(ens, truth, rng)
    np.testing.assert_allclose(counts / counts.sum(), 0.25, atol=0.015)


def test_ensemble_mean_errors(rng: np.random.Generator) -> None:
    truth = rng.standard_normal((3, 4))
    ens = truth + np.array([1.0, 3.0])[:, None, None]  # mean error +2 everywhere
    errs = metrics.ensemble_mean_errors(ens, truth)
    assert errs == pytest.approx({"rmse": 2.0, "mae": 2.0, "bias": 2.0})


def test_energy_score_matches_direct_formula(rng: np.random.Generator) -> None:
    ens = rng.standard_normal((5, 3, 4, 6))
    truth = rng.standard_normal((3, 4, 6))
    es = metrics.energy_score(ens, truth)
    assert es.shape == (3,)
    e, y = ens.reshape(5, 3, -1), truth.reshape(3, -1)
    skill = np.linalg.norm(e - y, axis=-1).mean(axis=0)
    pairs = np.linalg.norm(e[:, None] - e[None, :], axis=-1).sum(axis=(0, 1))
    np.testing.assert_allclose(es, skill - pairs / (2 * 5 * 4), rtol=1e-10)
    single = metrics.energy_score(truth[None] + 1.0, truth)
    np.testing.assert_allclose(single, math.sqrt(24.0))


def test_radial_spectrum_peaks_at_mode_wavenumber() -> None:
    h, w, kx, ky = 32, 48, 6, 0
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    field = np.cos(2 * np.pi * (kx * xx / w + ky * yy / h))
    k, p = metrics.radial_power_spectrum(np.stack([field, 2 * field]))
    assert p.shape == (2, k.size)
    assert k[np.argmax(p[0])] == pytest.approx(kx / w)
    np.testing.assert_allclose(p[1], 4 * p[0])  # power is quadratic in amplitude
    others = np.delete(p[0], np.argmax(p[0]))
    assert others.max() < 1e-20 * p[0].max()


@pytest.mark.parametrize("n", [16, 15])
def test_radial_spectrum_is_isotropic(n: int) -> None:
    """A mode along x and the same mode along y have the same radial spectrum (square grid)."""
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    along_x = np.cos(2 * np.pi * 3 * xx / n)
    along_y = np.cos(2 * np.pi * 3 * yy / n)
    _, p = metrics.radial_power_spectrum(np.stack([along_x, along_y]))
    np.testing.assert_allclose(p[0], p[1], atol=1e-12 * p.max())
    k, white = metrics.radial_power_spectrum(np.random.default_rng(0).standard_normal((400, n, n)))
    np.testing.assert_allclose(white.mean(axis=0), 1.0, rtol=0.15)  # white noise: flat at σ² = 1


def test_spectrum_error_zero_for_identical_and_positive_for_smoothed(
    rng: np.random.Generator,
) -> None:
    truth = rng.standard_normal((4, 16, 16))
    assert metrics.spectrum_error(truth[None], truth) == pytest.approx(0.0, abs=1e-12)
    smooth = 0.25 * (
        truth + np.roll(truth, 1, -1) + np.roll(truth, 1, -2) + np.roll(truth, 1, (-2, -1))
    )
    assert metrics.spectrum_error(smooth[None], truth) > 0.3


def test_reobs_chi2_is_one_for_the_truth(rng: np.random.Generator) -> None:
    truth = rng.standard_normal((50, 8, 12))
    a_truth = truth.reshape(50, 4, 2, 6, 2).mean(axis=(2, 4))  # 2×2 block averages
    eta = 0.3
    y = a_truth + eta * rng.standard_normal(a_truth.shape)
    members = np.repeat(a_truth[None], 3, axis=0)
    assert metrics.reobs_chi2(members, y, eta) == pytest.approx(1.0, abs=0.1)
    assert metrics.reobs_chi2(members + 3 * eta, y, eta) == pytest.approx(10.0, abs=0.5)
    assert math.isnan(metrics.reobs_chi2(members, y, 0.0))


def test_oracle_metrics_perfect_and_biased_sampler(rng: np.random.Generator) -> None:
    t, n, m = 200, 30, 16
    exact_mean = rng.standard_normal((t, n))
    exact_std = 0.5 + rng.uniform(size=n)
    truth = exact_mean + exact_std * rng.standard_normal((t, n))
    ens = exact_mean + exact_std * rng.standard_normal((m, t, n))
    good = metrics.oracle_metrics(ens, exact_mean, exact_std, truth)
    assert good["mean_error_over_std"] == pytest.approx(1 / math.sqrt(m), rel=0.15)
    assert good["std_ratio_mean"] == pytest.approx(1.0, abs=0.03)
    assert good["std_ratio_q05"] < 1.0 < good["std_ratio_q95"]
    assert good["exact_interval_coverage"] == pytest.approx(0.9, abs=0.01)
    assert good["crps_ratio"] == pytest.approx(1.0, abs=0.03)
    narrow = exact_mean + 0.5 * (ens - exact_mean)
    bad = metrics.oracle_metrics(narrow, exact_mean, exact_std, truth)
    assert bad["std_ratio_mean"] == pytest.approx(0.5, abs=0.02)
    assert bad["exact_interval_coverage"] > 0.99
    assert bad["crps_ratio"] > good["crps_ratio"] + 0.05
