"""Stage ``evaluate``: ``fields.zarr`` + ``obs.zarr`` + ``posterior.zarr`` → ``metrics.json``,
``maps.zarr``.

For every target variable on the test times, the posterior ensemble and the operator's
deterministic baseline (bicubic for coarsening, nearest fill for sparse points) are scored with
the same metrics (``sgm.core.metrics``), in physical units. When the fields come from the
Gaussian oracle spec (attribute ``sgm_gaussian_prior``), the ensemble is also compared with the
exact posterior. Everything is computed before anything is written; a failure leaves neither
output behind.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from sgm.core import metrics
from sgm.core.operators import ObservationOperator, build_operator
from sgm.io.atomic import atomic_write_text
from sgm.io.stores import json_attr, open_store, write_store

log = logging.getLogger(__name__)

BASELINE_NAMES = {"coarsen": "bicubic", "sparse": "nearest", "blur": "blurred observation"}
COVERAGE_LEVELS = (0.5, 0.9)
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


def _apply(op: ObservationOperator, x: np.ndarray) -> np.ndarray:
    """Noise-free A(x) with torch in float64: x[..., H, W] -> [..., *obs_shape]."""
    return op.apply(torch.as_tensor(x, dtype=torch.float64)).numpy()


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
    prior_dict: dict[str, Any],
    op: ObservationOperator,
    noise_std: float,
    ens: np.ndarray,
    truth: np.ndarray,
    y: np.ndarray,
) -> dict[str, Any]:
    """Ensemble vs the exact Gaussian posterior (``sgm.core.gaussian.exact_posterior``).

    ens[M, T, H, W], truth[T, H, W], y[T, *obs]; see ``metrics.oracle_metrics``.
    """
    from sgm.core.gaussian import GaussianRandomField, exact_posterior

    if noise_std <= 0:
        return {"skipped": "the exact posterior needs a positive noise std"}
    prior = GaussianRandomField.from_dict(prior_dict)
    if prior.shape != op.grid:
        raise ValueError(f"Gaussian prior grid {prior.shape} differs from the fields' {op.grid}")
    m, t = ens.shape[:2]
    mean, cov = exact_posterior(prior, op.matrix(), noise_std, y.reshape(t, -1))
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    return metrics.oracle_metrics(ens.reshape(m, t, -1), mean, std, truth.reshape(t, -1))


def _spectra(ens: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> dict[str, list[float]]:
    """Radially averaged spectra averaged over time (and members): k and P for each source."""
    k, p_truth = metrics.radial_power_spectrum(truth)
    _, p_ens = metrics.radial_power_spectrum(ens)
    _, p_base = metrics.radial_power_spectrum(pred)
    return {
        "k": k.tolist(),
        "k_units": "cycles per grid cell",
        "truth": p_truth.mean(axis=0).tolist(),
        "ensemble": p_ens.mean(axis=(0, 1)).tolist(),
        "baseline": p_base.mean(axis=0).tolist(),
    }


def _maps(
    var: str, ens: np.ndarray, truth: np.ndarray, pred: np.ndarray, crps: np.ndarray, units: str
) -> dict[str, tuple[tuple[str, str], np.ndarray, dict[str, str]]]:
    """Per-pixel time means [H, W] of the ensemble's and the baseline's errors."""

    def entry(values: np.ndarray, long_name: str) -> tuple:
        return ("lat", "lon"), values.astype(np.float32), {"units": units, "long_name": long_name}

    return {
        f"{var}_crps": entry(crps.mean(axis=0), "fair CRPS of the ensemble, time mean"),
        f"{var}_bias": entry(
            (ens.mean(axis=0) - truth).mean(axis=0), "ensemble-mean bias (mean - truth), time mean"
        ),
        f"{var}_std": entry(
            np.sqrt(ens.var(axis=0, ddof=1).mean(axis=0)),
            "ensemble standard deviation, root time-mean variance",
        ),
        f"{var}_baseline_abs_error": entry(
            np.abs(pred - truth).mean(axis=0), "baseline absolute error (= its CRPS), time mean"
        ),
    }


def _clean(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def select_test_times(
    fields: xr.Dataset, post: xr.Dataset, posterior_path: str | Path = "posterior"
) -> xr.DataArray:
    """The posterior's times that are in the fields' test split; all test times must be there."""
    test = fields["time"].values[np.asarray(fields["split"].values) == "test"]
    have = set(post["time"].values)
    missing = [t for t in test if t not in have]
    if len(test) == 0:
        raise ValueError("the fields have no test split to evaluate")
    if missing:
        raise ValueError(
            f"{posterior_path}: {len(missing)} of the {len(test)} test times have no posterior "
            "member (re-run sampling)"
        )
    return post["time"].sel(time=list(test))


def evaluate(
    fields_path: str | Path,
    obs_path: str | Path,
    posterior_path: str | Path,
    metrics_path: str | Path,
    maps_path: str | Path,
    seed: int = 0,
) -> dict:
    """Score the posterior and the baseline on the test times; write metrics.json and maps.zarr.

    ``seed`` drives the rank histogram's random tie breaking. Returns the metrics dict written.
    """
    fields, obs, post = open_store(fields_path), open_store(obs_path), open_store(posterior_path)
    variables = json_attr(fields, "sgm_variables")
    grid = (int(fields.sizes["lat"]), int(fields.sizes["lon"]))
    for dim in ("lat", "lon"):
        if post.sizes[dim] != fields.sizes[dim] or not np.allclose(post[dim], fields[dim]):
            raise ValueError(f"{posterior_path}: {dim} grid differs from {fields_path}")
    op_cfg = json_attr(obs, "sgm_operator")
    op = build_operator(op_cfg, grid)
    noise = json_attr(obs, "sgm_noise_std")
    prior = (
        json_attr(fields, "sgm_gaussian_prior") if "sgm_gaussian_prior" in fields.attrs else None
    )
    rng = np.random.default_rng(seed)
    times = select_test_times(fields, post, posterior_path)

    result: dict[str, Any] = {
        "spec": fields.attrs.get("sgm_spec"),
        "provenance": {
            key: json_attr(post, key)
            for key in ("sgm_spec", "sgm_model_hash", "sgm_sampler", "sgm_seed")
            if key in post.attrs
        },
        "operator": op_cfg,
        "noise_std": noise,
        "obs_seed": json_attr(obs, "sgm_seed") if "sgm_seed" in obs.attrs else None,
        "evaluate_seed": seed,
        "variables": {},
    }
    maps: dict[str, Any] = {}
    for var in variables:
        truth = fields[var].sel(time=times).transpose("time", "lat", "lon").values
        y = obs[var].sel(time=times).transpose("time", *op.obs_dims).values.astype(np.float64)
        ens = post[var].transpose("member", "time", "lat", "lon").values.astype(np.float64)
        truth = truth.astype(np.float64)
        for name, values in (("truth", truth), ("posterior", ens), ("observations", y)):
            if not np.isfinite(values).all():
                raise ValueError(f"{var}: the {name} contain NaN or infinite values")
        if ens.shape[1:] != truth.shape:
            raise ValueError(
                f"{var}: posterior shape {ens.shape} does not match truth {truth.shape}"
            )
        eta = float(noise[var])
        pred = op.baseline(torch.as_tensor(y)).numpy()
        units = str(fields[var].attrs.get("units", ""))
        ens_scores, crps = score_ensemble(ens, truth, _apply(op, ens), y, eta, rng)
        base_scores = score_deterministic(pred, truth, _apply(op, pred), y, eta)
        spectra = _spectra(ens, truth, pred)
        for scores, key in ((ens_scores, "ensemble"), (base_scores, "baseline")):
            scores["spectrum_error"] = metrics.log_spectral_distance(
                np.asarray(spectra[key]), np.asarray(spectra["truth"])
            )
        entry: dict[str, Any] = {
            "units": units,
            "n_times": int(truth.shape[0]),
            "n_members": int(ens.shape[0]),
            "ensemble": ens_scores,
            "baseline": {"name": BASELINE_NAMES.get(op.name, op.name), **base_scores},
            "spectra": spectra,
        }
        if prior is not None:
            entry["oracle"] = score_oracle(prior, op, eta, ens, truth, y)
        result["variables"][var] = entry
        maps.update(_maps(var, ens, truth, pred, crps, units))
        log.info(
            "evaluate %s: CRPS ensemble %.4g, baseline %.4g %s",
            var,
            ens_scores["crps"],
            base_scores["crps"],
            units,
        )

    result = _clean(result)
    text = json.dumps(result, indent=2)
    coords = {d: fields[d] for d in ("lat", "lon")}
    maps_ds = xr.Dataset(maps, coords=coords)
    metrics_path, maps_path = Path(metrics_path), Path(maps_path)
    write_store(
        maps_ds, maps_path, attrs={"sgm_spec": result["spec"] or "", "sgm_n_times": int(times.size)}
    )
    try:
        atomic_write_text(metrics_path, text)
    except BaseException:
        shutil.rmtree(maps_path, ignore_errors=True)
        raise
    return result
