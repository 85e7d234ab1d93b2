"""Score-of-Mixture Distillation (SMD): the one-step generator, the α-conditioned mixture
denoiser, their random draws and their two losses (the loop is ``sgm.core.distillation``).

Jayashankar, Ryu & Wornell 2025, "Score-of-Mixture Training: Training One-Step Generative
Models Made Simple via Score Estimation of Mixture Distributions", ICML, arXiv 2502.09609;
reference code github.com/tkj516/score-of-mixture-training (``main/sjsd``, ``main/sjsd_dist``).

For one observation y, let p = p(x | y) be the teacher's posterior and q_θ the law of the
one-step generator x̃ = G_θ(z, y) = D_θ(σ_g z; σ_g, y), z ~ N(0, I): a copy of the teacher's
denoiser evaluated once at a fixed noise level σ_g (as DMD/SMD do; at σ_g = 80 the teacher's
output is ≈ the posterior mean, a collapsed ensemble, which the distillation spreads out).
Both laws are noised, p_σ = p * N(0, σ²I), q_σ likewise, and mixed, m_α = α p_σ + (1 − α) q_σ.
The generator minimises, over σ and α, the α-skew Jensen–Shannon divergence

    D_α(p, q) = 1/(1 − α) KL(p ‖ m_α) + 1/α KL(q ‖ m_α),

which is the forward KL(p ‖ q) at α → 0 (mode covering) and the reverse KL(q ‖ p) of DMD at
α → 1 (mode seeking). With x_σ = x̃ + σ n, its reparametrised gradient is

    ∇_θ D_α = 1/α E[(s_q − s_mα)(x_σ) · ∂_θ x̃],   s = ∇ log (score),

and in denoiser units, s = (D − x)/σ², s_q − s_mα = (ψ(x_σ; σ, 0) − ψ(x_σ; σ, α))/σ², where
ψ(x; σ, α, y) ≈ E_mα[x_0 | x_σ = x] is ONE amortised network for every α: the mixture
denoiser. ψ is a copy of the teacher with one more conditioning channel holding α (its input
weights start at zero, so ψ starts as the teacher for every α). It is fitted by the denoising
score matching loss of the mixture, real samples x ~ p entering through the teacher's denoiser
D_T (the distillation target of the reference code, lower variance than x itself):

    L_ψ = E λ(σ) [(1 − α) ‖ψ(x̃ + σ n; σ, α) − x̃‖² + α ‖ψ(x + σ n'; σ, α) − D_T(x + σ n'; σ)‖²],

λ(σ) = 1/σ² + 1/σ_d²; its minimiser is the mixture denoiser w D_p + (1 − w) D_q with
w = α p_σ / m_α, so ψ(·; 1) = D_T and ψ(·; 0) = D_q, the fake denoiser.

What is kept from the reference code (``sjsd_dist``/``sjsd``) and what is not:

- α for ψ: 0 with probability 1/4, else uniform on {0, 1/1000, ..., 1}; α for the generator:
  uniform on {1/2, ..., 1} (its ``augmented_discrete_uniform`` / ``partial_discrete_uniform``
  samplers, 1001 levels); the lower end of the generator's α is a setting (smaller α is more
  mode covering).
- σ: Karras et al.'s ρ = 7 ramp between σ_min = 0.002 and σ_max = 80, the ramp position u
  uniform on [0, 1] for ψ and on [0.02, 0.98] for the generator (its 1000-level grid with
  ``min/max_step_percent``, made continuous).
- the generator's weighting: g = (ψ(x_σ; 0) − ψ(x_σ; α)) / (α · mean|x̃ − D_T(x_σ)|), DMD's
  normalisation per sample (Yin et al. 2024), with the loss ½‖x̃ − sg(x̃ − g)‖², whose
  gradient in x̃ is g.
- dropped: the GAN classifier head and its loss (a second network on the U-Net bottleneck, not
  needed for the divergence and costly on CPU), mixed precision.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

__all__ = [
    "alpha_plane",
    "draw_alpha_generator",
    "draw_alpha_score",
    "draw_sigma",
    "generate",
    "generator_direction",
    "generator_loss",
    "mixture_score_loss",
    "score_weight",
    "with_alpha_channel",
]


# --------------------------------------------------------------------------- networks


def generate(denoiser: nn.Module, z: Tensor, cond: Tensor | None, sigma_g: float) -> Tensor:
    """One-step generator x̃ = D(σ_g z; σ_g, cond): z Tensor[B, C, H, W] ~ N(0, I) →
    Tensor[B, C, H, W] in the teacher's target units."""
    return denoiser(sigma_g * z, torch.full((z.shape[0],), sigma_g, device=z.device), cond)


