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

A fit from a few dozen validation times is itself noisy, and a spread change that repairs the
pooled ratio can still worsen the proper score where the spread error differs between pixels.
So, per variable, the fit is kept only when both (i) the validation times show a spread error:
the mean of r_t differs from 1, or b > 0, by more than twice its standard error; and (ii) the
correction pays on times it was not fitted to: the fair CRPS of every validation time inflated
by the fit to the other times (leave-one-out) is lower than the raw members' by more than twice
the standard error of the mean gain (a paired comparison of two forecasts in the manner of
Diebold & Mariano 1995). Otherwise a = 1, b = 0 and the members stay as sampled, bit for bit.
(ii) alone keeps a fit to sampling noise in 10–30 % of exactly calibrated synthetic ensembles
(24 times × 16 members), because the leave-one-out fits share all but one time; with (i) in
2–8 %, and then the change is small.
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


def error_spread_ratio(ens: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """r_t per time and variable: MSE of the ensemble mean over (M+1)/M · member variance,
    pooled over pixels (module docstring); ens[T, M, C, H, W], truth[T, C, H, W] -> [T, C]."""
    members = ens.shape[1]
    err2 = ((ens.mean(axis=1) - truth) ** 2).mean(axis=(2, 3))
    var = ens.var(axis=1, ddof=1).mean(axis=(2, 3)) * (members + 1) / members
    return err2 / np.maximum(var, 1e-30)


def _line(d: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares r ≈ a + b d: the coefficients [a, b] and the design matrix."""
    design = np.stack([np.ones_like(d), d], axis=1)
    coef, *_ = np.linalg.lstsq(design, r, rcond=None)
    return coef, design


def fit_inflation(ens: np.ndarray, truth: np.ndarray, distance: np.ndarray
                  ) -> dict[str, list[float]]:
    """Least-squares fit of r_t = a + b |d_t| per variable (module docstring).

    ens[T, M, C, H, W], truth[T, C, H, W], distance[T, C]; returns {"a": [C], "b": [C]}.
    """
    ratio = error_spread_ratio(ens, truth)
    a_out, b_out = [], []
    for c in range(truth.shape[1]):
        d, r = np.asarray(distance[:, c], dtype=np.float64), ratio[:, c]
        (a, b), _ = _line(d, r)
        if b < 0 or len(d) < 3 or np.ptp(d) == 0:
            a, b = float(r.mean()), 0.0
        a_out.append(float(a))
        b_out.append(float(b))
    return {"a": a_out, "b": b_out}


def spread_error_z(ens: np.ndarray, truth: np.ndarray, distance: np.ndarray) -> list[float]:
    """Evidence of a spread error per variable: the larger of |mean r_t − 1| and b (the
    least-squares slope of r_t on |d_t|), each over its standard error (module docstring)."""
    ratio = error_spread_ratio(ens, truth)
    out = []
    for c in range(truth.shape[1]):
        r, d = ratio[:, c], np.asarray(distance[:, c], dtype=np.float64)
        se_mean = r.std(ddof=1) / np.sqrt(len(r))
        z = abs(r.mean() - 1.0) / se_mean if se_mean > 0 else 0.0
        if np.ptp(d) > 0 and len(r) > 3:
            coef, design = _line(d, r)
            resid = r - design @ coef
            cov = resid @ resid / (len(r) - 2) * np.linalg.inv(design.T @ design)
            if cov[1, 1] > 0:
                z = max(z, coef[1] / np.sqrt(cov[1, 1]))
        out.append(float(z))
    return out


def leave_one_out_crps(ens: np.ndarray, truth: np.ndarray, distance: np.ndarray
                       ) -> dict[str, np.ndarray]:
    """Fair CRPS per time and variable of the raw members and of the members inflated at each
    validation time by the fit to all the other times (module docstring).

    ens[T, M, C, H, W], truth[T, C, H, W], distance[T, C] -> {"raw": [T, C],
    "recalibrated": [T, C]} (per validation time).
    """
    times = ens.shape[0]
    raw, recal = np.zeros((times, truth.shape[1])), np.zeros((times, truth.shape[1]))
    for t in range(times):
        rest = np.arange(times) != t
        fit = fit_inflation(ens[rest], truth[rest], distance[rest])
        k = inflation_at(fit, torch.from_numpy(np.asarray(distance[t:t + 1], dtype=np.float64)))
        moved = inflate(torch.from_numpy(np.asarray(ens[t:t + 1], dtype=np.float64)), k).numpy()
        for c in range(truth.shape[1]):
            raw[t, c] = metrics.crps_fair(ens[t, :, c], truth[t, c]).mean()
            recal[t, c] = metrics.crps_fair(moved[0, :, c], truth[t, c]).mean()
    return {"raw": raw, "recalibrated": recal}


def choose_inflation(ens: np.ndarray, truth: np.ndarray, distance: np.ndarray
                     ) -> dict[str, list]:
    """The fit of :func:`fit_inflation`, kept per variable only where the validation times
    show a spread error and the fit lowers their leave-one-out fair CRPS, each by more than
    twice its standard error (else a = 1, b = 0; module docstring).

    Returns {"a": [C], "b": [C], "fitted_a", "fitted_b", "loo_crps_raw",
    "loo_crps_recalibrated" (means over times), "loo_gain_z" (mean gain / its standard
    error), "spread_error_z" (:func:`spread_error_z`), "applied": [C] bools}.
    """
    fit = fit_inflation(ens, truth, distance)
    channels = truth.shape[1]
    if ens.shape[0] < 4:  # too few times to judge the fit on times it did not see
        nan = [float("nan")] * channels
        loo, z, evidence = {"raw": nan, "recalibrated": nan}, nan, nan
    else:
        per_time = leave_one_out_crps(ens, truth, distance)
        evidence = spread_error_z(ens, truth, distance)
        gain = per_time["raw"] - per_time["recalibrated"]  # [T, C]
        se = gain.std(axis=0, ddof=1) / np.sqrt(gain.shape[0])
        z = [float(g / s) if s > 0 else 0.0 for g, s in zip(gain.mean(axis=0), se, strict=True)]
        loo = {k: v.mean(axis=0).tolist() for k, v in per_time.items()}
    applied = [bool(v > 2.0 and e > 2.0) for v, e in zip(z, evidence, strict=True)]
    return {
        "a": [a if keep else 1.0 for a, keep in zip(fit["a"], applied, strict=True)],
        "b": [b if keep else 0.0 for b, keep in zip(fit["b"], applied, strict=True)],
        "fitted_a": fit["a"], "fitted_b": fit["b"], "loo_crps_raw": loo["raw"],
        "loo_crps_recalibrated": loo["recalibrated"], "loo_gain_z": z,
        "spread_error_z": evidence, "applied": applied,
    }


def inflation_at(fit: dict[str, Sequence[float]], distance: Tensor,
                 bounds: tuple[float, float] = (0.5, 3.0)) -> Tensor:
    """k_t = √(a + b |d_t|), clipped to ``bounds``: distance[T, C] -> Tensor[T, C]."""
    a = torch.tensor(list(fit["a"]), dtype=torch.float64)
    b = torch.tensor(list(fit["b"]), dtype=torch.float64)
    return (a + b * distance.to(torch.float64)).clamp_min(0.0).sqrt().clamp(*bounds)


def inflate(ens: Tensor, factors: Tensor) -> Tensor:
    """x̄ + k (x − x̄): ens[T, M, C, H, W], factors[T, C] (members on dim 1); where k = 1
    the members are returned unchanged (bit for bit)."""
    mean = ens.mean(dim=1, keepdim=True)
    k = factors.to(ens.dtype)[:, None, :, None, None]
    return torch.where(k == 1, ens, mean + k * (ens - mean))
