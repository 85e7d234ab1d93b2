"""A Wasserstein regulariser of the denoised estimate, added to the EDM loss at low noise.

WassDiff (Liu et al. 2025) trains a score model on precipitation with

    L = (1 − λ) L_DSM + λ W(x̂₀, x₀),       λ = 0.2,

x̂₀ = D(x₀ + σ n; σ, y) the denoised estimate and W a Wasserstein-1 distance to the clean
x₀, so that the model is pushed towards the right distribution of values, the tail included,
and not only towards the conditional mean. Two choices of W are implemented:

- ``"marginal"`` (the default): per sample b, the 1-D W₁ between the pixel values of x̂₀_b
  and of x₀_b (each of the N = H W values an atom 1/N), per channel and averaged over
  channels. For equal-size empirical measures the optimal coupling is the sorted one
  (the monotone rearrangement; Villani 2003, Ch. 2):

      W₁(x̂₀_b, x₀_b) = 1/N Σ_i |x̂₀_b,(i) − x₀_b,(i)|,      (i): the i-th smallest value.

- ``"sliced"`` (WassDiff's code): SW₁ between the batch of flattened fields {x̂₀_b} and
  {x₀_b} as two empirical measures of B points in R^D, D = C H W, over K random directions
  θ_k uniform on the sphere S^(D−1) (Bonneel et al. 2015):

      SW₁ = 1/K Σ_k W₁({⟨θ_k, x̂₀_b⟩}_b, {⟨θ_k, x₀_b⟩}_b).

Why the marginal one is the default: (1) it measures the very thing the tail scores score
(the pixel-value distribution, its 99.9th percentile), where a projection onto a random θ
in D ≈ 10³–10⁵ dimensions is a weighted sum over many rain cells and so close to Gaussian
(central limit): SW₁ mostly sees means and covariances, which L_DSM already fits, and little
of the pixel tail. (2) It is exact, with N values per sample, where SW₁ compares B-point
sets (B = the low-σ part of a batch, often < 10) along K random lines: Monte-Carlo noise in
the loss. (3) It is per sample, Tensor[B], like ``EDMLoss.loss_at``: the σ mask is per
sample, and a data-parallel rank computing its slice gets the same term as a single process
would, which keeps the training loop's equivalence; SW₁ of a slice differs from SW₁ of the
global batch. (4) It draws no random numbers, so exact resumption needs no extra generator
state. ``"sliced"`` stays for a WassDiff-faithful ablation; its projections are drawn from
the generator given to the loss (the training loop's checkpointed noise generator).

Only at low noise, σ < σ_max: the minimiser of L_DSM is the posterior mean E[x₀ | x_σ],
whose value distribution is narrower than x₀'s once σ is not small (it averages over the
plausible fields). A distribution term at large σ would pull D away from that mean, and the
score s = (D − x)/σ² the sampler integrates would be biased at every σ. As σ → 0,
D → x₀ and the term vanishes at the L_DSM optimum, so below a small σ_max the two agree.
(WassDiff applies it at every σ.) Then, per sample,

    L_b = (1 − λ) λ(σ_b) ‖D_b − x₀_b‖² + λ · 1[σ_b < σ_max] · W_b,

the (1 − λ) on every sample so that EDM's weighting across σ keeps its shape.

Units: the model's (standardised, and for precipitation transformed by
``sgm.core.heavy_tailed.CensoredPowerTransform``), where D and L_DSM live, not mm/day. The
transform and the standardisation are monotone per variable, so they keep every pixel's
rank: x̂₀ and x₀ have the same marginal in model units iff in mm/day, and the term is zero
at the same place. In mm/day it would need T⁻¹ inside the loss, whose clamp has zero
gradient over every dry pixel, and its size (mm/day) would make λ's meaning depend on the
data; in model units both terms are O(1) in standard deviations. With a residual target
(``conditioning.ResidualTarget``) the term compares residual histograms instead; it still
vanishes at D = x₀.

References
----------
- Liu, Y. et al. (2025). Downscaling extreme precipitation with Wasserstein regularized
  diffusion. IEEE TGRS (arXiv 2410.00381).
- Bonneel, N., Rabin, J., Peyré, G. & Pfister, H. (2015). Sliced and Radon Wasserstein
  barycenters of measures. J. Math. Imaging Vis. 51, 22-45.
- Villani, C. (2003). Topics in Optimal Transportation. AMS.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sgm.core.loss import EDMLoss

KINDS = ("marginal", "sliced")


def wasserstein_1d(x: Tensor, y: Tensor) -> Tensor:
    """W₁ between equal-size empirical measures along the last axis: x[..., N], y[..., N] → [...].

    W₁ = 1/N Σ_i |x_(i) − y_(i)| (sorted coupling); differentiable (sort gathers values).
    """
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    return (x.sort(dim=-1).values - y.sort(dim=-1).values).abs().mean(dim=-1)


def marginal_wasserstein(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample pixel-value W₁, per channel, averaged over channels: x, y [B, C, H, W] → [B]."""
    if x.ndim != 4:
        raise ValueError(f"expected [B, C, H, W], got {tuple(x.shape)}")
    return wasserstein_1d(x.flatten(2), y.flatten(2)).mean(dim=1)


