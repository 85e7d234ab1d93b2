"""The Gaussian oracle as a distillation teacher: the EXACT conditional denoiser of a
linear-Gaussian inverse problem, for any observation y, as a module D(x; σ, cond), and a
trainable student that starts as exactly that teacher.

For x ~ N(μ, C) and y = A x + η ε (``sgm.core.gaussian``), the posterior is N(m(y), Σ) with
m(y) = μ + K (y − A μ), K = C Aᵀ (A C Aᵀ + η² I)⁻¹ and Σ independent of y, and the exact
denoiser of the noised posterior is (``gaussian.conditional_denoiser``)

    D(x; σ, y) = m(y) + U diag(λ / (λ + σ²)) Uᵀ (x − m(y)),   Σ = U diag(λ) Uᵀ.

The conditioning channels are what the networks see (``ObservationModel.to_grid``); the teacher
reads y back from them with a caller-given map (for block coarsening: y = A · cond, since the
block means of block-replicated values are those values).

The student (``TeacherPlusNet``) is D_T(x; σ, cond) + c_out(σ) F_φ([c_in x, cond], c_noise) with
F_φ a U-Net whose last layer is zero-initialised (``sgm.core.network``): at initialisation it is
the teacher, bit for bit, as a copy of a U-Net teacher would be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from sgm.core.conditioning import (
    Standardiser,
    conditioning,
    simulated_observations,
    training_pairs,
)
from sgm.core.distill import with_alpha_channel
from sgm.core.gaussian import GaussianRandomField, exact_posterior
from sgm.core.network import build_unet
from sgm.core.observation import ObservationModel
from sgm.core.precond import edm_coefficients

__all__ = ["CoarsenOracle", "ExactConditionalDenoiser", "TeacherPlusNet", "coarsen_oracle",
           "posterior_gain", "students"]


def posterior_gain(prior: GaussianRandomField, A: np.ndarray, noise_std: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m0[N], K[N, n_obs], Σ[N, N]) with m(y) = m0 + K y the exact posterior mean (affine in
    y, read off ``exact_posterior`` at y = 0 and y = the unit vectors) and Σ its covariance."""
    n_obs = A.shape[0]
    ys = np.concatenate([np.zeros((1, n_obs)), np.eye(n_obs)])
    means, cov = exact_posterior(prior, A, noise_std, ys)
    return means[0], (means[1:] - means[0]).T, cov


