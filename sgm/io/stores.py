"""Zarr stores that are either complete or absent.

Unwritten Zarr regions read back as NaN without complaint, so completeness is never inferred
from data: a store is written to a temporary sibling, marked complete in an attribute, and only
then moved into place. Readers refuse stores that lack the mark.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import xarray as xr

COMPLETE_ATTR = "sgm_complete"


class IncompleteStoreError(RuntimeError):
    """A store exists but was never finished (an interrupted writer left it)."""


def _drop_encoding(ds: xr.Dataset) -> xr.Dataset:
    """Forget the source files' encodings (chunks, fill values, packing) before writing Zarr.

    Fixed-width unicode arrays become variable-length strings, which Zarr 3 specifies.
    """
    ds = ds.copy()
    for name in list(ds.variables):
        if ds[name].dtype.kind == "U":
            ds[name] = ds[name].astype(object)
        ds[name].encoding = {}
    return ds


def write_store(ds: xr.Dataset, path: str | Path, attrs: dict[str, Any] | None = None) -> Path:
    """Write ``ds`` to the Zarr store ``path`` atomically and mark it complete.

    The data go to a hidden temporary sibling first; the completeness mark is written last and the
    folder is renamed into place, replacing any previous store at ``path``. Non-string attribute
    values in ``attrs`` are stored as JSON strings so that every reader sees the same types.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    ds = _drop_encoding(ds)
    for key, value in (attrs or {}).items():
        ds.attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
    ds.attrs[COMPLETE_ATTR] = 0
    try:
        ds.to_zarr(tmp, mode="w", consolidated=False, zarr_format=3)
        import zarr

        group = zarr.open_group(tmp, mode="r+")
        group.attrs[COMPLETE_ATTR] = 1
        with warnings.catch_warnings():
            # Consolidated metadata is a zarr-python extension to format 3; readers that ignore
            # it still read the store. It lets `xr.open_zarr(path)` open without warnings.
            warnings.simplefilter("ignore", category=UserWarning)
            zarr.consolidate_metadata(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def open_store(path: str | Path) -> xr.Dataset:
    """Open a store written by :func:`write_store`; refuse missing or unfinished stores."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: store does not exist")
    with warnings.catch_warnings():
        # Stores from write_store have consolidated metadata; others are read without it and
        # then refused below for lacking the completeness mark.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        ds = xr.open_zarr(path)
    if int(ds.attrs.get(COMPLETE_ATTR, 0)) != 1:
        raise IncompleteStoreError(f"{path}: store is incomplete (an interrupted write?); rerun")
    return ds


def json_attr(ds: xr.Dataset, key: str) -> Any:
    """Read an attribute written by :func:`write_store` as JSON (or a plain value)."""
    value = ds.attrs[key]
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
