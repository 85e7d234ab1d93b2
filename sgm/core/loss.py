"""EDM denoising score-matching loss.

Karras et al. 2022, Sec. 5, Eq. (8) and Table 1 ("Ours"):

    ln sigma ~ N(P_mean, P_std^2),   n ~ N(0, I)
    lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2
    L = lambda(sigma) || D(x_0 + sigma n; sigma, y) - x_0 ||^2

Here ||.||^2 is averaged (not summed) over C, H, W, so that lambda makes the loss of the
zero-output network D = c_skip x equal to Var(x_0) / sigma_d^2 at every sigma.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["EDMLoss"]


class EDMLoss:
    """Per-sample EDM loss with noise drawn from an explicit generator."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 1.0) -> None:
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)
        self.sigma_data = float(sigma_data)

    def weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2, elementwise."""
        return (sigma.square() + self.sigma_data**2) / (sigma * self.sigma_data).square()

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw (sigma: Tensor[B], n: Tensor[B, C, H, W]) on x0's device, sigma first."""
        rnd = torch.randn(x0.shape[0], generator=generator, device=x0.device)
        sigma = (rnd * self.P_std + self.P_mean).exp()
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        return sigma, noise

    def loss_at(
        self,
        precond: nn.Module,
        x0: Tensor,
        cond: Tensor | None,
        sigma: Tensor,
        noise: Tensor,
    ) -> Tensor:
        """lambda(sigma) mean_{C,H,W} (D(x0 + sigma n; sigma, cond) - x0)^2 -> Tensor[B]."""
        x0 = x0.to(torch.float32)
        x_noisy = x0 + sigma[:, None, None, None] * noise
        denoised = precond(x_noisy, sigma, cond)
        sq_err = (denoised.to(torch.float32) - x0).square().mean(dim=(1, 2, 3))
        return self.weight(sigma) * sq_err

    def __call__(
        self,
        precond: nn.Module,
        x0: Tensor,
        cond: Tensor | None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x0: Tensor[B, C, H, W], cond: Tensor[B, K, H, W] | None -> loss Tensor[B]."""
        sigma, noise = self.draw(x0, generator)
        return self.loss_at(precond, x0, cond, sigma, noise)
