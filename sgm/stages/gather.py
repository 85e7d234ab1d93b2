"""Stage ``gather``: posterior shards → one ``posterior.zarr`` (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from sgm.io import layout
from sgm.io.stores import open_store, write_store


def gather_shards(shard_paths: list[str | Path], out: str | Path) -> Path:
    """Concatenate posterior shards along time into one store (same attributes)."""
    parts = [open_store(p) for p in shard_paths]
    ds = xr.concat(parts, dim="time").sortby("obs_index")
    if len(np.unique(ds.obs_index.values)) != ds.sizes["time"]:
        raise ValueError("posterior shards overlap in time")
    attrs = {k: v for k, v in parts[0].attrs.items() if k not in (layout.COMPLETE, layout.SHARD)}
    ds.attrs = {}
    return write_store(ds.load(), out, attrs={**attrs, layout.SHARD: json.dumps([0, 1])})
