"""Multistep exponential integrators for the EDM probability-flow ODE and reverse SDE.

With sigma the noise level, the EDM probability-flow ODE (Karras et al. 2022, eq. 1 with
sigma(t) = t and the score (D - x) / sigma^2 of eq. 3) is

    dx/dsigma = (x - D(x, sigma)) / sigma = eps(x, sigma),

D the denoiser (data prediction, ≈ E[x_0 | x]) and eps = (x - D) / sigma the noise
prediction. In lambda = -log sigma (half the log-SNR) and tau = lambda - lambda_i, a step
from sigma_i to sigma_{i+1}, of length h_i = lambda_{i+1} - lambda_i = log(sigma_i /
sigma_{i+1}), is solved exactly by the variation-of-constants formula in either form
(Lu et al. 2022a for eps, 2022b for D):

    data:   x_{i+1} = e^{-h} x_i + ∫_0^h e^{tau - h} D(lambda_i + tau) dtau
    noise:  x_{i+1} = x_i - sigma_i ∫_0^h e^{-tau} eps(lambda_i + tau) dtau

A multistep method of order k, the exponential Adams-Bashforth method (Hochbruck &
Ostermann 2010), replaces D or eps by the polynomial p(tau) = sum_m g_m tau^m through the
last k evaluations, at tau_j = lambda_{i-j} - lambda_i <= 0, and integrates it exactly,
with the weights, for tau^m, m = 0, 1, 2,

    data:   W_m = ∫_0^h e^{tau - h} tau^m dtau:  W_0 = 1 - e^{-h},  W_1 = h - W_0,
            W_2 = h^2 - 2 W_1;
    noise:  V_m = ∫_0^h e^{-tau} tau^m dtau:  V_0 = 1 - e^{-h},  V_1 = V_0 - h e^{-h},
            V_2 = 2 V_1 - h^2 e^{-h};

so every step costs one denoiser evaluation: NFE = number of steps. The first step has no
history and is first order (DDIM, identical to an Euler step in sigma), the second at most
second order. For D (or eps) a polynomial of degree < k in lambda the step is exact.

The two forms are not equally accurate. On the Gaussian oracle (``tests/
test_multistep_oracle.py``: 16x16 field, x4 block means; Karras rho = 7 grid on
[0.002, 80] ending in 0) the exact law of the output has a pixel-mean std / exact std of

    NFE                       8      9      10     12     16     32
    dpm_solver, order 3       0.977  0.989  0.996  1.002  1.003  1.001
    dpm_solver, order 2       0.871  0.898  0.917  0.943  0.968  0.992
    dpm_solver_pp, order 3    1.595  1.304  1.099  0.916  0.935  0.996
    dpm_solver_pp, order 2    1.168  1.164  1.151  1.119  1.069  1.015
    edm_sampler (Heun)        3.59 at 7, 1.73 at 11, 1.33 at 15, 1.06 at 31 NFE

The posterior's eigen-directions are resolved at sigma ~ their standard deviations, where
D (and eps) switch from prior to posterior values as a sigmoid in lambda. A data-prediction
step weights the end of its interval (e^{tau - h}), where the extrapolated polynomial is
furthest from its nodes, and with e^{-h} ≈ 0 on the long final steps of the Karras grid it
rebuilds x from the extrapolated D; a noise-prediction step weights the start (e^{-tau})
and only adds a correction of size sigma_i eps to x. ``dpm_solver`` is the solver to use on
this kind of problem; ``dpm_solver_pp`` is the form of Lu et al. 2022b, recommended there
for guided sampling with large guidance scales.

References:
    Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based
        Generative Models", NeurIPS (arXiv:2206.00364).
    Lu, Zhou, Bao, Chen, Li & Zhu 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion
        Probabilistic Model Sampling in Around 10 Steps", NeurIPS (arXiv:2206.00927).
    Lu, Zhou, Bao, Chen, Li & Zhu 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of
        Diffusion Probabilistic Models" (arXiv:2211.01095).
    Hochbruck & Ostermann 2010, "Exponential integrators", Acta Numerica 19, 209-286.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sgm.core.sampler import Denoiser, per_sample_normal


def _grid(sigmas: Tensor, start_sigma: float | None) -> list[float]:
    """The validated noise levels, with ``start_sigma`` prepended when given.

    The grid may end at 0 (the last step returns a denoised value) or at a small positive
    sigma_min (the state there is returned, carrying noise of std sigma_min: one evaluation
    fewer for the same grid, the DPM-Solver convention).
    """
    sigmas = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).flatten()
    if sigmas.numel() < 2 or sigmas[-1] < 0 or bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise ValueError("sigmas must be strictly decreasing with at least 2 entries, ending in 0 "
                         "or a positive sigma_min.")
    levels = [float(t) for t in sigmas]
    if start_sigma is None:
        return levels
    if not levels[0] < start_sigma < math.inf:
        raise ValueError(
            f"start_sigma must be finite and > sigmas[0] = {levels[0]}, got {start_sigma}."
        )
    return [float(start_sigma), *levels]


def _check_order(order: int, allowed: tuple[int, ...]) -> None:
    if order not in allowed:
        raise ValueError(f"order must be one of {allowed}, got {order!r}.")


class _Run:
    """Shared bookkeeping of one solve: per-sample generators, state dtype, denoiser calls."""

    def __init__(
        self,
        denoise: Denoiser,
        shape: tuple[int, int, int],
        seeds: Sequence[int],
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> None:
        if len(seeds) == 0:
            raise ValueError("seeds is empty: give one seed per sample.")
        self.denoise = denoise
        self.shape = shape
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.state = torch.float32 if self.device.type == "mps" else torch.float64  # no f64 on MPS
        self.dtype = dtype
        self.batch = len(seeds)
        self.gens = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def normal(self) -> Tensor:
        """One N(0, I) draw per sample from its own generator, in the state dtype."""
        return per_sample_normal(self.gens, self.shape, self.device, self.dtype).to(self.state)

    def d_of(self, x: Tensor, t: float) -> Tensor:
        """D(x, t) in the state dtype, detached (the denoiser may build a graph inside)."""
        sigma = torch.full((self.batch,), t, device=self.device, dtype=self.dtype)
        return self.denoise(x.to(self.dtype), sigma).detach().to(self.state)


def _poly_coefficients(taus: Sequence[float], values: Sequence[Tensor]) -> list[Tensor]:
    """Monomial coefficients g_m of the polynomial through (tau_j, values_j), tau_0 = 0.

    With nodes 0, -a, -(a + b) and Newton divided differences f[..]:
        g_0 = v_0,  g_1 = f[0, -a] + a f[0, -a, -(a+b)],  g_2 = f[0, -a, -(a+b)].
    """
    g = [values[0]]
    if len(values) >= 2:
        a = -taus[1]
        f01 = (values[0] - values[1]) / a
        if len(values) == 2:
            g.append(f01)
        else:
            b = taus[1] - taus[2]
            f012 = (f01 - (values[1] - values[2]) / b) / (a + b)
            g.extend([f01 + a * f012, f012])
    return g


def _data_weights(h: float) -> list[float]:
    """W_m(h) = ∫_0^h e^{tau - h} tau^m dtau, m = 0, 1, 2 (finite h)."""
    w0 = -math.expm1(-h)
    w1 = h - w0
    return [w0, w1, h * h - 2.0 * w1]


def _noise_weights(h: float) -> list[float]:
    """V_m(h) = ∫_0^h e^{-tau} tau^m dtau, m = 0, 1, 2; V_m(inf) = m! (the step to sigma = 0)."""
    if math.isinf(h):
        return [1.0, 1.0, 2.0]
    e = math.exp(-h)
    v0 = -math.expm1(-h)
    v1 = v0 - h * e
    return [v0, v1, 2.0 * v1 - h * h * e]


def _combine(weights: Sequence[float], g: Sequence[Tensor]) -> Tensor:
    """sum_m weights_m g_m over the available coefficients."""
    out = weights[0] * g[0]
    for w, gm in zip(weights[1 : len(g)], g[1:], strict=True):
        out = out + w * gm
    return out


@torch.no_grad()
def dpm_solver(
    denoise: Denoiser,
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    sigmas: Tensor,
    order: int = 3,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    start_sigma: float | None = None,
) -> Tensor:
    """Multistep DPM-Solver (noise prediction) of ``order`` 1-3 for the EDM ODE.

    With eps_i = (x_i - D(x_i, sigma_i)) / sigma_i, h_i = log(sigma_i / sigma_{i+1}) and
    g_m the coefficients of the polynomial in tau = lambda - lambda_i through the last
    q_i = min(order, i + 1) of (tau_j, eps_j) (see the module docstring):

        x_0 ~ N(0, sigma_0^2 I)
        x_{i+1} = x_i - sigma_i sum_{m < q_i} V_m(h_i) g_m,       i = 0, ..., N - 1

    i.e. the exponential Adams-Bashforth method for the noise prediction: the multistep
    DPM-Solver (Lu et al. 2022b) with the weights of the exact polynomial integral, the
    same update as azula's ``EABSampler`` (probabilists/azula). Order 1 is the Euler step
    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) eps_i. The step to sigma_N = 0 (h = inf) is
    taken at full order too (V_m(inf) = m! is finite): it extrapolates eps from
    sigma_{N-1} to 0, so sigma_{N-1} must stay well below the smallest posterior standard
    deviation, as for EDM (0.02 against a 0.05 posterior std gives 10 % per-pixel std
    errors that more steps do not remove).

    Oracle (pixel-mean std ratio, exact-90 % coverage; 16x16, Karras rho = 7 on
    [0.002, 80]): 0.977 / 0.908 at 8 NFE, 0.989 / 0.904 at 9, 1.002 / 0.899 at 12
    (coarsen x4); 0.973 / 0.909, 0.985 / 0.905, 1.000 / 0.900 (10 % point values).
    azula counts 8 intervals on [80, 0.002] ending without a final evaluation as 8 NFE;
    that is the 9-NFE grid here, whose last step 0.002 -> 0 costs one evaluation.

    The state is integrated in float64 (float32 on MPS); ``denoise`` receives ``dtype``.
    Runs under ``torch.no_grad()``; a denoiser that needs gradients (guidance) can
    re-enable them inside, its output is detached.

    Args:
        denoise: ``denoise(x[B, C, H, W], sigma[B]) -> D[B, C, H, W]``.
        shape: (C, H, W) of one sample.
        seeds: one seed per sample (see ``sgm.core.sampler.member_seed``); B = len(seeds).
            Sample b draws its initial noise from its own generator, so it does not depend
            on which other samples share its batch.
        sigmas: Tensor[N + 1], decreasing, ending in 0 or sigma_min (``karras_sigmas``).
        order: 1, 2 or 3.
        device: device of the samples and of the per-sample generators.
        dtype: dtype of the random draws, of the denoiser inputs and of the output.
        start_sigma: if given (> sigmas[0]), start from N(0, start_sigma^2 I) and take one
            extra step to sigmas[0]: NFE = N + 1. Starting at sigma_0 = sigma_max instead of
            the noised posterior N(mu, Sigma + sigma_max^2 I) leaves a mean bias of
            mu_u / sigma_max posterior standard deviations in each eigen-direction u
            (``sgm.core.gaussian.ode_output_law``); the extra step divides it by
            start_sigma / sigma_max.

    Returns:
        Tensor[B, C, H, W] of samples, ``dtype`` on ``device``.
    """
    _check_order(order, (1, 2, 3))
    levels = _grid(sigmas, start_sigma)
    run = _Run(denoise, shape, seeds, device, dtype)
    x = run.normal() * levels[0]
    lams: list[float] = []
    eps: list[Tensor] = []
    for t_cur, t_next in zip(levels[:-1], levels[1:], strict=True):
        lams = [-math.log(t_cur), *lams][:order]
        eps = [(x - run.d_of(x, t_cur)) / t_cur, *eps][:order]
        h = math.log(t_cur / t_next) if t_next > 0 else math.inf
        g = _poly_coefficients([lam - lams[0] for lam in lams], eps)
        x = x - t_cur * _combine(_noise_weights(h), g)
    return x.to(dtype)


@torch.no_grad()
def dpm_solver_pp(
    denoise: Denoiser,
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    sigmas: Tensor,
    order: int = 3,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    start_sigma: float | None = None,
) -> Tensor:
    """Multistep DPM-Solver++ (data prediction) of ``order`` 1-3 for the EDM ODE.

    With D_i = D(x_i, sigma_i), h_i = log(sigma_i / sigma_{i+1}), r_i = h_{i-1} / h_i and
    q_i = min(order, i + 1) (Lu et al. 2022b; 2M is their Algorithm 2):

        x_0 ~ N(0, sigma_0^2 I)
        q_i = 1 (DDIM):   x_{i+1} = e^{-h} x_i + (1 - e^{-h}) D_i
        q_i = 2 (2M):     x_{i+1} = e^{-h} x_i + (1 - e^{-h}) [(1 + 1/(2 r)) D_i - D_{i-1}/(2 r)]
        q_i = 3:          x_{i+1} = e^{-h} x_i + sum_{m < 3} W_m(h) g_m
        last step (sigma_N = 0, h = inf):  x_N = D_{N-1}

    g_m being the coefficients of the quadratic in tau = lambda - lambda_i through
    (tau_j, D_{i-j}), j = 0, 1, 2 (module docstring). DDIM is the Euler step in sigma. The
    final step returns the denoised value, since e^{-h} -> 0 and W_1, W_2 diverge: no
    higher-order term exists there (as in k-diffusion's ``sample_dpmpp_2m``); no other step
    is lowered.

    Order 3 is the exponential Adams-Bashforth step (exact integral of the interpolating
    quadratic), not the third-order update of the reference codes (``dpm_solver_pytorch``
    ``multistep_dpm_solver_third_update``, k-diffusion ``sample_dpmpp_3m_sde`` at eta = 0),
    which have the same first two terms but weight the second divided difference
    f[0, -a, -(a+b)] (times h^2) by -phi_3 = W_2 / (2 h^2), half its exact integral. That
    leaves an O(h^3) local error, i.e. second order: on the exact N(0, 1) flow their error
    falls 3.4x per halving of the step (-> 4) and this one 8.2x (-> 8; checked by
    ``tests/test_multistep_oracle.py``). (Measured on the oracle at 12-32 NFE the halved
    weight happens to be closer: std ratio 1.015 / 0.984 / 1.001 at 12 / 16 / 32 NFE
    against 0.916 / 0.935 / 0.996 here, coarsen x4; both fail at 8, 1.52 and 1.60.)
    Order 2 keeps the paper's 2M weight (1 - e^{-h}) h / 2 on the first divided difference
    instead of the exact W_1 = h - 1 + e^{-h}: also second order, and much better at few
    steps on the oracle (std ratio 1.17 against 1.43 at 8 NFE).

    The state is integrated in float64 (float32 on MPS); ``denoise`` receives ``dtype``.
    Runs under ``torch.no_grad()``; a denoiser that needs gradients (guidance) can
    re-enable them inside, its output is detached.

    Args:
        denoise: ``denoise(x[B, C, H, W], sigma[B]) -> D[B, C, H, W]``.
        shape: (C, H, W) of one sample.
        seeds: one seed per sample (see ``sgm.core.sampler.member_seed``); B = len(seeds).
        sigmas: Tensor[N + 1], decreasing, ending in 0 or sigma_min (``karras_sigmas``).
        order: 1, 2 or 3.
        device: device of the samples and of the per-sample generators.
        dtype: dtype of the random draws, of the denoiser inputs and of the output.
        start_sigma: if given (> sigmas[0]), start from N(0, start_sigma^2 I) and take one
            extra step to sigmas[0] (NFE = N + 1), dividing the mean bias of the start at
            sigma_max (mu_u / sigma_max posterior sds per eigen-direction u) by
            start_sigma / sigma_max; see ``dpm_solver``.

    Returns:
        Tensor[B, C, H, W] of samples, ``dtype`` on ``device``.
    """
    _check_order(order, (1, 2, 3))
    return _data_prediction(denoise, shape, seeds, sigmas, order, 0.0, device, dtype, start_sigma)


@torch.no_grad()
def sde_dpm_solver_pp(
    denoise: Denoiser,
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    sigmas: Tensor,
    order: int = 2,
    eta: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    start_sigma: float | None = None,
) -> Tensor:
    """SDE-DPM-Solver++(1S / 2M) for the EDM reverse SDE (variance exploding, alpha = 1).

    The reverse SDE whose drift is (1 + eta) times the ODE's and which injects noise at the
    rate that keeps the marginals, in data-prediction form (SDE-DPM-Solver++, Lu et al.
    2022b; k-diffusion ``sample_dpmpp_2m_sde``, midpoint variant), with
    h = log(sigma_i / sigma_{i+1}), kappa = (1 + eta) h, r = h_{i-1} / h_i:

        x_0 ~ N(0, sigma_0^2 I)
        x_{i+1} = e^{-kappa} x_i + (1 - e^{-kappa}) D_i
                  + (1 - e^{-kappa}) (D_i - D_{i-1}) / (2 r)                 (order 2, i >= 1)
                  + sigma_{i+1} sqrt(1 - e^{-2 eta h}) z_i,      z_i ~ N(0, I)
        last step (sigma_N = 0):  x_N = D_{N-1}

    eta = 1 is the ancestral (DDPM) step: x_{i+1} ~ N(D_i + (sigma_{i+1}/sigma_i)^2
    (x_i - D_i), sigma_{i+1}^2 (1 - (sigma_{i+1}/sigma_i)^2)) at first order; eta = 0 is
    ``dpm_solver_pp`` (with ``order`` <= 2). For a point mass at D the step is exact in law
    for every eta. The injected noise makes the output forget its initial law: an initial
    mean error in a posterior eigen-direction u of variance v_u is multiplied by
    (v_u / (v_u + sigma_0^2))^((1 + eta) / 2) (the ODE, eta = 0: the square root), so at
    eta = 1 starting at N(0, sigma_max^2 I) leaves a bias of mu_u sqrt(v_u) / (v_u +
    sigma_max^2) sds (<= 0.0014 on the oracle) and the target is the posterior itself.
    Its discretisation error is larger than the ODE solvers' (oracle std ratio 1.04 at 32
    NFE, 1.01 at 64, order 2; 0.92 at 64, order 1).

    Each sample draws its initial noise and then one z_i per step (none at the last, none
    if eta = 0) from its own generator seeded with ``seeds[b]``, as ``edm_sampler`` does,
    so a sample does not depend on which others share its batch.

    Args:
        denoise: ``denoise(x[B, C, H, W], sigma[B]) -> D[B, C, H, W]``.
        shape: (C, H, W) of one sample.
        seeds: one seed per sample; B = len(seeds).
        sigmas: Tensor[N + 1], decreasing, ending in 0 or sigma_min (``karras_sigmas``).
        order: 1 or 2.
        eta: stochasticity, >= 0 (0 = probability-flow ODE, 1 = ancestral sampling).
        device: device of the samples and of the per-sample generators.
        dtype: dtype of the random draws, of the denoiser inputs and of the output.
        start_sigma: as in ``dpm_solver_pp`` (one extra step, NFE = N + 1).

    Returns:
        Tensor[B, C, H, W] of samples, ``dtype`` on ``device``.
    """
    _check_order(order, (1, 2))
    if not 0.0 <= eta < math.inf:
        raise ValueError(f"eta must be finite and non-negative, got {eta}.")
    return _data_prediction(denoise, shape, seeds, sigmas, order, eta, device, dtype, start_sigma)


def _data_prediction(
    denoise: Denoiser,
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    sigmas: Tensor,
    order: int,
    eta: float,
    device: torch.device | str | None,
    dtype: torch.dtype,
    start_sigma: float | None,
) -> Tensor:
    """The DPM-Solver++ family: ``dpm_solver_pp`` (eta = 0) and ``sde_dpm_solver_pp``.

    The order-2 step uses the 2M weight; the order-3 step (eta = 0 only) the exact W_m.
    """
    levels = _grid(sigmas, start_sigma)
    run = _Run(denoise, shape, seeds, device, dtype)
    x = run.normal() * levels[0]
    lams: list[float] = []
    ds: list[Tensor] = []
    for t_cur, t_next in zip(levels[:-1], levels[1:], strict=True):
        lams = [-math.log(t_cur), *lams][:order]
        ds = [run.d_of(x, t_cur), *ds][:order]
        if t_next == 0:
            x = ds[0]  # the denoised value: e^{-h} = 0, and W_1, W_2 diverge
            continue
        h = math.log(t_cur / t_next)
        rate = 1.0 + eta
        g = _poly_coefficients([lam - lams[0] for lam in lams], ds)
        # ∫_0^h rate e^{rate (tau - h)} tau^m dtau = W_m(rate h) / rate^m
        weights = [w / rate**m for m, w in enumerate(_data_weights(rate * h))]
        if len(g) == 2:
            weights[1] = 0.5 * weights[0] * h  # the 2M weight in place of the exact one
        x = math.exp(-rate * h) * x + _combine(weights, g)
        if eta > 0:
            x = x + t_next * math.sqrt(-math.expm1(-2.0 * eta * h)) * run.normal()
    return x.to(dtype)
