"""Reading the sources a data spec names into one (time, lat, lon) DataArray per variable.

Every failure raises :class:`SourceError` whose message is one sentence naming the file, the
variable and the problem. Nothing here knows about models.
"""

from __future__ import annotations

import glob
import importlib.util
from pathlib import Path

import numpy as np
import xarray as xr

LAT_NAMES = ("lat", "latitude", "nav_lat", "y", "rlat", "grid_latitude")
LON_NAMES = ("lon", "longitude", "nav_lon", "x", "rlon", "grid_longitude")


class SourceError(ValueError):
    """Bad input: one clear sentence naming the file, the variable and the problem."""


def package_file(package: str, path: str) -> Path:
    """The path of a file shipped inside an installed package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"package {package!r} is not installed (pip install it)")
    for root in spec.submodule_search_locations:
        candidate = Path(root) / path
        if candidate.exists():
            return candidate
    raise SourceError(f"package {package!r} has no file {path!r}")


def expand_paths(patterns: list[str], base: Path | None = None) -> list[Path]:
    """Expand files and glob patterns (relative to ``base``), in sorted order."""
    found: list[Path] = []
    for pattern in patterns:
        full = str(base / pattern) if base is not None and not Path(pattern).is_absolute() else pattern
        matches = sorted(glob.glob(full))
        if not matches:
            what = "matches no file" if glob.has_magic(pattern) else "does not exist"
            raise SourceError(f"{full}: {what}")
        found.extend(Path(m) for m in matches)
    return found


def _check_readable(path: Path) -> None:
    """Reject files that are neither NetCDF (classic or HDF5) nor Zarr before xarray guesses."""
    if path.is_dir():
        if not any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zattrs")):
            raise SourceError(f"{path}: folder is not a Zarr store")
        return
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if not (magic[:3] == b"CDF" or magic[:8] == b"\x89HDF\r\n\x1a\n"):
        raise SourceError(f"{path}: not a NetCDF file (unrecognised header)")


def open_file(path: Path) -> xr.Dataset:
    """Open one NetCDF file or Zarr store lazily, decoding times with cftime."""
    _check_readable(path)
    coder = xr.coders.CFDatetimeCoder(use_cftime=True)
    try:
        if path.is_dir():
            return xr.open_zarr(path, decode_times=coder, consolidated=None)
        return xr.open_dataset(path, engine="netcdf4", decode_times=coder, chunks={})
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        raise SourceError(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})") from exc


def find_variable(ds: xr.Dataset, path: Path, name: str | None, standard_name: str | None) -> str:
    """The name of the requested variable in ``ds`` (by name, else by CF standard_name)."""
    present = [v for v in ds.data_vars if ds[v].ndim >= 2]
    if name is not None:
        if name in ds.data_vars:
            return name
        raise SourceError(f"{path}: variable {name!r} not found; present: {', '.join(present)}")
    matches = [v for v in ds.data_vars if ds[v].attrs.get("standard_name") == standard_name]
    if len(matches) == 1:
        return matches[0]
    problem = "no variable has" if not matches else f"{len(matches)} variables have"
    raise SourceError(
        f"{path}: {problem} standard_name {standard_name!r}; present: {', '.join(present)}"
    )


def standardise_grid(da: xr.DataArray, path: Path, var: str) -> xr.DataArray:
    """Rename dimensions to (time, lat, lon), drop extra coords, make lat ascending."""
    rename = {}
    for dim in da.dims:
        low = str(dim).lower()
        if low in LAT_NAMES[:2] or da[dim].attrs.get("standard_name") == "latitude":
            rename[dim] = "lat"
        elif low in LON_NAMES[:2] or da[dim].attrs.get("standard_name") == "longitude":
            rename[dim] = "lon"
        elif low in ("time", "t") or da[dim].attrs.get("axis") == "T":
            rename[dim] = "time"
    da = da.rename(rename)
    missing = {"time", "lat", "lon"} - set(da.dims)
    if missing:
        raise SourceError(
            f"{path}: variable {var!r} lacks dimension(s) {sorted(missing)}; dims are {da.dims}"
        )
    extra = [d for d in da.dims if d not in ("time", "lat", "lon")]
    for dim in extra:
        if da.sizes[dim] != 1:
            raise SourceError(
                f"{path}: variable {var!r} has extra dimension {dim!r} of size {da.sizes[dim]};"
                " select a level in the spec"
            )
        da = da.isel({dim: 0}, drop=True)
    da = da.transpose("time", "lat", "lon")
    keep = {"time", "lat", "lon"}
    da = da.drop_vars([c for c in da.coords if c not in keep])
    for dim in ("lat", "lon"):
        values = np.asarray(da[dim].values, dtype=float)
        step = np.diff(values)
        if not (np.all(step > 0) or np.all(step < 0)):
            raise SourceError(f"{path}: variable {var!r} has a non-monotonic {dim} axis")
    if da.lat.size > 1 and da.lat.values[1] < da.lat.values[0]:
        da = da.isel(lat=slice(None, None, -1))
    return da
