"""Noise-level discretisation for EDM sampling (Karras et al. 2022)."""

from __future__ import annotations

import torch
from torch import Tensor


def karras_sigmas(
    steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    final_zero: bool = True,
) -> Tensor:
    """Noise levels of the EDM time discretisation, with a final zero appended (unless
    ``final_zero`` is False: then the grid ends at sigma_min, as multistep solvers use it).

    EDM eq. 5 (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
    Generative Models", NeurIPS):

        sigma_i = (sigma_max^(1/rho) + i/(N-1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
        i = 0, ..., N-1,        sigma_N = 0.

    Args:
        steps: number of sampling steps N >= 1 (so N + 1 noise levels).
        sigma_min: smallest positive noise level sigma_{N-1}.
        sigma_max: largest noise level sigma_0.
        rho: warping exponent; larger values spend more steps at small sigma.

    Returns:
        Tensor[steps + 1], float64, strictly decreasing from sigma_max to 0.
        With steps == 1 it is [sigma_max, 0]. Without the final zero: Tensor[steps] from
        sigma_max to sigma_min (steps >= 2).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if not 0.0 < sigma_min <= sigma_max:
        raise ValueError(
            f"Need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}."
        )
    if rho <= 0.0:
        raise ValueError(f"rho must be positive, got {rho}.")
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / max(steps - 1, 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + frac * (lo - hi)) ** rho
    if not final_zero:
        if steps < 2:
            raise ValueError("a grid ending at sigma_min needs at least 2 levels.")
        return sigmas
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
