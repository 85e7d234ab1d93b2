"""The Gaussian oracle: the EDM sampler driven by the EXACT posterior denoiser must reproduce
the exact posterior of a Gaussian random field, and the same checks must fail for wrong
samplers. Also unit tests of the schedule, the seeding and the sampler's bookkeeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from sgm.core.gaussian import (
    GaussianRandomField,
    conditional_denoiser,
    exact_posterior,
    ode_output_law,
    oracle_statistics,
)
from sgm.core.operators import Coarsen, SparseMask
from sgm.core.sampler import edm_sampler, member_seed
from sgm.core.schedule import karras_sigmas

GRID = (16, 16)
SHAPE = (1, *GRID)
MEMBERS = 4000  # positive checks
MEMBERS_WRONG = 1000  # negative checks (the wrong samplers miss by many SE, see below)
STEPS = 32

# ---------------------------------------------------------------- the oracle check
#
# For an exact sampler with M independent members and P = 256 pixels:
#  * mean: z_p = (mean_p - mu_p) / (s_p / sqrt(M)) ~ N(0, 1). P(|z| > 4.5) = 6.8e-6, so on
#    average 0.002 pixels exceed it; failing needs >= 3 (1 %): essentially never. A bias of
#    d posterior sds gives z = d sqrt(M) (d = 0.07 -> z = 4.5 at M = 4000).
#  * std: s_hat / s has SE 1/sqrt(2M) = 1.1 % (M = 4000). The pixel average has SE <= 1.1 %
#    (pixels are positively correlated; fully correlated in the worst case), so +-5 % is
#    >= 4.5 SE and leaves room for the O(N^-2) Heun bias (+1.6 % measured at 32 steps).
#    Per pixel, +-12 % is 11 SE; requiring 95 % of pixels tolerates a few tiny directions.
#  * coverage of the exact central 90 % interval: per pixel Binomial(M, 0.9) / M, SE
#    sqrt(0.09 / M) = 0.47 %; the pixel average has SE <= 0.47 %: [0.88, 0.92] is +-4.2 SE.
# With M = 1000 (negative tests) these SEs double; every wrong sampler below misses
# by far more than that (margins asserted in the tests).


def oracle_check(samples: Tensor, mean: np.ndarray, std: np.ndarray) -> dict[str, bool]:
    """Pass/fail of each check of samples[M, 1, H, W] against exact marginals mean/std[H*W]."""
    st = oracle_statistics(samples, mean, std, level=0.9)
    return {
        "mean": bool(np.mean(np.abs(st.mean_z) < 4.5) >= 0.99),
        "std_avg": bool(abs(st.std_ratio.mean() - 1.0) < 0.05),
        "std_pixels": bool(np.mean(np.abs(st.std_ratio - 1.0) < 0.12) >= 0.95),
        "coverage": bool(0.88 <= st.coverage.mean() <= 0.92),
    }


@dataclass(frozen=True)
class Problem:
    name: str
    prior: GaussianRandomField
    mean: np.ndarray  # exact posterior mean [N]
    cov: np.ndarray  # exact posterior covariance [N, N]
    denoise: Callable[[Tensor, Tensor], Tensor]  # exact posterior denoiser

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))

    def ode_target(self, sigma_max: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact law of the ODE output from x_0 ~ N(0, sigma_max^2 I) (mean, std)."""
        mean, cov = ode_output_law(self.mean, self.cov, sigma_max)
        return mean, np.sqrt(np.diag(cov))


def _make_problem(name: str) -> Problem:
    prior = GaussianRandomField(GRID, length_scale=3.0, nu=1.5)
    op = Coarsen(GRID, 4) if name == "coarsen" else SparseMask(GRID, fraction=0.1, seed=0)
    noise_std = 0.05
    rng = np.random.default_rng(0)
    truth = prior.sample(1, rng).reshape(-1)
    a = op.matrix()
    y = a @ truth + noise_std * rng.standard_normal(a.shape[0])
    mean, cov = exact_posterior(prior, a, noise_std, y)
    return Problem(name, prior, mean, cov, conditional_denoiser(torch.as_tensor(mean), cov))


