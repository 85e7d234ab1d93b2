"""Verification metrics for posterior ensembles of gridded fields (numpy only).

Conventions: an ensemble ``ens`` has the member axis first, ``ens[M, ...]``; the verifying
truth has the remaining shape, ``truth[...]``. Per-point scores keep the shape of ``truth``;
summary scores are floats averaged over every point. A deterministic prediction ``pred[...]``
is scored as a one-member ensemble where a score is defined for it.

References
----------
- Ferro, C. A. T. (2014). Fair scores for ensemble forecasts. QJRMS 140, 1917-1923.
- Gneiting, T. & Raftery, A. E. (2007). Strictly proper scoring rules, prediction and
  estimation. JASA 102, 359-378.
- Fortin, V. et al. (2014). Why should ensemble spread match the RMSE of the ensemble mean?
  J. Hydrometeor. 15, 1708-1713.
- Zamo, M. & Naveau, P. (2018). Estimation of the CRPS for ensemble forecasts. Math.
  Geosci. 50, 209-234.
- Hamill, T. M. (2001). Interpretation of rank histograms for verifying ensemble forecasts.
  MWR 129, 550-560.
"""

from __future__ import annotations

import math

import numpy as np
import scoringrules as sr
from scipy.stats import norm

from sgm.core.gaussian import expected_crps_gaussian