def sliced_wasserstein(
    x: Tensor, y: Tensor, projections: int, generator: torch.Generator | None = None
) -> Tensor:
    """SW₁ between two batches of fields x[B, ...], y[B, ...] as B-point sets in R^D → scalar.

    θ_k = g_k / ‖g_k‖, g_k ~ N(0, I_D) drawn from ``generator`` on x's device (uniform on the
    sphere); SW₁ = mean_k W₁(x θ_k, y θ_k).
    """
    if x.shape != y.shape or x.shape[0] < 1:
        raise ValueError(f"need equal non-empty batches, got {tuple(x.shape)}, {tuple(y.shape)}")
    flat_x, flat_y = x.flatten(1), y.flatten(1)
    theta = torch.randn(flat_x.shape[1], projections, generator=generator, device=x.device,
                        dtype=flat_x.dtype)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return wasserstein_1d((flat_x @ theta).T, (flat_y @ theta).T).mean()


def wasserstein_term(
    denoised: Tensor,
    clean: Tensor,
    sigma: Tensor,
    sigma_max: float,
    kind: str = "marginal",
    projections: int = 100,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The extra loss per sample, 1[σ_b < σ_max] · W_b: denoised, clean [B, C, H, W],
    sigma [B] → Tensor[B] (zero where σ_b ≥ σ_max).

    ``kind="marginal"``: W_b = ``marginal_wasserstein`` of sample b. ``kind="sliced"``: W_b =
    SW₁ of the samples with σ < σ_max (one value, given to each of them).
    """
    low = sigma < sigma_max
    if kind == "marginal":
        return torch.where(low, marginal_wasserstein(denoised, clean), 0.0)
    if kind == "sliced":
        if not bool(low.any()):
            return torch.zeros_like(sigma, dtype=denoised.dtype)
        sw = sliced_wasserstein(denoised[low], clean[low], projections, generator)
        return low.to(denoised.dtype) * sw
    raise ValueError(f"unknown Wasserstein kind {kind!r}; expected one of {KINDS}")


class WassersteinEDMLoss(EDMLoss):
    """EDM loss with the Wasserstein term, a drop-in for ``EDMLoss`` in the training loop:

        loss_at(...)_b = (1 − λ) λ(σ_b) mean_{C,H,W}(D_b − x₀_b)² + λ · 1[σ_b < σ_max] W_b

    from one forward pass. ``weight`` is λ ∈ [0, 1]; ``kind``, ``projections`` and
    ``generator`` go to :func:`wasserstein_term`.
    """

    def __init__(
        self,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        sigma_data: float = 1.0,
        *,
        weight: float = 0.2,
        sigma_max: float = math.inf,
        kind: str = "marginal",
        projections: int = 100,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(P_mean, P_std, sigma_data)
        if not 0.0 <= weight <= 1.0 or not sigma_max > 0 or projections < 1:
            raise ValueError("need 0 ≤ weight ≤ 1, sigma_max > 0, projections ≥ 1")
        if kind not in KINDS:
            raise ValueError(f"unknown Wasserstein kind {kind!r}; expected one of {KINDS}")
        self.wass_weight = float(weight)
        self.sigma_max = float(sigma_max)
        self.kind = kind
        self.projections = int(projections)
        self.generator = generator

    def loss_at(
        self,
        precond: nn.Module,
        x0: Tensor,
        cond: Tensor | None,
        sigma: Tensor,
        noise: Tensor,
    ) -> Tensor:
        """x0, noise [B, C, H, W], cond [B, K, H, W] | None, sigma [B] → Tensor[B]."""
        x0 = x0.to(torch.float32)
        denoised = precond(x0 + sigma[:, None, None, None] * noise, sigma, cond).to(torch.float32)
        dsm = self.weight(sigma) * (denoised - x0).square().mean(dim=(1, 2, 3))
        extra = wasserstein_term(denoised, x0, sigma, self.sigma_max, self.kind,
                                 self.projections, self.generator)
        return (1.0 - self.wass_weight) * dsm + self.wass_weight * extra