PROBLEMS = {name: _make_problem(name) for name in ("coarsen", "sparse")}




def _sample(denoise: Callable[[Tensor, Tensor], Tensor], sigmas: Tensor, members: int, **kw):
    return edm_sampler(denoise, SHAPE, seeds=list(range(members)), sigmas=sigmas, **kw)


# ---------------------------------------------------------------- positive oracle tests


@pytest.mark.parametrize("name", ["coarsen", "sparse"])
def test_heun_ode_matches_exact_posterior(name: str) -> None:
    p = PROBLEMS[name]
    sigmas = karras_sigmas(STEPS)
    samples = _sample(p.denoise, sigmas, MEMBERS)
    # Target: the exact posterior pushed through the exact ODE from EDM's start N(0, 80^2 I);
    # it differs from the posterior mean by mu_u / 80 sds per eigendirection u (see
    # ode_output_law), which 4000 members resolve in the sparse case (|z| up to 6).
    mean, std = p.ode_target(float(sigmas[0]))
    assert oracle_check(samples, mean, std) == dict.fromkeys(
        ("mean", "std_avg", "std_pixels", "coverage"), True
    )


def test_rescaled_schedule_is_still_correct() -> None:
    """Halving every sigma is NOT a bug: the ODE is exact for any schedule that starts at the
    noise level of its own initial draw (here sigma_max = 40 >> data std)."""
    p = PROBLEMS["coarsen"]
    sigmas = 0.5 * karras_sigmas(STEPS)
    samples = _sample(p.denoise, sigmas, MEMBERS)
    assert all(oracle_check(samples, *p.ode_target(40.0)).values())


def test_churn_matches_exact_posterior() -> None:
    p = PROBLEMS["sparse"]
    sigmas = karras_sigmas(48)
    samples = _sample(p.denoise, sigmas, MEMBERS, churn=10.0, s_tmin=0.05, s_tmax=50.0)
    # Churn re-noises the state, forgetting the start-up mismatch, so the target is the
    # posterior itself. Churn adds discretisation error (EDM sec. 4), hence 48 steps
    # (measured: max |z| 2.6, std ratio 1.016, coverage 0.895; at 32 steps 1.043 / 0.885).
    assert all(oracle_check(samples, p.mean, p.std).values())


# ---------------------------------------------------------------- negative oracle tests


def test_euler_with_too_few_steps_fails() -> None:
    p = PROBLEMS["coarsen"]
    sigmas = karras_sigmas(4)
    samples = _sample(p.denoise, sigmas, MEMBERS_WRONG, second_order=False)
    checks = oracle_check(samples, *p.ode_target(80.0))
    assert not checks["std_avg"] and not checks["coverage"]
    st = oracle_statistics(samples, p.mean, p.std)
    assert st.std_ratio.mean() < 0.6  # ~0.45: far beyond any MC error


def test_heun_with_too_few_steps_fails() -> None:
    p = PROBLEMS["coarsen"]
    samples = _sample(p.denoise, karras_sigmas(8), MEMBERS_WRONG)
    checks = oracle_check(samples, *p.ode_target(80.0))
    assert not checks["std_avg"] and not checks["coverage"]
    assert oracle_statistics(samples, p.mean, p.std).std_ratio.mean() > 1.2  # ~1.34


def test_misscaled_noise_level_conditioning_fails() -> None:
    """The denoiser is told sigma / 2 (e.g. a preconditioning bug): samples stay too noisy."""
    p = PROBLEMS["coarsen"]

    def wrong(x: Tensor, sigma: Tensor) -> Tensor:
        return p.denoise(x, 0.5 * sigma)

    samples = _sample(wrong, karras_sigmas(STEPS), MEMBERS_WRONG)
    checks = oracle_check(samples, *p.ode_target(80.0))
    assert not checks["std_avg"] and not checks["coverage"]
    assert oracle_statistics(samples, p.mean, p.std).std_ratio.mean() > 1.15


