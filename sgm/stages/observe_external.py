"""Stage ``observe-external``: coarse fields from a file that training never saw → an obs store.

A trained model can sample the posterior of any observation made with its operator: another
emissions scenario, another model, a reanalysis coarsened the same way. The file is checked
against the model's own observations (``obs.zarr``: variables, units, the coarse grid, no
missing values) and written as an obs store with the same layout and observation model, every
time in split ``external``, which ``sgm sample --split external`` samples and
``sgm report-external`` reports on (without truth).

Bad input raises :class:`~sgm.io.errors.SourceError` (one sentence naming the file, the
variable and the problem) before anything is written; the store is written atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from sgm.config import FieldRef
from sgm.io import layout
from sgm.io.errors import SourceError
from sgm.io.sources import compute, read_field, refuse_missing, resolve_file, select_times
from sgm.io.stores import check_output, open_store, write_store
from sgm.io.units import same as same_units

log = logging.getLogger(__name__)

GRID_TOLERANCE = 1e-3  # degrees: how far a file's coarse grid may be from the model's


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
    obs_ref, out = Path(obs_ref), check_output(out)
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
        refuse_missing(da, f"{path}: variable {variables[name]!r}",
                 "observations to sample from must be complete")
        data[name] = (("time", *dims), da.values.astype(np.float32), dict(ref[name].attrs))
    times = arrays[0].time.values
    coords = {"time": times,
              "split": ("time", np.full(times.size, layout.EXTERNAL_SPLIT, dtype=object))}
    for c in ref.coords:
        if "time" not in ref[c].dims:
            coords[str(c)] = (ref[c].dims, ref[c].values, dict(ref[c].attrs))
    attrs = {
        layout.SPEC: ref.attrs.get(layout.SPEC, ""),
        layout.OBSERVATION: layout.observation_description(ref),
        layout.SOURCE_FILE: str(path),
        layout.REFERENCE_OBS: str(obs_ref),
    }
    if time_slice is not None:
        attrs[layout.TIME_SLICE] = [str(t) for t in time_slice]
    log.info("observe-external %s: %s, %d times on the grid of %s", path, needed, times.size,
             obs_ref)
    return write_store(xr.Dataset(data, coords=coords), out, attrs=attrs)
