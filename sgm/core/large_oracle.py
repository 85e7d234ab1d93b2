"""A large Gaussian oracle without dense matrices, and the exact oracle of one tile.

``sgm.core.gaussian`` checks samplers on grids of a few hundred pixels with dense N x N
matrices. Here the same prior, a stationary Gaussian random field x ~ N(mu, C) on a periodic
grid (:class:`~sgm.core.gaussian.GaussianRandomField`), is conditioned on y = A x + eta eps
(any linear :class:`~sgm.core.observation.ObservationModel`, one eta per variable, the same
prior for every variable) without ever forming a matrix, so that grids of 256 x 256 and more
keep memory O(pixels):

* C v = F^-1[P F v] by FFT (P the prior's spectrum; rfft2, since P is even);
* the posterior mean m = mu + C A^T u with (A C A^T + eta^2 I) u = y - A mu, solved by
  conjugate gradients in observation space (products with A, A^T and C only);
* exact posterior samples by perturbation (Matheron's rule; Hoffman & Ribak 1991,
  Wilson et al. 2020): x = x~ + C A^T (A C A^T + eta^2 I)^-1 (y - A x~ - eta eps) with
  x~ ~ N(mu, C), eps ~ N(0, I) -- every draw is exact, so a sample standard deviation from
  M draws has relative standard error 1 / sqrt(2 (M - 1));
* products with the posterior covariance, Sigma v = C v - C A^T (A C A^T + eta^2 I)^-1 A C v,
  hence exact variances w^T Sigma w of linear functionals (marginal variances for w = e_p),
  one solve per functional;
* the exact denoiser of the noised posterior, D(x, sigma) = E[x0 | x0 + sigma n = x, y].

The denoiser is not computed as m + Sigma (Sigma + sigma^2 I)^-1 (x - m), which would nest a
solve with Sigma inside an outer CG. Conditioning a Gaussian on two observations is the same in
either order, so condition on x first and on y second: given x alone the prior gives
x0 | x ~ N(m_s, C_s) with m_s = mu + F^-1[P / (P + sigma^2) F(x - mu)] and C_s the circulant
covariance of spectrum P sigma^2 / (P + sigma^2) (the prior denoiser and its error); then

    D(x, sigma) = m_s + C_s A^T (A C_s A^T + eta^2 I)^-1 (y - A m_s),

one CG solve with FFT products per call. Its condition number is at most
1 + min(sigma^2, max P) ||A A^T|| / eta^2 (e.g. 1 + sigma^2 / (16 eta^2) for 4 x 4 block
means), so small noise levels converge in a few iterations and large ones like the posterior
mean. The CG tolerance (relative residual 1e-10 by default) makes all of these exact to
round-off in practice: against the dense oracle on 16 x 16 (``tests/test_tiling_oracle.py``)
mean, marginal std and denoiser agree to 1e-14 for block means and 1e-10 for stations (whose
A C A^T is worse conditioned).

:class:`WindowPosterior` is the other half of the tiling oracle: the exact posterior denoiser
of the prior's h x w window marginal (not periodic) given the observations inside the window,
with dense (hw) x (hw) matrices. It is the denoiser that a network trained on random patches of
that size converges to, since the patch loss only sees the window's state and conditioning.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from sgm.core.gaussian import GaussianRandomField
from sgm.core.observation import ObservationModel
from sgm.core.operators import ObservationOperator
from sgm.core.sampler import Denoiser


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    ndim: int,
    rtol: float = 1e-10,
    max_iter: int = 2000,
) -> tuple[Tensor, int]:
    """Solve M u = b for a batch of independent symmetric positive definite systems.

    Plain conjugate gradients (Hestenes & Stiefel 1952), u_0 = 0: with r = b - M u, p = r,

        alpha = r.r / p.Mp,  u += alpha p,  r -= alpha Mp,  p = r + (r'.r' / r.r) p,

    every system with its own alpha and beta (inner products over the last ``ndim`` dims),
    iterated until every ||r|| <= rtol ||b||.

    Args:
        matvec: u -> M u on Tensor[..., *vector_shape], batched over the leading dims.
        b: Tensor[..., *vector_shape], the last ``ndim`` dims one system's vector.

    Returns:
        (u, iterations). Raises RuntimeError when ``max_iter`` iterations do not converge.
    """
    dims = tuple(range(b.ndim - ndim, b.ndim))
    u = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(dims, keepdim=True)
    target = rtol**2 * rr
    for it in range(max_iter + 1):
        if bool((rr <= target).all()):
            return u, it
        if it == max_iter:
            break
        mp = matvec(p)
        pmp = (p * mp).sum(dims, keepdim=True)
        alpha = torch.where(pmp > 0, rr / pmp.clamp_min(torch.finfo(b.dtype).tiny), 0.0)
        u = u + alpha * p
        r = r - alpha * mp
        rr_new = (r * r).sum(dims, keepdim=True)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(torch.finfo(b.dtype).tiny), 0.0)
        p = r + beta * p
        rr = rr_new
    worst = float((rr / target.clamp_min(torch.finfo(b.dtype).tiny)).max().sqrt()) * rtol
    raise RuntimeError(f"conjugate gradients did not converge in {max_iter} iterations "
                       f"(relative residual {worst:.2e} > {rtol:.1e})")


class MatrixFreePosterior:
    """Exact posterior of the periodic prior ``prior`` given y = A x + eta eps, matrix-free.

    Every variable of ``obs`` has the same prior and its own eta > 0. Fields are
    Tensor[..., C, H, W] and observations Tensor[..., C, *obs_shape], in float64; memory is a
    few fields per right-hand side (the CG vectors), whatever the grid. Cost on one CPU thread,
    256 x 256, l = 2, eta = 0.1 (4 x 4 block means / 400 stations): posterior mean 42 / 57 CG
    iterations (0.05 s), 32 exact draws 2 s, denoiser of 8 members 3-41 / 8-57 iterations
    from sigma = 0.05 to 20 (0.04-0.4 s).

    Args:
        prior: the Gaussian random field, on the grid of ``obs``.
        obs: the linear observation model.
        rtol: relative residual at which every CG solve stops.
        max_iter: CG iterations before giving up (RuntimeError).
    """

    def __init__(
        self,
        prior: GaussianRandomField,
        obs: ObservationModel,
        rtol: float = 1e-10,
        max_iter: int = 2000,
    ) -> None:
        if tuple(prior.shape) != tuple(obs.grid):
            raise ValueError(f"prior grid {prior.shape} differs from the observation grid "
                             f"{obs.grid}")
        eta = obs.noise_std()
        if not bool((eta > 0).all()):
            raise ValueError("the exact posterior needs noise_std > 0 for every variable")
        self.prior, self.obs = prior, obs
        self.rtol, self.max_iter = float(rtol), int(max_iter)
        # P on the rfft2 half-plane (P is even, so this is all of it)
        self._half = torch.as_tensor(prior.spectrum())[:, : prior.shape[1] // 2 + 1]
        self._eta2 = (eta**2).reshape(-1, *([1] * len(obs.obs_shape)))
        self.iterations: list[int] = []  # CG iterations of every solve, in call order

    # ------------------------------------------------------------------ building blocks

    def _filter(self, v: Tensor, spectrum: Tensor) -> Tensor:
        """F^-1[spectrum F v] over the last two dims of v (spectrum on the rfft2 half-plane)."""
        return torch.fft.irfft2(spectrum * torch.fft.rfft2(v), s=self.prior.shape)

    def cov(self, v: Tensor) -> Tensor:
        """Prior covariance product C v by FFT, v: Tensor[..., H, W] -> Tensor like v."""
        return self._filter(v, self._half)

    def _solve(self, rhs: Tensor, spectrum: Tensor) -> Tensor:
        """u = (A C' A^T + eta^2 I)^-1 rhs, C' the circulant covariance of ``spectrum``."""
        obs = self.obs

        def s_apply(u: Tensor) -> Tensor:
            return obs.apply(self._filter(obs.adjoint(u), spectrum)) + self._eta2 * u

        u, iters = conjugate_gradient(s_apply, rhs, len(obs.obs_shape), self.rtol,
                                      self.max_iter)
        self.iterations.append(iters)
        return u

    # ------------------------------------------------------------------ the posterior

    def mean(self, y: Tensor) -> Tensor:
        """Posterior mean m = mu + C A^T (A C A^T + eta^2 I)^-1 (y - A mu).

        y: Tensor[..., C, *obs_shape] -> Tensor[..., C, H, W] (float64).
        """
        y = y.to(torch.float64)
        mu = torch.full_like(self.obs.adjoint(y), self.prior.mean)
        u = self._solve(y - self.obs.apply(mu), self._half)
        return mu + self.cov(self.obs.adjoint(u))

    def prior_sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n prior draws mu + F^-1[sqrt(P) F w], w ~ N(0, I): Tensor[n, C, H, W] (float64)."""
        shape = (n, len(self.obs.variables), *self.prior.shape)
        white = torch.randn(shape, generator=generator, dtype=torch.float64)
        return self.prior.mean + self._filter(white, self._half.sqrt())

    def sample(self, y: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """n exact posterior draws given one observation y: Tensor[C, *obs_shape], by
        Matheron's rule x = x~ + C A^T (A C A^T + eta^2 I)^-1 (y - A x~ - eta eps).

        Returns Tensor[n, C, H, W] (float64).
        """
        x_prior = self.prior_sample(n, generator)
        clean = self.obs.apply(x_prior)
        eps = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
        u = self._solve(y.to(torch.float64) - clean - self._eta2.sqrt() * eps, self._half)
        return x_prior + self.cov(self.obs.adjoint(u))

    def posterior_cov(self, v: Tensor) -> Tensor:
        """Sigma v = C v - C A^T (A C A^T + eta^2 I)^-1 A C v for v: Tensor[..., C, H, W]."""
        cv = self.cov(v.to(torch.float64))
        u = self._solve(self.obs.apply(cv), self._half)
        return cv - self.cov(self.obs.adjoint(u))

    def variance(self, weights: Tensor) -> Tensor:
        """Exact posterior variance w^T Sigma w of the linear functionals w^T x, per variable.

        weights: Tensor[P, C, H, W] (e.g. unit fields e_p for marginal variances; memory is
        that of P fields, so chunk long lists). Returns Tensor[P, C] (float64).
        """
        w = weights.to(torch.float64)
        return (w * self.posterior_cov(w)).sum((-2, -1))

    def marginal_std(self, pixels: list[tuple[int, int]], chunk: int = 64) -> Tensor:
        """Exact posterior standard deviation at the given (row, column) pixels: Tensor[P, C],
        computed ``chunk`` pixels at a time (memory: ``chunk`` fields).

        One CG solve per distinct pixel: cheap for a few pixels, or for all of them when the
        operator commutes with shifts by p pixels (``shift_period``; 4 x 4 block means on the
        periodic grid: the 16 pixels of one block give every marginal), where pixels are taken
        modulo p. Otherwise estimate the std from :meth:`sample` draws, with a relative
        standard error of 1 / sqrt(2 (M - 1)) per pixel for M draws.
        """
        period = self.obs.operator.shift_period
        if period is not None:
            reps = [(i % period, j % period) for i, j in pixels]
            distinct = sorted(set(reps))
            std = self._marginal_std(distinct, chunk)
            where = {p: k for k, p in enumerate(distinct)}
            return std[torch.tensor([where[p] for p in reps], dtype=torch.long)]
        return self._marginal_std(pixels, chunk)

    def _marginal_std(self, pixels: list[tuple[int, int]], chunk: int) -> Tensor:
        h, w = self.prior.shape
        channels = len(self.obs.variables)
        out = []
        for start in range(0, len(pixels), chunk):
            part = pixels[start : start + chunk]
            unit = torch.zeros(len(part), channels, h * w, dtype=torch.float64)
            idx = torch.tensor([i * w + j for i, j in part])
            unit[torch.arange(len(part)), :, idx] = 1.0
            out.append(self.variance(unit.reshape(len(part), channels, h, w)))
        return torch.cat(out).clamp_min(0.0).sqrt()

    def denoiser(self, y: Tensor) -> Denoiser:
        """Exact denoiser of the noised posterior, D(x, sigma) = E[x0 | x0 + sigma n = x, y]:

            D = m_s + C_s A^T (A C_s A^T + eta^2 I)^-1 (y - A m_s),
            m_s = mu + F^-1[P / (P + sigma^2) F(x - mu)],  C_s: spectrum P sigma^2/(P + sigma^2)

        (see the module docstring). y: Tensor[C, *obs_shape] (shared) or
        Tensor[B, C, *obs_shape] (one per member).

        Returns:
            ``denoise(x[B, C, H, W], sigma[B]) -> D[B, C, H, W]``, computed in float64 and
            returned in x's dtype: a :data:`~sgm.core.sampler.Denoiser` for every solver.
        """
        y64 = y.to(torch.float64)

        def denoise(x: Tensor, sigma: Tensor) -> Tensor:
            x64 = x.to(torch.float64)
            sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
            p = self._half
            s2 = sigma.reshape(-1, 1, 1, 1) ** 2
            m_s = self.prior.mean + self._filter(x64 - self.prior.mean, p / (p + s2))
            spectrum = p * s2 / (p + s2)  # C_s, the prior denoiser's error covariance
            u = self._solve(y64 - self.obs.apply(m_s), spectrum)
            return (m_s + self._filter(self.obs.adjoint(u), spectrum)).to(x.dtype)

        return denoise


def window_covariance(prior: GaussianRandomField, window: tuple[int, int]) -> np.ndarray:
    """Covariance C_T[n, n], n = h*w, of any h x w window of the (stationary) prior:

        C_T[(i, j), (k, l)] = c[(i - k) mod H, (j - l) mod W],   c = F^-1[P],

    the window's exact marginal (a principal submatrix of the periodic covariance; the window
    itself is not periodic). Row-major (h, w) flattening.
    """
    h, w = (int(s) for s in window)
    if not (0 < h <= prior.shape[0] and 0 < w <= prior.shape[1]):
        raise ValueError(f"window {window} does not fit the prior's grid {prior.shape}")
    c = np.fft.ifft2(prior.spectrum()).real
    di = (np.arange(h)[:, None] - np.arange(h)[None, :]) % prior.shape[0]
    dj = (np.arange(w)[:, None] - np.arange(w)[None, :]) % prior.shape[1]
    return c[di[:, None, :, None], dj[None, :, None, :]].reshape(h * w, h * w)


class WindowPosterior:
    """Exact posterior denoiser of the prior's window marginal given the window's observations.

    With x0_T ~ N(mu, C_T) (:func:`window_covariance`), y_T = A_T x0_T + eta eps (A_T the
    ``operator`` on the window's grid) and S = A_T C_T A_T^T + eta^2 I, K = C_T A_T^T S^-1:

        m(y_T)  = mu + K (y_T - A_T mu),    Sigma_T = (I - K A_T) C_T (I - K A_T)^T + eta^2 K K^T,
        D(x, sigma, y_T) = m + U diag(lambda / (lambda + sigma^2)) U^T (x - m),

    Sigma_T = U diag(lambda) U^T (one eigendecomposition; Joseph form as in
    ``sgm.core.gaussian.exact_posterior``). Dense: O(n^2) memory and O(n^3) set-up for n = h*w
    (a 32 x 32 window: 8 MB, 0.3 s), the same for every window position of a stationary prior;
    one variable.
    """

    def __init__(
        self, prior: GaussianRandomField, operator: ObservationOperator, noise_std: float
    ) -> None:
        if not noise_std > 0:
            raise ValueError(f"noise_std must be positive, got {noise_std}")
        self.window = operator.grid
        c = window_covariance(prior, self.window)
        a = operator.matrix()
        n = c.shape[0]
        ca_t = c @ a.T
        s = a @ ca_t + noise_std**2 * np.eye(a.shape[0])
        gain = scipy.linalg.cho_solve(scipy.linalg.cho_factor(s), ca_t.T).T
        i_ka = np.eye(n) - gain @ a
        cov = i_ka @ c @ i_ka.T + noise_std**2 * gain @ gain.T
        lam, u = np.linalg.eigh(0.5 * (cov + cov.T))
        self._offset = torch.as_tensor(prior.mean * (1.0 - gain @ a.sum(1)))  # mu - K A mu
        self._gain_t = torch.as_tensor(gain.T.copy())  # [n_obs, n]
        self._lam = torch.as_tensor(np.clip(lam, 0.0, None))
        self._u = torch.as_tensor(u)

    def denoise(self, x: Tensor, sigma: Tensor, y: Tensor) -> Tensor:
        """D(x, sigma, y_T) for x: Tensor[b, 1, h, w], sigma: Tensor[b], y: Tensor[b, *obs]
        (the window's observations, ``operator`` layout). Returns Tensor[b, 1, h, w] in x's
        dtype (computed in float64)."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        m = self._offset + y.reshape(y.shape[0], -1).to(torch.float64) @ self._gain_t
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1) ** 2
        coef = ((flat - m) @ self._u) * (self._lam / (self._lam + s2))
        return (m + coef @ self._u.T).reshape(x.shape).to(x.dtype)

