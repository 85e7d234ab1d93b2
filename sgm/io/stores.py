"""Zarr stores that are either complete and intact, or refused.

Unwritten Zarr regions read back as NaN without complaint, so completeness is never inferred
from data: a store is written to a temporary sibling, marked complete in an attribute, and only
then moved into place. Every array carries a crc32c checksum (the Zarr 3 ``crc32c`` codec) on
every chunk, and every chunk is written even when it holds only the fill value, so a reader can
tell an intact store from a damaged one: :func:`open_store` refuses stores that lack the mark, a
chunk, or a matching checksum, with one sentence naming the store, the variable and the chunk.
Data written must be finite unless the caller says otherwise.

One writer per output is assumed (Snakemake runs one job per output): leftovers of a killed
write of the same output (hidden ``.<name>.tmp-*`` and ``.<name>.old-*`` siblings) are removed by
the next write. An existing path is only ever replaced when it is a store sgm wrote.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from sgm.io.atomic import raise_if_disk_full

COMPLETE_ATTR = "sgm_complete"

# Snakemake marks a finished directory output with a file .snakemake_timestamp inside it; Zarr
# warns about that foreign object each time it lists the store. It is harmless, and the warning
# would fill every stage's log.
warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp is not recognized",
                        category=UserWarning)


class StoreError(ValueError):
    """A store that cannot be used as it is; the message names the store and the problem."""


class IncompleteStoreError(StoreError):
    """A store exists but was never finished (an interrupted writer left it)."""


class CorruptStoreError(StoreError):
    """A store lacks a chunk, or a chunk fails its checksum."""


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


def _check_finite(ds: xr.Dataset, path: Path) -> None:
    for name, da in ds.data_vars.items():
        if da.dtype.kind == "f":
            bad = int((~np.isfinite(da.values)).sum())
            if bad:
                raise StoreError(f"{path}: refusing to write variable {name!r} with {bad} NaN or "
                                 "infinite values")


def _is_sgm_store(path: Path) -> bool:
    """Whether ``path`` is a Zarr store written by :func:`write_store` (complete or not)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return COMPLETE_ATTR in meta.get("attributes", {})


def check_output(path: str | Path) -> Path:
    """Refuse an output path that holds something sgm did not write, before any work is done."""
    path = Path(path)
    if path.exists() and not _is_sgm_store(path):
        what = "a folder" if path.is_dir() else "a file"
        raise StoreError(f"{path}: exists and is {what}, not a store sgm wrote; refusing to "
                         "replace it (choose another output path)")
    return path


