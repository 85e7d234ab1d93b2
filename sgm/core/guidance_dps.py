"""Diffusion Posterior Sampling (DPS) as a guided denoiser.

Chung, Kim, McCann, Klasky & Ye 2023, "Diffusion Posterior Sampling for General Noisy
Inverse Problems", ICLR, arXiv:2209.14687 (Algorithm 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sgm.core.guidance import ForwardMap, GuidedDenoiser, broadcast_per_sample, safe_ratio
from sgm.core.sampler import Denoiser


class DPS(GuidedDenoiser):
    """DPS: the likelihood at the denoised estimate, with a per-member step size.

    DPS approximates p(y | x_sigma) by p(y | x_0 = D(x_sigma, sigma)), i.e. the Gaussian
    likelihood of ``sgm.core.guidance`` with V = 0:

        D_y = D + zeta_b sigma^2 ∇_x log N(y; A(D(x, sigma)), eta^2 I)
            = D + zeta_b sigma^2 (∂D/∂x)^T A'^T (y - A(D)) / eta^2.

    Without the covariance term this gradient is far too strong at large sigma, and the
    paper normalises the step of every sample by its own residual norm,
    zeta_i = zeta' / ||y - A(x_hat_0(x_i))|| in its experiments. Here the normalisation is made
    dimensionless with the whitened residual of member b,

        zeta_b = zeta / chi_b,      chi_b = ||(y - A(D_b)) / eta||_2 / sqrt(m),

    m the number of observations of one member: zeta_b = zeta when the residual is at the
    noise level (chi_b ≈ 1, where zeta = 1 is the plain V = 0 likelihood) and the step
    shrinks while the residual is large (zeta_b = 0 for a zero residual, which has no
    gradient anyway). chi_b is held fixed under the gradient and depends on member b only.

    DPS is not calibrated: zeta is a tuning knob, and on the Gaussian oracle no single
    value gives the exact posterior spread and mean (see ``benchmarks/guidance_oracle.py``).
    A call costs 1 denoiser evaluation and 1 Jacobian product per member.

    Args:
        denoise, forward, y: see ``GuidedDenoiser``.
        noise_std: eta > 0, a float or a tensor broadcastable to A(x).
        zeta: the step size zeta > 0.
    """

    def __init__(
        self,
        denoise: Denoiser,
        forward: ForwardMap,
        y: Tensor,
        noise_std: Tensor | float,
        zeta: float = 0.3,
    ) -> None:
        super().__init__(denoise, forward, y, noise_std)
        if not bool((self.noise_std > 0).all()):
            raise ValueError("DPS needs noise_std > 0 (it weights the residual by 1 / eta^2).")
        if not zeta > 0:
            raise ValueError(f"zeta must be positive, got {zeta}.")
        self.zeta = float(zeta)

    def _guide(self, x: Tensor, sigma: Tensor, d: Tensor) -> Tensor:
        y_hat = self.forward(d)
        y, var_y = self._observed(y_hat.detach())
        residual = (y - y_hat.detach()).expand_as(y_hat)
        white = residual / var_y.sqrt()
        chi = white.flatten(1).norm(dim=1) / math.sqrt(white[0].numel())
        zeta = broadcast_per_sample(safe_ratio(torch.full_like(chi, self.zeta), chi), d)
        self.cost.jacobian += x.shape[0]
        grad = torch.autograd.grad(y_hat, x, residual / var_y)[0].to(d)
        return d + zeta * broadcast_per_sample(sigma.to(d) ** 2, d) * grad
