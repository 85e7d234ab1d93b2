"""EDM stochastic/deterministic Heun sampler with per-sample random streams.

Follows ``edm_sampler`` of NVlabs/edm ``generate.py`` (Karras et al. 2022, Algorithm 2),
with one change: every sample b draws all of its randomness (initial noise and churn
noise) from its own ``torch.Generator`` seeded with ``seeds[b]``, so a member's value
does not depend on which other members share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``denoise(x[B, C, H, W], sigma[B]) -> D[B, C, H, W]``, an estimate of E[x_0 | x]."""


NETWORK_BATCH = 16


def fixed_batch(fn: Callable[..., Tensor], size: int = NETWORK_BATCH) -> Callable[..., Tensor]:
    """The same batched function, always evaluated on batches of exactly ``size`` samples.

    ``fn(*tensors)`` takes tensors batched along their first dimension (e.g. a network's x,
    sigma and conditioning) and returns one batched tensor. Convolution libraries (oneDNN on
    CPU, cuDNN on GPU) choose their algorithm, and with it the order of floating-point sums,
    from the shape of the batch: the same sample denoised in a batch of 5 or of 64 differs in
    the last bits (measured: 56 of 64 outputs of the tiny U-Net on CPU), and the sampler's ODE
    amplifies those bits to ~1e-4 K. Splitting every call into chunks of ``size`` (the last one
    padded with copies of its first sample, whose outputs are dropped) gives every sample the
    same computation whatever the caller's batch: members are then bitwise independent of the
    sampling batch size and of sharding (a test checks it; a sample's position inside a chunk
    does not matter either).
    """

    def chunked(*tensors: Tensor) -> Tensor:
        outs = []
        for i in range(0, tensors[0].shape[0], size):
            parts = [t[i : i + size] for t in tensors]
            n = parts[0].shape[0]
            if n < size:
                parts = [torch.cat([p, p[:1].expand(size - n, *p.shape[1:])]) for p in parts]
            outs.append(fn(*parts)[:n])
        return torch.cat(outs)

    return chunked


def member_seed(seed: int, time_index: int, member: int) -> int:
    """Seed of one ensemble member, independent of how members are batched.

    Derived with ``numpy.random.SeedSequence([seed, time_index, member])``, which hashes
    the entropy so nearby integers give statistically independent streams.

    Returns:
        An integer in [0, 2**63), valid for ``torch.Generator.manual_seed``.
    """
    for name, value in (("seed", seed), ("time_index", time_index), ("member", member)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}.")
    state = np.random.SeedSequence([seed, time_index, member]).generate_state(1, np.uint64)
    return int(state[0]) & (2**63 - 1)


def per_sample_normal(
    generators: Sequence[torch.Generator],
    shape: tuple[int, int, int],
    device: torch.device | None,
    dtype: torch.dtype,
) -> Tensor:
    """Stack one N(0, I) draw of ``shape`` from each generator: Tensor[B, *shape]."""
    return torch.stack(
        [torch.randn(shape, generator=g, device=device, dtype=dtype) for g in generators]
    )


@torch.no_grad()
def edm_sampler(
    denoise: Denoiser,
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    sigmas: Tensor,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    second_order: bool = True,
) -> Tensor:
    """Draw ``len(seeds)`` samples by EDM Algorithm 2 (Karras et al. 2022).

    With t_0 > t_1 > ... > t_N = 0 the noise levels ``sigmas``:

        x_0 ~ N(0, t_0^2 I)
        for i = 0, ..., N-1:
            gamma_i = min(S_churn / N, sqrt(2) - 1)  if t_i in [S_tmin, S_tmax] else 0
            t_hat   = t_i + gamma_i t_i
            x_hat   = x_i + sqrt(t_hat^2 - t_i^2) S_noise eps,     eps ~ N(0, I)
            d_i     = (x_hat - D(x_hat, t_hat)) / t_hat              (Euler step)
            x_{i+1} = x_hat + (t_{i+1} - t_hat) d_i
            if t_{i+1} != 0 and second_order:                        (Heun correction)
                d'_i    = (x_{i+1} - D(x_{i+1}, t_{i+1})) / t_{i+1}
                x_{i+1} = x_hat + (t_{i+1} - t_hat) (d_i + d'_i) / 2

    churn = 0 gives the deterministic probability-flow ODE solver (EDM Algorithm 1).
    The state is integrated in float64 (as in NVlabs/edm; float32 on MPS, which lacks
    float64); ``denoise`` receives ``dtype``. Runs under ``torch.no_grad()`` (a guidance
    term that needs gradients can re-enable them inside ``denoise``).

    Args:
        denoise: ``denoise(x[B, C, H, W], sigma[B]) -> D[B, C, H, W]``; the caller closes
            over any conditioning.
        shape: (C, H, W) of one sample.
        seeds: one seed per sample (see ``member_seed``); B = len(seeds).
        sigmas: Tensor[N + 1], decreasing, last entry 0 (e.g. ``karras_sigmas``).
        churn: S_churn, total amount of stochasticity (0 = deterministic ODE).
        s_tmin, s_tmax: churn is applied only for t_i in [s_tmin, s_tmax].
        s_noise: S_noise, inflation of the churn noise (1 = exact).
        device: device of the samples and of the per-sample generators.
        dtype: dtype of the random draws, of the denoiser inputs and of the output.
        second_order: Heun (True) or plain Euler (False) steps.

    Returns:
        Tensor[B, C, H, W] of samples, ``dtype`` on ``device``.
    """
    if len(seeds) == 0:
        raise ValueError("seeds is empty: give one seed per sample.")
    sigmas = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).flatten()
    if sigmas.numel() < 2 or sigmas[-1] != 0 or bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise ValueError("sigmas must be strictly decreasing with at least 2 entries, ending in 0.")
    device = torch.device(device) if device is not None else torch.device("cpu")
    state = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    steps = sigmas.numel() - 1
    batch = len(seeds)
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    t_steps = [float(t) for t in sigmas]

    def d_of(x: Tensor, t: float) -> Tensor:
        sigma = torch.full((batch,), t, device=device, dtype=dtype)
        return denoise(x.to(dtype), sigma).to(state)

    x_next = per_sample_normal(gens, shape, device, dtype).to(state) * t_steps[0]
    gamma_max = min(churn / steps, math.sqrt(2.0) - 1.0) if churn > 0 else 0.0
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
        x_cur = x_next

        # Increase noise temporarily (churn).
        gamma = gamma_max if s_tmin <= t_cur <= s_tmax else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0.0:
            eps = per_sample_normal(gens, shape, device, dtype).to(state)
            x_hat = x_cur + math.sqrt(t_hat**2 - t_cur**2) * s_noise * eps
        else:
            x_hat = x_cur

        # Euler step.
        d_cur = (x_hat - d_of(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Apply 2nd-order correction.
        if second_order and i < steps - 1:
            d_prime = (x_next - d_of(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

    return x_next.to(dtype)
