"""The statisticians' baselines (sgm.core.baselines, sgm.core.gaussian_baseline) on the
Gaussian oracle: exact posteriors against dense linear algebra, members against Monte-Carlo
error (with negative controls), validation-chosen shrinkage, climatology anomalies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import scoringrules as sr
import torch

from sgm.core.baselines import (
    SHRINKAGE_GRID,
    climatology_anomaly,
    crps_gaussian,
    log_score_gaussian,
    select_shrinkage,
)
from sgm.core.gaussian import GaussianRandomField, exact_posterior, oracle_statistics
from sgm.core.gaussian_baseline import AnomalyCovariance, GaussianPrior
from sgm.core.observation import ObservationModel

SHAPE = (16, 16)
LAT = 40.0 + 0.5 * np.arange(SHAPE[0])
LON = -10.0 + 0.5 * np.arange(SHAPE[1])
STATIONS = [{"id": f"s{i}", "lat": float(a), "lon": float(b)} for i, (a, b) in enumerate(
    zip(np.random.default_rng(3).uniform(LAT[0], LAT[-1], 20),
        np.random.default_rng(4).uniform(LON[0], LON[-1], 20), strict=True))]
OPERATORS = {
    "coarsen": {"kind": "coarsen", "factor": 4},
    "sparse": {"kind": "sparse", "fraction": 0.1, "seed": 0},
    "stations": {"kind": "stations", "stations": STATIONS},
    "blur": {"kind": "blur", "sigma_pixels": 1.5, "boundary": "reflect"},
}
# Two variables with their own prior and noise, to check that nothing mixes them.
PRIORS = {"a": GaussianRandomField(SHAPE, length_scale=3.0, mean=0.5),
          "b": GaussianRandomField(SHAPE, length_scale=5.0, variance=4.0, mean=-2.0)}
NOISE = {"a": 0.1, "b": 0.5}


def obs_model(kind: str, noise: dict[str, float] = NOISE) -> ObservationModel:
    return ObservationModel.from_dict({"operator": OPERATORS[kind], "variables": list(noise),
                                       "noise_std": noise,
                                       "grid": {"lat": LAT.tolist(), "lon": LON.tolist()}})


def oracle_fields(n: int, seed: int, names: tuple[str, ...] = ("a", "b")) -> torch.Tensor:
    """n fields from the oracle priors: Tensor[n, C, H, W]."""
    rng = np.random.default_rng(seed)
    return torch.as_tensor(np.stack([PRIORS[v].sample(n, rng) for v in names], axis=1))


def true_prior(names: tuple[str, ...] = ("a", "b")) -> GaussianPrior:
    mean = torch.as_tensor(np.stack([PRIORS[v].mean_vector().reshape(SHAPE) for v in names]))
    cov = torch.as_tensor(np.stack([PRIORS[v].covariance() for v in names]))
    return GaussianPrior.from_covariance(mean, cov)


def exact(obs: ObservationModel, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Dense exact posterior per variable: mean[T, C, HW], std[C, HW]."""
    out = [exact_posterior(PRIORS[v], obs.matrix(), obs.noise[v], y[:, c].reshape(len(y), -1))
           for c, v in enumerate(obs.variables)]
    return (np.stack([m for m, _ in out], 1),
            np.stack([np.sqrt(np.diag(cov)) for _, cov in out]))


