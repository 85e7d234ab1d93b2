"""Stage ``observe``: ``fields.zarr`` + the spec's observation model → ``obs.zarr``.

The observation model y = A(x) + η·ε is built here, once, from the spec and the ingested grid;
``obs.zarr`` carries its complete description, from which every later stage rebuilds it. The
observations of the validation and test times are drawn once with a fixed seed, so that every
later stage (training, sampling, baselines, evaluation) sees the same y.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from sgm.config import SpecError, load_spec, with_operator
from sgm.core.observation import ObservationModel
from sgm.io import layout
from sgm.io.stores import StoreError, check_output, open_store, write_store

log = logging.getLogger(__name__)


def observe(spec_path: str | Path, fields_path: str | Path, out: str | Path,
            operator: dict[str, Any] | None = None) -> Path:
    """Write the observations of the val and test splits atomically.

    They are drawn as y = A(x) + η·ε with a fixed seed, or, for a spec with a paired
    low-resolution source, taken from that source (real coarse fields, no added noise; the
    spec's ``noise_std`` then states the assumed mismatch, used by re-observation checks).
    ``operator`` replaces the spec's operator (an inversion of another observation system with
    a prior model; a station file is then read relative to the spec's folder).
    """
    spec = load_spec(spec_path)
    if operator is not None:
        if spec.paired is not None:
            raise SpecError(f"--operator: {spec_path} has a paired source, whose observations "
                            "are real coarse fields, not made by an operator")
        spec = with_operator(spec, operator, "--operator", Path(spec_path).parent)
    out = check_output(out)
    fields = open_store(fields_path)
    layout.check_same_spec(spec.name, {str(fields_path): layout.spec_of(fields)})
    missing = [v.name for v in spec.variables if v.name not in fields.data_vars]
    if missing:
        raise StoreError(f"{fields_path}: lacks variable(s) {', '.join(missing)} of the spec "
                         f"{spec_path}; rerun ingest")
    lat, lon = layout.grid_coords(fields)
    try:
        obs = ObservationModel.from_dict(
            {**spec.observation(), "grid": {"lat": lat.tolist(), "lon": lon.tolist()}}
        )
    except ValueError as exc:
        raise SpecError(f"{spec_path}: operator: {exc} (the grid of {fields_path} is "
                        f"{lat.size}x{lon.size}; rerun ingest after changing the operator)"
                        ) from None
    keep = np.flatnonzero(fields.split.isin(["val", "test"]).values)
    subset = fields.isel(time=keep)
    variables = list(obs.variables)
    if spec.paired is not None:
        paired = open_store(layout.paired_path(fields_path)).isel(time=keep)
        y = layout.stack(paired, variables)
        source = "the paired source"
    else:
        x = torch.as_tensor(layout.stack(subset, variables), dtype=torch.float64)
        generator = torch.Generator().manual_seed(spec.observation_seed)
        y = obs.sample(x, generator).to(torch.float32).numpy()
        source = f"noise std {obs.noise}"
    data = {
        v: (("time", *obs.obs_dims), y[:, i], dict(subset[v].attrs))
        for i, v in enumerate(variables)
    }
    coords = {"time": subset.time.values, "split": ("time", subset.split.values.astype(object))}
    coords.update(obs.coords())
    ds = xr.Dataset(data, coords=coords)
    log.info("observe %s: %s on %d times, %s", spec.name, obs.operator, ds.sizes["time"], source)
    return write_store(
        ds,
        out,
        attrs={
            layout.SPEC: spec.name,
            layout.OBSERVATION: obs.to_dict(),
            layout.OBS_SEED: spec.observation_seed,
            layout.OBSERVATIONS_FROM: "paired" if spec.paired is not None else "simulated",
        },
    )
