"""Recognise source file formats and detect truncated files before any reader guesses.

netCDF-C opens a truncated classic (NetCDF3) file without complaint and reads the missing
records as zeros, and a truncated HDF5 file may only fail deep inside a later read. Both formats
record how long the file must be, so a truncated file is caught here by comparing that length
with the file's size:

- HDF5 (NetCDF4): the superblock's *end-of-file address* (HDF5 file format specification,
  section II.A, superblock versions 0–3).
- NetCDF3 (CDF-1, CDF-2, CDF-5): the header gives every variable's offset (``begin``) and size
  (``vsize``) and the number of records; the file must reach the end of the last variable's
  last record (NetCDF classic format specification).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zattrs")

# NetCDF3 header tags and the byte size of each external type (NC_BYTE … NC_UINT64).
_NC_DIMENSION, _NC_VARIABLE, _NC_ATTRIBUTE = 0x0A, 0x0B, 0x0C
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}
_STREAMING = 0xFFFFFFFF


class FormatError(ValueError):
    """The file is not a readable NetCDF file or Zarr store; the message says why."""


def sniff(path: Path) -> str:
    """The format of ``path``: ``"zarr"``, ``"hdf5"`` or ``"netcdf3"``; raises FormatError."""
    if path.is_dir():
        if any((path / name).exists() for name in ZARR_MARKERS):
            return "zarr"
        raise FormatError("is a folder but not a Zarr store (no zarr.json or .zgroup)")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic == HDF5_SIGNATURE:
        return "hdf5"
    if magic[:3] == b"CDF" and magic[3:4] in (b"\x01", b"\x02", b"\x05"):
        return "netcdf3"
    if not magic:
        raise FormatError("is empty")
    raise FormatError("is not a NetCDF file or Zarr store (unrecognised header)")


def check_complete(path: Path, kind: str) -> None:
    """Raise FormatError if the file at ``path`` is shorter than its header says."""
    if kind == "zarr":
        return
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            expected = _hdf5_length(fh) if kind == "hdf5" else _netcdf3_length(fh)
    except (struct.error, EOFError, ValueError) as exc:
        raise FormatError(f"is truncated or corrupt (unreadable header: {exc})") from None
    if expected is not None and size < expected:
        raise FormatError(
            f"is truncated ({size} bytes, but its header says {expected} bytes)"
        )


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise EOFError("header ends early")
    return data


def _hdf5_length(fh: BinaryIO) -> int | None:
    """End-of-file address from an HDF5 superblock at offset 0 (None if not found there)."""
    head = _read(fh, 16)
    version = head[8]
    if version in (0, 1):
        size_of_offsets = head[13]
        eof_at = (24 if version == 0 else 28) + 2 * size_of_offsets
    elif version in (2, 3):
        size_of_offsets = head[9]
        eof_at = 12 + 2 * size_of_offsets
    else:
        return None
    fh.seek(eof_at)
    return int.from_bytes(_read(fh, size_of_offsets), "little")


class _Header:
    """A cursor over a NetCDF3 header (big-endian, 4-byte aligned)."""

    def __init__(self, fh: BinaryIO, version: int) -> None:
        self.fh = fh
        self.offset_size = 4 if version == 1 else 8  # begin: 32-bit in CDF-1 only
        self.count_size = 8 if version == 5 else 4  # counts and lengths: 64-bit in CDF-5

    def count(self) -> int:
        data = _read(self.fh, self.count_size)
        return int.from_bytes(data, "big")

    def offset(self) -> int:
        return int.from_bytes(_read(self.fh, self.offset_size), "big")

    def tag(self) -> int:
        return int.from_bytes(_read(self.fh, 4), "big")

    def name(self) -> None:
        n = self.count()
        _read(self.fh, n + (-n) % 4)

    def attributes(self) -> None:
        tag, n = self.tag(), self.count()
        if tag not in (0, _NC_ATTRIBUTE):
            raise ValueError("bad attribute list tag")
        for _ in range(n):
            self.name()
            nc_type = self.tag()
            nbytes = self.count() * _TYPE_SIZE[nc_type]
            _read(self.fh, nbytes + (-nbytes) % 4)


def _netcdf3_length(fh: BinaryIO) -> int | None:
    """Bytes a NetCDF3 file must have: the end of the last variable's last record."""
    version = _read(fh, 4)[3]
    h = _Header(fh, version)
    numrecs = h.count()
    if numrecs == _STREAMING or (h.count_size == 4 and numrecs == 0xFFFFFFFF):
        return None  # written as a stream: the record count is not final
    tag, n_dims = h.tag(), h.count()
    if tag not in (0, _NC_DIMENSION):
        raise ValueError("bad dimension list tag")
    record_dims = set()
    for i in range(n_dims):
        h.name()
        if h.count() == 0:
            record_dims.add(i)
    h.attributes()
    tag, n_vars = h.tag(), h.count()
    if tag not in (0, _NC_VARIABLE):
        raise ValueError("bad variable list tag")
    fixed_end, records = 0, []
    for _ in range(n_vars):
        h.name()
        dimids = [h.count() for _ in range(h.count())]
        h.attributes()
        h.tag()  # nc_type
        vsize, begin = h.count(), h.offset()
        if h.count_size == 4 and vsize == 0xFFFFFFFF:
            return None  # a variable over 4 GiB: its size is not recorded
        if dimids and dimids[0] in record_dims:
            records.append((begin, vsize))
        else:
            fixed_end = max(fixed_end, begin + vsize)
    if not records or numrecs == 0:
        return fixed_end
    # One record holds a slab of every record variable; a lone one is not padded.
    record_size = sum(v for _, v in records)
    return max(fixed_end, max(b + (numrecs - 1) * record_size + v for b, v in records))