@pytest.mark.parametrize("kind", list(OPERATORS))
def test_true_prior_gives_the_exact_posterior(kind: str) -> None:
    obs = obs_model(kind)
    y = obs.sample(oracle_fields(3, 0), torch.Generator().manual_seed(1))
    post = true_prior().posterior(obs, y)
    mean, std = exact(obs, y)
    assert post.mean.shape == (3, 2, *SHAPE) and post.std.shape == (2, *SHAPE)
    np.testing.assert_allclose(post.mean.reshape(3, 2, -1).numpy(), mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(post.std.reshape(2, -1).numpy(), std, rtol=0, atol=1e-10)
    assert post.sample(2, seed=0).shape == (2, 3, 2, *SHAPE)


def matches(ens: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> bool:
    """Members ens[M, T, HW] agree with the exact N(mean[T, HW], std[HW]²) marginals within
    Monte-Carlo error: mean errors < 5 SE, per-pixel std ratios within 5 SE of one (SE
    1/√(2M)), their mean within 0.03."""
    m = ens.shape[0]
    stats = oracle_statistics(ens.numpy(), mean, np.broadcast_to(std, mean.shape))
    tol = 5.0 / math.sqrt(2 * m)
    return bool(np.abs(stats.mean_z).max() < 5.0 and np.abs(stats.std_ratio - 1).max() < tol
                and abs(stats.std_ratio.mean() - 1) < 0.03)


@pytest.mark.parametrize("kind", ["coarsen", "sparse"])
def test_members_follow_the_exact_posterior_and_controls_do_not(kind: str) -> None:
    names, m = ("a",), 2000
    obs = obs_model(kind, {"a": NOISE["a"]})
    y = obs.sample(oracle_fields(2, 5, names), torch.Generator().manual_seed(6))
    mean, std = exact(obs, y)
    ens = true_prior(names).posterior(obs, y).sample(m, seed=7)[:, :, 0].reshape(m, 2, -1)
    assert matches(ens, mean[:, 0], std[0])
    # Negative controls: the prior's spread around the exact mean, and members that ignore the
    # observation noise (a posterior for η ≈ 0), fail the same check.
    prior_spread = torch.as_tensor(mean[:, 0]) + (oracle_fields(m, 8, names)[:, 0] - 0.5
                                                  ).reshape(m, 1, -1)
    assert not matches(prior_spread, mean[:, 0], std[0])
    noiseless = obs_model(kind, {"a": 1e-4})
    ens0 = true_prior(names).posterior(noiseless, y).sample(m, seed=7)[:, :, 0].reshape(m, 2, -1)
    assert not matches(ens0, mean[:, 0], std[0])


def test_members_are_reproducible_and_independent_of_batching() -> None:
    obs = obs_model("coarsen")
    y = obs.sample(oracle_fields(3, 0), torch.Generator().manual_seed(1))
    post = true_prior().posterior(obs, y)
    ens = post.sample(6, seed=11)
    assert torch.equal(post.sample(6, seed=11), ens)
    assert not torch.allclose(post.sample(6, seed=12), ens)
    # Fewer members, or one time alone: the same members (up to BLAS round-off).
    torch.testing.assert_close(post.sample(3, seed=11), ens[:3], rtol=0, atol=1e-12)
    alone = true_prior().posterior(obs, y[2:]).sample(6, seed=11, time_index=[2])
    torch.testing.assert_close(alone[:, 0], ens[:, 2], rtol=0, atol=1e-12)
    assert not torch.allclose(ens[:, 0], ens[:, 1])  # times get their own draws


def test_fitted_prior_is_the_shrinkage_and_eof_family() -> None:
    rng = np.random.default_rng(2)
    train = torch.as_tensor(rng.standard_normal((40, 2, 5, 6)) * np.array([1.0, 3.0])[:, None, None]
                            + 2.0)
    cov = AnomalyCovariance.fit(train)
    s = torch.stack([torch.as_tensor(np.cov(train[:, c].reshape(40, -1).numpy(), rowvar=False))
                     for c in range(2)])
    var = torch.diagonal(s, dim1=-2, dim2=-1)
    torch.testing.assert_close(cov.mean, train.mean(0))
    prior = cov.prior([0.0, 0.3])
    torch.testing.assert_close(prior.covariance()[0], s[0])
    torch.testing.assert_close(prior.covariance()[1], 0.7 * s[1] + 0.3 * torch.diag(var[1]))
    eof = cov.prior(0.2, eofs=[3, 5])
    torch.testing.assert_close(eof.variance(), var)  # the sample variances are kept
    for c, k in enumerate((3, 5)):
        low_rank = eof.covariance()[c] - torch.diag(eof.diag[c])
        lam, vec = torch.linalg.eigh(s[c])
        want = 0.8 * (vec[:, -k:] * lam[-k:]) @ vec[:, -k:].T
        torch.testing.assert_close(low_rank, want)
    with pytest.raises(ValueError, match="shrinkage must lie in"):
        cov.prior(1.5)
    with pytest.raises(ValueError, match="one per variable"):
        cov.prior([0.1, 0.2, 0.3])


@pytest.mark.parametrize("kind", ["coarsen", "sparse"])
def test_validation_chooses_the_shrinkage(kind: str) -> None:
    names = ("a",)
    obs = obs_model(kind, {"a": NOISE["a"]})
    val = oracle_fields(100, 20, names)
    val_y = obs.sample(val, torch.Generator().manual_seed(21))
    _, std = exact(obs, val_y)
    many = select_shrinkage(oracle_fields(2000, 22, names), val, val_y, obs, eofs=(2, None))
    assert len(many.curve) == 2 * len(SHRINKAGE_GRID)
    assert set(many.curve[0]) == {"shrinkage", "eofs", "crps", "log_score"}
    assert many.eofs == (None,) and many.shrinkage[0] <= 0.02
    ratio = many.prior.posterior(obs, val_y).std.reshape(-1).numpy() / std[0]
    assert abs(ratio.mean() - 1) < 0.04 and np.quantile(np.abs(ratio - 1), 0.9) < 0.1
    few = select_shrinkage(oracle_fields(30, 23, names), val, val_y, obs)
    assert few.shrinkage[0] >= 0.1 > many.shrinkage[0]
    best = min(e["crps"][0] for e in few.curve)
    assert next(e for e in few.curve if e["shrinkage"] == 0.0)["crps"][0] > 1.1 * best


def test_gaussian_scores_in_closed_form() -> None:
    mean, std, x = (torch.tensor(v, dtype=torch.float64) for v in
                    ([0.0, 1.0, -2.0], [1.0, 0.5, 0.0], [0.3, -0.4, -1.5]))
    crps = crps_gaussian(mean, std, x)
    np.testing.assert_allclose(crps[:2].numpy(), sr.crps_normal(x[:2].numpy(), mean[:2].numpy(),
                                                               std[:2].numpy()), rtol=1e-12)
    assert float(crps[2]) == pytest.approx(0.5)  # a point forecast: the absolute error
    np.testing.assert_allclose(
        log_score_gaussian(mean[:2], std[:2], x[:2]).numpy(),
        -scipy.stats.norm.logpdf(x[:2].numpy(), mean[:2].numpy(), std[:2].numpy()), rtol=1e-12)


@pytest.mark.parametrize("kind", list(OPERATORS))
def test_climatology_anomaly_with_a_flat_climatology_is_the_baseline(kind: str) -> None:
    obs = obs_model(kind)
    y = obs.sample(oracle_fields(4, 30), torch.Generator().manual_seed(31))
    flat = torch.tensor([0.7, -3.0], dtype=torch.float64)[:, None, None].expand(2, *SHAPE)
    out = climatology_anomaly(obs, flat, y)
    assert out.shape == (4, 2, *SHAPE)
    torch.testing.assert_close(out, obs.baseline(y), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["coarsen", "sparse"])
def test_climatology_anomaly_restores_a_fixed_pattern(kind: str) -> None:
    obs = obs_model(kind, {"a": 0.05})
    ii, jj = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    pattern = torch.as_tensor(3.0 * np.sin(2 * np.pi * ii / 5) * np.cos(2 * np.pi * jj / 3))
    anomaly = GaussianRandomField(SHAPE, length_scale=4.0, variance=0.04)
    rng = np.random.default_rng(32)
    train, test = (pattern + torch.as_tensor(anomaly.sample(n, rng))[:, None] for n in (180, 20))
    y = obs.sample(test, torch.Generator().manual_seed(33))
    rmse = {name: float(((pred - test) ** 2).mean().sqrt()) for name, pred in (
        ("plain", obs.baseline(y)), ("anomaly", climatology_anomaly(obs, train.mean(0), y)))}
    assert rmse["anomaly"] < 0.25 * rmse["plain"]


def test_bad_inputs_are_refused() -> None:
    obs = obs_model("coarsen")
    y = obs.sample(oracle_fields(2, 0), torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"y: expected shape \[T, 2, 4, 4\]"):
        true_prior().posterior(obs, y[:, :1])
    with pytest.raises(ValueError, match="climatology: expected shape"):
        climatology_anomaly(obs, torch.zeros(1, *SHAPE), y)
    # No prior variance and no noise: A Σ Aᵀ + η² I is singular.
    empty = GaussianPrior(torch.zeros(2, *SHAPE, dtype=torch.float64),
                          torch.zeros(2, 256, dtype=torch.float64),
                          torch.zeros(2, 256, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="not positive definite"):
        empty.posterior(obs_model("coarsen", {"a": 0.0, "b": 0.0}), y)
