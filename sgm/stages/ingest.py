"""Stage ``ingest``: a data spec's sources → ``fields.zarr``.

The store holds every target variable on (time, lat, lon) in physical units with CF attributes,
the split label of every time step, and normalisation statistics computed on the training split
only. All checks run before anything is written, so bad input leaves no store behind.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cftime
import numpy as np
import xarray as xr

from sgm.config import DataSpec, GaussianFieldSource, Variable, load_spec
from sgm.io.sources import (
    SourceError,
    expand_paths,
    find_variable,
    open_file,
    package_file,
    standardise_grid,
)
from sgm.io.stores import write_store

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _read_variable(paths: list[Path], var: Variable) -> xr.DataArray:
    """One variable from all files, concatenated along time, grids checked to match."""
    pieces = []
    for path in paths:
        ds = open_file(path)
        name = find_variable(ds, path, var.source_name, var.standard_name)
        da = standardise_grid(ds[name], path, name)
        units = da.attrs.get("units")
        if var.units is not None and units != var.units:
            raise SourceError(
                f"{path}: variable {name!r} has units {units!r} but the spec expects {var.units!r}"
            )
        if pieces:
            first = pieces[0]
            for dim in ("lat", "lon"):
                same = first[dim].size == da[dim].size and np.allclose(first[dim], da[dim])
                if not same:
                    raise SourceError(
                        f"{path}: variable {name!r} has a {dim} grid that differs from {paths[0]}"
                    )
        pieces.append(da)
    da = pieces[0] if len(pieces) == 1 else xr.concat(pieces, dim="time", join="exact")
    da.attrs = dict(pieces[0].attrs)
    da.attrs["sgm_source"] = ", ".join(str(p) for p in paths)
    return da.rename(var.name)


def _synthetic(src: GaussianFieldSource, var: Variable) -> tuple[xr.DataArray, dict]:
    """A stationary Gaussian random field drawn with a fixed seed (the oracle's data)."""
    from sgm.core.gaussian import GaussianRandomField

    field = GaussianRandomField(
        tuple(src.shape), src.length_scale, src.nu, src.variance, src.mean
    )
    values = field.sample(src.n_times, np.random.default_rng(src.seed)).astype(np.float32)
    times = cftime.num2date(np.arange(src.n_times), "days since 2000-01-01", calendar="360_day")
    da = xr.DataArray(
        values,
        dims=("time", "lat", "lon"),
        coords={"time": times, "lat": np.arange(src.shape[0], dtype=float),
                "lon": np.arange(src.shape[1], dtype=float)},
        name=var.name,
        attrs={"units": src.units, "long_name": "Gaussian random field", "sgm_source": "synthetic"},
    )
    return da, field.to_dict()


def _crop_to_factor(da: xr.DataArray, factor: int) -> xr.DataArray:
    """Drop trailing rows/columns so that the grid divides the coarsening factor."""
    ny, nx = da.sizes["lat"] - da.sizes["lat"] % factor, da.sizes["lon"] - da.sizes["lon"] % factor
    if (ny, nx) != (da.sizes["lat"], da.sizes["lon"]):
        log.info("cropping grid %s×%s to %s×%s to divide factor %d",
                 da.sizes["lat"], da.sizes["lon"], ny, nx, factor)
    return da.isel(lat=slice(0, ny), lon=slice(0, nx))


def _check_times(da: xr.DataArray, origin: str) -> None:
    times = da.time.values
    if len(times) > 1:
        if len(set(times)) != len(times):
            raise SourceError(f"{origin}: variable {da.name!r} has duplicated time steps")
        if any(b <= a for a, b in zip(times[:-1], times[1:], strict=True)):
            raise SourceError(f"{origin}: variable {da.name!r} has non-monotonic time steps")


def build_fields(spec: DataSpec, spec_dir: Path | None = None) -> xr.Dataset:
    """Read, check and label the spec's target fields (in memory; nothing written)."""
    src = spec.source
    if src.paths is not None:
        paths = expand_paths(src.paths, spec_dir)
    elif src.package_file is not None:
        paths = [package_file(src.package_file.package, src.package_file.path)]
    else:
        paths = []
    arrays, attrs = [], {}
    for var in spec.variables:
        if src.synthetic is not None:
            da, prior = _synthetic(src.synthetic, var)
            attrs["sgm_gaussian_prior"] = prior
        else:
            da = _read_variable(paths, var)
        origin = da.attrs["sgm_source"]
        if spec.region is not None:
            for dim, bounds in (("lat", spec.region.lat), ("lon", spec.region.lon)):
                if bounds is not None:
                    da = da.where((da[dim] >= bounds[0]) & (da[dim] <= bounds[1]), drop=True)
                    if da.sizes[dim] == 0:
                        raise SourceError(
                            f"{origin}: variable {da.name!r}: region {dim} {bounds} selects nothing"
                        )
        if spec.operator.kind == "coarsen":
            da = _crop_to_factor(da, spec.operator.factor)
        _check_times(da, origin)
        arrays.append(da.load().astype(np.float32))

    ds = xr.merge(arrays, join="exact", combine_attrs="drop")
    n = ds.sizes["time"]
    try:
        n_train, n_val, n_test = spec.splits.counts(n)
    except ValueError as exc:
        raise SourceError(f"{arrays[0].attrs['sgm_source']}: {exc}") from None
    labels = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test, dtype=object)
    ds = ds.isel(time=slice(0, len(labels))).assign_coords(split=("time", labels))

    normalisation = {}
    for da in arrays:
        name = str(da.name)
        ds[name].attrs = {
            k: v for k, v in da.attrs.items()
            if isinstance(v, str | int | float) and k not in ("grid_mapping", "coordinates")
        }
        train = ds[name].sel(time=ds.split == "train").values
        bad = int(np.count_nonzero(~np.isfinite(ds[name].values)))
        if bad:
            raise SourceError(
                f"{da.attrs['sgm_source']}: variable {name!r} has {bad} missing or non-finite"
                " values in the selected fields"
            )
        normalisation[name] = {"mean": float(train.mean()), "std": float(train.std())}
        if normalisation[name]["std"] <= 0:
            raise SourceError(f"{da.attrs['sgm_source']}: variable {name!r} is constant")
    ds.lat.attrs.update(standard_name="latitude", units="degrees_north")
    ds.lon.attrs.update(standard_name="longitude", units="degrees_east")
    ds.attrs.update(
        sgm_spec=spec.name,
        sgm_variables=[v.name for v in spec.variables],
        sgm_normalisation=normalisation,
        Conventions="CF-1.8",
        title=spec.description or spec.name,
        **attrs,
    )
    return ds


def ingest(spec_path: str | Path, out: str | Path) -> Path:
    """Run the ingest stage: validate everything, then write ``out`` atomically."""
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    ds = build_fields(spec, spec_dir=spec_path.parent)
    json_attrs = {k: ds.attrs.pop(k) for k in list(ds.attrs) if not isinstance(ds.attrs[k], str)}
    counts = {s: int((ds.split == s).sum()) for s in SPLITS}
    log.info("ingest %s: %s, grid %s×%s, splits %s", spec.name, list(ds.data_vars),
             ds.sizes["lat"], ds.sizes["lon"], counts)
    return write_store(ds, out, attrs=json_attrs)