def _check(ens: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ens = np.asarray(ens, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if ens.shape[1:] != truth.shape:
        raise ValueError(f"ensemble shape {ens.shape} does not match truth shape {truth.shape}")
    if ens.shape[0] < 1:
        raise ValueError("the ensemble has no members")
    return ens, truth


# --------------------------------------------------------------------------- univariate scores


def crps_fair(ens: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fair CRPS per point (Ferro 2014): ens[M, ...], truth[...] -> crps[...].

    CRPS_fair = 1/M Σ_m |x_m − y| − 1/(2 M (M−1)) Σ_m Σ_j |x_m − x_j|, an unbiased estimate
    of the CRPS of the distribution the members are drawn from (needs M ≥ 2).

    Computed with scoringrules' probability-weighted-moment estimator, which is algebraically
    identical (Zamo & Naveau 2018: with sorted members, Σ_m Σ_j |x_m − x_j| =
    2 Σ_i (2i − M − 1) x_(i)) but O(M log M) in time and O(M) in memory per point, where
    scoringrules' "fair" estimator builds all M² pairs.
    """
    ens, truth = _check(ens, truth)
    if ens.shape[0] < 2:
        raise ValueError("the fair CRPS needs at least two members")
    return np.asarray(sr.crps_ensemble(truth, ens, m_axis=0, estimator="pwm"))


def crps_deterministic(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS of a point forecast (a step-function CDF) per point: |pred − truth|, shape [...]."""
    return np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64))


def ensemble_mean_errors(ens: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Errors of the ensemble mean x̄ = mean_m x_m, ens[M, ...], truth[...].

    {"rmse": √mean (x̄ − y)², "mae": mean |x̄ − y|, "bias": mean (x̄ − y)}.
    """
    ens, truth = _check(ens, truth)
    err = ens.mean(axis=0) - truth
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "bias": float(np.mean(err)),
    }


def spread_skill_ratio(ens: np.ndarray, truth: np.ndarray) -> float:
    """Spread-skill ratio √((M+1)/M · mean s²) / RMSE(x̄), ens[M, ...] (Fortin et al. 2014).

    s² is the unbiased (ddof=1) member variance per point. The (M+1)/M factor makes the ratio
    1 in expectation for an ensemble whose members and truth are exchangeable; < 1 means
    under-dispersion (over-confidence), > 1 over-dispersion.
    """
    ens, truth = _check(ens, truth)
    m = ens.shape[0]
    if m < 2:
        raise ValueError("the spread needs at least two members")
    var = ens.var(axis=0, ddof=1).mean()
    rmse = np.sqrt(np.mean((ens.mean(axis=0) - truth) ** 2))
    return float(np.sqrt((m + 1) / m * var) / rmse) if rmse > 0 else math.inf


def spread_skill_bins(ens: np.ndarray, truth: np.ndarray, n_bins: int = 10) -> dict[str, list]:
    """Binned spread-skill: points grouped by ensemble spread into ``n_bins`` equal-count bins.

    Per bin: "spread" = √((M+1)/M · mean s²) and "rmse" = √mean (x̄ − y)², "count" = points;
    a calibrated ensemble lies on the diagonal spread = rmse in every bin.
    """
    ens, truth = _check(ens, truth)
    m = ens.shape[0]
    var = ens.var(axis=0, ddof=1).ravel() * (m + 1) / m
    sq_err = ((ens.mean(axis=0) - truth) ** 2).ravel()
    order = np.argsort(var, kind="stable")
    spread, rmse, count = [], [], []
    for idx in np.array_split(order, min(n_bins, order.size)):
        spread.append(float(np.sqrt(var[idx].mean())))
        rmse.append(float(np.sqrt(sq_err[idx].mean())))
        count.append(int(idx.size))
    return {"spread": spread, "rmse": rmse, "count": count}


def rank_histogram(ens: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Counts of the truth's rank among the members, counts[M+1] (Hamill 2001).

    rank = #{m: x_m < y} + U, U uniform on {0, …, #{m: x_m = y}} (random tie breaking).
    Flat for a calibrated ensemble; U-shaped if under-dispersed; ∩-shaped if over-dispersed.
    """
    ens, truth = _check(ens, truth)
    m = ens.shape[0]
    below = (ens < truth).sum(axis=0).ravel()
    ties = (ens == truth).sum(axis=0).ravel()
    rank = below + rng.integers(0, ties + 1)
    return np.bincount(rank, minlength=m + 1).astype(np.int64)


def interval_coverage(ens: np.ndarray, truth: np.ndarray, level: float) -> float:
    """Fraction of truths inside the ensemble's empirical central ``level`` interval.

    ens[M, ...], truth[...]. The bounds are the (1 ∓ level)/2 quantiles with Weibull plotting
    positions (the i-th of the sorted members is the i/(M+1) quantile), so an ensemble
    exchangeable with the truth covers exactly ``level`` when (1 − level)/2 · (M+1) is an
    integer (e.g. M = 19 or 39 at 90 %). With few members the widest interval, [min, max],
    covers only (M−1)/(M+1) (7/9 for M = 8), so compare with that, not with ``level``.
    """
    ens, truth = _check(ens, truth)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = np.quantile(ens, [(1 - level) / 2, (1 + level) / 2], axis=0, method="weibull")
    return float(np.mean((truth >= lo) & (truth <= hi)))


def nominal_coverage(level: float, members: int) -> float:
    """What :func:`interval_coverage` should give for M members exchangeable with the truth.

    The central ``level`` interval's Weibull positions l, h = ((1 ∓ level)/2)·(M + 1) are
    clamped to the members' range [1, M]; the truth falls below the k-th of M exchangeable
    members with probability k/(M + 1), so the interval covers (h − l)/(M + 1) (exact at whole
    positions): 0.882 for the 90 % interval of 16 members, whose bounds are min and max.
    """
    if members < 2:
        raise ValueError("coverage needs at least two members")
    lo = min(max((1 - level) / 2 * (members + 1), 1.0), float(members))
    hi = min(max((1 + level) / 2 * (members + 1), 1.0), float(members))
    return (hi - lo) / (members + 1)


# --------------------------------------------------------------------------- multivariate


def energy_score(ens: np.ndarray, truth: np.ndarray, field_ndim: int = 2) -> np.ndarray:
    """Fair energy score per field (Gneiting & Raftery 2007): ens[M, ..., *F], truth[..., *F].

    The last ``field_ndim`` axes are flattened into the multivariate dimension:
    ES = 1/M Σ_m ‖x_m − y‖ − 1/(2 M (M−1)) Σ_m Σ_j ‖x_m − x_j‖ → shape [...].
    A one-member ensemble gets ‖x − y‖ (the energy score of a point forecast).
    """
    ens, truth = _check(ens, truth)
    lead = truth.shape[: truth.ndim - field_ndim]
    obs = truth.reshape(*lead, -1)
    fct = ens.reshape(ens.shape[0], *lead, -1)
    if ens.shape[0] == 1:
        return np.linalg.norm(fct[0] - obs, axis=-1)
    return np.asarray(sr.es_ensemble(obs, fct, m_axis=0, v_axis=-1, estimator="fair"))


# --------------------------------------------------------------------------- spectra


def radial_power_spectrum(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum: field[..., H, W] -> (k[K], P[..., K]).

    P̂ = |FFT2(x)|² / (H W) (so Σ P̂ = Σ x², Parseval), averaged over the Fourier modes whose
    radial frequency √(f_y² + f_x²) (cycles per grid cell) rounds to k_n = n / L,
    L = max(H, W), n = 1 … L/2 (the mean, n = 0, and modes beyond Nyquist are left out).
    Empty bins are dropped. The wavelength of bin k is 1/k grid cells. Uses the real FFT: the
    half-plane columns that stand for a conjugate pair count twice.
    """
    field = np.asarray(field, dtype=np.float64)
    h, w = field.shape[-2:]
    length = max(h, w)
    power = np.abs(np.fft.rfft2(field)) ** 2 / (h * w)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    n = np.rint(np.sqrt(fy**2 + fx**2) * length).astype(np.int64)
    pair = np.full(fx.shape, 2.0)
    pair[0, 0] = 1.0
    if w % 2 == 0:
        pair[0, -1] = 1.0
    weight = np.broadcast_to(pair, n.shape).ravel()
    n = n.ravel()
    keep = (n >= 1) & (n <= length // 2)
    present, bins = np.unique(n[keep], return_inverse=True)
    onehot = np.zeros((bins.size, present.size))
    onehot[np.arange(bins.size), bins] = weight[keep]
    sums = power.reshape(*power.shape[:-2], -1)[..., keep] @ onehot
    return present / length, sums / onehot.sum(axis=0)


def log_spectral_distance(p_forecast: np.ndarray, p_truth: np.ndarray) -> float:
    """Mean over wavenumbers of |log10 P_forecast(k) − log10 P_truth(k)|, both P[K]."""
    tiny = np.finfo(np.float64).tiny
    return float(np.mean(np.abs(np.log10(p_forecast + tiny) - np.log10(p_truth + tiny))))


def spectrum_error(ens: np.ndarray, truth: np.ndarray) -> float:
    """Log-spectral distance of the ensemble's mean spectrum from the truth's: ens[M, ..., H, W].

    P̄_ens averages the members' spectra over members and leading axes, P̄_truth over the
    leading axes; 0 means the ensemble reproduces the truth's spatial variability at every
    scale, 1 is an order of magnitude off on average (smooth fields lose power at high k).
    """
    ens, truth = _check(ens, truth)
    _, p_ens = radial_power_spectrum(ens)
    _, p_truth = radial_power_spectrum(truth)
    p_ens = p_ens.reshape(-1, p_ens.shape[-1]).mean(axis=0)
    p_truth = p_truth.reshape(-1, p_truth.shape[-1]).mean(axis=0)
    return log_spectral_distance(p_ens, p_truth)


# --------------------------------------------------------------------------- data consistency


def reobs_chi2(a_members: np.ndarray, y: np.ndarray, noise_std: float) -> float:
    """Re-observation χ² per degree of freedom: mean_m,i (A(x_m)_i − y_i)² / η².

    a_members[M, ..., n_obs...] are the members mapped through the noise-free operator and
    y[..., n_obs...] the noisy observations. Posterior samples and the truth are exchangeable
    given y, so E χ² equals that of the truth, 1 (y = A x + η ε); ≫ 1 means the members
    ignore the data, ≪ 1 that they over-fit its noise. NaN when η = 0.
    """
    a_members, y = _check(a_members, y)
    if noise_std <= 0:
        return math.nan
    return float(np.mean((a_members - y) ** 2) / noise_std**2)


# --------------------------------------------------------------------------- Gaussian oracle


def oracle_metrics(
    ens: np.ndarray,
    exact_mean: np.ndarray,
    exact_std: np.ndarray,
    truth: np.ndarray,
    level: float = 0.9,
) -> dict[str, float]:
    """Compare an ensemble with the exact Gaussian posterior N(μ, diag σ²) marginals.

    ens[M, T, N], exact_mean[T, N], exact_std[N] or [T, N], truth[T, N]. Returns

    - "mean_error_over_std": √mean (x̄ − μ)² / mean σ; Monte-Carlo noise alone gives
      ≈ 1/√M for a perfect sampler;
    - "std_ratio_mean", "std_ratio_q05", "std_ratio_q95": per-pixel ratio
      √(mean_t s²) / √(mean_t σ²) (s² the ddof=1 member variance), its mean and 5 %/95 %
      quantiles over pixels (1 is right, < 1 over-confident);
    - "exact_interval_coverage": fraction of members inside the exact central ``level``
      interval μ ± z σ (``level`` for exact samples);
    - "crps_ratio": mean fair CRPS of the members against the truth divided by the expected
      CRPS of the exact posterior, E CRPS(N(μ,σ²), x) = σ/√π for x ~ N(μ, σ²); ≥ 1 in
      expectation since the exact posterior minimises the expected CRPS (plus
      "crps_ensemble" and "crps_exact" themselves).
    """
    ens, truth = _check(ens, truth)
    exact_mean = np.asarray(exact_mean, dtype=np.float64)
    std = np.broadcast_to(np.asarray(exact_std, dtype=np.float64), truth.shape)
    if exact_mean.shape != truth.shape or ens.ndim != 3:
        raise ValueError(
            f"expected ens[M, T, N], exact_mean[T, N], truth[T, N]; got {ens.shape}, "
            f"{exact_mean.shape}, {truth.shape}"
        )
    mean_err = np.sqrt(np.mean((ens.mean(axis=0) - exact_mean) ** 2)) / np.mean(std)
    ratio = np.sqrt(ens.var(axis=0, ddof=1).mean(axis=0) / (std**2).mean(axis=0))
    z = norm.ppf(0.5 + level / 2)
    inside = np.abs(ens - exact_mean) <= z * std
    crps_ens = float(crps_fair(ens, truth).mean())
    crps_exact = float(expected_crps_gaussian(np.mean(std)))
    return {
        "mean_error_over_std": float(mean_err),
        "std_ratio_mean": float(ratio.mean()),
        "std_ratio_q05": float(np.quantile(ratio, 0.05)),
        "std_ratio_q95": float(np.quantile(ratio, 0.95)),
        "exact_interval_level": float(level),
        "exact_interval_coverage": float(inside.mean()),
        "crps_ensemble": crps_ens,
        "crps_exact": crps_exact,
        "crps_ratio": crps_ens / crps_exact,
    }
