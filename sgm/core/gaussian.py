"""The Gaussian oracle: a Gaussian random field prior, its exact linear-Gaussian posterior
and exact denoisers, against which samplers are validated without any network.

For a Gaussian prior x ~ N(mu, C) and y = A x + eta * eps, the posterior is Gaussian and
so is its noised version x + sigma n, whose exact denoiser E[x | x + sigma n] is linear.
Samples of a correct diffusion sampler driven by that denoiser must therefore match the
exact posterior mean, standard deviation and interval coverage up to Monte-Carlo error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special
import torch
from torch import Tensor


def _expand_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast sigma (scalar or Tensor[B]) against x[B, ...]."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


class GaussianRandomField:
    """Stationary Gaussian random field on a periodic (H, W) grid with a Matern-like spectrum

        P(k) ∝ (2 nu / l^2 + 4 pi^2 |k|^2)^(-(nu + 1)),   k in cycles per pixel,

    (the Matern spectral density in 2-D, Lindgren et al. 2011), normalised so that the
    marginal variance c(0) = mean_k P(k) equals ``variance`` exactly on the grid.
    The covariance is circulant: C = F^-1 diag(P) F, with F the 2-D DFT. For l well below
    the domain size, c(r) / c(0) is the Matern correlation with kappa = sqrt(2 nu) / l,
    e.g. (1 + sqrt(3) r / l) exp(-sqrt(3) r / l) for nu = 3/2 (r, l in pixels).
    """

    def __init__(
        self,
        shape: tuple[int, int],
        length_scale: float,
        nu: float = 1.5,
        variance: float = 1.0,
        mean: float = 0.0,
    ) -> None:
        if length_scale <= 0 or nu <= 0 or variance <= 0:
            raise ValueError("length_scale, nu and variance must be positive.")
        self.shape = (int(shape[0]), int(shape[1]))
        self.length_scale = float(length_scale)
        self.nu = float(nu)
        self.variance = float(variance)
        self.mean = float(mean)
        self._spectrum = self._compute_spectrum()
        self._spectrum_t = torch.as_tensor(self._spectrum)

    def _compute_spectrum(self) -> np.ndarray:
        h, w = self.shape
        k2 = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
        p = (2.0 * self.nu / self.length_scale**2 + 4.0 * math.pi**2 * k2) ** -(self.nu + 1.0)
        return p * (self.variance / p.mean())

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def spectrum(self) -> np.ndarray:
        """Eigenvalues P[H, W] of the covariance in the (unnormalised numpy) FFT basis."""
        return self._spectrum.copy()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n independent fields: x = mu + F^-1[sqrt(P) F(w)], w ~ N(0, I). Returns [n, H, W]."""
        white = rng.standard_normal((n, *self.shape))
        field = np.fft.ifft2(np.sqrt(self._spectrum) * np.fft.fft2(white)).real
        return self.mean + field

    def covariance(self) -> np.ndarray:
        """Dense covariance C[N, N], N = H*W, row-major (H, W) flattening.

        C[(i, j), (k, l)] = c[(i - k) mod H, (j - l) mod W] with c = F^-1[P].
        """
        h, w = self.shape
        c = np.fft.ifft2(self._spectrum).real
        di = (np.arange(h)[:, None] - np.arange(h)[None, :]) % h
        dj = (np.arange(w)[:, None] - np.arange(w)[None, :]) % w
        return c[di[:, None, :, None], dj[None, :, None, :]].reshape(h * w, h * w)

    def mean_vector(self) -> np.ndarray:
        """Prior mean mu[N]."""
        return np.full(self.size, self.mean)

    def denoise(self, x_noisy: Tensor, sigma: Tensor | float) -> Tensor:
        """Exact prior denoiser E[x | x + sigma n = x_noisy], diagonal in Fourier space:

            D(x, sigma) = mu + F^-1[ P / (P + sigma^2) * F(x - mu) ].

        Args:
            x_noisy: Tensor[..., H, W].
            sigma: float or Tensor[B] broadcast against the leading dims of x_noisy.

        Returns:
            Tensor[..., H, W], same dtype as x_noisy.
        """
        x = x_noisy.to(torch.float64)
        p = self._spectrum_t.to(x.device)
        s2 = _expand_sigma(sigma, x) ** 2
        gain = p / (p + s2)
        out = self.mean + torch.fft.ifft2(gain * torch.fft.fft2(x - self.mean)).real
        return out.to(x_noisy.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "length_scale": self.length_scale,
            "nu": self.nu,
            "variance": self.variance,
            "mean": self.mean,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GaussianRandomField:
        return cls(
            shape=(int(d["shape"][0]), int(d["shape"][1])),
            length_scale=d["length_scale"],
            nu=d.get("nu", 1.5),
            variance=d.get("variance", 1.0),
            mean=d.get("mean", 0.0),
        )


def exact_posterior(
    prior: GaussianRandomField, A: np.ndarray, noise_std: float, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior of x ~ N(mu, C) given y = A x + noise_std * eps.

    With S = A C A^T + eta^2 I and gain K = C A^T S^-1 (Kalman / Tarantola 2005 eq. 3.37):

        mean  = mu + K (y - A mu)
        Sigma = (I - K A) C (I - K A)^T + eta^2 K K^T      (Joseph form of C - K A C)

    which equals (C^-1 + A^T A / eta^2)^-1 but stays symmetric positive semi-definite.

    Args:
        prior: the Gaussian prior.
        A: np.ndarray[n_obs, N], N = H*W in row-major order.
        noise_std: eta > 0.
        y: np.ndarray[..., n_obs], one or several observations.

    Returns:
        (mean[..., N], cov[N, N]); the covariance does not depend on y.
    """
    if noise_std <= 0:
        raise ValueError(f"noise_std must be positive for the exact posterior, got {noise_std}.")
    A = np.asarray(A, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if A.shape[1] != prior.size or y.shape[-1] != A.shape[0]:
        raise ValueError(f"Shapes do not match: A {A.shape}, y {y.shape}, N = {prior.size}.")
    c = prior.covariance()
    mu = prior.mean_vector()
    ca_t = c @ A.T
    s = A @ ca_t + noise_std**2 * np.eye(A.shape[0])
    gain = scipy.linalg.cho_solve(scipy.linalg.cho_factor(s), ca_t.T).T  # K = C A^T S^-1
    mean = mu + (y - A @ mu) @ gain.T
    i_ka = np.eye(prior.size) - gain @ A
    cov = i_ka @ c @ i_ka.T + noise_std**2 * gain @ gain.T
    return mean, 0.5 * (cov + cov.T)


def conditional_denoiser(
    post_mean: Tensor | np.ndarray, post_cov: np.ndarray
) -> Callable[[Tensor, Tensor], Tensor]:
    """Exact denoiser of the noised posterior N(mu, Sigma) + N(0, sigma^2 I):

        D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)
                    = mu + U diag(lambda / (lambda + sigma^2)) U^T (x - mu),

    with one eigendecomposition Sigma = U diag(lambda) U^T (negative round-off clipped).

    Args:
        post_mean: Tensor[N] (shared) or Tensor[B, N] (one per sample).
        post_cov: np.ndarray[N, N].

    Returns:
        ``denoise(x[B, 1, H, W], sigma[B]) -> D[B, 1, H, W]`` (computed in float64,
        returned in x's dtype), usable directly by ``sgm.core.sampler.edm_sampler``.
    """
    lam, u = np.linalg.eigh(np.asarray(post_cov, dtype=np.float64))
    lam_t = torch.as_tensor(np.clip(lam, 0.0, None))
    u_t = torch.as_tensor(u)
    mu_t = torch.as_tensor(post_mean, dtype=torch.float64)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        mu = mu_t.to(flat.device)
        uu, ll = u_t.to(flat.device), lam_t.to(flat.device)
        s2 = torch.as_tensor(sigma, dtype=torch.float64, device=flat.device).reshape(-1, 1) ** 2
        coef = ((flat - mu) @ uu) * (ll / (ll + s2))
        return (mu + coef @ uu.T).reshape(x.shape).to(x.dtype)

    return denoise


def expected_crps_gaussian(std: float | np.ndarray | Tensor) -> float | np.ndarray | Tensor:
    """Expected CRPS of the predictive N(m, s^2) when the truth is drawn from it: s / sqrt(pi).

    From CRPS(N(m, s^2), y) = s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)], z = (y - m)/s
    (Gneiting et al. 2005), and E[z (2 Phi(z) - 1)] = E[2 phi(z)] = 1/sqrt(pi) for
    z ~ N(0, 1). The lower bound of a calibrated ensemble's CRPS (the oracle CRPS).
    """
    return std / math.sqrt(math.pi)


@dataclass(frozen=True)
class OracleStats:
    """Per-pixel comparison of samples with an exact Gaussian posterior (arrays over pixels).

    mean_z: (sample mean - mu) / (s / sqrt(M)), ~ N(0, 1) per pixel for an exact sampler.
    std_ratio: sample std / exact std.
    coverage: fraction of samples in the exact central ``level`` interval.
    """

    mean_z: np.ndarray
    std_ratio: np.ndarray
    coverage: np.ndarray
    level: float
    members: int


def oracle_statistics(
    samples: np.ndarray | Tensor, mean: np.ndarray, std: np.ndarray, level: float = 0.9
) -> OracleStats:
    """Compare samples[M, ...] with the exact marginals mean[...], std[...] (flattened)."""
    x = torch.as_tensor(samples).to(torch.float64).reshape(len(samples), -1).numpy()
    mu = np.asarray(mean, dtype=np.float64).reshape(-1)
    sd = np.asarray(std, dtype=np.float64).reshape(-1)
    m = x.shape[0]
    half = math.sqrt(2.0) * float(scipy.special.erfinv(level)) * sd
    return OracleStats(
        mean_z=(x.mean(0) - mu) / (sd / math.sqrt(m)),
        std_ratio=x.std(0, ddof=1) / sd,
        coverage=(np.abs(x - mu) <= half).mean(0),
        level=level,
        members=m,
    )


def ode_output_law(
    post_mean: np.ndarray, post_cov: np.ndarray, sigma_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """Law of the EXACT probability-flow ODE output when started, as EDM does, from
    N(0, sigma_max^2 I) instead of the noised posterior N(mu, Sigma + sigma_max^2 I).

    In each eigendirection of Sigma = U diag(lambda) U^T the flow dx/dsigma = (x - D)/sigma
    = sigma (x - mu) / (lambda + sigma^2) gives (x - mu) ∝ sqrt(lambda + sigma^2), so the
    ODE maps x_0 to mu + T (x_0 - mu) with T = U diag(sqrt(lambda / (lambda + sigma_max^2)))
    U^T. Hence

        mean = mu - T mu,     cov = U diag(lambda sigma_max^2 / (lambda + sigma_max^2)) U^T.

    The mean bias is (mu_u / sigma_max) posterior standard deviations in the direction u:
    invisible in practice but resolved by a few thousand members when |mu_u| >> 1.

    Args:
        post_mean: np.ndarray[N] (or [..., N]); post_cov: np.ndarray[N, N].

    Returns:
        (mean[..., N], cov[N, N]).
    """
    lam, u = np.linalg.eigh(np.asarray(post_cov, dtype=np.float64))
    lam = np.clip(lam, 0.0, None)
    mu = np.asarray(post_mean, dtype=np.float64)
    shrink = np.sqrt(lam / (lam + sigma_max**2))
    mean = mu - ((mu @ u) * shrink) @ u.T
    cov = (u * (lam * sigma_max**2 / (lam + sigma_max**2))) @ u.T
    return mean, 0.5 * (cov + cov.T)