def alpha_plane(alpha: Tensor, like: Tensor) -> Tensor:
    """α: Tensor[B] as a constant conditioning channel Tensor[B, 1, H, W] shaped like ``like``."""
    return alpha.to(like)[:, None, None, None].expand(like.shape[0], 1, *like.shape[2:])


def with_alpha_channel(denoiser: nn.Module) -> nn.Module:
    """A copy of ``denoiser`` taking one more (last) conditioning channel, α, whose input
    weights are zero: the copy computes exactly the original for every α until it is trained.

    The denoiser must be an ``EDMPrecond``-like module with a U-Net ``.net`` (whose first
    layer is ``net.conv_in``) and a ``.cond_channels`` count (``sgm.core.precond.EDMPrecond``,
    ``sgm.core.distill_oracle.TeacherPlusNet``).
    """
    out = copy.deepcopy(denoiser)
    net = out.net
    old = net.conv_in
    new = nn.Conv2d(old.in_channels + 1, old.out_channels, old.kernel_size, old.stride,
                    old.padding).to(old.weight)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    net.conv_in = new
    net.in_channels += 1
    if hasattr(net, "config"):
        net.config["in_channels"] = net.in_channels
    out.cond_channels += 1
    return out


def _with_alpha(cond: Tensor | None, alpha: Tensor, x: Tensor) -> Tensor:
    plane = alpha_plane(alpha, x)
    return plane if cond is None else torch.cat([cond.to(plane), plane], dim=1)


# --------------------------------------------------------------------------- random draws


