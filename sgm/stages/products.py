"""Stage ``products``: ``posterior.zarr`` → ``products.zarr``, the ensemble's per-time summaries.

For every variable ``v`` of the posterior (:mod:`sgm.core.products`, in the posterior's units):

- ``v_mean``, ``v_std`` (time, lat, lon): ensemble mean and standard deviation (ddof=1);
- ``v_quantile`` (quantile, time, lat, lon): the quantiles at the levels of coordinate
  ``quantile`` (default 0.05, 0.5, 0.95; numpy's ``linear`` method);
- ``v_exceedance`` (v_threshold, time, lat, lon), for a variable given thresholds: the fraction
  of members strictly above each threshold of coordinate ``v_threshold`` (units "1"). Each
  variable has its own threshold dimension, since thresholds are in its own units.

CF attributes as in the NetCDF export (:mod:`sgm.io.cf_export`: standard names where the source
gave them, ``cell_methods`` ``realization: mean`` / ``realization: standard_deviation``, axes,
latitude/longitude bounds as coordinates), the posterior's provenance, and the settings in
``sgm_products``. Chunked by time (default) or by pixel (:mod:`sgm.io.chunking`). The members are
read a block of time steps at a time; nothing is written unless every product is computed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from sgm.core import products as prod
from sgm.io import layout
from sgm.io.cf_export import (
    COORD_ATTRS,
    MEMBER_DIMS,
    drop_cell_method,
    global_attributes,
    grid_bounds,
    history_line,
    variable_attributes,
)
from sgm.io.chunking import DEFAULT_LAYOUT, check_layout, chunk_dataset
from sgm.io.stores import StoreError, check_output, open_store, write_store

log = logging.getLogger(__name__)

PRODUCTS = "sgm_products"
BLOCK_BYTES = 64 * 2**20  # members read per block of time steps (float64)


def _thresholds(thresholds: Mapping[str, Sequence[float]] | None, variables: list[str],
                posterior_path: str | Path) -> dict[str, tuple[float, ...]]:
    out = {}
    for var, values in (thresholds or {}).items():
        if var not in variables:
            raise ValueError(f"--thresholds: {posterior_path} has no variable {var!r} (it has "
                             f"{', '.join(variables)})")
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise ValueError(f"--thresholds: {var}: expected a list of numbers, got {values!r}")
        try:
            checked = prod.check_thresholds(values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--thresholds: {var}: {exc}") from None
        if checked:
            out[var] = checked
    return out


def _summaries(da: xr.DataArray, quantiles: tuple[float, ...], thresholds: tuple[float, ...],
               where: str) -> prod.Summary:
    """The products of one member variable, read in blocks of time steps."""
    n_time, n_member, height, width = (da.sizes[d] for d in MEMBER_DIMS)
    step = max(1, BLOCK_BYTES // max(1, 8 * n_member * height * width))
    parts = []
    for start in range(0, n_time, step):
        block = np.asarray(da.isel(time=slice(start, start + step)).values, dtype=np.float64)
        if not np.isfinite(block).all():
            raise StoreError(f"{where}: has NaN or infinite values; refusing to summarise them")
        parts.append(prod.summarise(block, quantiles, thresholds))
    return prod.Summary(*(np.concatenate([getattr(p, f) for p in parts], axis=axis)
                          for f, axis in (("mean", 0), ("std", 0), ("quantiles", 1),
                                          ("exceedance", 1))))


def _variables(var: str, attrs: dict[str, Any], s: prod.Summary, has_thresholds: bool
               ) -> dict[str, tuple]:
    """The products of ``var`` as (dims, float32 values, CF attrs)."""
    name = str(attrs.get("long_name", var))
    keep = {k: v for k, v in attrs.items() if k in ("standard_name", "units", "cell_methods")}
    if "cell_methods" in keep:  # the members' own "realization: point" is not the statistic's
        keep["cell_methods"] = drop_cell_method(keep["cell_methods"], "realization")
    tlh = ("time", "lat", "lon")

    def stat(method: str | None, long_name: str, **extra: Any) -> dict[str, Any]:
        new = variable_attributes(keep, method)
        return {**new, "long_name": long_name, **extra}

    out = {
        f"{var}_mean": (tlh, s.mean.astype(np.float32),
                        stat("realization: mean", f"ensemble mean of {name}")),
        f"{var}_std": (tlh, s.std.astype(np.float32),
                       stat("realization: standard_deviation",
                            f"ensemble standard deviation of {name}",
                            comment="over the members, with ddof=1 (unbiased variance)")),
    }
    if s.quantiles.shape[0]:
        out[f"{var}_quantile"] = (("quantile", *tlh), s.quantiles.astype(np.float32), stat(
            None, f"ensemble quantiles of {name}",
            comment=f"q-quantile of the members at each quantile level, numpy method "
                    f"'{prod.QUANTILE_METHOD}' (Hyndman and Fan 1996, definition 7)"))
    if has_thresholds:
        out[f"{var}_exceedance"] = ((f"{var}_threshold", *tlh), s.exceedance.astype(np.float32), {
            "long_name": f"probability that {name} exceeds the threshold",
            "units": "1",
            "comment": f"fraction of the members strictly above {var}_threshold",
        })
    return out


def products(
    posterior_path: str | Path,
    out_zarr: str | Path,
    quantiles: Sequence[float] = prod.DEFAULT_QUANTILES,
    thresholds: Mapping[str, Sequence[float]] | None = None,
    chunks: str = DEFAULT_LAYOUT,
) -> Path:
    """Write the ensemble products of the posterior store ``posterior_path`` to ``out_zarr``.

    ``quantiles``: levels in [0, 1] (empty: no quantile variables); ``thresholds``: variable →
    thresholds in its units (variables left out get no exceedance probabilities); ``chunks``:
    ``time`` or ``pixel``. Returns the path written.
    """
    check_layout(chunks)
    try:
        levels = prod.check_quantiles(quantiles)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--quantiles: {exc}") from None
    out_zarr = check_output(out_zarr)
    post = open_store(posterior_path)
    variables = [str(v) for v in post.data_vars]
    if not variables:
        raise StoreError(f"{posterior_path}: has no variables; not a posterior store")
    for var in variables:
        if post[var].dims != MEMBER_DIMS:
            raise StoreError(f"{posterior_path}: variable {var!r} has dims {post[var].dims}, "
                             f"not {MEMBER_DIMS}; not a posterior store")
    members = post.sizes["member"]
    if members < 2:
        raise StoreError(f"{posterior_path}: has {members} member; the ensemble statistics "
                         "need at least 2")
    limits = _thresholds(thresholds, variables, posterior_path)

    data: dict[str, tuple] = {}
    coords: dict[str, Any] = {
        "time": post["time"].variable.to_base_variable(),
        "lat": ("lat", post["lat"].values, COORD_ATTRS["lat"] | {"bounds": "lat_bnds"}),
        "lon": ("lon", post["lon"].values, COORD_ATTRS["lon"] | {"bounds": "lon_bnds"}),
        **grid_bounds(post, posterior_path),
    }
    if "obs_index" in post.coords:
        coords["obs_index"] = ("time", post["obs_index"].values, COORD_ATTRS["obs_index"])
    if levels:
        coords["quantile"] = ("quantile", np.asarray(levels), {
            "long_name": "quantile level (probability of not exceeding)", "units": "1"})
    for var in variables:
        attrs = dict(post[var].attrs)
        summary = _summaries(post[var].transpose(*MEMBER_DIMS), levels, limits.get(var, ()),
                             f"{posterior_path}: variable {var!r}")
        data.update(_variables(var, attrs, summary, var in limits))
        if var in limits:
            coords[f"{var}_threshold"] = (f"{var}_threshold", np.asarray(limits[var]), {
                k: v for k, v in {"standard_name": attrs.get("standard_name"),
                                  "units": attrs.get("units"),
                                  "long_name": f"threshold of {var}"}.items() if v is not None})
    ds = xr.Dataset(data, coords=coords)
    ds["time"].attrs = {**ds["time"].attrs, **COORD_ATTRS["time"]}
    settings = {"quantiles": list(levels), "thresholds": {k: list(v) for k, v in limits.items()},
                "members": members, "quantile_method": prod.QUANTILE_METHOD,
                "exceedance": "fraction of members > threshold", "std_ddof": 1,
                "chunks": chunks}
    spec = post.attrs.get(layout.SPEC, "?")
    history = history_line(f"products --posterior {posterior_path} --out {out_zarr}")
    attrs = global_attributes(post, f"sgm ensemble products - {spec}", history)
    attrs["source"] = f"{attrs['source']} (per-time summaries of its members)"
    attrs[PRODUCTS] = json.dumps(settings, sort_keys=True)
    path = write_store(chunk_dataset(ds, chunks), out_zarr, attrs=attrs)
    log.info("products %s: %d variable(s), %d times, quantiles %s, thresholds %s → %s",
             posterior_path, len(variables), post.sizes["time"], list(levels),
             {k: list(v) for k, v in limits.items()}, path)
    return path
