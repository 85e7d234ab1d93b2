"""CF-1.10 metadata for what analysts open in their own tools, and the NetCDF export.

:func:`cf_attributes` gives the CF attributes of a posterior's coordinates and variables (the
sample stage can put them on ``posterior.zarr`` too, with :func:`with_cf_attributes`);
:func:`cf_posterior` builds the complete CF dataset of a posterior store (cell bounds, global
attributes, provenance) and :func:`write_netcdf` writes it atomically as NetCDF4.

What the conventions say and sgm does:

- The member dimension is a coordinate with ``standard_name: realization`` (the CF standard name
  for labelling the members of an ensemble; CF has no ``axis`` for it, ``axis`` is only X, Y,
  Z or T). Every member is one posterior sample, so member variables carry
  ``cell_methods: realization: point``, after whatever the source said about time (e.g.
  ``time: mean``, kept verbatim; sgm never invents a time method). Ensemble statistics say
  ``realization: mean`` or ``realization: standard_deviation`` (CF 7.3 methods).
- ``standard_name`` comes from the source's variable attributes and is left out when the
  source gave none: a standard name is a claim about the quantity that sgm cannot check.
- latitude/longitude carry ``standard_name``, ``units``, ``axis`` (Y/X) and ``bounds``: cell
  edges halfway between the centres, the outer ones half a cell out (latitude clipped to ±90).
- time carries ``axis: T`` and is encoded with the calendar of its values (cftime's, e.g.
  ``360_day``; numpy datetimes are ``proleptic_gregorian``) in days since the first year.
- Global attributes: ``Conventions: CF-1.10``, ``title``, ``source``, a ``history`` line and the
  posterior's provenance (``sgm_spec``, ``sgm_model_hash``, ``sgm_sampler``, ``sgm_seed``,
  ``sgm_version``, ...) as they are in the store, plus the exporting ``sgm_exported_by``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import xarray as xr

from sgm import __version__
from sgm.io import layout
from sgm.io.atomic import atomic_write
from sgm.io.cf import ENCODING_ATTRS
from sgm.io.chunking import DEFAULT_LAYOUT, netcdf_chunk_encoding
from sgm.io.stores import COMPLETE_ATTR, StoreError, remove_leftovers

CONVENTIONS = "CF-1.10"
MEMBER_DIMS = ("time", "member", "lat", "lon")
EXPORTED_BY = "sgm_exported_by"
BOUNDS = {"lat": "lat_bnds", "lon": "lon_bnds"}
COORD_ATTRS: dict[str, dict[str, str]] = {
    "time": {"standard_name": "time", "long_name": "time", "axis": "T"},
    "lat": {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north",
            "axis": "Y"},
    "lon": {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east",
            "axis": "X"},
    "member": {"standard_name": "realization", "long_name": "ensemble member (posterior sample)",
               "units": "1"},
    "obs_index": {"long_name": "index of this time in the obs.zarr the ensemble was drawn for",
                  "units": "1"},
}


def append_cell_method(existing: str | None, method: str) -> str:
    """``existing`` cell_methods (the source's, e.g. ``time: mean``) followed by ``method``,
    unless it already says something about the same name."""
    existing = (existing or "").strip()
    name = method.split(":")[0].strip()
    if f"{name}:" in existing.replace(" :", ":"):
        return existing
    return f"{existing} {method}".strip()


def drop_cell_method(existing: str | None, name: str) -> str:
    """``existing`` cell_methods without the entries for ``name`` (e.g. the members'
    ``realization: point`` before a statistic over the members is appended)."""
    pattern = rf"(^|\s){re.escape(name)}:\s*\w+(\s+(where|over)\s+\w+)*(\s*\([^)]*\))?"
    return re.sub(r"\s+", " ", re.sub(pattern, " ", existing or "")).strip()


def cf_name(name: str) -> str:
    """``name`` as CF 2.3 allows (letters, digits, underscores, a letter first): the iris
    sample data's ``Model scenario`` becomes ``Model_scenario``."""
    text = re.sub(r"[^A-Za-z0-9_]", "_", name.strip())
    return text if text[:1].isalpha() else f"attr_{text}"


def variable_attributes(attrs: Mapping[str, Any], cell_method: str | None = None
                        ) -> dict[str, Any]:
    """A variable's attributes as CF wants them: the source's (encoding attributes dropped,
    names made valid with :func:`cf_name`), ``cell_method`` appended to the source's
    ``cell_methods``."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in ENCODING_ATTRS or key == "bounds":
            continue
        name = cf_name(str(key))
        if name == key or name not in attrs:
            out[name] = value
    if cell_method:
        out["cell_methods"] = append_cell_method(out.get("cell_methods"), cell_method)
    if not str(out.get("cell_methods", "x")).strip():
        del out["cell_methods"]
    return out


def cf_attributes(ds: xr.Dataset, bounds: bool = False) -> dict[str, dict[str, Any]]:
    """CF attributes (name → attrs, merged over the existing ones) of the coordinates time,
    lat, lon, member and obs_index, and of every data variable on the member dimension.

    ``bounds``: also name the bounds variables ``lat_bnds``/``lon_bnds`` (only when the dataset
    has them, as :func:`cf_posterior` builds it). Units of data variables are the source's.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, attrs in COORD_ATTRS.items():
        if name in ds.variables:
            out[name] = {**ds[name].attrs, **attrs}
            if bounds and name in BOUNDS and BOUNDS[name] in ds.variables:
                out[name]["bounds"] = BOUNDS[name]
    for name, da in ds.data_vars.items():
        if "member" in da.dims:
            new = variable_attributes(da.attrs, "realization: point")
            new.setdefault("long_name", f"{name}, posterior ensemble members")
            out[str(name)] = new
    return out


def with_cf_attributes(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with :func:`cf_attributes` set (a copy; the values are not touched).

    For ``posterior.zarr`` (sample stage): ``ds = with_cf_attributes(ds)`` before writing.
    """
    ds = ds.copy()
    for name, attrs in cf_attributes(ds, bounds=True).items():
        ds[name].attrs = attrs
    return ds


def cell_edges(centres: np.ndarray, clip: tuple[float, float] | None = None) -> np.ndarray:
    """[n, 2] bounds of cells around strictly monotonic ``centres`` (n ≥ 2): halfway between
    neighbours, the outer edges half a cell beyond the outer centres, clipped to ``clip``."""
    c = np.asarray(centres, dtype=np.float64)
    if c.ndim != 1 or c.size < 2:
        raise ValueError(f"cell bounds need at least two centres, got {c.size}")
    d = np.diff(c)
    if not (np.all(d > 0) or np.all(d < 0)):
        raise ValueError("cell bounds need strictly increasing or decreasing centres")
    edges = np.concatenate([[c[0] - d[0] / 2], (c[:-1] + c[1:]) / 2, [c[-1] + d[-1] / 2]])
    if clip is not None:
        edges = np.clip(edges, *clip)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def time_encoding(times: np.ndarray) -> dict[str, str]:
    """``units`` and ``calendar`` for encoding ``times`` (cftime objects or datetime64)."""
    first = np.asarray(times).ravel()[0]
    if hasattr(first, "calendar"):
        calendar = str(first.calendar)
        year = int(first.year)
    else:
        calendar = "proleptic_gregorian"
        year = int(np.datetime64(first, "Y").astype(np.int64)) + 1970
    return {"units": f"days since {year:04d}-01-01 00:00:00", "calendar": calendar}


def grid_bounds(ds: xr.Dataset, where: str | Path) -> dict[str, tuple[tuple[str, str],
                                                                     np.ndarray]]:
    """The ``lat_bnds``/``lon_bnds`` variables of a store's grid; one sentence if it has none."""
    out = {}
    for dim, clip in (("lat", (-90.0, 90.0)), ("lon", None)):
        try:
            out[BOUNDS[dim]] = ((dim, "bnds"), cell_edges(ds[dim].values, clip))
        except ValueError as exc:
            raise StoreError(f"{where}: {dim}: {exc}") from None
    return out


def provenance(ds: xr.Dataset) -> dict[str, Any]:
    """The ``sgm_*`` attributes of a store (completeness mark left out), as stored."""
    return {k: v for k, v in ds.attrs.items()
            if k.startswith("sgm_") and k != COMPLETE_ATTR}


def history_line(action: str) -> str:
    """``<UTC time>: sgm <version> <action>``, one line of a CF ``history`` attribute."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{now}: sgm {__version__} {action}"


def global_attributes(ds: xr.Dataset, title: str, history: str) -> dict[str, Any]:
    """CF global attributes and the provenance of the store ``ds`` the product comes from."""
    version = ds.attrs.get(layout.VERSION, __version__)
    return {
        "Conventions": CONVENTIONS,
        "title": title,
        "source": f"sgm {version}: posterior ensemble of a conditional score-based diffusion "
                  "model",
        "history": history,
        **provenance(ds),
        EXPORTED_BY: f"sgm {__version__}",
    }


def cf_posterior(post: xr.Dataset, history: str, where: str | Path = "posterior") -> xr.Dataset:
    """The CF dataset of a posterior store: the member variables (lazily, as they are), their
    coordinates with CF attributes, latitude/longitude bounds and the global attributes."""
    variables = [v for v in post.data_vars if post[v].dims == MEMBER_DIMS]
    coords = {c: post[c].variable for c in post.coords}
    ds = xr.Dataset({v: post[v].variable for v in variables}, coords=coords)
    ds = ds.assign(grid_bounds(post, where))
    ds.time.encoding = {}
    for name, attrs in cf_attributes(ds, bounds=True).items():
        ds[name].attrs = attrs
    spec = post.attrs.get(layout.SPEC, "?")
    ds.attrs = global_attributes(post, f"sgm posterior ensemble - {spec}", history)
    return ds


def netcdf_encoding(ds: xr.Dataset, chunks: str = DEFAULT_LAYOUT) -> dict[str, dict[str, Any]]:
    """NetCDF4 encoding: compressed, checksummed (HDF5 fletcher32), chunked data variables in
    the ``chunks`` layout; no fill values (the data are finite; CF forbids missing values in
    coordinates); time in days with its calendar."""
    chunking = netcdf_chunk_encoding(ds, chunks)
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        entry: dict[str, Any] = {"_FillValue": None}
        if name in ds.data_vars and var.dtype.kind == "f" and var.ndim > 2:
            entry.update(zlib=True, complevel=4, shuffle=True, fletcher32=True)
            entry.update(chunking.get(str(name), {}))
        if name == "time":
            entry.update(time_encoding(var.values))
        enc[str(name)] = entry
    return enc


def check_netcdf_output(path: str | Path) -> Path:
    """Refuse an output path that holds something other than a NetCDF file sgm exported, or a
    name without the ``.nc`` suffix CF asks for (CF 2.1)."""
    path = Path(path)
    if path.suffix != ".nc":
        raise ValueError(f"{path}: a NetCDF file name must end in .nc (CF conventions 2.1)")
    if path.is_dir():
        raise StoreError(f"{path}: exists and is a folder; refusing to replace it")
    if path.exists():
        try:
            with netCDF4.Dataset(path) as nc:
                ours = EXPORTED_BY in nc.ncattrs()
        except OSError:
            ours = False
        if not ours:
            raise StoreError(f"{path}: exists and is not a NetCDF file sgm exported; refusing "
                             "to replace it (choose another output path)")
    return path


def write_netcdf(ds: xr.Dataset, path: str | Path, encoding: dict[str, dict[str, Any]]
                 ) -> Path:
    """Write ``ds`` as NetCDF4 to ``path`` atomically (a temporary sibling, then a rename)."""
    path = check_netcdf_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)

    def write(tmp: Path) -> None:
        ds.to_netcdf(tmp, mode="w", format="NETCDF4", engine="netcdf4", encoding=encoding)

    return atomic_write(path, write)
