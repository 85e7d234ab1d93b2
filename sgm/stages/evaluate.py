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
from sgm.core.baselines import statistical_baselines
from sgm.core.gaussian import GaussianRandomField
from sgm.core.heavy_tailed import CensoredPowerField
from sgm.core.observation import ObservationModel
from sgm.core.tail_scores import marginal_scores, tail_scores
from sgm.core.tiling import Tiling
from sgm.core.verification import (
    COVERAGE_LEVELS,
    DENSE_ORACLE_PIXELS,
    score_deterministic,
    score_ensemble,
    score_oracle,
    score_oracle_matrix_free,
    spectra,
)
from sgm.io import layout
from sgm.io.stores import (
    StoreError,
    check_output,
    json_attr,
    open_store,
    write_store_and_file,
)

log = logging.getLogger(__name__)

# Default tail thresholds: these quantiles of the training fields' pooled values.
TAIL_LEVELS = (0.9, 0.99, 0.999)

def _members(post: xr.Dataset, names: list[str], times: xr.DataArray) -> np.ndarray:
    """Members of ``names`` at ``times``: [M, T, C, H, W] float64."""
    return np.stack([post[v].sel(time=times).transpose("member", "time", "lat", "lon").values
                     for v in names], axis=2).astype(np.float64)


def _positions(ds: xr.Dataset, times: xr.DataArray) -> np.ndarray:
    """Indices of ``times`` along the time axis of ``ds``."""
    return ds.indexes["time"].get_indexer(times.values)


ORACLE_PIXELS = 512  # pixels of a large grid at which the exact marginals are computed


