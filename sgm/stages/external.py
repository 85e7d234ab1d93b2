"""External observations: coarse fields from a file that training never saw → an obs store.

A trained model can sample the posterior of any observation made with its operator: another
emissions scenario, another model, a reanalysis coarsened the same way. :func:`observe_external`
checks such a file against the model's own observations (``obs.zarr``: variables, units, the
coarse grid, no missing values) and writes an obs store with the same layout, every time in
split ``external``, which ``sgm sample --split external`` samples and ``report_external``
reports on (without truth). :func:`coarsen_file` makes such a coarse file from fine fields on
the spec's grid, for demos and for testing the path.

Bad input raises :class:`~sgm.io.errors.SourceError` (one sentence naming the file, the
variable and the problem) before anything is written; files and stores are written atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from pydantic import ValidationError

from sgm.config import DataSpec, DateRange, FieldRef, SpecError, load_spec
from sgm.core.operators import build_operator
from sgm.io.atomic import atomic_write
from sgm.io.errors import MissingSourceError, SourceError
from sgm.io.grid import same_grid
from sgm.io.sources import package_file, read_field
from sgm.io.stores import json_attr, open_store, write_store
from sgm.io.units import same as same_units
from sgm.stages.ingest import compute, place
from sgm.stages.observe import observation_coords

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
GRID_TOLERANCE = 1e-3  # degrees: how far a file's coarse grid may be from the model's
SPLIT = "external"
_LAT_ATTRS = {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}
_LON_ATTRS = {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}


def resolve_file(source: str | Path) -> Path:
    """A file path, or the file a ``package:<package>/<path inside it>`` reference names."""
    text = str(source)
    if not text.startswith(PACKAGE_PREFIX):
        path = Path(text)
        if not path.exists():
            raise MissingSourceError(f"{path}: file does not exist")
        return path
    package, _, inner = text[len(PACKAGE_PREFIX) :].partition("/")
    if not package or not inner:
        raise SourceError(f"{text}: a package reference reads package:<package>/<path in it>")
    return package_file(package, inner)


def select_times(
    da: xr.DataArray, time_slice: Sequence[str] | None, where: str
) -> xr.DataArray:
    """The time steps from ``time_slice[0]`` to ``time_slice[1]`` (dates, both included)."""
    if time_slice is None:
        return da
    start, end = (str(t) for t in time_slice)
    try:
        keep = DateRange(start=start, end=end).mask(da.time.values)
    except ValidationError as exc:
        raise SourceError(f"{where}: time slice {start} to {end}: "
                          f"{exc.errors()[0]['msg']}") from None
    except ValueError as exc:
        raise SourceError(f"{where}: time slice {start} to {end}: {exc}") from None
    if not keep.any():
        times = da.time.values
        raise SourceError(f"{where}: time slice {start} to {end} selects no time step; the file "
                          f"covers {times[0]} to {times[-1]}")
    return da.isel(time=np.flatnonzero(keep))


def _missing(da: xr.DataArray, where: str, why: str) -> None:
    """Refuse missing or non-finite values in a loaded field."""
    bad = int((~np.isfinite(da.values)).sum())
    if bad:
        raise SourceError(f"{where}: has {bad} missing or non-finite values; {why}")


def _field_ref(spec: DataSpec, name: str) -> FieldRef:
    """How to read file variable ``name``: as the spec reads it (level, units) if it names it."""
    for var in spec.variables:
        effective = var.source_name or (var.name if var.standard_name is None else None)
        if effective == name:
            return var.model_copy(update={"source": None})
    return FieldRef(name="field", source_name=name)


def _write_netcdf(ds: xr.Dataset, out: Path) -> Path:
    """Write ``ds`` to ``out`` through a temporary sibling (never a partial file)."""
    return atomic_write(out, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


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
    op = build_operator(spec.operator_dict(), (fine.sizes["lat"], fine.sizes["lon"]))
    coords = observation_coords(op, fine.coords.to_dataset())
    data = {}
    for name, da in zip(names, compute(*arrays), strict=True):
        where = f"{path}: variable {name!r}"
        _missing(da, where, "block means need complete fields")
        if not np.array_equal(da.time.values, fine.time.values):
            raise SourceError(f"{where}: has time steps that differ from those of {names[0]!r}")
        y = op.apply(torch.as_tensor(da.values, dtype=torch.float64)).numpy().astype(np.float32)
        attrs = {k: da.attrs[k] for k in ("standard_name", "long_name", "units") if k in da.attrs}
        attrs["cell_methods"] = f"lat: lon: mean (blocks of {op.factor} x {op.factor} cells)"
        data[name] = (("time", "lat", "lon"), y, attrs)
    ds = xr.Dataset(
        data,
        coords={
            "time": fine.time.values,
            "lat": ("lat", coords["lat_c"], _LAT_ATTRS),
            "lon": ("lon", coords["lon_c"], _LON_ATTRS),
        },
        attrs={
            "Conventions": "CF-1.8",
            "title": f"{op.factor}x{op.factor} block means of {path.name} on the grid of data "
            f"spec {spec.name}",
            "source": str(source),
            "history": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: sgm coarsen-file",
        },
    )
    log.info("coarsen-file %s: %s, %d times, grid %s -> %s", path, names, ds.sizes["time"],
             op.grid, op.obs_shape(op.grid))
    return _write_netcdf(ds, out_nc)


def _axis(values: np.ndarray) -> str:
    return f"{values.size} points from {values[0]:g} to {values[-1]:g}"


def _check_grid(da: xr.DataArray, ref: xr.Dataset, dims: tuple[str, str], where: str,
                obs_ref: Path) -> None:
    """The file's lat/lon must be the model's observation grid within GRID_TOLERANCE."""
    for dim, ref_dim in zip(("lat", "lon"), dims, strict=True):
        have, want = np.asarray(da[dim].values, float), np.asarray(ref[ref_dim].values, float)
        off = np.abs(have - want).max() if have.size == want.size else np.inf
        if off > GRID_TOLERANCE:
            detail = "" if np.isinf(off) else f", up to {off:.3g} degrees apart"
            if have.size > want.size:
                detail += "; make fine fields coarse first (sgm coarsen-file, make_coarse)"
            raise SourceError(f"{where}: its {dim} grid ({_axis(have)}) does not match the "
                              f"model's observation grid {ref_dim} in {obs_ref} "
                              f"({_axis(want)}{detail})")


def observe_external(
    obs_ref: str | Path,
    coarse_file: str | Path,
    variables: dict[str, str],
    out: str | Path,
    time_slice: Sequence[str] | None = None,
) -> Path:
    """Check a coarse file against the model's observations and write it as an obs store.

    Args:
        obs_ref: the spec's ``obs.zarr`` (the layout, units, grid, operator and noise std).
        coarse_file: NetCDF/Zarr path or ``package:<pkg>/<path>`` with the coarse fields.
        variables: sgm variable name → variable name in the file, for every observed variable.
        out: the obs store to write (split ``external`` for every time).
        time_slice: optional (start, end) dates, both included.
    """
    obs_ref, out = Path(obs_ref), Path(out)
    ref = open_store(obs_ref)
    path = resolve_file(coarse_file)
    needed = [str(v) for v in ref.data_vars]
    if sorted(variables) != sorted(needed) or not all(isinstance(v, str)
                                                      for v in variables.values()):
        raise SourceError(f"{path}: the model observes {needed} but the variables given map "
                          f"{variables}; map each of them to a variable name in the file")
    dims = tuple(str(d) for d in ref[needed[0]].dims[1:])
    if len(dims) != 2:
        raise SourceError(f"{obs_ref}: the model observes {dims} per time, not a lat/lon grid, "
                          "so gridded external observations cannot stand in for them")
    convention = "0..360" if float(ref[dims[1]].max()) > 180 else "-180..180"
    arrays = []
    for name in needed:
        where = f"{path}: variable {variables[name]!r}"
        da = read_field([path], FieldRef(name=name, source_name=variables[name]), convention)
        have, want = da.attrs.get("units"), str(ref[name].attrs.get("units", ""))
        if have is None or not same_units(str(have), want):
            what = "no units attribute" if have is None else f"units {have!r}"
            raise SourceError(f"{where}: has {what} but the model's observations ({obs_ref}) "
                              f"are in {want!r}; convert the file first")
        _check_grid(da, ref, dims, where, obs_ref)
        da = select_times(da, time_slice, where)
        if arrays and not np.array_equal(da.time.values, arrays[0].time.values):
            raise SourceError(f"{where}: has time steps that differ from those of "
                              f"{variables[needed[0]]!r}")
        arrays.append(da)
    data = {}
    for name, da in zip(needed, compute(*arrays), strict=True):
        _missing(da, f"{path}: variable {variables[name]!r}",
                 "observations to sample from must be complete")
        data[name] = (("time", *dims), da.values.astype(np.float32), dict(ref[name].attrs))
    times = arrays[0].time.values
    coords = {"time": times, "split": ("time", np.full(times.size, SPLIT, dtype=object))}
    for c in ref.coords:
        if "time" not in ref[c].dims:
            coords[str(c)] = (ref[c].dims, ref[c].values, dict(ref[c].attrs))
    attrs = {
        "sgm_spec": ref.attrs.get("sgm_spec", ""),
        "sgm_operator": json_attr(ref, "sgm_operator"),
        "sgm_noise_std": json_attr(ref, "sgm_noise_std"),
        "sgm_source_file": str(path),
        "sgm_reference_obs": str(obs_ref),
    }
    if time_slice is not None:
        attrs["sgm_time_slice"] = [str(t) for t in time_slice]
    log.info("observe-external %s: %s, %d times on the grid of %s", path, needed, times.size,
             obs_ref)
    return write_store(xr.Dataset(data, coords=coords), out, attrs=attrs)