def test_sigma_max_below_data_scale_fails() -> None:
    """Starting at sigma_max = 1 ~ prior std: x_0 ~ N(0, I) is not the noised posterior."""
    p = PROBLEMS["sparse"]
    samples = _sample(p.denoise, karras_sigmas(STEPS, sigma_max=1.0), MEMBERS_WRONG)
    checks = oracle_check(samples, p.mean, p.std)
    assert not checks["mean"]
    assert np.median(np.abs(oracle_statistics(samples, p.mean, p.std).mean_z)) > 10.0


def test_ignoring_the_observations_fails() -> None:
    """The prior's denoiser (conditioning dropped) samples the prior, not the posterior."""
    p = PROBLEMS["sparse"]
    samples = _sample(p.prior.denoise, karras_sigmas(STEPS), MEMBERS_WRONG)
    checks = oracle_check(samples, *p.ode_target(80.0))
    assert not any(checks.values())


# ---------------------------------------------------------------- sampler bookkeeping


def _unit_gaussian_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
    """Exact, elementwise denoiser of N(0, I) data: D = x / (1 + sigma^2)."""
    return x / (1.0 + sigma.reshape(-1, 1, 1, 1) ** 2)


@pytest.mark.parametrize("churn", [0.0, 10.0])
def test_sample_is_independent_of_batch_composition(churn: float) -> None:
    seeds = [member_seed(7, 3, m) for m in range(8)]
    sigmas = karras_sigmas(12)
    batch = edm_sampler(_unit_gaussian_denoiser, (2, 5, 4), seeds, sigmas, churn=churn)
    for b in (0, 5):
        alone = edm_sampler(_unit_gaussian_denoiser, (2, 5, 4), [seeds[b]], sigmas, churn=churn)
        assert torch.equal(alone[0], batch[b])
    shuffled = edm_sampler(_unit_gaussian_denoiser, (2, 5, 4), seeds[::-1], sigmas, churn=churn)
    assert torch.equal(shuffled.flip(0), batch)
    # With a batched (matmul) denoiser only the BLAS summation order may differ.
    p = PROBLEMS["sparse"]
    batch = edm_sampler(p.denoise, SHAPE, seeds, sigmas, churn=churn, dtype=torch.float64)
    alone = edm_sampler(p.denoise, SHAPE, seeds[3:4], sigmas, churn=churn, dtype=torch.float64)
    torch.testing.assert_close(alone[0], batch[3], rtol=0, atol=1e-10)


def test_determinism_and_seed_sensitivity() -> None:
    sigmas = karras_sigmas(6)
    a = edm_sampler(_unit_gaussian_denoiser, (1, 4, 4), [1, 2, 3], sigmas, churn=5.0)
    b = edm_sampler(_unit_gaussian_denoiser, (1, 4, 4), [1, 2, 3], sigmas, churn=5.0)
    assert torch.equal(a, b)
    c = edm_sampler(_unit_gaussian_denoiser, (1, 4, 4), [1, 2, 4], sigmas, churn=5.0)
    assert torch.equal(a[:2], c[:2]) and not torch.allclose(a[2], c[2])


