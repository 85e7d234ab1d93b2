"""Tail scores of an ensemble (or a point forecast) of gridded fields against the truth.

Conventions of ``sgm.core.metrics``: ens[M, ...] (members first), truth[...]; a deterministic
prediction pred[...] is scored as the one-member ensemble pred[None]. Arrays in physical units
(mm/day for precipitation). Thresholds t define the event "value > t" (strict, so t = 0 is
"wet").

- Quantile error. q̂_u(ens) is the u-quantile of all member values pooled (members, times,
  pixels): the quantile of the ensemble's predictive marginal, the equal mixture of its
  members, set against q̂_u(truth) of the truth values pooled the same way ("pooled", signed,
  ens − truth: the climatological tail). "per_field_mae" is mean_t |q̂_u(ens[:, t]) −
  q̂_u(truth[t])|, per verifying field t with the members pooled (the peak error of each
  event, as WassDiff's and RainNet's 99.9th-percentile error, per image).
- CSI and frequency bias (Schaefer 1990; Wilks 2011, Sec. 9.2): with hits a, false alarms b
  and misses c of the event, CSI = a / (a + b + c), bias = (a + b) / (a + c). The ensemble
  forecasts the event where its exceedance probability p = 1/M Σ_m 1[x_m > t] ≥ 0.5 (the
  members' median exceeds t). Not the ensemble mean: it is smoother than any member and
  rarely exceeds a high threshold, so its bias falls towards 0 as t grows, an artefact of
  averaging, not the forecast system; not per member: one random member pays the double
  penalty for every displaced cell. p ≥ 0.5 is the decision that minimises the expected
  number of misses plus false alarms, and for M = 1 it is the point forecast's own event, so
  the baseline is scored by the same rule.
- Wasserstein-1 distance between the pooled pixel-value distributions, W₁ = ∫ |F_ens − F_truth|
  (1-D, scipy's ``wasserstein_distance``), pooled and per field.
- Quantile-quantile points: q̂_u(ens) against q̂_u(truth) at levels u (default up to 1 − 10⁻⁴,
  clipped to u ≤ 1 − 1/n for the n truth values).
- Reliability diagram and the Brier score of p for "value > t", BS = mean (p − o)², o = 1[y > t],
  with Murphy's (1973) decomposition over the M + 1 distinct values p_k = k/M of p (n_k points
  each, observed frequency ō_k, base rate ō):

      BS = 1/N Σ_k n_k (p_k − ō_k)²  −  1/N Σ_k n_k (ō_k − ō)²  +  ō (1 − ō)
         = reliability − resolution + uncertainty,

  exact, since p is constant within each category. Also the fair Brier score (Ferro 2014),
  mean[(p − o)² − p(1 − p)/(M − 1)], unbiased for the Brier score of the distribution the
  members are drawn from (M ≥ 2).

References
----------
- Murphy, A. H. (1973). A new vector partition of the probability score. J. Appl. Meteor. 12,
  595-600.
- Schaefer, J. T. (1990). The critical success index as an indicator of warning skill. Wea.
  Forecasting 5, 570-575.
- Wilks, D. S. (2011). Statistical Methods in the Atmospheric Sciences, 3rd ed. Academic Press.
- Ferro, C. A. T. (2014). Fair scores for ensemble forecasts. QJRMS 140, 1917-1923.
- Liu, Y. et al. (2025). Downscaling extreme precipitation with Wasserstein regularized
  diffusion. IEEE TGRS (arXiv 2410.00381).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance

from sgm.core.metrics import _check

QUANTILE_LEVELS = (0.99, 0.999)
QQ_LEVELS = tuple(1.0 - np.logspace(np.log10(0.5), -4.0, 38))


def _level_name(level: float) -> str:
    return f"q{100 * level:.10g}"


def quantile_errors(
    ens: np.ndarray, truth: np.ndarray, levels: Sequence[float] = QUANTILE_LEVELS
) -> dict[str, dict[str, float]]:
    """Pooled and per-field quantile errors: ens[M, T, ...], truth[T, ...].

    Returns {"q99": {"ensemble", "truth", "error", "per_field_mae"}, "q99.9": ...}: the pooled
    quantiles, their difference ens − truth, and mean_t |q̂_u(ens[:, t]) − q̂_u(truth[t])|.
    """
    ens, truth = _check(ens, truth)
    m, t = ens.shape[:2]
    per_field_ens = np.quantile(np.moveaxis(ens, 1, 0).reshape(t, -1), levels, axis=1)
    per_field_truth = np.quantile(truth.reshape(t, -1), levels, axis=1)
    pooled_ens = np.quantile(ens, levels)
    pooled_truth = np.quantile(truth, levels)
    return {
        _level_name(u): {
            "ensemble": float(pooled_ens[i]),
            "truth": float(pooled_truth[i]),
            "error": float(pooled_ens[i] - pooled_truth[i]),
            "per_field_mae": float(np.mean(np.abs(per_field_ens[i] - per_field_truth[i]))),
        }
        for i, u in enumerate(levels)
    }


def exceedance_probability(ens: np.ndarray, threshold: float) -> np.ndarray:
    """p = 1/M Σ_m 1[x_m > t] per point: ens[M, ...] → [...]."""
    return np.mean(np.asarray(ens) > threshold, axis=0)


def contingency_scores(forecast: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """CSI and frequency bias of boolean event forecasts against boolean observations.

    {"csi": a/(a+b+c), "bias": (a+b)/(a+c), "hits": a, "false_alarms": b, "misses": c};
    CSI is NaN when the event is neither forecast nor observed, bias NaN when never observed.
    """
    forecast, observed = np.asarray(forecast, bool), np.asarray(observed, bool)
    a = int(np.sum(forecast & observed))
    b = int(np.sum(forecast & ~observed))
    c = int(np.sum(~forecast & observed))
    return {
        "csi": a / (a + b + c) if a + b + c else math.nan,
        "bias": (a + b) / (a + c) if a + c else math.nan,
        "hits": a,
        "false_alarms": b,
        "misses": c,
    }


def csi_scores(
    ens: np.ndarray, truth: np.ndarray, thresholds: Sequence[float], min_probability: float = 0.5
) -> list[dict[str, float]]:
    """Per threshold t: :func:`contingency_scores` of the event forecast p ≥ ``min_probability``
    (p the exceedance probability of "value > t") against truth > t, with "threshold": t."""
    ens, truth = _check(ens, truth)
    return [
        {"threshold": float(t),
         **contingency_scores(exceedance_probability(ens, t) >= min_probability, truth > t)}
        for t in thresholds
    ]


def wasserstein_1(ens: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """W₁ of pixel-value distributions: ens[M, T, ...], truth[T, ...].

    {"pooled": W₁(all member values, all truth values), "per_field": mean_t W₁(ens[:, t],
    truth[t])}.
    """
    ens, truth = _check(ens, truth)
    per_field = [wasserstein_distance(ens[:, i].ravel(), truth[i].ravel())
                 for i in range(truth.shape[0])]
    return {"pooled": float(wasserstein_distance(ens.ravel(), truth.ravel())),
            "per_field": float(np.mean(per_field))}


def qq_points(
    ens: np.ndarray, truth: np.ndarray, levels: Sequence[float] = QQ_LEVELS
) -> dict[str, list[float]]:
    """Pooled quantiles of ens[M, ...] and truth[...] at the levels u ≤ 1 − 1/n (n = truth
    values): {"levels", "ensemble", "truth"}, the points of a quantile-quantile plot."""
    ens, truth = _check(ens, truth)
    u = np.asarray([v for v in levels if v <= 1.0 - 1.0 / truth.size], dtype=np.float64)
    return {"levels": u.tolist(), "ensemble": np.quantile(ens, u).tolist(),
            "truth": np.quantile(truth, u).tolist()}


def reliability(ens: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, Any]:
    """Reliability diagram and Brier score of "value > threshold": ens[M, ...], truth[...].

    Categories are the M + 1 possible probabilities k/M. Returns "probability" [M+1],
    "observed_frequency" [M+1] (NaN where a category is empty), "count" [M+1]; "brier",
    "reliability", "resolution", "uncertainty" (brier = reliability − resolution +
    uncertainty), "brier_fair" (None for M = 1), "base_rate" ō.
    """
    ens, truth = _check(ens, truth)
    m = ens.shape[0]
    k = np.sum(ens > threshold, axis=0).ravel()
    o = (truth > threshold).ravel().astype(np.float64)
    p = k / m
    n = np.bincount(k, minlength=m + 1)
    hits = np.bincount(k, weights=o, minlength=m + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = np.where(n > 0, hits / n, np.nan)
    probs = np.arange(m + 1) / m
    base = float(o.mean())
    used = n > 0
    rel = float(np.sum(n[used] * (probs[used] - freq[used]) ** 2) / o.size)
    res = float(np.sum(n[used] * (freq[used] - base) ** 2) / o.size)
    fair = float(np.mean((p - o) ** 2 - p * (1 - p) / (m - 1))) if m > 1 else None
    return {
        "threshold": float(threshold),
        "probability": probs.tolist(),
        "observed_frequency": freq.tolist(),
        "count": n.tolist(),
        "brier": float(np.mean((p - o) ** 2)),
        "reliability": rel,
        "resolution": res,
        "uncertainty": base * (1.0 - base),
        "brier_fair": fair,
        "base_rate": base,
    }


def tail_scores(
    ens: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float],
    levels: Sequence[float] = QUANTILE_LEVELS,
    min_probability: float = 0.5,
) -> dict[str, Any]:
    """Every tail score of ens[M, T, H, W] against truth[T, H, W] (pred[None] for a point
    forecast): {"quantiles", "csi", "wasserstein_1", "qq", "reliability"} as plain data."""
    return {
        "quantiles": quantile_errors(ens, truth, levels),
        "csi": csi_scores(ens, truth, thresholds, min_probability),
        "wasserstein_1": wasserstein_1(ens, truth),
        "qq": qq_points(ens, truth),
        "reliability": [reliability(ens, truth, t) for t in thresholds],
    }


def marginal_scores(ens: np.ndarray, marginal: Any, levels: int = 1000) -> dict[str, float]:
    """A forecast's pooled values ens[M, T, ...] against a known marginal (anything with a
    ``quantile(u)`` and ``zero_fraction``, e.g. ``heavy_tailed.CensoredPowerField``):

        W₁ = ∫₀¹ |F̂⁻¹(u) − Q(u)| du ≈ mean_k |q̂(u_k) − Q(u_k)|,  u_k = (k + ½) / K,

    and the forecast's fraction of exact zeros beside the marginal's."""
    u = (np.arange(levels) + 0.5) / levels
    values = np.asarray(ens, dtype=np.float64).ravel()
    w1 = float(np.mean(np.abs(np.quantile(values, u) - marginal.quantile(u))))
    return {"w1_exact": w1, "zero_fraction": float(np.mean(values <= 0.0)),
            "zero_fraction_exact": float(marginal.zero_fraction),
            "minimum": float(values.min())}
