"""Stage ``ingest``: a data spec's sources → ``fields.zarr`` (and ``paired.zarr``).

The store holds every target variable on (time, lat, lon) in physical units with CF attributes,
static covariates as ``static_<name>`` on (lat, lon), the split label of every time step, and
normalisation statistics computed on the training split only.

Sources are read lazily in dask chunks along time, so inputs larger than memory stream through:
one pass checks missing values and computes the statistics, a second writes the store. All
checks run before anything is written, so bad input leaves no store behind. netCDF-C is not
thread-safe, so every computation runs on dask's synchronous scheduler.
"""

from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path
from typing import Any

import cftime
import dask
import numpy as np
import xarray as xr
from dask.diagnostics import ProgressBar

from sgm.config import SPLITS, DataSpec, GaussianFieldSource, StaticField, Variable, load_spec
from sgm.config.spec import CensoredPowerSource
from sgm.core.gaussian import GaussianRandomField
from sgm.core.heavy_tailed import CensoredPowerField, CensoredPowerTransform
from sgm.core.observation import ObservationModel
from sgm.io import layout
from sgm.io.grid import same_grid
from sgm.io.paired import build_paired
from sgm.io.sources import (
    CHUNK_BYTES,
    MissingSourceError,
    SourceError,
    bounded_reading,
    compute,
    describe,
    place,
    read_field,
    source_paths,
    where_of,
)
from sgm.io.stores import check_output, write_store

log = logging.getLogger(__name__)


def _synthetic(src: GaussianFieldSource, var: Variable) -> tuple[xr.DataArray, str, dict]:
    """A synthetic oracle drawn with a fixed seed: a stationary Gaussian random field, or the
    heavy-tailed censored power of one; also its attribute key and description."""
    if isinstance(src, CensoredPowerSource):
        field = CensoredPowerField(tuple(src.shape), src.length_scale, src.nu, src.scale,
                                   src.offset, src.exponent)
        key, described = layout.HEAVY_TAILED_PRIOR, field.to_dict()
    else:
        field = GaussianRandomField(
            tuple(src.shape), src.length_scale, src.nu, src.variance, src.mean
        )
        key, described = layout.GAUSSIAN_PRIOR, field.to_dict()
    values = field.sample(src.n_times, np.random.default_rng(src.seed)).astype(np.float32)
    times = cftime.num2date(np.arange(src.n_times), "days since 2000-01-01", calendar="360_day")
    da = xr.DataArray(
        values,
        dims=("time", "lat", "lon"),
        coords={"time": times, "lat": np.arange(src.shape[0], dtype=float),
                "lon": np.arange(src.shape[1], dtype=float)},
        name=var.name,
        attrs={"units": src.units, "long_name": type(field).__name__,
               layout.SOURCE: "synthetic"},
    )
    return da, key, described


def _clean_attrs(attrs: dict) -> dict:
    """Attributes that a Zarr store keeps as they are: text and plain numbers."""
    out = {}
    for key, value in attrs.items():
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, str | int | float):
            out[key] = value
    return out


def _read_targets(spec: DataSpec, spec_dir: Path | None) -> tuple[list[xr.DataArray], dict]:
    arrays: list[xr.DataArray] = []
    attrs: dict = {}
    for var in spec.variables:
        source = var.source or spec.source
        if source.synthetic is not None:
            da, key, attrs[key] = _synthetic(source.synthetic, var)
        else:
            paths = source_paths(source, spec_dir, describe(var))
            da = place(read_field(paths, var, spec.longitudes), spec)
        da = da.astype(np.float32)
        if arrays:
            first = arrays[0]
            dim = same_grid(first, da)
            if dim is not None:
                raise SourceError(f"{where_of(da)}: has a {dim} grid that differs from that of "
                                  f"variable {first.name!r} ({first.attrs[layout.SOURCE]})")
            if not np.array_equal(first.time.values, da.time.values):
                raise SourceError(f"{where_of(da)}: has time steps that differ from those of "
                                  f"variable {first.name!r} ({first.attrs[layout.SOURCE]})")
            da = da.assign_coords(lat=first.lat, lon=first.lon)
        arrays.append(da.rename(var.name))
    return arrays, attrs


def as_index(index: np.ndarray) -> slice | np.ndarray:
    """A slice for consecutive indices (dask slices without copying), else the indices."""
    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        return slice(int(index[0]), int(index[0]) + index.size)
    return index