def draw_sigma(n: int, generator: torch.Generator, sigma_min: float, sigma_max: float,
               rho: float, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """Noise levels Tensor[n] on Karras et al.'s ramp: u ~ U(lo, hi),
    σ = (σ_max^(1/ρ) + u (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ (u = 0: σ_max; u = 1: σ_min)."""
    u = lo + (hi - lo) * torch.rand(n, generator=generator, device=generator.device)
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (a + u * (b - a)) ** rho


def draw_alpha_score(n: int, generator: torch.Generator, zero_prob: float = 0.25,
                     levels: int = 1001) -> Tensor:
    """α of the mixture-score updates, Tensor[n]: 0 with probability ``zero_prob``, else
    uniform on {0, 1/(L − 1), ..., 1} (the reference code's augmented discrete uniform)."""
    dev = generator.device
    k = torch.randint(levels, (n,), generator=generator, device=dev)
    zero = torch.rand(n, generator=generator, device=dev) < zero_prob
    return torch.where(zero, torch.zeros(n, device=dev), k / (levels - 1))


def draw_alpha_generator(n: int, generator: torch.Generator, alpha_min: float = 0.5,
                         levels: int = 1001) -> Tensor:
    """α of the generator updates, Tensor[n]: uniform on the levels k/(L − 1) ≥ α_min
    (α_min = 1/2: the reference code's partial discrete uniform)."""
    if not 0.0 < alpha_min <= 1.0:
        raise ValueError(f"alpha_min must be in (0, 1], got {alpha_min}")
    first = math.ceil(alpha_min * (levels - 1) - 1e-9)
    k = torch.randint(first, levels, (n,), generator=generator, device=generator.device)
    return k / (levels - 1)


# --------------------------------------------------------------------------- losses


def score_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """λ(σ) = 1/σ² + 1/σ_d² (EDM's weight, Karras et al. 2022 Table 1), elementwise."""
    return sigma.pow(-2) + sigma_data**-2


def _b(t: Tensor) -> Tensor:
    return t[:, None, None, None]


def mixture_score_loss(mixture: nn.Module, teacher: nn.Module, fake: Tensor, real: Tensor,
                       cond: Tensor | None, sigma: Tensor, alpha: Tensor, noise_fake: Tensor,
                       noise_real: Tensor, sigma_data: float) -> Tensor:
    """L_ψ per sample, Tensor[B] (see the module docstring), ‖·‖² averaged over C, H, W.

    Args:
        mixture: ψ, called as ψ(x, σ, [cond, α]).
        teacher: D_T(x, σ, cond), frozen (evaluated without gradients).
        fake: generator samples x̃ Tensor[B, C, H, W] (detached); real: x ~ p(x | y), same y.
        sigma, alpha: Tensor[B]; noise_fake, noise_real: N(0, I) draws shaped like fake.
    """
    fake = fake.detach()
    x_fake = fake + _b(sigma) * noise_fake
    x_real = real + _b(sigma) * noise_real
    with torch.no_grad():
        target_real = teacher(x_real, sigma, cond)
    both = mixture(torch.cat([x_fake, x_real]), torch.cat([sigma, sigma]),
                   _with_alpha(None if cond is None else torch.cat([cond, cond]),
                               torch.cat([alpha, alpha]), torch.cat([x_fake, x_real])))
    d_fake, d_real = both.chunk(2)
    err_fake = (d_fake - fake).square().mean(dim=(1, 2, 3))
    err_real = (d_real - target_real).square().mean(dim=(1, 2, 3))
    return score_weight(sigma, sigma_data) * ((1 - alpha) * err_fake + alpha * err_real)


@torch.no_grad()
def generator_direction(mixture: nn.Module, teacher: nn.Module, fake: Tensor, real: Tensor,
                        cond: Tensor | None, sigma: Tensor, alpha: Tensor,
                        noise: Tensor) -> Tensor:
    """g = (ψ(x_σ; σ, 0) − ψ(x_σ; σ, α)) / (α · mean_{C,H,W} |x − D_T(x + σ n; σ)|),
    x_σ = x̃ + σ n: Tensor[B, C, H, W], the per-sample gradient of the α-skew JSD in x̃ with
    DMD's normaliser evaluated at the REAL sample x of the same y (see the module docstring);
    NaN/inf (a zero normaliser) become 0."""
    x_t = fake.detach() + _b(sigma) * noise
    two = torch.cat([torch.zeros_like(alpha), alpha])
    both = mixture(torch.cat([x_t, x_t]), torch.cat([sigma, sigma]),
                   _with_alpha(None if cond is None else torch.cat([cond, cond]), two,
                               torch.cat([x_t, x_t])))
    d_fake, d_mix = both.chunk(2)
    scale = (real - teacher(real + _b(sigma) * noise, sigma, cond)).abs().mean(dim=(1, 2, 3))
    return torch.nan_to_num((d_fake - d_mix) / _b(alpha * scale), nan=0.0, posinf=0.0,
                            neginf=0.0)


def generator_loss(fake: Tensor, direction: Tensor) -> Tensor:
    """½ mean_{C,H,W} (x̃ − sg(x̃ − g))² per sample, Tensor[B]: its gradient in x̃ is g / (CHW),
    so the generator moves along −g (the reference code's surrogate loss)."""
    target = (fake - direction).detach()
    return 0.5 * (fake - target).square().mean(dim=(1, 2, 3))
