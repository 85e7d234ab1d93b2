"""Putting a source variable on sgm's grid: dims (time, lat, lon), one vertical level,
latitudes ascending, longitudes in one convention and sorted, a lat/lon box, a crop.

Every function takes ``where`` ("<file>: variable '<name>'") and raises :class:`SourceError`
as ``"<where>: <problem>"``. All selections are lazy (index arrays from the coordinates).
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from sgm.io import units as u
from sgm.io.errors import SourceError

log = logging.getLogger(__name__)

LAT_NAMES = ("lat", "latitude", "nav_lat", "y", "rlat", "grid_latitude")
LON_NAMES = ("lon", "longitude", "nav_lon", "x", "rlon", "grid_longitude")
TIME_NAMES = ("time", "t", "time_counter")
LEVEL_NAMES = ("plev", "lev", "level", "levels", "pressure", "pressure_level", "isobaricinhpa",
               "air_pressure", "height", "depth", "depthu", "depthv", "deptht", "z", "alt")
LEVEL_STANDARD_NAMES = ("air_pressure", "height", "altitude", "depth",
                        "atmosphere_hybrid_sigma_pressure_coordinate", "model_level_number")


def rename_dims(da: xr.DataArray) -> xr.DataArray:
    """Rename the latitude, longitude and time dimensions to lat, lon and time."""
    rename = {}
    for dim in da.dims:
        low, attrs = str(dim).lower(), da[dim].attrs if dim in da.coords else {}
        std = attrs.get("standard_name")
        if low in LAT_NAMES[:2] or std == "latitude" or attrs.get("units") == "degrees_north":
            rename[dim] = "lat"
        elif low in LON_NAMES[:2] or std == "longitude" or attrs.get("units") == "degrees_east":
            rename[dim] = "lon"
        elif low in TIME_NAMES or attrs.get("axis") == "T" or std == "time":
            rename[dim] = "time"
    return da.rename(rename)


def _vertical_dim(da: xr.DataArray, where: str) -> str:
    extra = [d for d in da.dims if d not in ("time", "lat", "lon")]
    found = [
        d for d in extra
        if str(d).lower() in LEVEL_NAMES or d in da.coords and (
            da[d].attrs.get("axis") == "Z" or "positive" in da[d].attrs
            or da[d].attrs.get("standard_name") in LEVEL_STANDARD_NAMES)
    ]
    if len(found) == 1 or (not found and len(extra) == 1 and extra[0] in da.coords):
        return str((found or extra)[0])
    raise SourceError(f"{where}: has no vertical coordinate to select a level on "
                      f"(dimensions {', '.join(map(str, da.dims))})")


def select_level(
    da: xr.DataArray, level: float, level_units: str | None, where: str
) -> xr.DataArray:
    """The slice at vertical coordinate ``level`` (in ``level_units``, else the coordinate's)."""
    dim = _vertical_dim(da, where)
    values = np.asarray(da[dim].values, dtype=float)
    have = da[dim].attrs.get("units")
    wanted = float(level)
    if level_units is not None and have is not None and not u.same(str(have), level_units):
        try:
            scale, offset = u.factors(level_units, str(have))
        except u.UnitsError as exc:
            raise SourceError(f"{where}: level {level:g} {level_units}: {exc}") from None
        wanted = wanted * scale + offset
    hit = np.flatnonzero(np.isclose(values, wanted, rtol=1e-6, atol=1e-6))
    if hit.size == 0:
        present = ", ".join(f"{v:g}" for v in values)
        raise SourceError(
            f"{where}: level {level:g} {level_units or have or ''} selects nothing".rstrip()
            + f"; levels present: {present} {have or ''}".rstrip()
        )
    return da.isel({dim: int(hit[0])}, drop=True)


def squeeze_extra(da: xr.DataArray, where: str, need_time: bool = True) -> xr.DataArray:
    """Drop size-1 extra dimensions; refuse larger ones and missing lat/lon (and time)."""
    need = {"time", "lat", "lon"} if need_time else {"lat", "lon"}
    missing = need - set(da.dims)
    if missing:
        raise SourceError(f"{where}: lacks dimension(s) {', '.join(sorted(missing))} "
                          f"(dimensions are {', '.join(map(str, da.dims)) or 'none'})")
    for dim in [d for d in da.dims if d not in ("time", "lat", "lon")]:
        if da.sizes[dim] != 1:
            raise SourceError(f"{where}: has extra dimension {dim!r} of size {da.sizes[dim]}; "
                              "select a level in the spec")
        da = da.isel({dim: 0}, drop=True)
    if not need_time and "time" in da.dims:
        if da.sizes["time"] != 1:
            raise SourceError(f"{where}: a static covariate has {da.sizes['time']} time steps")
        da = da.isel(time=0, drop=True)
    keep = {"time", "lat", "lon"}
    return da.drop_vars([c for c in da.coords if c not in keep])


def check_axes(da: xr.DataArray, where: str) -> None:
    """lat and lon must be strictly monotonic and finite."""
    for dim in ("lat", "lon"):
        values = np.asarray(da[dim].values, dtype=float)
        step = np.diff(values)
        if not np.all(np.isfinite(values)) or not (np.all(step > 0) or np.all(step < 0)):
            raise SourceError(f"{where}: has a {dim} axis that is not strictly monotonic")


def wrap_longitudes(lon: np.ndarray, convention: str) -> np.ndarray:
    """Longitudes in −180 ≤ λ < 180 (``"-180..180"``) or 0 ≤ λ < 360 (``"0..360"``)."""
    lon = np.asarray(lon, dtype=float)
    return (lon + 180.0) % 360.0 - 180.0 if convention == "-180..180" else lon % 360.0


def orient(da: xr.DataArray, convention: str) -> xr.DataArray:
    """Latitudes ascending; longitudes wrapped to ``convention`` and sorted, repeats dropped."""
    if da.lat.size > 1 and da.lat.values[1] < da.lat.values[0]:
        da = da.isel(lat=slice(None, None, -1))
    lon = wrap_longitudes(da.lon.values, convention)
    order = np.argsort(lon, kind="stable")
    keep = order[np.concatenate([[True], np.diff(lon[order]) > 1e-9])]
    if keep.size < lon.size:
        log.info("dropping %d repeated longitude(s) (a cyclic column)", lon.size - keep.size)
    da = da.assign_coords(lon=("lon", lon.astype(da.lon.dtype), da.lon.attrs))
    if np.array_equal(keep, np.arange(lon.size)):
        return da
    return da.isel(lon=keep)


def _lon_bounds(bounds: tuple[float, float], convention: str) -> tuple[float, float] | None:
    """Region (west, east) wrapped to ``convention``; None for the whole circle.

    An east bound on the convention's lower edge means "up to the edge from the west" (e.g.
    [-30, 0] with 0..360 longitudes is 330..360), so it becomes the upper edge.
    """
    west, east = bounds
    if abs(east - west) >= 360:
        return None
    bottom = -180.0 if convention == "-180..180" else 0.0
    w, e = (float(wrap_longitudes(b, convention)) for b in bounds)
    if e == bottom and w > bottom:
        e = bottom + 360.0
    return w, e


def select_region(
    da: xr.DataArray,
    lat: tuple[float, float] | None,
    lon: tuple[float, float] | None,
    convention: str,
    where: str,
) -> xr.DataArray:
    """The points inside the lat/lon box (bounds included; lon bounds in either convention)."""
    eps = 1e-6
    if lat is not None:
        values = da.lat.values
        inside = np.flatnonzero((values >= lat[0] - eps) & (values <= lat[1] + eps))
        if inside.size == 0:
            raise SourceError(f"{where}: region lat {list(lat)} selects nothing; the source "
                              f"covers lat {values.min():g} to {values.max():g}")
        da = da.isel(lat=slice(inside[0], inside[-1] + 1))
    box = None if lon is None else _lon_bounds(lon, convention)
    if box is not None:
        west, east = box
        if west > east:
            other = "0..360" if convention == "-180..180" else "-180..180"
            raise SourceError(
                f"{where}: region lon {list(lon)} crosses the edge of the {convention} "
                f"longitudes; set longitudes: {other} in the spec"
            )
        values = da.lon.values
        inside = np.flatnonzero((values >= west - eps) & (values <= east + eps))
        if inside.size == 0:
            raise SourceError(f"{where}: region lon {list(lon)} selects nothing; the source "
                              f"covers lon {values.min():g} to {values.max():g} ({convention})")
        da = da.isel(lon=slice(inside[0], inside[-1] + 1))
    return da


def crop_to_multiple(da: xr.DataArray, multiple: int) -> xr.DataArray:
    """Drop trailing rows/columns so that both grid sizes are multiples of ``multiple``."""
    ny, nx = da.sizes["lat"], da.sizes["lon"]
    cy, cx = ny - ny % multiple, nx - nx % multiple
    if (cy, cx) != (ny, nx):
        log.info("cropping grid %s×%s to %s×%s (multiples of %d)", ny, nx, cy, cx, multiple)
    return da.isel(lat=slice(0, cy), lon=slice(0, cx))


def same_grid(a: xr.DataArray, b: xr.DataArray) -> str | None:
    """None if ``a`` and ``b`` share lat and lon; else the name of the first that differs."""
    for dim in ("lat", "lon"):
        if a[dim].size != b[dim].size or not np.allclose(a[dim], b[dim], atol=1e-5):
            return dim
    return None
