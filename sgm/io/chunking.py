"""Chunk layouts of the stores and files analysts read: by time, or by pixel.

A reader pays for every chunk it touches, so the layout decides what is fast:

- ``time`` (the default): each chunk holds a few whole time steps (all members, quantiles or
  thresholds, every pixel). Reading one map touches one chunk; a pixel's whole series touches
  every chunk. Reports, maps and per-time products read whole fields, and sampling and the
  products are computed time step by time step, hence the default.
- ``pixel``: each chunk holds every time step of a square block of pixels. A pixel's series
  touches one chunk; one map touches every chunk.

Dimensions other than time, lat and lon (member, quantile, threshold) are never split: they are
small, and a statistic over members needs them all. Chunks hold at most ``target_bytes``
(uncompressed, default 1 MiB) each, evened out so that the last chunk along a dim is not a
sliver. Variables without time, lat and lon dims stay whole.

:func:`chunk_sizes` gives the sizes, :func:`chunk_dataset` applies them as dask chunks (which
:func:`sgm.io.stores.write_store` keeps as the Zarr chunks), :func:`zarr_chunk_encoding` and
:func:`netcdf_chunk_encoding` give them as encodings.
"""

from __future__ import annotations

import math
from typing import Literal

import xarray as xr

Layout = Literal["time", "pixel"]
LAYOUTS: tuple[str, ...] = ("time", "pixel")
DEFAULT_LAYOUT: Layout = "time"
TARGET_BYTES = 2**20
SPATIAL = ("lat", "lon")


def check_layout(layout: str, option: str = "--chunks") -> Layout:
    """``layout`` if it is one of :data:`LAYOUTS`; else one sentence naming the option."""
    if layout not in LAYOUTS:
        raise ValueError(f"{option} {layout!r}: not a chunk layout; choose one of "
                         f"{', '.join(LAYOUTS)}")
    return layout  # type: ignore[return-value]


def _sizes(da: xr.DataArray, layout: Layout, target_bytes: int) -> dict[str, int] | None:
    """dim → chunk length of one variable, or None when it is not chunked by the layout."""
    dims = dict(zip(da.dims, da.shape, strict=True))
    if "time" not in dims or not all(d in dims for d in SPATIAL):
        return None
    itemsize = da.dtype.itemsize
    others = math.prod(n for d, n in dims.items() if d not in ("time", *SPATIAL))
    height, width, times = dims["lat"], dims["lon"], dims["time"]
    sizes = dict(dims)
    if layout == "time":
        per_step = max(1, itemsize * others * height * width)
        sizes["time"] = max(1, min(times, target_bytes // per_step))
    else:
        per_pixel = max(1, itemsize * others * times)
        pixels = max(1, target_bytes // per_pixel)
        block_h = max(1, min(height, math.isqrt(pixels)))
        block_w = max(1, min(width, pixels // block_h))
        sizes["lat"], sizes["lon"] = block_h, block_w
    # As many chunks as these sizes give, evened out (36 rows in blocks of 33 become 2 × 18).
    return {d: -(-n // -(-n // sizes[d])) for d, n in dims.items()}


def chunk_sizes(ds: xr.Dataset, layout: str = DEFAULT_LAYOUT,
                target_bytes: int = TARGET_BYTES) -> dict[str, tuple[int, ...]]:
    """Chunk shape (in each variable's dim order) of every variable that has time, lat and lon.

    Variables (and coordinates) not listed are written as one chunk.
    """
    layout = check_layout(layout)
    out = {}
    for name, da in ds.variables.items():
        sizes = _sizes(xr.DataArray(da), layout, target_bytes)
        if sizes is not None:
            out[str(name)] = tuple(sizes[d] for d in da.dims)
    return out


def chunk_dataset(ds: xr.Dataset, layout: str = DEFAULT_LAYOUT,
                  target_bytes: int = TARGET_BYTES) -> xr.Dataset:
    """``ds`` with its data variables as dask arrays in the layout's chunks.

    :func:`sgm.io.stores.write_store` writes dask chunks as the Zarr chunks, so this is how a
    stage chooses the layout of a store it writes.
    """
    sizes = chunk_sizes(ds, layout, target_bytes)
    return ds.assign({
        name: da.chunk(dict(zip(da.dims, sizes[name], strict=True)))
        for name, da in ds.data_vars.items() if name in sizes
    })


def zarr_chunk_encoding(ds: xr.Dataset, layout: str = DEFAULT_LAYOUT,
                        target_bytes: int = TARGET_BYTES) -> dict[str, dict[str, tuple]]:
    """``{variable: {"chunks": shape}}`` to merge into a Zarr encoding."""
    return {k: {"chunks": v} for k, v in chunk_sizes(ds, layout, target_bytes).items()}


def netcdf_chunk_encoding(ds: xr.Dataset, layout: str = DEFAULT_LAYOUT,
                          target_bytes: int = TARGET_BYTES) -> dict[str, dict[str, tuple]]:
    """``{variable: {"chunksizes": shape}}`` to merge into a NetCDF4 encoding."""
    return {k: {"chunksizes": v} for k, v in chunk_sizes(ds, layout, target_bytes).items()}


def chunks_touched(shape: tuple[int, ...], chunks: tuple[int, ...],
                   selection: tuple[slice | int, ...]) -> int:
    """How many chunks of an array of ``shape`` in ``chunks`` a selection (one int or slice per
    dim) touches: what a reader has to fetch and decompress."""
    count = 1
    for n, c, sel in zip(shape, chunks, selection, strict=True):
        if isinstance(sel, int):
            count *= 1
        else:
            start, stop, _ = sel.indices(n)
            count *= 0 if stop <= start else (stop - 1) // c - start // c + 1
    return count
