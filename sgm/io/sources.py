"""Reading the sources a data spec names into lazy (time, lat, lon) DataArrays.

A source is a list of NetCDF files, glob patterns or Zarr stores, or a file inside an installed
package. Every file is checked before xarray sees it (format, truncation), opened lazily and cut
into dask chunks along time, so that inputs larger than memory stream through. Every failure
raises :class:`SourceError` whose message is one sentence naming the file, the variable and the
problem. Nothing here knows about models.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import dask
import netCDF4
import numpy as np
import xarray as xr
from pydantic import ValidationError

from sgm.config import DataSpec, DateRange, FieldRef, Source
from sgm.io import layout
from sgm.io.cf import convert_units, mask_invalid
from sgm.io.errors import MissingSourceError, SourceError
from sgm.io.formats import FormatError, check_complete, sniff
from sgm.io.grid import (
    check_axes,
    crop_to_multiple,
    orient,
    rename_dims,
    same_grid,
    select_level,
    select_region,
    squeeze_extra,
)

__all__ = ["SourceError", "MissingSourceError", "package_file", "expand_paths", "source_paths",
           "open_file", "find_variable", "describe", "read_field", "bounded_reading", "compute",
           "where_of", "place", "resolve_file", "select_times", "refuse_missing"]

PACKAGE_PREFIX = "package:"

# Reads go in small dask chunks along time, whole multiples of the file's own chunks: joining
# them into the store's larger chunks then never splits a read chunk between two writes, which
# would make dask hold many of them in memory at once.
READ_CHUNK_BYTES = 2**20
CHUNK_BYTES = 32 * 2**20  # the store's chunks along time


@contextlib.contextmanager
def bounded_reading(chunk_cache_bytes: int = 4 * 2**20, open_files: int = 16) -> Iterator[None]:
    """Bound the memory kept per open file while many files stream through.

    netCDF-C caches up to 64 MiB of decompressed chunks per variable of every open file, and
    xarray keeps up to 128 files open: 20 files of one variable would hold 1.3 GB. Inside this
    context files opened get a smaller cache and at most ``open_files`` stay open (others are
    closed and reopened on demand).
    """
    previous = netCDF4.get_chunk_cache()
    netCDF4.set_chunk_cache(chunk_cache_bytes)
    try:
        with xr.set_options(file_cache_maxsize=open_files):
            yield
    finally:
        netCDF4.set_chunk_cache(*previous)


def describe(ref: FieldRef) -> str:
    """How the spec asks for a variable, for messages: ``variable 'tas'``."""
    if ref.source_name is None and ref.standard_name is not None:
        return f"variable with standard_name {ref.standard_name!r}"
    return f"variable {ref.source_name or ref.name!r}"


def package_file(package: str, path: str, what: str = "file") -> Path:
    """The path of a data file shipped inside an installed distribution's package.

    Found from the installed distributions' metadata alone: nothing is imported (a spec is
    data, never code, and a module of that name in the working directory is never run), and
    the path must stay inside the package folder (no absolute paths, no ``..``, no symbolic
    link leading out of it).
    """
    where = f"{package}/{path}: {what}"
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", package):
        raise SourceError(f"{where}: {package!r} is not a package name")
    inner = PurePosixPath(path)
    if not path or inner.is_absolute() or ".." in inner.parts:
        raise SourceError(f"{where}: the path must be relative and stay inside the package")
    dists = importlib.metadata.packages_distributions().get(package.split(".")[0], [])
    roots = [Path(importlib.metadata.distribution(d).locate_file(Path(*package.split("."))))
             for d in dists]
    roots = [r.resolve() for r in roots if r.is_dir()]
    if not roots:
        raise MissingSourceError(f"{where}: package {package!r} is not installed (pip install "
                                 "it)")
    for root in roots:
        candidate = (root / inner).resolve()
        if not candidate.is_relative_to(root):
            raise SourceError(f"{where}: the path leads outside the package")
        if candidate.exists():
            return candidate
    raise MissingSourceError(f"{where}: package {package!r} has no such file")


def expand_paths(patterns: list[str], base: Path | None = None, what: str = "file") -> list[Path]:
    """Expand files and glob patterns (relative to ``base``), each pattern's matches sorted."""
    found: list[Path] = []
    for pattern in patterns:
        relative = base is not None and not Path(pattern).is_absolute()
        full = str(base / pattern) if relative else pattern
        matches = sorted(glob.glob(full))
        if not matches:
            problem = "no file matches the pattern" if glob.has_magic(pattern) else (
                "file does not exist")
            raise MissingSourceError(f"{full}: {what}: {problem}")
        found.extend(Path(m) for m in matches)
    return found