def remove_leftovers(path: Path) -> None:
    """Remove the temporary siblings a killed write of ``path`` left behind."""
    for pattern in (f".{path.name}.tmp-*", f".{path.name}.old-*"):
        for stale in path.parent.glob(pattern):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _write_hidden(ds: xr.Dataset, path: Path, attrs: dict[str, Any] | None,
                  require_finite: bool) -> Path:
    """Write the complete store of ``path`` to a hidden sibling; return the sibling."""
    path = check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    ds = _drop_encoding(ds)
    if require_finite:
        _check_finite(ds, path)
    for key, value in (attrs or {}).items():
        ds.attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
    ds.attrs[COMPLETE_ATTR] = 0
    encoding = {name: {"compressors": (ZstdCodec(), Crc32cCodec())} for name in ds.variables}
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        try:
            with zarr.config.set({"array.write_empty_chunks": True}):
                ds.to_zarr(tmp, mode="w", consolidated=False, zarr_format=3, encoding=encoding)
        except Exception as exc:
            raise_if_disk_full(tmp, exc)
            raise
        group = zarr.open_group(tmp, mode="r+")
        group.attrs[COMPLETE_ATTR] = 1
        with warnings.catch_warnings():
            # Consolidated metadata is a zarr-python extension to format 3; readers that ignore
            # it still read the store. It lets `xr.open_zarr(path)` open without warnings.
            warnings.simplefilter("ignore", category=UserWarning)
            zarr.consolidate_metadata(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished store ``tmp`` onto ``path``, replacing a previous sgm store."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_store(
    ds: xr.Dataset, path: str | Path, attrs: dict[str, Any] | None = None,
    require_finite: bool = True,
) -> Path:
    """Write ``ds`` to the Zarr store ``path`` atomically and mark it complete.

    The data go to a hidden temporary sibling first, every array with zstd compression and a
    crc32c checksum per chunk; the completeness mark is written last and the folder is renamed
    into place, replacing a previous sgm store at ``path`` (anything else there is refused).
    Non-string attribute values in ``attrs`` are stored as JSON strings so that every reader
    sees the same types. ``require_finite`` refuses NaN/inf in floating data variables (pass
    False for data checked already, e.g. lazily streamed inputs).
    """
    path = Path(path)
    tmp = _write_hidden(ds, path, attrs, require_finite)
    try:
        _move_into_place(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def write_store_and_file(
    ds: xr.Dataset, path: str | Path, attrs: dict[str, Any] | None, file: str | Path, text: str
) -> None:
    """Write a store and a text file that belong together, so that they appear together.

    Both are written completely to hidden siblings first (a failure, a full disk, leaves the
    previous pair untouched). Then the old file is removed, the store moved into place and the
    file last: a kill between these renames leaves the store without its file, which marks the
    pair incomplete (Snakemake reruns the job), never a new store beside an old file.
    """
    path, file = Path(path), Path(file)
    if file.is_dir():
        raise StoreError(f"{file}: is a folder; refusing to replace it")
    tmp = _write_hidden(ds, path, attrs, require_finite=True)
    tmp_file = file.with_name(f".{file.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        for stale in file.parent.glob(f".{file.name}.tmp-*"):
            stale.unlink(missing_ok=True)
        try:
            tmp_file.write_text(text, encoding="utf-8")
        except Exception as exc:
            raise_if_disk_full(tmp_file, exc)
            raise
        file.unlink(missing_ok=True)
        _move_into_place(tmp, path)
        os.replace(tmp_file, file)
    finally:
        tmp_file.unlink(missing_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def verify_store(path: Path) -> None:
    """Every chunk of every array of the store at ``path`` is present and passes its crc32c
    checksum (the codec's last four bytes, little-endian, over the bytes before them)."""
    group = zarr.open_group(path, mode="r", use_consolidated=False)
    for name, array in group.arrays():
        codecs = getattr(array.metadata, "codecs", ())
        if not any(isinstance(c, Crc32cCodec) for c in codecs):
            raise CorruptStoreError(f"{path}: variable {name!r} has no checksums (written by an "
                                    "older sgm?); rerun the stage that wrote it")
        for coords in itertools.product(*(range(n) for n in array.cdata_shape)):
            key = array.metadata.encode_chunk_key(coords)
            chunk = path / array.path / key
            try:
                data = chunk.read_bytes()
            except FileNotFoundError:
                raise CorruptStoreError(f"{path}: variable {name!r}: chunk {key} is missing; "
                                        "the store is damaged (rerun the stage that wrote it)"
                                        ) from None
            if len(data) < 4 or int.from_bytes(data[-4:], "little") != google_crc32c.value(
                    data[:-4]):
                raise CorruptStoreError(f"{path}: variable {name!r}: chunk {key} fails its "
                                        "checksum; the store is damaged (rerun the stage that "
                                        "wrote it)")


def open_store(path: str | Path) -> xr.Dataset:
    """Open a store written by :func:`write_store`; refuse missing, unfinished or damaged ones."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: store does not exist")
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path}: not a Zarr store (no zarr.json)")
    try:
        attrs = dict(zarr.open_group(path, mode="r", use_consolidated=False).attrs)
    except (ValueError, KeyError, OSError) as exc:
        raise StoreError(f"{path}: cannot be opened as a Zarr store ({exc})") from None
    if COMPLETE_ATTR not in attrs:
        raise StoreError(f"{path}: not a store written by sgm (no {COMPLETE_ATTR} attribute)")
    if int(attrs[COMPLETE_ATTR]) != 1:
        raise IncompleteStoreError(f"{path}: store is incomplete (an interrupted write?); rerun")
    verify_store(path)
    with warnings.catch_warnings():
        # Stores from write_store have consolidated metadata.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return xr.open_zarr(path)


def json_attr(ds: xr.Dataset, key: str) -> Any:
    """Read an attribute written by :func:`write_store` as JSON (or a plain value)."""
    value = ds.attrs[key]
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
