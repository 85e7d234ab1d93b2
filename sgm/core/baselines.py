"""The baselines a statistician would use: climatology-anomaly interpolation, and the Gaussian
posterior of ``sgm.core.gaussian_baseline`` with its covariance regularisation chosen on the
validation split.

Climatology-anomaly interpolation, the spatial-disaggregation step of BCSD (Wood et al.
2004), interpolates the *anomaly* of an observation from the climatology and adds the
full-resolution climatology back:

    x̂ = μ + b(y − A μ),

with μ[C, H, W] the per-pixel mean of the training split, A the noise-free operator and b its
deterministic baseline interpolation (bicubic for block means, nearest point or station, the
blurred field itself for blur). The fixed pattern of μ (orography, coastlines) is reproduced
at full resolution and only the anomalies are smoothed. For a constant μ, A μ = μ and
b(y − μ) = b(y) − μ (every operator's weights sum to one), so x̂ is the plain baseline b(y).

The Gaussian baseline's shrinkage α (and number of EOFs k, if candidates are given) are chosen
per variable by the mean CRPS of the posterior marginals N(m, s²) against the validation
truths, in closed form (Gneiting et al. 2005):

    CRPS(N(m, s²), x) = s [z (2 Φ(z) − 1) + 2 φ(z) − 1/√π],    z = (x − m) / s.

CRPS rather than the log score: it is the evaluation's headline score, so the baseline is
tuned for the number it is compared on, and it grows linearly, not quadratically, in |z|, so a
few over-confident pixels (a nearly singular covariance at small α) do not decide the choice
alone. The marginal log score ½ log(2π s²) + z²/2 is reported beside it in the curve.

References: Wood, A. W., Leung, L. R., Sridhar, V. & Lettenmaier, D. P. (2004). Hydrologic
implications of dynamical and statistical approaches to downscaling climate model outputs.
Climatic Change 62, 189-216. Gneiting, T., Raftery, A. E., Westveld, A. H. & Goldman, T.
(2005). Calibrated probabilistic forecasting using ensemble model output statistics and
minimum CRPS estimation. MWR 133, 1098-1118.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sgm.core.gaussian_baseline import AnomalyCovariance, GaussianPrior, check_observations
from sgm.core.observation import ObservationModel
from sgm.core.quantile_mapping import QuantileMapping

GAUSSIAN_BASELINE_SIZE = 2**25
"""The Gaussian posterior baseline forms the n_obs x n_obs innovation covariance and the
pixels x n_obs gain, for each shrinkage tried; beyond this many observations x pixels per
variable (256 x 256 block means of 4 x 4: 2^28) it is left out."""
SHRINKAGE_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def climatology_anomaly(obs_model: ObservationModel, climatology: Tensor, y: Tensor) -> Tensor:
    """x̂ = μ + b(y − A μ) for every time.

    Args:
        obs_model: the observation model (its noise-free A and baseline b).
        climatology: μ as Tensor[C, H, W], the training split's per-pixel mean.
        y: observations Tensor[T, C, *obs_shape].

    Returns:
        Tensor[T, C, H, W] in float64.
    """
    mu = torch.as_tensor(climatology, dtype=torch.float64)
    want = (len(obs_model.variables), *obs_model.grid)
    if tuple(mu.shape) != want:
        raise ValueError(f"climatology: expected shape {want}, got {tuple(mu.shape)}")
    return mu + obs_model.baseline(check_observations(obs_model, y) - obs_model.apply(mu))


def crps_gaussian(mean: Tensor, std: Tensor, truth: Tensor) -> Tensor:
    """CRPS(N(mean, std²), truth) per point (broadcast), |truth − mean| where std = 0."""
    z = (truth - mean) / std
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    crps = std * (z * (2.0 * torch.special.ndtr(z) - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))
    return torch.where(std > 0, crps, (truth - mean).abs())


def log_score_gaussian(mean: Tensor, std: Tensor, truth: Tensor) -> Tensor:
    """Negative log density −log N(truth; mean, std²) per point (broadcast)."""
    return 0.5 * torch.log(2.0 * math.pi * std**2) + 0.5 * ((truth - mean) / std) ** 2


@dataclass(frozen=True)
class ShrinkageSelection:
    """The validation-chosen Gaussian prior.

    prior: the prior with the chosen values; shrinkage, eofs: α and k per variable (k None:
    all EOFs); curve: one entry per candidate, {"shrinkage": α, "eofs": k, "crps": [C],
    "log_score": [C]} (validation means per variable).
    """

    prior: GaussianPrior
    shrinkage: tuple[float, ...]
    eofs: tuple[int | None, ...]
    curve: list[dict[str, Any]]


def select_shrinkage(
    train: Tensor,
    val_truth: Tensor,
    val_y: Tensor,
    obs_model: ObservationModel,
    shrinkage: Sequence[float] = SHRINKAGE_GRID,
    eofs: Sequence[int | None] = (None,),
) -> ShrinkageSelection:
    """Fit the prior family Σ(α, k) on train[n, C, H, W] and choose (α, k) per variable by the
    mean closed-form CRPS of the posterior marginals given val_y[T, C, *obs_shape] against
    val_truth[T, C, H, W], over the grid ``shrinkage`` × ``eofs`` (ties: the first)."""
    cov = AnomalyCovariance.fit(train)
    truth = torch.as_tensor(val_truth, dtype=torch.float64)
    y = check_observations(obs_model, val_y)
    if tuple(truth.shape) != (y.shape[0], *cov.mean.shape):
        raise ValueError(f"val_truth: expected shape {(y.shape[0], *cov.mean.shape)}, got "
                         f"{tuple(truth.shape)}")
    curve = []
    for k in eofs:
        for a in shrinkage:
            post = cov.prior(a, k).posterior(obs_model, y)
            scores = {name: fn(post.mean, post.std, truth).mean(dim=(0, 2, 3)).tolist()
                      for name, fn in (("crps", crps_gaussian), ("log_score", log_score_gaussian))}
            curve.append({"shrinkage": float(a), "eofs": k, **scores})
    best = [min(curve, key=lambda e, v=v: e["crps"][v]) for v in range(cov.mean.shape[0])]
    alphas = tuple(e["shrinkage"] for e in best)
    ks = tuple(e["eofs"] for e in best)
    return ShrinkageSelection(cov.prior(alphas, ks), alphas, ks, curve)


def statistical_baselines(
    obs_model: ObservationModel,
    train: Tensor,
    y: Tensor,
    val_truth: Tensor | None,
    val_y: Tensor | None,
    members: int,
    seed: int,
    time_index: Sequence[int],
    nonnegative: Sequence[bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """The baselines a posterior ensemble is judged against, for observations y[T, C, *obs]:

    - the operator's own interpolation b(y) (``obs_model.baseline_name``, e.g. bicubic);
    - climatology-anomaly interpolation μ + b(y − A μ), μ the training mean (BCSD);
    - quantile mapping of the interpolation (the classical bias correction, e.g. for
      precipitation): the pooled empirical map from b(y) of simulated training observations to
      the training fields (``sgm.core.quantile_mapping``; bounded below by 0 for the variables
      flagged ``nonnegative``);
    - for a linear operator, a validation split and at most ``GAUSSIAN_BASELINE_SIZE``
      observations x pixels per variable: the Gaussian posterior ensemble, its prior
      fitted on ``train``[N, C, H, W] with the shrinkage chosen on (val_truth, val_y), and
      ``members`` draws per time seeded by ``seed`` and ``time_index``.

    Returns name → {"kind": "deterministic" | "ensemble", "values": Tensor[T, C, H, W] or
    Tensor[M, T, C, H, W] (float64), and for the Gaussian posterior "selection": the chosen
    shrinkage per variable and the validation curve}.
    """
    train = torch.as_tensor(train, dtype=torch.float64)
    out: dict[str, dict[str, Any]] = {
        obs_model.baseline_name: {"kind": "deterministic",
                                  "values": obs_model.baseline(check_observations(obs_model, y))},
        "climatology anomaly": {"kind": "deterministic",
                                "values": climatology_anomaly(obs_model, train.mean(0), y)},
    }
    interpolated = obs_model.baseline(obs_model.sample(
        train, torch.Generator().manual_seed(seed)))  # b(y) of the training fields
    flags = list(nonnegative) if nonnegative is not None else [False] * train.shape[1]
    mapped = torch.stack([
        torch.as_tensor(QuantileMapping.fit(interpolated[:, c].numpy(), train[:, c].numpy(),
                                            lower=0.0 if flags[c] else None)(
            out[obs_model.baseline_name]["values"][:, c].numpy()))
        for c in range(train.shape[1])], dim=1)
    out["quantile mapping"] = {"kind": "deterministic", "values": mapped}
    if obs_model.linear and val_truth is not None and val_y is not None and len(val_y) \
            and math.prod(obs_model.obs_shape) * math.prod(obs_model.grid) \
            <= GAUSSIAN_BASELINE_SIZE:
        chosen = select_shrinkage(train, val_truth, val_y, obs_model)
        post = chosen.prior.posterior(obs_model, y)
        out["Gaussian posterior"] = {
            "kind": "ensemble",
            "values": post.sample(members, seed, time_index),
            "selection": {"shrinkage": list(chosen.shrinkage), "criterion": "validation CRPS",
                          "curve": chosen.curve},
        }
    return out
