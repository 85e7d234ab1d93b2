"""Per-time summaries of a posterior ensemble: mean, spread, quantiles, exceedance probabilities.

Every statistic is over the members of one time step at one pixel, from members [T, M, H, W]:

- mean: the ensemble mean;
- std: the ensemble standard deviation with ddof=1 (the unbiased variance of M samples; needs
  M ≥ 2);
- quantiles: the q-quantiles of the members, numpy's ``linear`` method (Hyndman & Fan 1996,
  definition 7: linear interpolation between order statistics, the 0- and 1-quantiles are the
  smallest and largest member);
- exceedance: P(X > threshold) estimated as the fraction of members strictly above it (steps of
  1/M).

Computed in float64 whatever the input type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_QUANTILES = (0.05, 0.5, 0.95)
QUANTILE_METHOD = "linear"
MEMBER_AXIS = 1


def check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    """Quantile levels, sorted; each must be a finite number in [0, 1], none repeated."""
    q = tuple(float(v) for v in quantiles)
    bad = [v for v in q if not (np.isfinite(v) and 0.0 <= v <= 1.0)]
    if bad:
        raise ValueError(f"quantile level(s) {bad} not in [0, 1]")
    if len(set(q)) != len(q):
        raise ValueError(f"quantile levels {list(q)} repeat a level")
    return tuple(sorted(q))


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """Thresholds, sorted; each must be finite, none repeated."""
    t = tuple(float(v) for v in thresholds)
    bad = [v for v in t if not np.isfinite(v)]
    if bad:
        raise ValueError(f"threshold(s) {bad} are not finite numbers")
    if len(set(t)) != len(t):
        raise ValueError(f"thresholds {list(t)} repeat a value")
    return tuple(sorted(t))


def ensemble_mean(members: np.ndarray) -> np.ndarray:
    """[T, H, W] mean over the members of [T, M, H, W]."""
    return np.asarray(members, dtype=np.float64).mean(axis=MEMBER_AXIS)


def ensemble_std(members: np.ndarray) -> np.ndarray:
    """[T, H, W] standard deviation (ddof=1) over the members of [T, M, H, W]."""
    x = np.asarray(members, dtype=np.float64)
    if x.shape[MEMBER_AXIS] < 2:
        raise ValueError(f"the ensemble standard deviation needs at least 2 members, got "
                         f"{x.shape[MEMBER_AXIS]}")
    return x.std(axis=MEMBER_AXIS, ddof=1)


def ensemble_quantiles(members: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """[Q, T, H, W] quantiles (levels in [0, 1]) over the members of [T, M, H, W]."""
    x = np.asarray(members, dtype=np.float64)
    q = np.asarray(quantiles, dtype=np.float64)
    if q.size == 0:
        return np.empty((0, x.shape[0], *x.shape[2:]))
    return np.quantile(x, q, axis=MEMBER_AXIS, method=QUANTILE_METHOD)


def exceedance_probability(members: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """[K, T, H, W] fraction of the members of [T, M, H, W] strictly above each threshold."""
    x = np.asarray(members, dtype=np.float64)
    out = np.empty((len(thresholds), x.shape[0], *x.shape[2:]))
    for k, thr in enumerate(thresholds):
        out[k] = (x > float(thr)).mean(axis=MEMBER_AXIS)
    return out


@dataclass(frozen=True)
class Summary:
    """The products of one variable: mean, std [T, H, W], quantiles [Q, T, H, W], exceedance
    [K, T, H, W]."""

    mean: np.ndarray
    std: np.ndarray
    quantiles: np.ndarray
    exceedance: np.ndarray


def summarise(members: np.ndarray, quantiles: Sequence[float] = DEFAULT_QUANTILES,
              thresholds: Sequence[float] = ()) -> Summary:
    """All products of members [T, M, H, W]."""
    return Summary(ensemble_mean(members), ensemble_std(members),
                   ensemble_quantiles(members, quantiles),
                   exceedance_probability(members, thresholds))
