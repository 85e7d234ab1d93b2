"""Choosing a trained model on the validation split, and recalibrating its spread there.

Small training sets are memorised: after enough steps the ensemble becomes over-confident on
years it has not seen. So training keeps EMA snapshots, each samples a small validation
ensemble, and the snapshot with the lowest fair CRPS (a proper score: sharpness only pays when
it is calibrated) is kept. Variables are compared in their own standardised units (CRPS divided
by the variable's standard deviation) and averaged.

The remaining spread error is corrected by inflating each member's deviation from the ensemble
mean, per variable and time,

    x'_m = x̄ + k_t (x_m − x̄),      k_t² = a + b·|d_t|,

a regression of the ensemble's error on its spread in the manner of EMOS (Gneiting et al.
2005), fitted on the validation split: per validation time t, the ratio of the squared error of
the ensemble mean to the (M+1)/M-corrected member variance (pooled over pixels), r_t =
MSE_t / ((M+1)/M · s²_t), is regressed on |d_t|, the distance of the time's observation from
the training climate — the domain mean of y − A(μ), μ the training climatology, in units of
the variable's standard deviation, known at sampling time from y alone. Years far from the
training climate (a warmer scenario) are typically more uncertain than the ensemble says; b ≥ 0
lets the inflation grow with the distance (b < 0 fits are replaced by the constant a = mean r).
For a calibrated ensemble of a stationary climate, a ≈ 1 and b ≈ 0: no change. The ensemble
mean never changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sgm.core import metrics


def validation_scores(ens: np.ndarray, truth: np.ndarray, scale: Sequence[float]
                      ) -> dict[str, list[float] | float]:
    """Scores of a validation ensemble ens[T, M, C, H, W] against truth[T, C, H, W].

    Returns per variable the fair CRPS and the spread/skill ratio, and ``score``: the mean
    over variables of CRPS / scale (the selection criterion; lower is better).
    """
    crps, ssr = [], []
    for c in range(truth.shape[1]):
        e = np.asarray(ens[:, :, c], dtype=np.float64).transpose(1, 0, 2, 3)
        t = np.asarray(truth[:, c], dtype=np.float64)
        crps.append(float(metrics.crps_fair(e, t).mean()))
        ssr.append(metrics.spread_skill_ratio(e, t))
    score = float(np.mean([v / s for v, s in zip(crps, scale, strict=True)]))
    return {"crps": crps, "spread_skill_ratio": ssr, "score": score}


def observation_distance(y: Tensor, reference: Sequence[float], scale: Sequence[float]) -> Tensor:
    """|d_t| per time and variable: |mean(y_t) − reference| / scale, y[T, C, *obs] -> [T, C]."""
    ref = torch.tensor(list(reference), dtype=torch.float64)
    sd = torch.tensor(list(scale), dtype=torch.float64)
    return ((y.to(torch.float64).flatten(2).mean(dim=2) - ref) / sd).abs()


def fit_inflation(ens: np.ndarray, truth: np.ndarray, distance: np.ndarray
                  ) -> dict[str, list[float]]:
    """Least-squares fit of r_t = a + b |d_t| per variable (module docstring).

    ens[T, M, C, H, W], truth[T, C, H, W], distance[T, C]; returns {"a": [C], "b": [C]}.
    """
    members = ens.shape[1]
    err2 = ((ens.mean(axis=1) - truth) ** 2).mean(axis=(2, 3))  # [T, C]
    var = ens.var(axis=1, ddof=1).mean(axis=(2, 3)) * (members + 1) / members
    ratio = err2 / np.maximum(var, 1e-30)
    a_out, b_out = [], []
    for c in range(truth.shape[1]):
        d, r = np.asarray(distance[:, c], dtype=np.float64), ratio[:, c]
        design = np.stack([np.ones_like(d), d], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
        if b < 0 or len(d) < 3 or np.ptp(d) == 0:
            a, b = float(r.mean()), 0.0
        a_out.append(float(a))
        b_out.append(float(b))
    return {"a": a_out, "b": b_out}


def inflation_at(fit: dict[str, Sequence[float]], distance: Tensor,
                 bounds: tuple[float, float] = (0.5, 3.0)) -> Tensor:
    """k_t = √(a + b |d_t|), clipped to ``bounds``: distance[T, C] -> Tensor[T, C]."""
    a = torch.tensor(list(fit["a"]), dtype=torch.float64)
    b = torch.tensor(list(fit["b"]), dtype=torch.float64)
    return (a + b * distance.to(torch.float64)).clamp_min(0.0).sqrt().clamp(*bounds)


def inflate(ens: Tensor, factors: Tensor) -> Tensor:
    """x̄ + k (x − x̄): ens[T, M, C, H, W], factors[T, C] (members on dim 1)."""
    mean = ens.mean(dim=1, keepdim=True)
    k = factors.to(ens.dtype)[:, None, :, None, None]
    return mean + k * (ens - mean)