def test_ode_follows_the_exact_per_sample_flow() -> None:
    """For N(0, I) data the ODE maps the initial noise sigma_max * eps to
    eps * sigma_max / sqrt(1 + sigma_max^2), eps being the sample's first N(0, I) draw.
    Heun's global error is O(N^-2) and Euler's O(N^-1) (measured: Heun 1.3 % at 32 steps,
    0.30 % at 64)."""
    seeds = [11, 12, 13]
    eps = torch.stack(
        [
            torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(s), dtype=torch.float64)
            for s in seeds
        ]
    )
    exact = eps * 80.0 / math.sqrt(1.0 + 80.0**2)

    def rel_error(steps: int, second_order: bool) -> float:
        out = edm_sampler(
            _unit_gaussian_denoiser,
            (1, 8, 8),
            seeds,
            karras_sigmas(steps),
            dtype=torch.float64,
            second_order=second_order,
        )
        ratio = out / exact  # the exact flow is a scalar map, so the ratio is uniform
        assert float(ratio.std()) < 1e-6
        return float(ratio.mean()) - 1.0

    heun = [rel_error(n, True) for n in (32, 64, 128)]
    assert 0.0 < heun[1] < 0.004
    for coarse, fine in zip(heun[:-1], heun[1:], strict=True):
        assert 3.5 < coarse / fine < 4.5
    euler = [rel_error(n, False) for n in (64, 128)]
    assert 1.7 < euler[0] / euler[1] < 2.3


def test_point_mass_is_reached_exactly() -> None:
    """D = c (a point mass): each Euler/Heun step is exact, so every sample ends at c."""
    c = torch.full((1, 3, 3), 0.75)

    def point_mass(x: Tensor, sigma: Tensor) -> Tensor:
        return c.expand_as(x)

    for second_order in (True, False):
        out = edm_sampler(
            point_mass, (1, 3, 3), [0, 1], karras_sigmas(5), second_order=second_order
        )
        torch.testing.assert_close(out, c.expand(2, 1, 3, 3), rtol=0, atol=1e-6)


def test_churn_noise_levels_and_evaluation_count() -> None:
    calls: list[float] = []

    def record(x: Tensor, sigma: Tensor) -> Tensor:
        assert sigma.shape == (x.shape[0],) and bool((sigma == sigma[0]).all())
        calls.append(float(sigma[0]))
        return torch.zeros_like(x)

    sigmas = karras_sigmas(10)
    edm_sampler(record, (1, 2, 2), [0, 1], sigmas, churn=3.0, s_tmin=0.05, s_tmax=10.0)
    assert len(calls) == 2 * 10 - 1  # Heun: two evaluations per step, one at the last
    gamma = 3.0 / 10
    first_evals = calls[0::2]  # the Euler evaluation of each step is at t_hat
    for t, t_hat in zip(sigmas[:-1].tolist(), first_evals, strict=True):
        expected = t * (1 + gamma) if 0.05 <= t <= 10.0 else t
        assert t_hat == pytest.approx(expected, rel=1e-6)
    calls.clear()
    edm_sampler(record, (1, 2, 2), [0], sigmas, churn=100.0, second_order=False)
    assert len(calls) == 10
    assert calls[0] == pytest.approx(80.0 * math.sqrt(2.0), rel=1e-6)  # gamma capped at √2 - 1


# ---------------------------------------------------------------- schedule and seeds


def test_karras_sigmas() -> None:
    s = karras_sigmas(18)
    assert s.shape == (19,) and s.dtype == torch.float64
    assert float(s[0]) == pytest.approx(80.0) and float(s[-2]) == pytest.approx(0.002)
    assert float(s[-1]) == 0.0 and bool((s[1:] < s[:-1]).all())
    hi, lo = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    assert float(s[9]) == pytest.approx((hi + 9 / 17 * (lo - hi)) ** 7, rel=1e-12)
    lin = karras_sigmas(5, sigma_min=1.0, sigma_max=5.0, rho=1.0)
    torch.testing.assert_close(
        lin, torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(karras_sigmas(1), torch.tensor([80.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="steps"):
        karras_sigmas(0)


def test_member_seed() -> None:
    seeds = {member_seed(s, t, m) for s in range(3) for t in range(4) for m in range(100)}
    assert len(seeds) == 1200
    assert all(0 <= s < 2**63 for s in seeds)
    assert member_seed(5, 1, 2) == member_seed(5, 1, 2)
    assert member_seed(5, 1, 2) != member_seed(5, 2, 1)
    with pytest.raises(ValueError, match="member"):
        member_seed(0, 0, -1)
