"""A paired low-resolution source for real downscaling: coarse fields aligned with the targets.

Instead of simulating y = A(x) + noise, some datasets come with observed coarse fields (a
global model run beside a regional one, a gridded product beside station-based analyses). The
spec's ``paired`` source names them; ingest writes them to their own store, laid out like
``obs.zarr`` for a coarsening operator: (time, lat_c, lon_c) with the targets' times and split
labels, each coarse cell being the one centred on a factor x factor block of the target grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from sgm.config import DataSpec, FieldRef
from sgm.io import layout
from sgm.io.sources import SourceError, compute, describe, read_field, source_paths, where_of


def block_centres(values: np.ndarray, factor: int) -> np.ndarray:
    """Centres of consecutive blocks of ``factor`` grid points."""
    return np.asarray(values, dtype=float).reshape(-1, factor).mean(axis=1)


def _on_blocks(da: xr.DataArray, fields: xr.Dataset, factor: int) -> xr.DataArray:
    """The coarse cells centred on the target grid's blocks (within a quarter cell)."""
    out = da
    for dim in ("lat", "lon"):
        centres = block_centres(fields[dim].values, factor)
        spacing = factor * float(np.abs(np.diff(fields[dim].values)).min())
        have = np.asarray(da[dim].values, dtype=float)
        nearest = np.abs(have[None, :] - centres[:, None]).argmin(axis=1)
        off = np.abs(have[nearest] - centres) > spacing / 4
        if off.any():
            raise SourceError(
                f"{where_of(da)}: has no {dim} cell centred on the target grid's {factor}x"
                f"{factor} block at {centres[off][0]:g} (paired grids must line up with "
                "the blocks of operator.factor)"
            )
        out = out.isel({dim: nearest}).assign_coords({dim: centres})
    return out.rename(lat="lat_c", lon="lon_c")


def _on_times(da: xr.DataArray, fields: xr.Dataset) -> xr.DataArray:
    """The paired fields at every target time step."""
    index = {t: i for i, t in enumerate(da.time.values.tolist())}
    wanted = fields.time.values.tolist()
    missing = [t for t in wanted if t not in index]
    if missing:
        raise SourceError(f"{where_of(da)}: lacks {len(missing)} of the {len(wanted)} target "
                          f"time steps (first missing: {missing[0]})")
    return da.isel(time=[index[t] for t in wanted])


def _ref(spec: DataSpec, name: str) -> FieldRef:
    """How to find target ``name`` in the paired source."""
    assert spec.paired is not None
    for ref in spec.paired.variables or []:
        if ref.name == name:
            return ref
    target = next(v for v in spec.variables if v.name == name)
    return FieldRef(**target.model_dump(include=set(FieldRef.model_fields) - {"source"}))


def build_paired(spec: DataSpec, spec_dir: Path | None, fields: xr.Dataset) -> xr.Dataset:
    """The paired coarse fields of every target variable, checked (lazy; nothing written)."""
    assert spec.paired is not None and spec.operator.kind == "coarsen"
    factor = spec.operator.factor
    data = {}
    for name in layout.variables_of(fields):
        ref = _ref(spec, name)
        paths = source_paths(spec.paired.source, spec_dir, describe(ref))
        da = read_field(paths, ref, spec.longitudes)
        units, want = da.attrs.get("units"), fields[name].attrs.get("units")
        if units != want:
            raise SourceError(f"{where_of(da)}: has units {units!r} but the target variable "
                              f"{name!r} has {want!r} (set units/convert_to in paired)")
        da = _on_times(_on_blocks(da, fields, factor), fields).astype(np.float32)
        (bad,) = compute((~np.isfinite(da)).sum(), where=where_of(da))
        if int(bad):
            raise SourceError(f"{where_of(da)}: has {int(bad)} missing or non-finite values")
        attrs = {k: v for k, v in da.attrs.items() if isinstance(v, str | int | float)}
        data[name] = da.drop_vars("time").rename(name).assign_attrs(attrs)
    ds = xr.Dataset(data).assign_coords(time=fields.time, split=fields.split)
    ds.attrs.update({
        layout.SPEC: spec.name,
        layout.VARIABLES: list(data),
        layout.PAIRED_FACTOR: factor,
        "title": f"{spec.description or spec.name}: paired low-resolution fields",
    })
    return ds
