"""The one place that knows how sgm's stores are laid out: file names beside each other, the
``sgm_*`` attribute keys, the grid, the split of every time step, and how arrays come out.

Stores (all Zarr, written by :func:`sgm.io.stores.write_store`):

- ``fields.zarr``: target variables on (time, lat, lon) in physical units, static covariates
  ``static_<name>`` on (lat, lon), coordinate ``split`` (train/val/test per time).
- ``paired.zarr`` (beside fields.zarr, only for specs with a paired source): the coarse fields.
- ``obs.zarr``: observations of the val and test times (or ``external``), one variable per
  target variable on (time, *obs_dims), with the observation model's complete description.
- ``posterior.zarr``: (time, member, lat, lon) per variable, coordinate ``obs_index`` (each
  time's index in obs.zarr), provenance attributes.
- ``maps.zarr``: per-pixel score maps beside ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from sgm.io.stores import COMPLETE_ATTR, StoreError, json_attr

# Attribute keys.
COMPLETE = COMPLETE_ATTR
SPEC = "sgm_spec"
VARIABLES = "sgm_variables"
STATIC = "sgm_static"
NORMALISATION = "sgm_normalisation"
LONGITUDES = "sgm_longitudes"
GAUSSIAN_PRIOR = "sgm_gaussian_prior"
HEAVY_TAILED_PRIOR = "sgm_heavy_tailed_prior"
OBSERVATION = "sgm_observation"
OBSERVATIONS_FROM = "sgm_observations"
OBS_SEED = "sgm_seed"
PAIRED_FACTOR = "sgm_paired_factor"
SOURCE = "sgm_source"
SOURCE_UNITS = "sgm_source_units"
MISSING_FILLED = "sgm_missing_filled"
SOURCE_FILE = "sgm_source_file"
REFERENCE_OBS = "sgm_reference_obs"
TIME_SLICE = "sgm_time_slice"
MODEL_HASH = "sgm_model_hash"
MODEL_STEP = "sgm_model_step"
SAMPLER = "sgm_sampler"
SAMPLE_SEED = "sgm_seed"
SHARD = "sgm_shard"
SPLIT = "sgm_split"
VERSION = "sgm_version"
COST = "sgm_cost"
SELECTION = "sgm_selection"
N_TIMES = "sgm_n_times"
PROVENANCE_KEYS = (SPEC, MODEL_HASH, SAMPLER, SAMPLE_SEED)

EXTERNAL_SPLIT = "external"


def spec_of(ds: xr.Dataset) -> str | None:
    """The data spec a store belongs to (None if it does not say)."""
    value = ds.attrs.get(SPEC)
    return None if value is None else str(value)


def check_same_spec(expected: str, named: dict[str, str | None]) -> None:
    """Every store (path → its spec) belongs to ``expected``; else one sentence naming it."""
    for path, spec in named.items():
        if spec is not None and spec != expected:
            raise StoreError(f"{path}: belongs to data spec {spec!r}, not {expected!r}; "
                             "inputs of one run must come from one spec")


def check_split(ds: xr.Dataset, split: str, path: str | Path) -> None:
    """``split`` is 'all' or one of the store's splits; else one sentence listing them."""
    have = sorted(set(np.asarray(ds["split"].values).tolist()))
    if split != "all" and split not in have:
        raise StoreError(f"--split {split!r}: {path} has the splits {', '.join(have)} (or all)")


def paired_path(fields_path: str | Path) -> Path:
    """Where ingest writes a spec's paired low-resolution fields: beside ``fields.zarr``."""
    return Path(fields_path).with_name("paired.zarr")


def grid_coords(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The (lat[H], lon[W]) coordinates of a store's grid."""
    return np.asarray(ds["lat"].values, dtype=np.float64), np.asarray(ds["lon"].values,
                                                                      dtype=np.float64)


def variables_of(fields: xr.Dataset) -> list[str]:
    """The target variables of ``fields.zarr``, in channel order."""
    return list(json_attr(fields, VARIABLES))


def posterior_variables(post: xr.Dataset) -> list[str]:
    """The model's variables in a posterior store (not the raw members kept beside them)."""
    if VARIABLES in post.attrs:
        return list(json_attr(post, VARIABLES))
    return [str(v) for v in post.data_vars if not str(v).endswith("_raw")]


def split_index(ds: xr.Dataset, split: str) -> np.ndarray:
    """Indices of the time steps of ``split`` ('all': every time)."""
    index = np.arange(ds.sizes["time"])
    return index if split == "all" else index[np.asarray(ds["split"].values) == split]


def stack(ds: xr.Dataset, variables: Sequence[str], time: np.ndarray | None = None) -> np.ndarray:
    """Variables of ``ds`` (each (time, *dims)) stacked as float32 [time, C, *dims]."""
    sub = ds if time is None else ds.isel(time=time)
    return np.stack([sub[v].values for v in variables], axis=1).astype(np.float32)


def static_arrays(fields: xr.Dataset) -> tuple[list[str], np.ndarray | None, dict[str, Any]]:
    """Names (``static_<name>``), values [S, H, W] (float32) and statistics of the static
    covariates of ``fields.zarr`` (values None when there are none)."""
    names = [f"static_{n}" for n in json_attr(fields, STATIC)] if STATIC in fields.attrs else []
    if not names:
        return [], None, {}
    stats = json_attr(fields, NORMALISATION)
    values = np.stack([fields[v].values for v in names]).astype(np.float32)
    return names, values, {n: stats[n] for n in names}


def observation_description(obs: xr.Dataset) -> dict[str, Any]:
    """The observation model's complete description carried by an obs store."""
    return json_attr(obs, OBSERVATION)


def observation_positions(obs: xr.Dataset, var: str) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon)[*obs_dims] of every observation of ``var`` in an obs store."""
    dims = obs[var].dims[1:]
    return tuple(obs[c].transpose(*dims).values for c in ("obs_lat", "obs_lon"))


def test_times(fields: xr.Dataset, post: xr.Dataset, posterior_path: str | Path) -> xr.DataArray:
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