def _oracle_pixels(grid: tuple[int, int], sampler: dict[str, Any], align: int,
                   rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """Pixels of a large oracle grid: a random sample of all of them and, for a tiled
    ensemble, of those shared by tiles (the overlaps, where a seam would show)."""
    def pick(mask: np.ndarray) -> list[tuple[int, int]]:
        flat = np.flatnonzero(mask)
        chosen = np.sort(rng.choice(flat, size=min(ORACLE_PIXELS, flat.size), replace=False))
        return [(int(i) // grid[1], int(i) % grid[1]) for i in chosen]

    out = {"oracle": pick(np.ones(grid, dtype=bool))}
    tiling = Tiling.from_settings(sampler)
    if tiling is not None:
        out["oracle_tile_overlaps"] = pick(tiling.layout(grid, align).shared_pixels().numpy())
    return out


def _large_oracle(prior: GaussianRandomField | None, obs: ObservationModel, post: xr.Dataset,
                  ensembles: dict[str, np.ndarray], truth: np.ndarray, y: np.ndarray,
                  variables: list[str], rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """variable -> {"oracle": ..., "oracle_tile_overlaps": ..., "oracle_raw": ...} of a grid
    too large for the dense oracle (empty for the others)."""
    if prior is None or not obs.linear or prior.size <= DENSE_ORACLE_PIXELS:
        return {}
    if not bool((obs.noise_std() > 0).all()):
        return {v: {"oracle": {"skipped": "the exact posterior needs a positive noise std"}}
                for v in variables}
    sampler = json_attr(post, layout.SAMPLER) if layout.SAMPLER in post.attrs else {}
    pixels = _oracle_pixels(tuple(prior.shape), sampler, obs.operator.grid_multiple, rng)
    out: dict[str, dict[str, Any]] = {v: {} for v in variables}
    for name, ens in ensembles.items():
        suffix = "_raw" if name == "raw ensemble" else ""
        scores = score_oracle_matrix_free(prior, obs, ens, truth, y, pixels)
        for key, per_var in scores.items():
            for c, v in enumerate(variables):
                out[v][key + suffix] = per_var[c]
    log.info("evaluate: matrix-free exact posterior at %s pixels",
             {k: len(v) for k, v in pixels.items()})
    return out


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
    thresholds: dict[str, list[float]] | None = None,
) -> dict:
    """Score the posterior and the baselines on the test times; write metrics.json and
    maps.zarr.

    ``seed`` drives the rank histogram's random tie breaking and the Gaussian baseline's
    members. ``thresholds`` (variable → values in its units) are the tail scores' event
    thresholds; default: the 90th, 99th and 99.9th percentiles of the training fields. Returns
    the metrics dict written.
    """
    thresholds = thresholds or {}
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
        "model_selection": json_attr(post, layout.SELECTION)
        if layout.SELECTION in post.attrs else {},
        "cost": json_attr(post, layout.COST) if layout.COST in post.attrs else {},
        "variables": {},
    }
    maps: dict[str, Any] = {}
    truth_all = layout.stack(fields, variables, _positions(fields, times)).astype(np.float64)
    y_all = layout.stack(obs_store, variables, _positions(obs_store, times)).astype(np.float64)
    ensembles = {"ensemble": _members(post, variables, times)}  # [M, T, C, H, W]
    if all(f"{v}_raw" in post.data_vars for v in variables):  # recalibrated: raw kept too
        ensembles["raw ensemble"] = _members(post, [f"{v}_raw" for v in variables], times)
    for path, values in ((fields_path, truth_all), (posterior_path, ensembles["ensemble"]),
                         (obs_path, y_all)):
        if not np.isfinite(values).all():
            raise StoreError(f"{path}: has NaN or infinite values at the test times")
    if ensembles["ensemble"].shape[1:] != truth_all.shape:
        raise ValueError(f"posterior shape {ensembles['ensemble'].shape} does not match truth "
                         f"{truth_all.shape}")
    members = ensembles["ensemble"].shape[0]
    train = torch.from_numpy(layout.stack(fields, variables, layout.split_index(fields, "train")))
    val_obs = layout.split_index(obs_store, "val")
    val_truth = val_y = None
    if val_obs.size:
        val_times = obs_store.time.values[val_obs]
        val_y = torch.from_numpy(layout.stack(obs_store, variables, val_obs))
        val_truth = torch.from_numpy(layout.stack(
            fields, variables, fields.indexes["time"].get_indexer(val_times)))
    index = post["obs_index"].sel(time=times).values if "obs_index" in post.coords else \
        np.arange(times.size)
    normalisation = json_attr(fields, layout.NORMALISATION)
    transformed = [bool(normalisation[v].get("transform")) for v in variables]
    baselines = statistical_baselines(obs, train, torch.as_tensor(y_all), val_truth, val_y,
                                      members, seed + 1, index.tolist(), transformed)
    marginal = (CensoredPowerField.from_dict(json_attr(fields, layout.HEAVY_TAILED_PRIOR))
                if layout.HEAVY_TAILED_PRIOR in fields.attrs else None)
    large_oracle = _large_oracle(prior, obs, post, ensembles, truth_all, y_all, variables,
                                 np.random.default_rng(seed + 2))
    forecasts = {name: ("ensemble", e) for name, e in ensembles.items()}
    forecasts.update({name: (b["kind"], b["values"].numpy()) for name, b in baselines.items()})
    observed = {name: obs.apply(torch.as_tensor(v)).numpy() for name, (_, v) in forecasts.items()}
    for c, var in enumerate(variables):
        truth, y = truth_all[:, c], y_all[:, c]
        eta = obs.noise[var]
        levels = thresholds.get(var) or np.quantile(train[:, c].numpy(), TAIL_LEVELS).tolist()
        units = str(fields[var].attrs.get("units", ""))
        scores, crps_maps, spec_ = {}, {}, {"k": None, "truth": None}
        for name, (kind, values) in forecasts.items():
            v = values[:, :, c] if kind == "ensemble" else values[:, c]
            a_v = observed[name][:, :, c] if kind == "ensemble" else observed[name][:, c]
            if kind == "ensemble":
                scores[name], crps_maps[name] = score_ensemble(v, truth, a_v, y, eta, rng)
            else:
                scores[name] = score_deterministic(v, truth, a_v, y, eta)
            spectrum = spectra(v if kind == "ensemble" else v[None], truth)
            spec_.update(k=spectrum["k"], k_units=spectrum["k_units"], truth=spectrum["truth"])
            spec_[name] = spectrum["forecast"]
            scores[name]["spectrum_error"] = metrics.log_spectral_distance(
                np.asarray(spectrum["forecast"]), np.asarray(spectrum["truth"]))
            scores[name]["kind"] = kind
            members_of = v if kind == "ensemble" else v[None]
            scores[name]["tail"] = tail_scores(members_of, truth, levels)
            if marginal is not None:
                scores[name]["tail"]["exact_marginal"] = marginal_scores(members_of, marginal)
        for name, b in baselines.items():
            if "selection" in b:
                scores[name]["selection"] = {**b["selection"],
                                             "shrinkage": b["selection"]["shrinkage"][c]}
        base_names = list(baselines)
        best = min(base_names, key=lambda n: scores[n]["crps"])
        entry: dict[str, Any] = {
            "units": units,
            "n_times": int(truth.shape[0]),
            "n_members": int(members),
            "nominal_coverage": {f"coverage_{round(q * 100)}": metrics.nominal_coverage(q, members)
                                 for q in COVERAGE_LEVELS},
            "ensemble": scores["ensemble"],
            "baselines": {n: scores[n] for n in base_names},
            "best_baseline": best,
            "crps_skill": 1.0 - scores["ensemble"]["crps"] / scores[best]["crps"],
            "spectra": spec_,
        }
        entry["tail_thresholds"] = [float(t) for t in levels]
        if marginal is not None:
            entry["exact_marginal"] = {"zero_fraction": marginal.zero_fraction,
                                       **{f"q{100 * u:g}": float(marginal.quantile(u))
                                          for u in (0.99, 0.999)}}
        if "raw ensemble" in scores:
            entry["raw_ensemble"] = scores["raw ensemble"]
        if prior is not None and obs.linear and prior.size <= DENSE_ORACLE_PIXELS:
            entry["oracle"] = score_oracle(prior, obs.matrix(), eta,
                                           ensembles["ensemble"][:, :, c], truth, y)
            if "raw ensemble" in ensembles:
                entry["oracle_raw"] = score_oracle(prior, obs.matrix(), eta,
                                                   ensembles["raw ensemble"][:, :, c], truth, y)
        entry.update(large_oracle.get(var, {}))
        result["variables"][var] = entry
        interpolation = forecasts[obs.baseline_name][1][:, c]
        maps.update(_maps(var, ensembles["ensemble"][:, :, c], truth, interpolation,
                          crps_maps["ensemble"], units))
        log.info("evaluate %s: CRPS ensemble %.4g %s; %s", var, scores["ensemble"]["crps"], units,
                 ", ".join(f"{n} {scores[n]['crps']:.4g}" for n in base_names))

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