def _moments(da: xr.DataArray, train: slice | np.ndarray) -> tuple[xr.DataArray, xr.DataArray]:
    """Mean and std over the training split, accumulated in float64 (lazy; NaN propagates)."""
    values = da.isel(time=train)
    return values.mean(skipna=False, dtype=np.float64), values.std(skipna=False, dtype=np.float64)


def _fill_and_stats(
    da: xr.DataArray, var: Variable, key: str, train: slice | np.ndarray
) -> tuple[xr.DataArray, dict[str, Any]]:
    """Check missing values against the spec, fill allowed ones, and the training statistics.

    One pass over the data counts missing and non-finite values and computes the statistics;
    only when some values are missing (and allowed) do two more fill them with the training
    split's per-pixel mean and recompute the statistics.
    """
    n_missing, mean, std = compute((~np.isfinite(da)).sum(), *_moments(da, train),
                                   where=where_of(da))
    n_missing = int(n_missing)
    if n_missing:
        fraction = n_missing / da.size
        if fraction > var.max_missing_fraction:
            raise SourceError(
                f"{where_of(da)}: has {n_missing} missing or non-finite values "
                f"({100 * fraction:.3g} % of the selected fields) but the spec allows at most "
                f"{100 * var.max_missing_fraction:g} % ({key}.max_missing_fraction)"
            )
        attrs = dict(da.attrs, **{layout.MISSING_FILLED: n_missing})
        da = da.where(np.isfinite(da))
        (climatology,) = compute(da.isel(time=train).mean("time", dtype=np.float64),
                                 where=where_of(da))
        if bool(climatology.isnull().any()):
            raise SourceError(f"{where_of(da)}: has pixels that are missing at every training "
                              "time step (e.g. land in a sea field); choose a region without them")
        log.info("%s: filling %d missing values with the training mean", where_of(da), n_missing)
        da = da.fillna(climatology.astype(np.float32)).assign_attrs(attrs)
        mean, std = compute(*_moments(da, train), where=where_of(da))
    if not float(std) > 0:
        raise SourceError(f"{where_of(da)}: is constant over the training split")
    stats: dict[str, Any] = {"mean": float(mean), "std": float(std)}
    if var.transform == "censored_power":  # the model trains on T(x): its statistics
        (values,) = compute(da.isel(time=train), where=where_of(da))
        try:
            transform = CensoredPowerTransform.fit(values.values, threshold=var.dry_threshold)
        except ValueError as exc:
            raise SourceError(f"{where_of(da)}: the censored power transform cannot be fitted "
                              f"({exc}; {key}.transform)") from None
        latent = transform.forward(values.values)
        stats = {"mean": float(latent.mean()), "std": float(latent.std()),
                 "transform": transform.to_dict(), "physical_mean": stats["mean"],
                 "physical_std": stats["std"]}
    return da, stats


def _read_static(
    spec: DataSpec, ref: StaticField, spec_dir: Path | None, like: xr.DataArray
) -> xr.DataArray | None:
    """A static covariate on the targets' grid, or None if optional and absent."""
    try:
        paths = source_paths(ref.source or spec.source, spec_dir, describe(ref))
        da = read_field(paths, ref, spec.longitudes, need_time=False)
    except MissingSourceError as exc:
        if not ref.optional:
            raise
        log.warning("skipping optional static covariate %r: %s", ref.name, exc)
        return None
    (da,) = compute(place(da, spec).astype(np.float32), where=where_of(da))
    dim = same_grid(like, da)
    if dim is not None:
        raise SourceError(f"{where_of(da)}: static covariate {ref.name!r} has a {dim} grid "
                          f"({da.sizes[dim]} points) that differs from the target grid "
                          f"({like.sizes[dim]} points)")
    if ref.fill_value is not None:
        da = da.fillna(ref.fill_value)
    bad = int((~np.isfinite(da)).sum())
    if bad:
        raise SourceError(f"{where_of(da)}: static covariate {ref.name!r} has {bad} missing "
                          "values (set fill_value to replace them)")
    return da.assign_coords(lat=like.lat, lon=like.lon).rename(f"static_{ref.name}")


