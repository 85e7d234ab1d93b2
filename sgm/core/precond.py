"""EDM preconditioning of a conditional denoiser.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Sec. 5 and Table 1 ("Ours"). With sigma_d the standard deviation of the data:

    c_skip(sigma)  = sigma_d^2 / (sigma^2 + sigma_d^2)
    c_out(sigma)   = sigma sigma_d / sqrt(sigma^2 + sigma_d^2)
    c_in(sigma)    = 1 / sqrt(sigma^2 + sigma_d^2)
    c_noise(sigma) = ln(sigma) / 4

    D(x; sigma, y) = c_skip x + c_out F(cat[c_in x, y], c_noise)

The conditioning channels y are concatenated *unscaled*: they are observations, not
noisy states, and keep their own normalisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sgm.core.network import build_unet

__all__ = ["EDMPrecond", "edm_coefficients", "new_denoiser"]


def edm_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1, elementwise in sigma (any shape)."""
    s2 = sigma.square() + sigma_data**2
    c_skip = sigma_data**2 / s2
    c_out = sigma * sigma_data / s2.sqrt()
    c_in = 1.0 / s2.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """Denoiser D(x; sigma, cond) wrapping a raw network F(input, c_noise).

    Args:
        net: module mapping (Tensor[B, C + K, H, W], Tensor[B]) -> Tensor[B, C, H, W].
        sigma_data: standard deviation sigma_d of the (normalised) data.
        channels: C; default ``net.out_channels``.
        cond_channels: K; default ``net.in_channels - net.out_channels``.
    """

    def __init__(
        self,
        net: nn.Module,
        sigma_data: float = 1.0,
        *,
        channels: int | None = None,
        cond_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        if channels is None:
            channels = int(net.out_channels)
        if cond_channels is None:
            cond_channels = int(net.in_channels) - channels
        if channels <= 0 or cond_channels < 0:
            raise ValueError(f"invalid channels={channels}, cond_channels={cond_channels}")
        self.channels = channels
        self.cond_channels = cond_channels

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        """Denoise x: Tensor[B, C, H, W] at noise level sigma: Tensor[B] or scalar,
        given cond: Tensor[B, K, H, W] (None when K = 0) -> D: Tensor[B, C, H, W] (float32).
        """
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected x of shape [B, {self.channels}, H, W], got {x.shape}")
        x = x.to(torch.float32)
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(batch) if sigma.numel() == 1 else sigma
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must be scalar or [B={batch}], got {tuple(sigma.shape)}")
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)

        net_in = c_in[:, None, None, None] * x
        if self.cond_channels:
            if cond is None or cond.shape != (batch, self.cond_channels, *x.shape[2:]):
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(
                    f"expected cond [B, {self.cond_channels}, H, W] matching x, got {got}"
                )
            net_in = torch.cat([net_in, cond.to(torch.float32)], dim=1)
        elif cond is not None and cond.shape[1] != 0:
            raise ValueError("this denoiser takes no conditioning channels")

        f = self.net(net_in, c_noise).to(torch.float32)
        return c_skip[:, None, None, None] * x + c_out[:, None, None, None] * f


def new_denoiser(
    preset: str,
    in_channels: int,
    out_channels: int,
    sigma_data: float = 1.0,
    base_channels: int | None = None,
    dropout: float = 0.0,
    seed: int = 0,
) -> EDMPrecond:
    """An untrained EDM-preconditioned U-Net of a preset size (``sgm.core.network.PRESETS``).

    The initial weights are drawn from a generator seeded with ``seed`` (torch's global
    generator is forked, so the caller's random state is untouched): the same arguments give
    bitwise the same network.
    """
    overrides: dict[str, Any] = {"dropout": dropout}
    if base_channels is not None:
        overrides["base_channels"] = base_channels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_unet(preset, in_channels, out_channels, **overrides)
    return EDMPrecond(net, sigma_data=sigma_data)
