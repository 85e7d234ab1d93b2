"""Level-shift augmentation: a prior that does not tie the field's level to the training years.

A prior learned from the early years of a warming climate puts almost no mass on a field
4 K warmer everywhere, so a zero-shot posterior of a later year fights its own prior: the
denoiser, asked about fields outside everything it saw, is wrong exactly where the observations
need it. Training on fields shifted by a random uniform offset per member and variable,

    x̃ = x + δ · 1,        δ_c ~ N(0, τ_c²) independently for each variable c,

learns the prior

    p_τ(x) = ∫ p(x − δ · 1) N(δ; 0, diag τ²) dδ,

the training distribution convolved along the constant fields only: every pattern (gradients,
anomalies relative to the domain mean, their covariance) is unchanged, and the domain mean
becomes uncertain by τ beyond its training spread. Observations that see the level (block
means, stations, a satellite swath) then set it, as in the posterior of a model whose level
is a nuisance parameter with a Gaussian prior. τ = 0 is the identity (the same bits).

With a conditional model the observation is simulated from the shifted field, so the pair
(x̃, y) stays consistent and the model learns to follow the observed level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

MakePair = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor | None]]


def level_shifted_pairs(make_pair: MakePair, shift_std: Sequence[float]) -> MakePair:
    """``make_pair`` applied to x[B, C, H, W] + δ[B, C, 1, 1], δ_c ~ N(0, shift_std[c]²).

    ``shift_std`` is in the units of the fields ``make_pair`` receives (standardised units in
    training: τ_c / std_c for a shift of τ_c in physical units). All zeros: ``make_pair``
    itself, unwrapped, so no random number is drawn and the pairs are bit for bit the same.
    """
    std = torch.tensor([float(s) for s in shift_std])
    if (std < 0).any() or not torch.isfinite(std).all():
        raise ValueError(f"level shift: standard deviations must be finite and >= 0, got "
                         f"{list(shift_std)}")
    if not (std > 0).any():
        return make_pair

    def shifted(batch: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        if batch.shape[1] != std.numel():
            raise ValueError(f"level shift: {std.numel()} standard deviations for "
                             f"{batch.shape[1]} variables")
        delta = torch.randn(batch.shape[0], batch.shape[1], 1, 1, generator=generator,
                            device=batch.device, dtype=batch.dtype)
        return make_pair(batch + delta * std.to(batch).view(1, -1, 1, 1), generator)

    return shifted