class ExactConditionalDenoiser(nn.Module):
    """The exact posterior denoiser D(x; σ, cond) of a linear-Gaussian problem (module docstring).

    Args:
        prior, A, noise_std: the problem (A: np.ndarray[n_obs, H·W], one channel).
        y_of_cond: cond Tensor[B, K, H, W] → y Tensor[B, n_obs] (float64).
        cond_channels: K, the conditioning channels it reads (extra trailing ones are ignored).
    """

    def __init__(self, prior: GaussianRandomField, A: np.ndarray, noise_std: float,
                 y_of_cond: Callable[[Tensor], Tensor], cond_channels: int = 1) -> None:
        super().__init__()
        m0, gain, cov = posterior_gain(prior, np.asarray(A, dtype=np.float64), noise_std)
        lam, u = np.linalg.eigh(cov)
        self.register_buffer("m0", torch.as_tensor(m0))
        self.register_buffer("gain", torch.as_tensor(gain))
        self.register_buffer("lam", torch.as_tensor(np.clip(lam, 0.0, None)))
        self.register_buffer("u", torch.as_tensor(u))
        self.cov = cov
        self.y_of_cond = y_of_cond
        self.channels = 1
        self.cond_channels = cond_channels
        self.shape = prior.shape

    def mean(self, cond: Tensor) -> Tensor:
        """Posterior means m(y) Tensor[B, H·W] (float64) of the observations in ``cond``."""
        y = self.y_of_cond(cond[:, : self.cond_channels].to(torch.float64))
        return self.m0 + y @ self.gain.T

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor) -> Tensor:
        """x: Tensor[B, 1, H, W], σ: Tensor[B] or scalar, cond: Tensor[B, ≥K, H, W] → D, float32."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        mu = self.mean(cond)
        s2 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1) ** 2
        coef = ((flat - mu) @ self.u) * (self.lam / (self.lam + s2))
        return (mu + coef @ self.u.T).reshape(x.shape).to(torch.float32)


class TeacherPlusNet(nn.Module):
    """D_S(x; σ, cond) = D_T(x; σ, cond) + c_out(σ) F_φ([c_in(σ) x, cond], c_noise(σ)): a frozen
    teacher plus a trainable U-Net correction that starts at zero (EDM coefficients, Karras et
    al. 2022 Table 1).

    Args:
        teacher: D_T(x, σ, cond); it reads only its own leading conditioning channels.
        net: U-Net with in_channels = C + K (K: all conditioning channels, the teacher's and
            any extra such as the α channel of ``sgm.core.distill.with_alpha_channel``).
        sigma_data: σ_d of the EDM coefficients.
    """

    def __init__(self, teacher: nn.Module, net: nn.Module, sigma_data: float = 1.0) -> None:
        super().__init__()
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.net = net
        self.sigma_data = float(sigma_data)
        self.channels = int(net.out_channels)
        self.cond_channels = int(net.in_channels) - self.channels

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor) -> Tensor:
        """x: Tensor[B, C, H, W], σ: Tensor[B] or scalar, cond: Tensor[B, K, H, W] → Tensor."""
        if cond.shape[1] != self.cond_channels:
            raise ValueError(f"expected {self.cond_channels} conditioning channels, got "
                             f"{cond.shape[1]}")
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        _, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        with torch.no_grad():
            base = self.teacher(x, sigma, cond)
        f = self.net(torch.cat([c_in[:, None, None, None] * x, cond.to(x)], dim=1), c_noise)
        return base + c_out[:, None, None, None] * f


@dataclass
class CoarsenOracle:
    """A block-coarsening oracle problem: prior, observation model, exact teacher, training
    fields and their ``make_pair`` (fresh observation noise every call, as in training)."""

    prior: GaussianRandomField
    obs: ObservationModel
    teacher: ExactConditionalDenoiser
    fields: Tensor  # Tensor[N, 1, H, W] prior draws
    make_pair: Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]]

    @property
    def exact_std(self) -> np.ndarray:
        """Exact posterior std per pixel, np.ndarray[H·W] (independent of y)."""
        return np.sqrt(np.diag(self.teacher.cov))

    def test_set(self, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        """(truth Tensor[n, 1, H, W], cond Tensor[n, 1, H, W], exact mean Tensor[n, H·W]) of n
        fresh prior draws observed with fresh noise."""
        rng = np.random.default_rng(seed)
        truth = torch.as_tensor(self.prior.sample(n, rng), dtype=torch.float32)[:, None]
        y = self.obs.sample(truth, torch.Generator().manual_seed(seed))
        cond = conditioning(self.obs, y, None)
        return truth, cond, self.teacher.mean(cond).to(torch.float32)


def coarsen_oracle(grid: int = 16, factor: int = 4, length_scale: float = 3.0,
                   noise_std: float = 0.05, n_fields: int = 2000, seed: int = 0
                   ) -> CoarsenOracle:
    """The oracle of ``tests/test_sampler_oracle.py`` (periodic Matérn-3/2 GRF, unit variance,
    ``factor`` x ``factor`` block means with noise ``noise_std``), for every observation."""
    prior = GaussianRandomField((grid, grid), length_scale=length_scale, nu=1.5)
    axis = np.arange(grid, dtype=float).tolist()
    obs = ObservationModel.from_dict({"operator": {"kind": "coarsen", "factor": factor},
                                      "variables": ["x"], "noise_std": {"x": noise_std},
                                      "grid": {"lat": axis, "lon": axis}})
    a = torch.as_tensor(obs.matrix())

    def y_of_cond(cond: Tensor) -> Tensor:  # block means of the block-replicated observation
        return cond[:, 0].reshape(cond.shape[0], -1) @ a.to(cond).T

    teacher = ExactConditionalDenoiser(prior, obs.matrix(), noise_std, y_of_cond)
    fields = torch.as_tensor(prior.sample(n_fields, np.random.default_rng(seed)),
                             dtype=torch.float32)[:, None]
    identity = Standardiser(("x",), (0.0,), (1.0,))
    make_pair = training_pairs(obs, simulated_observations(obs, identity), None, None)
    return CoarsenOracle(prior, obs, teacher, fields, make_pair)


def students(problem: CoarsenOracle, base_channels: int, seed: int = 0
             ) -> tuple[nn.Module, nn.Module]:
    """(generator denoiser, mixture denoiser) for distilling ``problem``'s exact teacher: each
    the teacher plus a tiny U-Net (seeded by ``seed`` and ``seed + 1``) whose output starts at
    zero, so both are exactly the teacher at initialisation."""
    torch.manual_seed(seed)
    gen = TeacherPlusNet(problem.teacher, build_unet("tiny", 2, 1, base_channels=base_channels))
    torch.manual_seed(seed + 1)
    mix = with_alpha_channel(TeacherPlusNet(
        problem.teacher, build_unet("tiny", 2, 1, base_channels=base_channels)))
    return gen, mix
