"""Stage ``coarsen-file``: fine fields on a spec's grid → a coarse NetCDF file of block means.

For demos and for testing the path of observations without truth (``observe-external``): the
fine fields of another scenario or model, read as ingest reads the spec's own sources, become
the coarse observations a user would bring. Bad input raises
:class:`~sgm.io.errors.SourceError` before anything is written; the file is written atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from sgm.config import DataSpec, FieldRef, SpecError, load_spec
from sgm.core.observation import ObservationModel
from sgm.io.atomic import atomic_write
from sgm.io.errors import SourceError
from sgm.io.grid import same_grid
from sgm.io.sources import compute, place, read_field, refuse_missing, resolve_file, select_times
from sgm.io.stores import open_store

log = logging.getLogger(__name__)

_LAT_ATTRS = {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}
_LON_ATTRS = {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}


def _field_ref(spec: DataSpec, name: str) -> FieldRef:
    """How to read file variable ``name``: as the spec reads it (level, units) if it names it."""
    for var in spec.variables:
        effective = var.source_name or (var.name if var.standard_name is None else None)
        if effective == name:
            return var.model_copy(update={"source": None})
    return FieldRef(name="field", source_name=name)



def coarsen_file(
    spec_path: str | Path,
    source: str | Path,
    variable: str | Sequence[str],
    out_nc: str | Path,
    time_slice: Sequence[str] | None = None,
    fields_path: str | Path | None = None,
) -> Path:
    """Block-average fine fields on the spec's grid into a coarse NetCDF file ``out_nc``.

    The file variable(s) ``variable`` of ``source`` (a path or ``package:<pkg>/<path>``) are read
    as ingest reads them (latitudes ascending, the spec's longitude convention, its region, the
    crop that divides the factor, and its level/units when the spec names the variable), cut to
    ``time_slice`` and averaged over factor × factor blocks with the spec's operator. The grid is
    checked against ``fields_path`` (fields.zarr) when given. The output keeps the variable
    names and units, on coordinates ``lat``/``lon`` at the block centres.
    """
    spec = load_spec(spec_path)
    if spec.operator.kind != "coarsen":
        raise SpecError(f"{spec_path}: operator.kind: coarsen-file block-averages, but the "
                        f"spec's operator is {spec.operator.kind!r}")
    path, out_nc = resolve_file(source), Path(out_nc)
    names = [variable] if isinstance(variable, str) else list(variable)
    arrays = []
    for name in names:
        da = place(read_field([path], _field_ref(spec, name), spec.longitudes), spec)
        arrays.append(select_times(da, time_slice, f"{path}: variable {name!r}"))
    fine = arrays[0]
    if fields_path is not None:
        fields = open_store(fields_path)
        dim = same_grid(fine, fields)
        if dim is not None:
            raise SourceError(f"{path}: variable {names[0]!r}: cropped to the spec's grid, its "
                              f"{dim} axis ({fine.sizes[dim]} points from "
                              f"{float(fine[dim][0]):g}) differs from that of {fields_path} "
                              f"({fields.sizes[dim]} points from {float(fields[dim][0]):g})")
    obs = ObservationModel.from_dict({**spec.observation(), "variables": names,
                                      "noise_std": dict.fromkeys(names, 0.0),
                                      "grid": {"lat": fine.lat.values.tolist(),
                                               "lon": fine.lon.values.tolist()}})
    coords = obs.coords()
    factor = spec.operator.factor
    loaded = compute(*arrays)
    for name, da in zip(names, loaded, strict=True):
        where = f"{path}: variable {name!r}"
        refuse_missing(da, where, "block means need complete fields")
        if not np.array_equal(da.time.values, fine.time.values):
            raise SourceError(f"{where}: has time steps that differ from those of {names[0]!r}")
    x = torch.as_tensor(np.stack([da.values for da in loaded], axis=1), dtype=torch.float64)
    y = obs.apply(x).numpy().astype(np.float32)
    data = {}
    for i, (name, da) in enumerate(zip(names, loaded, strict=True)):
        attrs = {k: da.attrs[k] for k in ("standard_name", "long_name", "units") if k in da.attrs}
        attrs["cell_methods"] = f"lat: lon: mean (blocks of {factor} x {factor} cells)"
        data[name] = (("time", "lat", "lon"), y[:, i], attrs)
    ds = xr.Dataset(
        data,
        coords={
            "time": fine.time.values,
            "lat": ("lat", coords["lat_c"][1], _LAT_ATTRS),
            "lon": ("lon", coords["lon_c"][1], _LON_ATTRS),
        },
        attrs={
            "Conventions": "CF-1.8",
            "title": f"{factor}x{factor} block means of {path.name} on the grid of data "
            f"spec {spec.name}",
            "source": str(source),
            "history": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: sgm coarsen-file",
        },
    )
    log.info("coarsen-file %s: %s, %d times, grid %s -> %s", path, names, ds.sizes["time"],
             obs.grid, obs.obs_shape)
    return atomic_write(out_nc, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))