def source_paths(source: Source, spec_dir: Path | None, what: str) -> list[Path]:
    """The files of a (non-synthetic) source."""
    if source.package_file is not None:
        return [package_file(source.package_file.package, source.package_file.path, what)]
    return expand_paths(source.paths or [], spec_dir, what)


def open_file(path: Path, what: str = "file") -> tuple[xr.Dataset, str]:
    """Open one NetCDF file or Zarr store lazily (times as cftime); also its format."""
    try:
        kind = sniff(path)
        check_complete(path, kind)
    except FormatError as exc:
        raise SourceError(f"{path}: {what}: file {exc}") from None
    except OSError as exc:
        raise SourceError(f"{path}: {what}: cannot be read ({exc.strerror})") from None
    coder = xr.coders.CFDatetimeCoder(use_cftime=True)
    try:
        if kind == "zarr":
            consolidated = (path / ".zmetadata").exists()  # Zarr 2; Zarr 3 needs no index
            ds = xr.open_zarr(path, decode_times=coder, consolidated=consolidated, chunks=None)
        else:
            ds = xr.open_dataset(path, engine="netcdf4", decode_times=coder, chunks=None,
                                 cache=False)
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        raise SourceError(
            f"{path}: {what}: cannot be read ({exc.__class__.__name__}: {exc})"
        ) from exc
    return ds, kind


def find_variable(ds: xr.Dataset, path: Path, name: str | None, standard_name: str | None) -> str:
    """The name of the requested variable in ``ds`` (by name, else by CF standard_name)."""
    present = ", ".join(str(v) for v in ds.data_vars if ds[v].ndim >= 2) or "none"
    if name is not None:
        if name in ds.data_vars:
            return name
        raise MissingSourceError(
            f"{path}: variable {name!r} not found; gridded variables present: {present}"
        )
    matches = [v for v in ds.data_vars if ds[v].attrs.get("standard_name") == standard_name]
    if len(matches) == 1:
        return str(matches[0])
    if matches:
        raise SourceError(f"{path}: {len(matches)} variables have standard_name "
                          f"{standard_name!r} ({', '.join(map(str, matches))}); give source_name")
    raise MissingSourceError(f"{path}: no variable has standard_name {standard_name!r}; "
                             f"gridded variables present: {present}")


