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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from sgm.core import metrics
from sgm.core.gaussian import GaussianRandomField
from sgm.core.observation import ObservationModel
from sgm.core.verification import score_deterministic, score_ensemble, score_oracle, spectra
from sgm.io import layout
from sgm.io.stores import (
    StoreError,
    check_output,
    json_attr,
    open_store,
    write_store_and_file,
)

log = logging.getLogger(__name__)

def _positions(ds: xr.Dataset, times: xr.DataArray) -> np.ndarray:
    """Indices of ``times`` along the time axis of ``ds``."""
    return ds.indexes["time"].get_indexer(times.values)


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
    check_output(maps_path)
    fields, obs_store, post = (open_store(fields_path), open_store(obs_path),
                               open_store(posterior_path))
    spec = layout.spec_of(fields) or "?"
    layout.check_same_spec(spec, {str(obs_path): layout.spec_of(obs_store),
                                  str(posterior_path): layout.spec_of(post)})
    variables = layout.variables_of(fields)
    missing = [v for v in variables if v not in post.data_vars or v not in obs_store.data_vars]
    if missing:
        raise StoreError(f"{posterior_path} or {obs_path}: lacks variable(s) "
                         f"{', '.join(missing)} of {fields_path}")
    for dim in ("lat", "lon"):
        if post.sizes[dim] != fields.sizes[dim] or not np.allclose(post[dim], fields[dim]):
            raise ValueError(f"{posterior_path}: {dim} grid differs from {fields_path}")
    description = layout.observation_description(obs_store)
    obs = ObservationModel.from_dict(description)
    prior = (GaussianRandomField.from_dict(json_attr(fields, layout.GAUSSIAN_PRIOR))
             if layout.GAUSSIAN_PRIOR in fields.attrs else None)
    rng = np.random.default_rng(seed)
    times = layout.test_times(fields, post, posterior_path)

    result: dict[str, Any] = {
        "spec": fields.attrs.get(layout.SPEC),
        "provenance": {
            key: json_attr(post, key) for key in layout.PROVENANCE_KEYS if key in post.attrs
        },
        "operator": description["operator"],
        "noise_std": description["noise_std"],
        "obs_seed": json_attr(obs_store, layout.OBS_SEED)
        if layout.OBS_SEED in obs_store.attrs else None,
        "evaluate_seed": seed,
        "variables": {},
    }
    maps: dict[str, Any] = {}
    truth_all = layout.stack(fields, variables, _positions(fields, times)).astype(np.float64)
    y_all = layout.stack(obs_store, variables, _positions(obs_store, times)).astype(np.float64)
    ens_all = np.stack([post[v].sel(time=times).transpose("member", "time", "lat", "lon").values
                        for v in variables], axis=2).astype(np.float64)  # [M, T, C, H, W]
    for path, values in ((fields_path, truth_all), (posterior_path, ens_all),
                         (obs_path, y_all)):
        if not np.isfinite(values).all():
            raise StoreError(f"{path}: has NaN or infinite values at the test times")
    if ens_all.shape[1:] != truth_all.shape:
        raise ValueError(f"posterior shape {ens_all.shape} does not match truth "
                         f"{truth_all.shape}")
    pred_all = obs.baseline(torch.as_tensor(y_all)).numpy()
    a_ens_all = obs.apply(torch.as_tensor(ens_all)).numpy()
    a_pred_all = obs.apply(torch.as_tensor(pred_all)).numpy()
    for c, var in enumerate(variables):
        truth, y, ens, pred = truth_all[:, c], y_all[:, c], ens_all[:, :, c], pred_all[:, c]
        eta = obs.noise[var]
        units = str(fields[var].attrs.get("units", ""))
        ens_scores, crps = score_ensemble(ens, truth, a_ens_all[:, :, c], y, eta, rng)
        base_scores = score_deterministic(pred, truth, a_pred_all[:, c], y, eta)
        spec_ = spectra(ens, truth, pred)
        for scores, key in ((ens_scores, "ensemble"), (base_scores, "baseline")):
            scores["spectrum_error"] = metrics.log_spectral_distance(
                np.asarray(spec_[key]), np.asarray(spec_["truth"])
            )
        entry: dict[str, Any] = {
            "units": units,
            "n_times": int(truth.shape[0]),
            "n_members": int(ens.shape[0]),
            "ensemble": ens_scores,
            "baseline": {"name": obs.baseline_name, **base_scores},
            "spectra": spec_,
        }
        if prior is not None:
            entry["oracle"] = score_oracle(prior, obs.matrix(), eta, ens, truth, y)
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
    write_store_and_file(
        maps_ds, maps_path,
        {layout.SPEC: result["spec"] or "", layout.N_TIMES: int(times.size)},
        metrics_path, text,
    )
    return result
