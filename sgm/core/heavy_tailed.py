"""The heavy-tailed oracle: a censored, power-transformed Gaussian random field whose marginal
is known exactly, and the censored power transform the model trains in.

The field (the latent-Gaussian daily-rainfall model of Bárdossy & Plate 1992; Allcroft &
Glasbey 2003), in mm/day:

    P = s · max(0, z + c)^γ,      z a unit-variance Gaussian random field (GaussianRandomField),

dry (P = 0) where z ≤ −c, heavy-tailed (a power γ > 1 of a Gaussian) where it rains. Its
marginal at every pixel, with Φ the standard normal CDF:

    F(p) = 0                          p < 0
    F(p) = Φ((p / s)^(1/γ) − c)       p ≥ 0         (an atom Φ(−c) at zero: the dry fraction)
    Q(u) = 0                          u ≤ Φ(−c)
    Q(u) = s (Φ⁻¹(u) + c)^γ           u > Φ(−c)

and the return level of a return period of R pixel values (R independent days at one pixel)
is Q(1 − 1/R). Values are not independent in space: a pixel's neighbours share z's Matérn
correlation, so the oracle has realistic rain cells, not white noise.

The transform (:class:`CensoredPowerTransform`) inverts that construction. For P above a dry
threshold t (0 by default),

    T(P) = ((P − t) / s)^(1/γ) − c,
    T(P) = m₀ = E[z | z ≤ −c] = −φ(c) / Φ(−c)      for P ≤ t (dry),
    T⁻¹(z) = t + s (z + c)^γ for z > −c,   0 for z ≤ −c.

Why this map: on the oracle (t = 0) T is the exact Gaussianising map of the wet values and
T⁻¹ is the oracle's own generative map, so a model exact in T-space gives the exact marginal
back (zero fraction Φ(−c), every quantile); T⁻¹ is non-negative by construction (no clamp
needed); its tail is a power of a Gaussian, so it extrapolates smoothly past the training
maximum (an empirical anamorphosis table would stop there); and it is four numbers, stored as
a plain dict. Dry pixels have no latent value (the data are censored); they go to the latent's
conditional mean m₀, one value below the dry cut −c (m₀ < −c for every c, the inverse-Mills
bound), so the round trip is exact, E[T(P)] = E[z] = 0 on the oracle, and a model's small
errors around m₀ stay dry. (A random draw from z | z ≤ −c would make T(P) exactly N(0, 1)
but put white noise, with no spatial correlation, into every dry area.) With a threshold t > 0
(real data: drizzle and packing noise below, say, 0.1 mm/day count as dry) the wet values are
shifted by t, so T⁻¹ returns 0 or values above t, as the data do, and the round trip is exact
for P = 0 and P > t.

Fitting on a training split (:meth:`CensoredPowerTransform.fit`), pooled over pixels and
times: c = −Φ⁻¹(p₀) from the dry fraction p₀ = P(P ≤ t); then, at wet quantile levels
u_k = p₀ + (1 − p₀)(k − ½)/K, least squares of

    log(Q̂(u_k) − t) = log s + γ log(Φ⁻¹(u_k) + c)

(quantile matching; exact for exact quantiles of the model). On real data the family is an
approximation: T(P) is then only approximately Gaussian, and T⁻¹ is still non-negative.

References
----------
- Bárdossy, A. & Plate, E. J. (1992). Space-time model for daily rainfall using atmospheric
  circulation patterns. Water Resour. Res. 28, 1247-1259.
- Allcroft, D. J. & Glasbey, C. A. (2003). A latent Gaussian Markov random-field model for
  spatiotemporal rainfall disaggregation. J. R. Stat. Soc. C 52, 487-498.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor

from sgm.core.gaussian import GaussianRandomField

Array = np.ndarray | Tensor


@dataclass(frozen=True)
class CensoredPowerTransform:
    """The monotone map T between mm/day and the latent Gaussian space (module docstring).

    scale s > 0 (mm/day), offset c (dry fraction Φ(−c)), exponent γ > 0, threshold t ≥ 0
    (mm/day; values ≤ t are dry). ``forward`` and ``inverse`` take numpy arrays or tensors of
    any shape and return the same kind (float64 for numpy).
    """

    scale: float
    offset: float
    exponent: float
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if not (self.scale > 0 and self.exponent > 0 and self.threshold >= 0):
            raise ValueError(f"need scale > 0, exponent > 0, threshold ≥ 0; got {self}")

    @property
    def dry_value(self) -> float:
        """m₀ = E[z | z ≤ −c] = −φ(c) / Φ(−c), where T puts every dry value."""
        return float(-norm.pdf(self.offset) / norm.cdf(-self.offset))

    def forward(self, p: Array) -> Array:
        """T(P): mm/day → latent Gaussian units, elementwise."""
        s, c, g, t = self.scale, self.offset, self.exponent, self.threshold
        if isinstance(p, Tensor):
            z = ((p - t).clamp_min(0.0) / s) ** (1.0 / g) - c
            return torch.where(p > t, z, torch.full_like(z, self.dry_value))
        p = np.asarray(p, dtype=np.float64)
        z = (np.maximum(p - t, 0.0) / s) ** (1.0 / g) - c
        return np.where(p > t, z, self.dry_value)

    def inverse(self, z: Array) -> Array:
        """T⁻¹(z) = t + s (z + c)^γ for z > −c, else 0: latent units → mm/day, always ≥ 0."""
        s, c, g, t = self.scale, self.offset, self.exponent, self.threshold
        if isinstance(z, Tensor):
            wet = z > -c
            p = t + s * (z + c).clamp_min(0.0) ** g
            return torch.where(wet, p, torch.zeros_like(p))
        z = np.asarray(z, dtype=np.float64)
        return np.where(z > -c, t + s * np.maximum(z + c, 0.0) ** g, 0.0)

    @classmethod
    def fit(
        cls, values: Array, threshold: float = 0.0, levels: int = 100
    ) -> CensoredPowerTransform:
        """Fit (s, c, γ) to training values (any shape, pooled) by quantile matching.

        c = −Φ⁻¹(p₀) with p₀ the fraction of values ≤ ``threshold``; (log s, γ) by least
        squares of log(Q̂(u_k) − t) on log(Φ⁻¹(u_k) + c) at ``levels`` wet quantile levels
        u_k = p₀ + (1 − p₀)(k − ½)/K (those with Q̂(u_k) > t).
        """
        v = torch.as_tensor(values).detach().cpu().numpy().astype(np.float64).ravel()
        v = v[np.isfinite(v)]
        dry = float(np.mean(v <= threshold)) if v.size else 1.0
        if not 0.0 < dry < 1.0:
            raise ValueError(f"need both dry and wet values to fit; dry fraction {dry}")
        offset = float(-norm.ppf(dry))
        u = dry + (1.0 - dry) * (np.arange(1, levels + 1) - 0.5) / levels
        q = np.quantile(v, u)
        keep = q > threshold
        if keep.sum() < 2:
            raise ValueError("fewer than two distinct wet quantiles to fit the tail")
        x = np.log(norm.ppf(u[keep]) + offset)
        y = np.log(q[keep] - threshold)
        exponent, log_scale = np.polyfit(x, y, 1)
        return cls(float(np.exp(log_scale)), offset, float(exponent), float(threshold))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "censored_power", "scale": self.scale, "offset": self.offset,
                "exponent": self.exponent, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CensoredPowerTransform:
        if d.get("kind", "censored_power") != "censored_power":
            raise ValueError(f"not a censored power transform: kind {d['kind']!r}")
        return cls(float(d["scale"]), float(d["offset"]), float(d["exponent"]),
                   float(d.get("threshold", 0.0)))


class CensoredPowerField:
    """The oracle P = s · max(0, z + c)^γ on a periodic (H, W) grid, z a unit-variance
    Matérn-like GRF (``GaussianRandomField`` with the same ``length_scale`` and ``nu``).

    Defaults (s = 4 mm/day, c = −0.3, γ = 3): 62 % dry, 99th percentile 33.3 mm/day,
    99.9th 86.9 mm/day.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        length_scale: float,
        nu: float = 1.5,
        scale: float = 4.0,
        offset: float = -0.3,
        exponent: float = 3.0,
    ) -> None:
        self.latent = GaussianRandomField(shape, length_scale, nu=nu)
        self.transform = CensoredPowerTransform(scale, offset, exponent)

    @property
    def shape(self) -> tuple[int, int]:
        return self.latent.shape

    def to_dict(self) -> dict[str, Any]:
        """The field's description (``from_dict`` rebuilds it)."""
        return {"shape": list(self.shape), "length_scale": self.latent.length_scale,
                "nu": self.latent.nu, **self.transform.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CensoredPowerField:
        return cls((int(d["shape"][0]), int(d["shape"][1])), float(d["length_scale"]),
                   float(d.get("nu", 1.5)), float(d["scale"]), float(d["offset"]),
                   float(d["exponent"]))

    @property
    def zero_fraction(self) -> float:
        """P(P = 0) = Φ(−c)."""
        return float(norm.cdf(-self.transform.offset))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n independent fields in mm/day: T⁻¹ of latent GRF draws. Returns [n, H, W]."""
        return self.transform.inverse(self.latent.sample(n, rng))

    def cdf(self, p: np.ndarray | float) -> np.ndarray:
        """F(p) = P(P ≤ p): 0 below zero, Φ((p/s)^(1/γ) − c) from zero on (atom at 0)."""
        tr = self.transform
        p = np.asarray(p, dtype=np.float64)
        z = (np.maximum(p, 0.0) / tr.scale) ** (1.0 / tr.exponent) - tr.offset
        return np.where(p < 0, 0.0, norm.cdf(z))

    def sf(self, p: np.ndarray | float) -> np.ndarray:
        """Exceedance probability P(P > p) = 1 − F(p) (computed as Φ(−·) for accuracy)."""
        tr = self.transform
        p = np.asarray(p, dtype=np.float64)
        z = (np.maximum(p, 0.0) / tr.scale) ** (1.0 / tr.exponent) - tr.offset
        return np.where(p < 0, 1.0, norm.sf(z))

    def quantile(self, u: np.ndarray | float) -> np.ndarray:
        """Q(u) = s (Φ⁻¹(u) + c)^γ above the dry fraction, 0 at or below it; u in [0, 1]."""
        return self.transform.inverse(norm.ppf(np.asarray(u, dtype=np.float64)))

    def return_level(self, period: np.ndarray | float) -> np.ndarray:
        """The value exceeded once in ``period`` independent pixel values: Q(1 − 1/period)."""
        return self.quantile(1.0 - 1.0 / np.asarray(period, dtype=np.float64))