def build_fields(spec: DataSpec, spec_dir: Path | None = None) -> xr.Dataset:
    """Read, check and label the spec's fields: a lazy dataset whose checks have all passed."""
    arrays, attrs = _read_targets(spec, spec_dir)
    first = arrays[0]
    try:
        labels = spec.splits.labels(first.time.values)
    except ValueError as exc:
        raise SourceError(f"{where_of(first)}: {exc}") from None
    try:  # the observation model must fit the grid (stations inside it, points on it, ...)
        ObservationModel.from_dict({**spec.observation(), "grid": {
            "lat": first.lat.values.tolist(), "lon": first.lon.values.tolist()}})
    except ValueError as exc:
        raise SourceError(f"{where_of(first)}: operator: {exc}") from None
    used = np.flatnonzero(labels != "")
    labels = labels[used]
    train = as_index(np.flatnonzero(labels == "train"))
    normalisation, fields = {}, {}
    for i, (var, da) in enumerate(zip(spec.variables, arrays, strict=True)):
        if used.size < da.sizes["time"]:
            da = da.isel(time=as_index(used))
        da, normalisation[var.name] = _fill_and_stats(da, var, f"variables[{i}]", train)
        da.attrs = _clean_attrs(da.attrs)
        fields[var.name] = da
    static = []
    for ref in spec.static:
        da = _read_static(spec, ref, spec_dir, first)
        if da is not None:
            normalisation[str(da.name)] = {"mean": float(da.mean()), "std": float(da.std())}
            da.attrs = _clean_attrs(da.attrs)
            fields[str(da.name)] = da
            static.append(str(da.name))
    ds = xr.Dataset(fields).assign_coords(split=("time", labels.astype(object)))
    ds.lat.attrs.update(standard_name="latitude", units="degrees_north")
    ds.lon.attrs.update(standard_name="longitude", units="degrees_east")
    ds.attrs.update({
        layout.SPEC: spec.name,
        layout.VARIABLES: [v.name for v in spec.variables],
        layout.STATIC: static,
        layout.NORMALISATION: normalisation,
        layout.LONGITUDES: spec.longitudes,
        "Conventions": "CF-1.8",
        "title": spec.description or spec.name,
        **attrs,
    })
    return ds


def chunk_for_writing(ds: xr.Dataset) -> xr.Dataset:
    """Uniform time chunks of about CHUNK_BYTES per variable (Zarr needs uniform chunks)."""
    step = 4 * max(1, ds.sizes.get("lat", 1) * ds.sizes.get("lon", 1))
    size = max(1, min(ds.sizes["time"], CHUNK_BYTES // step))
    return ds.assign({
        name: da.chunk({"time": size}) for name, da in ds.data_vars.items() if "time" in da.dims
    })


def _write(ds: xr.Dataset, out: Path) -> Path:
    json_attrs = {k: ds.attrs.pop(k) for k in list(ds.attrs) if not isinstance(ds.attrs[k], str)}
    try:
        with dask.config.set(scheduler="synchronous"):
            # Every value was checked (or filled) by build_fields: no second pass for finiteness.
            return write_store(chunk_for_writing(ds), out, attrs=json_attrs, require_finite=False)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise SourceError(f"{out}: reading the sources or writing failed "
                          f"({exc.__class__.__name__}: {exc})") from exc


def ingest(
    spec_path: str | Path, out: str | Path, paired_out: str | Path | None = None
) -> Path:
    """Run the ingest stage: validate everything, then write ``out`` atomically.

    With a paired low-resolution source, its fields go to ``paired_out`` (default:
    ``paired.zarr`` beside ``out``), written before ``out`` so that ``out`` exists only when
    both are complete.
    """
    spec_path, out = Path(spec_path), check_output(out)
    spec = load_spec(spec_path)
    # The progress bar shows on stderr (the rule's log) when a pass over the data takes > 2 s.
    with bounded_reading(), ProgressBar(minimum=2.0, out=sys.stderr):
        ds = build_fields(spec, spec_dir=spec_path.parent)
        paired = build_paired(spec, spec_path.parent, ds) if spec.paired is not None else None
        counts = {s: int((ds.split == s).sum()) for s in SPLITS}
        log.info("ingest %s: %s, grid %s×%s, splits %s", spec.name, list(ds.data_vars),
                 ds.sizes["lat"], ds.sizes["lon"], counts)
        if paired is not None:
            _write(paired, Path(paired_out) if paired_out else layout.paired_path(out))
        return _write(ds, out)
