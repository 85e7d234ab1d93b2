"""Stage ``gather``: posterior shards → one ``posterior.zarr`` (no torch needed).

Every shard records which of how many it is (``sgm_shard`` = [k, K]) and the model and sampler
that drew it. The gather refuses a set that is not exactly shards 0..K−1 of one sampling run:
a shard given twice, a missing shard, shards of different runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from sgm.io import layout
from sgm.io.stores import StoreError, check_output, json_attr, open_store, write_store

# Attributes that must agree between the shards of one sampling run.
RUN_KEYS = (layout.SPEC, layout.MODEL_HASH, layout.SAMPLER, layout.SAMPLE_SEED, layout.SPLIT)


def gather_shards(shard_paths: list[str | Path], out: str | Path) -> Path:
    """Concatenate posterior shards along time into one store (same attributes)."""
    out = check_output(out)
    names = [str(p) for p in shard_paths]
    twice = sorted({p for p in names if names.count(p) > 1})
    if twice:
        raise StoreError(f"{twice[0]}: given twice; give every shard once")
    parts = [open_store(p) for p in shard_paths]
    index = {}
    for path, part in zip(names, parts, strict=True):
        k, total = json_attr(part, layout.SHARD)
        if (k, total) in index.values() or (index and total != next(iter(index.values()))[1]):
            raise StoreError(f"{path}: is shard {k} of {total}, which does not fit the other "
                             f"shards ({sorted(index.values())})")
        index[path] = (k, total)
        for key in RUN_KEYS:
            if part.attrs.get(key) != parts[0].attrs.get(key):
                raise StoreError(f"{path}: its {key} differs from that of {names[0]}; shards "
                                 "of one posterior come from one sampling run")
    total = next(iter(index.values()))[1]
    missing = sorted(set(range(total)) - {k for k, _ in index.values()})
    if missing:
        raise StoreError(f"shard(s) {', '.join(map(str, missing))} of {total} missing: gather "
                         f"needs all {total} (got {len(parts)})")
    ds = xr.concat(parts, dim="time").sortby("obs_index")
    if len(np.unique(ds.obs_index.values)) != ds.sizes["time"]:
        raise StoreError("posterior shards overlap in time")
    attrs = {k: v for k, v in parts[0].attrs.items() if k not in (layout.COMPLETE, layout.SHARD)}
    costs = [(json_attr(p, layout.COST), p.sizes["time"]) for p in parts if layout.COST in p.attrs]
    attrs.pop(layout.COST, None)  # shard 0's own cost is not the posterior's
    if len(costs) == len(parts):
        attrs[layout.COST] = json.dumps(mean_cost(costs), sort_keys=True)
    ds.attrs = {}
    return write_store(ds.load(), out, attrs={**attrs, layout.SHARD: json.dumps([0, 1])})


def mean_cost(costs: list[tuple[dict, int]]) -> dict:
    """The cost per member of the whole posterior: each shard's figures weighted by its times
    (every time has the same number of members)."""
    total = sum(n for _, n in costs)
    keys = set.intersection(*(set(c) for c, _ in costs))
    return {k: sum(float(c[k]) * n for c, n in costs) / total for k in sorted(keys)}
