"""Scoring an ensemble and a deterministic baseline with every metric of ``sgm.core.metrics``.

Arrays in physical units: ens[M, T, H, W], truth[T, H, W], observations y[T, *obs] and the
members mapped through the noise-free operator a_ens[M, T, *obs]. A deterministic prediction is
scored as a one-member ensemble where a score is defined for it. The evaluate stage turns these
dictionaries into ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sgm.core import metrics
from sgm.core.gaussian import GaussianRandomField, exact_posterior
from sgm.core.large_oracle import MatrixFreePosterior
from sgm.core.observation import ObservationModel

COVERAGE_LEVELS = (0.5, 0.9)
DENSE_ORACLE_PIXELS = 4096
"""Grids up to this many pixels get the dense exact posterior; larger ones the matrix-free one
on a sample of pixels (:func:`score_oracle_matrix_free`)."""
# Scores with pairwise member terms need ~M² × chunk × N floats; keep that below this.
_PAIRWISE_BUDGET = 2**24


def _chunked(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray], ens: np.ndarray, truth: np.ndarray
) -> np.ndarray:
    """fn(ens[:, chunk], truth[chunk]) over chunks of the time axis, concatenated on it."""
    m, t = ens.shape[:2]
    per_time = m * m * max(1, truth[0].size)
    size = max(1, _PAIRWISE_BUDGET // per_time)
    parts = [fn(ens[:, i : i + size], truth[i : i + size]) for i in range(0, t, size)]
    return np.concatenate(parts, axis=0)


def score_ensemble(
    ens: np.ndarray,
    truth: np.ndarray,
    a_ens: np.ndarray,
    y: np.ndarray,
    noise_std: float,
    rng: np.random.Generator,
) -> tuple[dict[str, Any], np.ndarray]:
    """All ensemble metrics: ens[M, T, H, W], truth[T, H, W], a_ens[M, T, *obs], y[T, *obs].

    Returns (metrics dict, per-point fair CRPS[T, H, W]). The spectrum error is added by
    :func:`evaluate` from the spectra it computes once for the ensemble, baseline and truth.
    """
    crps = metrics.crps_fair(ens, truth)
    es = _chunked(metrics.energy_score, ens, truth)
    out: dict[str, Any] = {"crps": float(crps.mean())}
    out.update(metrics.ensemble_mean_errors(ens, truth))
    out["spread"] = float(np.sqrt(ens.var(axis=0, ddof=1).mean()))
    out["spread_skill_ratio"] = metrics.spread_skill_ratio(ens, truth)
    for level in COVERAGE_LEVELS:
        out[f"coverage_{round(level * 100)}"] = metrics.interval_coverage(ens, truth, level)
    out["energy_score"] = float(es.mean())
    out["reobs_chi2"] = metrics.reobs_chi2(a_ens, y, noise_std)
    out["rank_histogram"] = metrics.rank_histogram(ens, truth, rng).tolist()
    out["spread_skill_bins"] = metrics.spread_skill_bins(ens, truth)
    return out, crps


def score_deterministic(
    pred: np.ndarray, truth: np.ndarray, a_pred: np.ndarray, y: np.ndarray, noise_std: float
) -> dict[str, Any]:
    """The ensemble metrics of a point prediction pred[T, H, W] (a one-member ensemble).

    CRPS = MAE, no spread (spread and spread-skill ratio 0, a degenerate interval covers
    nothing); rank histogram and spread bins do not apply (None).
    """
    ens = pred[None]
    out: dict[str, Any] = {"crps": float(metrics.crps_deterministic(pred, truth).mean())}
    out.update(metrics.ensemble_mean_errors(ens, truth))
    out["spread"] = 0.0
    out["spread_skill_ratio"] = 0.0
    for level in COVERAGE_LEVELS:
        out[f"coverage_{round(level * 100)}"] = metrics.interval_coverage(ens, truth, level)
    out["energy_score"] = float(metrics.energy_score(ens, truth).mean())
    out["reobs_chi2"] = metrics.reobs_chi2(a_pred[None], y, noise_std)
    out["rank_histogram"] = None
    out["spread_skill_bins"] = None
    return out


def score_oracle(
    prior: GaussianRandomField,
    a_matrix: np.ndarray,
    noise_std: float,
    ens: np.ndarray,
    truth: np.ndarray,
    y: np.ndarray,
) -> dict[str, Any]:
    """Ensemble vs the exact Gaussian posterior (``sgm.core.gaussian.exact_posterior``).

    a_matrix[n_obs, H*W] is the operator, ens[M, T, H, W], truth[T, H, W], y[T, *obs]; see
    ``metrics.oracle_metrics``.
    """
    if noise_std <= 0:
        return {"skipped": "the exact posterior needs a positive noise std"}
    if prior.size != a_matrix.shape[1]:
        raise ValueError(f"Gaussian prior grid {prior.shape} differs from the fields' grid")
    m, t = ens.shape[:2]
    mean, cov = exact_posterior(prior, a_matrix, noise_std, y.reshape(t, -1))
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    return metrics.oracle_metrics(ens.reshape(m, t, -1), mean, std, truth.reshape(t, -1))


def score_oracle_matrix_free(
    prior: GaussianRandomField,
    obs: ObservationModel,
    ens: np.ndarray,
    truth: np.ndarray,
    y: np.ndarray,
    pixels: dict[str, list[tuple[int, int]]],
) -> dict[str, list[dict[str, Any]]]:
    """Ensemble vs the exact Gaussian posterior on grids too large for dense matrices.

    ens[M, T, C, H, W], truth[T, C, H, W], y[T, C, *obs]; ``pixels``: named sets of (row,
    column) pixels. The exact posterior mean (one CG solve per time) and the exact marginal
    standard deviations at the pixels (one solve per pixel) come from
    :class:`~sgm.core.large_oracle.MatrixFreePosterior`; ``metrics.oracle_metrics`` is then
    taken on each set's pixels. Returns name -> per variable the metrics, with "pixels" (the
    set's size).
    """
    post = MatrixFreePosterior(prior, obs)
    mean = post.mean(torch.as_tensor(y, dtype=torch.float64)).numpy()  # [T, C, H, W]
    union = sorted({p for ps in pixels.values() for p in ps})
    std = post.marginal_std(union).numpy()  # [P, C]
    where = {p: k for k, p in enumerate(union)}
    out: dict[str, list[dict[str, Any]]] = {}
    for name, ps in pixels.items():
        if not ps:
            continue
        rows, cols = np.array([p[0] for p in ps]), np.array([p[1] for p in ps])
        k = np.array([where[p] for p in ps])
        out[name] = [
            {**metrics.oracle_metrics(ens[:, :, c, rows, cols], mean[:, c, rows, cols],
                                      std[k, c], truth[:, c, rows, cols]),
             "pixels": len(ps)}
            for c in range(ens.shape[2])
        ]
    return out


def spectra(ens: np.ndarray, truth: np.ndarray) -> dict[str, list[float] | str]:
    """Radially averaged power spectra of a forecast ens[M, T, H, W] (a point forecast as
    M = 1) and of the truth[T, H, W], averaged over members and times."""
    k, p_truth = metrics.radial_power_spectrum(truth)
    _, p_ens = metrics.radial_power_spectrum(ens)
    return {
        "k": k.tolist(),
        "k_units": "cycles per grid cell",
        "truth": p_truth.mean(axis=0).tolist(),
        "forecast": p_ens.mean(axis=(0, 1)).tolist(),
    }