def _time_chunk(da: xr.DataArray, native: int) -> int:
    """Read chunk along time: about READ_CHUNK_BYTES, a multiple of the file's own chunk."""
    step_bytes = max(1, int(np.prod([da.sizes[d] for d in da.dims if d != "time"])) * 4)
    return native * max(1, READ_CHUNK_BYTES // (native * step_bytes))


def _native_time_chunk(original: xr.DataArray, renamed: xr.DataArray) -> int:
    """The file's chunk length along time (1 for contiguous or classic files)."""
    preferred = original.encoding.get("preferred_chunks") or {}
    for dim, new in zip(original.dims, renamed.dims, strict=True):
        if new == "time":
            size = preferred.get(dim, 1)
            return int(size) if 0 < int(size) < original.sizes[dim] else 1
    return 1


def read_piece(path: Path, ref: FieldRef, convention: str, need_time: bool = True) -> xr.DataArray:
    """One variable of one file, lazy and chunked, on (time, lat, lon) (or (lat, lon))."""
    ds, kind = open_file(path, describe(ref))
    name = ref.source_name or (ref.name if ref.standard_name is None else None)
    var = find_variable(ds, path, name, ref.standard_name)
    where = f"{path}: variable {var!r}"
    encoding = dict(ds[var].encoding)
    da = rename_dims(ds[var])
    native = _native_time_chunk(ds[var], da)
    if ref.level is not None:
        da = select_level(da, ref.level, ref.level_units, where)
    da = squeeze_extra(da, where, need_time)
    check_axes(da, where)
    dims = ("time", "lat", "lon") if need_time else ("lat", "lon")
    chunks = {"time": _time_chunk(da, native)} if need_time else {}
    da = da.chunk({**chunks, "lat": -1, "lon": -1}).transpose(*dims)
    da.encoding = encoding
    da = mask_invalid(da, from_netcdf=kind != "zarr")
    da = convert_units(da, ref.units, ref.convert_to, where)
    return orient(da, convention).rename(var)


def _check_times(times: np.ndarray, where: str) -> None:
    """Strictly increasing times, or a one-sentence SourceError."""
    if len(set(times.tolist())) != len(times):
        seen: set = set()
        repeated = next(t for t in times.tolist() if t in seen or seen.add(t))
        raise SourceError(f"{where}: has duplicated time steps ({repeated})")
    later = times[1:] <= times[:-1]
    if np.any(later):
        i = int(np.flatnonzero(later)[0])
        raise SourceError(f"{where}: has time steps out of order ({times[i + 1]} follows "
                          f"{times[i]})")


def _calendar(times: np.ndarray) -> str | None:
    return getattr(times[0], "calendar", None) if len(times) else None


def read_field(
    paths: list[Path], ref: FieldRef, convention: str, need_time: bool = True
) -> xr.DataArray:
    """A variable from all ``paths``, in time order, grids, units and times checked."""
    pieces = [(path, read_piece(path, ref, convention, need_time)) for path in paths]
    first_path, first = pieces[0]
    for path, da in pieces[1:]:
        where = f"{path}: variable {da.name!r}"
        if not need_time:
            raise SourceError(f"{where}: a static covariate must come from one file, "
                              f"not {len(paths)}")
        dim = same_grid(first, da)
        if dim is not None:
            raise SourceError(f"{where}: has a {dim} grid that differs from {first_path}")
        if da.attrs.get("units") != first.attrs.get("units"):
            raise SourceError(f"{where}: has units {da.attrs.get('units')!r} but {first_path} "
                              f"has {first.attrs.get('units')!r}")
        if _calendar(da.time.values) != _calendar(first.time.values):
            raise SourceError(f"{where}: uses the {_calendar(da.time.values)} calendar but "
                              f"{first_path} uses {_calendar(first.time.values)}")
    if need_time:
        for path, da in pieces:
            _check_times(da.time.values, f"{path}: variable {da.name!r}")
        pieces.sort(key=lambda item: item[1].time.values[0])
        for (path_a, a), (path_b, b) in zip(pieces[:-1], pieces[1:], strict=True):
            if b.time.values[0] <= a.time.values[-1]:
                raise SourceError(f"{path_b}: variable {b.name!r}: has time steps that overlap "
                                  f"those of {path_a}")
    das = [da for _, da in pieces]
    da = das[0] if len(das) == 1 else xr.concat(
        das, dim="time", join="override", coords="minimal", compat="override"
    )
    da.attrs = dict(first.attrs, **{layout.SOURCE: _label(paths)})
    return da


def _label(paths: list[Path]) -> str:
    """The source files, for messages: one path, or the first and a count."""
    return str(paths[0]) if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more files)"


def compute(*objects: Any, where: str = "source") -> tuple:
    """Compute dask-backed objects together (sources read once), converting read failures.

    netCDF-C is not thread-safe, so this runs on dask's synchronous scheduler.
    """
    try:
        return dask.compute(*objects, scheduler="synchronous")
    except (OSError, RuntimeError) as exc:
        raise SourceError(f"{where}: reading failed ({exc.__class__.__name__}: {exc})") from exc


def where_of(da: xr.DataArray) -> str:
    """The prefix ``<source files>: variable '<name>'`` of messages about a field."""
    return f"{da.attrs.get(layout.SOURCE, 'source')}: variable {da.name!r}"


def place(da: xr.DataArray, spec: DataSpec) -> xr.DataArray:
    """The spec's region, then the crop its operator needs (e.g. divisible by a factor)."""
    if spec.region is not None:
        da = select_region(da, spec.region.lat, spec.region.lon, spec.longitudes, where_of(da))
    return crop_to_multiple(da, spec.operator.grid_multiple)


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


def select_times(da: xr.DataArray, time_slice: Sequence[str] | None, where: str) -> xr.DataArray:
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


def refuse_missing(da: xr.DataArray, where: str, why: str) -> None:
    """Refuse missing or non-finite values in a loaded field."""
    bad = int((~np.isfinite(da.values)).sum())
    if bad:
        raise SourceError(f"{where}: has {bad} missing or non-finite values; {why}")
