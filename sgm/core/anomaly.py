"""The anomaly target of a prior model: fields as departures from their training mean, in
units of their spread.

EDM's preconditioning (Karras et al. 2022, eq. 7) assumes targets of standard deviation
sigma_data about zero. Standardised fields z = (x − mean)/std are zero-mean and unit-variance
over space and time together, but most of that variance is the fixed spatial pattern (the
climatology): HadCM3's North-American temperature has std 10.4 K over the domain and only
~1 K per grid cell from year to year. A prior denoiser of z then has to cancel its own skip
connection almost exactly at every noise level above ~0.1, and Tweedie's covariance
sigma^2 ∂D/∂x, which zero-shot guidance needs (``sgm.core.guidance``), inherits the error of
that cancellation multiplied by sigma^2. Learning instead

    u = (z − μ) / s,        μ = E_train[z]  (per pixel),
    s_c² = p_c² + τ_c²,     p_c² = mean over pixels of Var_train[z_c]   (per variable c),

puts the year-to-year variability at unit scale, so that sigma_data = 1 holds. τ_c is the
level-shift augmentation's spread (``sgm.core.level_shift``, in the units of z), so the
augmented training data have unit variance too. p_c / s_c (``pattern_scale``, 1 without a
shift) is the spread of one pixel in the training years, in units of u: the scale at which
a noise level is large for the patterns (MMPS's ``covariance_sigma`` is stated in it). The map
is affine and exact: z = μ + s u.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class AnomalyTarget:
    """u = (z − mean) / scale and back. mean: Tensor[C, H, W]; scale: Tensor[C] (> 0);
    pattern_scale: Tensor[C], p / s of the module docstring (None: ones)."""

    mean: Tensor
    scale: Tensor
    pattern_scale: Tensor | None = None

    @property
    def pattern_unit(self) -> float:
        """The smallest p_c / s_c: one pixel's year-to-year spread in units of u."""
        return 1.0 if self.pattern_scale is None else float(self.pattern_scale.min())

    @classmethod
    def fit(cls, z: Tensor, shift_std: Sequence[float] | None = None) -> AnomalyTarget:
        """From training fields z[N, C, H, W] (N ≥ 2) and an optional level shift τ[C]."""
        if z.shape[0] < 2:
            raise ValueError("the anomaly target needs at least 2 training fields")
        z = z.to(torch.float64)
        var = z.var(dim=0).mean(dim=(1, 2))
        if not bool((var > 0).all()):
            raise ValueError("the anomaly target needs fields that vary in time (a variable "
                             "has the same value in every training field)")
        total = var
        if shift_std is not None:
            total = var + torch.tensor([float(t) for t in shift_std], dtype=torch.float64) ** 2
        return cls(z.mean(dim=0).to(torch.float32), total.sqrt().to(torch.float32),
                   (var / total).sqrt().to(torch.float32))

    def _affine(self, like: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        """mean and scale shaped to broadcast against ``like`` with channels at ``dim``."""
        lead = dim if dim >= 0 else like.ndim + dim
        mean = self.mean.to(like).reshape(*([1] * lead), *self.mean.shape)
        scale = self.scale.to(like).reshape(*([1] * lead), -1, 1, 1)
        return mean, scale

    def forward(self, z: Tensor, dim: int = 1) -> Tensor:
        """u = (z − μ) / s for z[..., C, H, W] with channels at ``dim``."""
        mean, scale = self._affine(z, dim)
        return (z - mean) / scale

    def inverse(self, u: Tensor, dim: int = 1) -> Tensor:
        """z = μ + s u."""
        mean, scale = self._affine(u, dim)
        return mean + scale * u

    def to_meta(self) -> dict[str, Any]:
        pattern = None if self.pattern_scale is None else self.pattern_scale.tolist()
        return {"mean": self.mean.contiguous(), "scale": self.scale.tolist(),
                "pattern_scale": pattern}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> AnomalyTarget | None:
        if meta is None:
            return None
        pattern = meta.get("pattern_scale")
        return cls(torch.as_tensor(meta["mean"], dtype=torch.float32),
                   torch.tensor(meta["scale"], dtype=torch.float32),
                   None if pattern is None else torch.tensor(pattern, dtype=torch.float32))
