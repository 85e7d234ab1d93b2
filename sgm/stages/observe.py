"""Stage ``observe``: ``fields.zarr`` + the spec's operator → ``obs.zarr``.

The observations y = A(x) + η·ε of the validation and test times are drawn once with a fixed
seed, so that every later stage (sampling, baselines, evaluation) sees the same y.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from sgm.config import load_spec
from sgm.core.operators import ObservationOperator, build_operator
from sgm.io.stores import open_store, write_store

log = logging.getLogger(__name__)


def grid_of(fields: xr.Dataset) -> tuple[int, int]:
    return int(fields.sizes["lat"]), int(fields.sizes["lon"])


def observation_coords(op: ObservationOperator, fields: xr.Dataset) -> dict:
    """Coordinates of y: the operator applied to the lat/lon grids (block centres, points)."""
    lat2d, lon2d = np.meshgrid(fields.lat.values, fields.lon.values, indexing="ij")
    coords = {}
    for name, grid in (("obs_lat", lat2d), ("obs_lon", lon2d)):
        values = op.apply(torch.as_tensor(grid, dtype=torch.float64)).numpy()
        coords[name] = (op.obs_dims, values)
    if op.obs_dims == ("lat_c", "lon_c"):
        coords["lat_c"] = coords["obs_lat"][1][:, 0]
        coords["lon_c"] = coords["obs_lon"][1][0, :]
    return coords


def paired_path(fields_path: str | Path) -> Path:
    """Where ingest writes a spec's paired low-resolution fields: beside ``fields.zarr``."""
    return Path(fields_path).with_name("paired.zarr")


def observe(spec_path: str | Path, fields_path: str | Path, out: str | Path) -> Path:
    """Write the observations of the val and test splits atomically.

    They are drawn as y = A(x) + η·ε with a fixed seed, or, for a spec with a paired
    low-resolution source, taken from that source (real coarse fields, no added noise; the
    spec's ``noise_std`` then states the assumed mismatch, used by re-observation checks).
    """
    spec = load_spec(spec_path)
    fields = open_store(fields_path)
    op = build_operator(spec.operator_dict(), grid_of(fields))
    keep = np.flatnonzero(fields.split.isin(["val", "test"]).values)
    subset = fields.isel(time=keep)
    paired = open_store(paired_path(fields_path)).isel(time=keep) if spec.paired else None
    generator = torch.Generator().manual_seed(spec.observation_seed)
    data = {}
    for var in spec.variables:
        if paired is not None:
            y = paired[var.name].values.astype(np.float32)
        else:
            x = torch.as_tensor(subset[var.name].values, dtype=torch.float64)
            clean = op.apply(x)
            noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
            y = (clean + spec.operator.noise_std * noise).to(torch.float32).numpy()
        data[var.name] = (("time", *op.obs_dims), y, dict(subset[var.name].attrs))
    coords = {"time": subset.time.values, "split": ("time", subset.split.values.astype(object))}
    coords.update(observation_coords(op, subset))
    ds = xr.Dataset(data, coords=coords)
    source = "the paired source" if paired is not None else f"noise std {spec.operator.noise_std}"
    log.info("observe %s: %s on %d times, %s", spec.name, op, ds.sizes["time"], source)
    return write_store(
        ds,
        out,
        attrs={
            "sgm_spec": spec.name,
            "sgm_operator": op.to_dict(),
            "sgm_noise_std": {v.name: spec.operator.noise_std for v in spec.variables},
            "sgm_seed": spec.observation_seed,
            "sgm_observations": "paired" if paired is not None else "simulated",
        },
    )
