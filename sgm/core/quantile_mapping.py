"""Empirical quantile mapping of an interpolated observation: the classical bias correction.

Fitted on training pairs (x = the interpolated coarse field, y = the fine truth), quantile
mapping (Panofsky & Brier 1968; Wood et al. 2004; Themeßl et al. 2011) replaces a value by
the truth's value of the same rank:

    QM(x) = F_y⁻¹(F_x(x)),

estimated at knots: the sample quantiles x_k = q̂_x(u_k), y_k = q̂_y(u_k) at levels u_k, and
QM piecewise linear between them. Only the two marginals are used, not the pairing: QM fixes
the distribution of values (the drizzle of an interpolated field, its damped peaks), not the
placement of rain cells.

Pooled, not per pixel: one map for every pixel, fitted on all pixels and times of the
training split. The oracle is stationary, so every pixel has the same marginals, and the tail
needs the samples: 1 000 training fields give 1 000 values per pixel (the 99.9th percentile
from one value) but 10⁶ pooled over a 32 × 32 grid. A non-stationary domain (orography)
would want per-pixel or per-region maps with a pooled tail; not done here.

Knots: K levels equally spaced in (ε, 1 − ε) plus 20 levels geometrically spaced towards each
end, ε = ``tail_min`` / n for n pooled values, so the outermost knots have ``tail_min``
training values beyond them (sample extremes are not knots: xclim issue 1015). Tied source
knots (an atom in x, e.g. exact zeros) are merged into one knot whose target is the mean of
theirs, so the map stays a function and monotone.

Beyond the knots, a constant additive correction (Boé et al. 2007; xsdba's "constant"
extrapolation of additive adjustment factors):

    QM(x) = x + (y_K − x_K)   for x > x_K,      QM(x) = x + (y_1 − x_1)   for x < x_1,

then QM(x) ← max(QM(x), lower) when a lower bound is given (0 for precipitation). Inside the
knots QM(x) − x is the linear interpolation of the corrections y_k − x_k, so for x ≥ lower,
|QM(x) − x| ≤ max_k |y_k − x_k| everywhere: the map cannot blow up. A multiplicative
correction y_K / x_K cannot promise that: its factor explodes where the source quantile is
near zero, which is how xsdba issue 278 turned 0.05 mm/day into >1650 mm/day. The map is
non-decreasing (slope 1 outside the knots, ≥ 0 between them, continuous at x_1 and x_K).

Why not xsdba (PyPI): it is an xarray library organised around a time dimension and
grouping, and the core takes no xarray (tests/test_layout.py); what is needed here, a pooled
empirical map with a bounded tail stored as plain data, is a few lines of numpy.

References
----------
- Panofsky, H. A. & Brier, G. W. (1968). Some Applications of Statistics to Meteorology.
  Pennsylvania State University.
- Wood, A. W., Leung, L. R., Sridhar, V. & Lettenmaier, D. P. (2004). Hydrologic
  implications of dynamical and statistical approaches to downscaling climate model outputs.
  Climatic Change 62, 189-216.
- Boé, J., Terray, L., Habets, F. & Martin, E. (2007). Statistical and dynamical downscaling of
  the Seine basin climate for hydro-meteorological studies. Int. J. Climatol. 27, 1643-1655.
- Themeßl, M. J., Gobiet, A. & Leuprecht, A. (2011). Empirical-statistical downscaling and error
  correction of daily precipitation from regional climate models. Int. J. Climatol. 31,
  1530-1544.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def knot_levels(n: int, quantiles: int = 500, tail_min: int = 10) -> np.ndarray:
    """Quantile levels for n pooled values: ``quantiles`` equally spaced in [ε, 1 − ε] and 20
    geometric towards each end, ε = tail_min / n (sorted, unique)."""
    eps = tail_min / n
    if not 0 < eps < 0.5:
        raise ValueError(f"need more than {2 * tail_min} values to fit, got {n}")
    tail = np.geomspace(eps, 0.5, 20)
    return np.unique(np.concatenate([np.linspace(eps, 1 - eps, quantiles), tail, 1 - tail]))


@dataclass(frozen=True)
class QuantileMapping:
    """QM(x) at knots source[K] (strictly increasing) → target[K] (non-decreasing), with the
    constant additive correction beyond them and an optional lower bound (module docstring)."""

    source: np.ndarray
    target: np.ndarray
    lower: float | None = None

    def __post_init__(self) -> None:
        s, t = np.asarray(self.source, np.float64), np.asarray(self.target, np.float64)
        if s.ndim != 1 or s.shape != t.shape or s.size < 2:
            raise ValueError("source and target must be 1-D, of one length ≥ 2")
        if np.any(np.diff(s) <= 0) or np.any(np.diff(t) < 0):
            raise ValueError("source knots must increase strictly, target knots not decrease")
        object.__setattr__(self, "source", s)
        object.__setattr__(self, "target", t)

    @classmethod
    def fit(
        cls,
        source: np.ndarray,
        target: np.ndarray,
        lower: float | None = None,
        quantiles: int = 500,
        tail_min: int = 10,
    ) -> QuantileMapping:
        """Fit on training values of the interpolated field (source, any shape) and of the
        truth (target, any shape; pooled, so the sizes may differ)."""
        x = np.asarray(source, dtype=np.float64).ravel()
        y = np.asarray(target, dtype=np.float64).ravel()
        u = knot_levels(min(x.size, y.size), quantiles, tail_min)
        # Sample quantiles at increasing levels increase; the running maximum removes any
        # one-ulp step back of the interpolation.
        xk = np.maximum.accumulate(np.quantile(x, u))
        yk = np.maximum.accumulate(np.quantile(y, u))
        knots, group = np.unique(xk, return_inverse=True)
        merged = np.bincount(group, weights=yk) / np.bincount(group)
        return cls(knots, merged, lower)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """QM(x) elementwise (float64, x's shape)."""
        x = np.asarray(x, dtype=np.float64)
        s, t = self.source, self.target
        out = np.interp(x, s, t)
        out = np.where(x > s[-1], x + (t[-1] - s[-1]), out)
        out = np.where(x < s[0], x + (t[0] - s[0]), out)
        return out if self.lower is None else np.maximum(out, self.lower)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "empirical_quantile_mapping", "source": self.source.tolist(),
                "target": self.target.tolist(), "lower": self.lower}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantileMapping:
        lower = d.get("lower")
        return cls(np.asarray(d["source"]), np.asarray(d["target"]),
                   None if lower is None else float(lower))
