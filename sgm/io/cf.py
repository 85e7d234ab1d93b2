"""CF decoding that xarray leaves undone, and units.

xarray turns ``_FillValue`` and ``missing_value`` into NaN and applies ``scale_factor`` /
``add_offset`` when it opens a file. It does not apply ``valid_range`` / ``valid_min`` /
``valid_max`` (CF conventions 2.5.1), nor the netCDF library's default fill value of a variable
that declares no ``_FillValue``. :func:`mask_invalid` does both, lazily. Units are checked and
converted by :func:`convert_units`.
"""

from __future__ import annotations

import netCDF4
import numpy as np
import xarray as xr

from sgm.io import layout
from sgm.io import units as u
from sgm.io.errors import SourceError

# Attributes that describe the encoding (now decoded) rather than the values.
ENCODING_ATTRS = frozenset({
    "_FillValue", "missing_value", "valid_range", "valid_min", "valid_max", "scale_factor",
    "add_offset", "_Unsigned", "grid_mapping", "coordinates", "chunksizes", "_ChunkSizes",
    "zlib", "complevel", "shuffle", "fletcher32", "contiguous", "endian", "compressor",
})


def _valid_bounds(da: xr.DataArray) -> tuple[float, float]:
    """(lo, hi) of valid values in decoded units; ±inf where no bound is given.

    CF: a valid_* attribute of the packed type bounds the packed values, so it is unpacked
    with scale_factor/add_offset like the data.
    """
    attrs, enc = da.attrs, da.encoding
    lo, hi = -np.inf, np.inf
    if "valid_range" in attrs:
        lo, hi = (np.asarray(attrs["valid_range"]).ravel().tolist() + [np.inf])[:2]
    lo = attrs.get("valid_min", lo)
    hi = attrs.get("valid_max", hi)
    scale, offset = enc.get("scale_factor"), enc.get("add_offset")
    packed = enc.get("dtype")
    if (scale is not None or offset is not None) and packed is not None:
        unpack = np.dtype(packed).kind in "iu"
        kinds = {np.asarray(b).dtype.kind for b in (lo, hi) if np.isfinite(b)}
        if unpack and kinds <= {"i", "u"}:
            s, o = (1.0 if scale is None else float(scale)), (0.0 if offset is None else
                                                              float(offset))
            lo, hi = sorted((float(lo) * s + o, float(hi) * s + o))
    return float(lo), float(hi)


def mask_invalid(da: xr.DataArray, from_netcdf: bool) -> xr.DataArray:
    """Values outside the valid range, or equal to netCDF's default fill, become NaN (lazily)."""
    lo, hi = _valid_bounds(da)
    keep = None
    if np.isfinite(lo) or np.isfinite(hi):
        keep = (da >= lo) & (da <= hi)
    dtype = da.encoding.get("dtype")
    no_fill = "_FillValue" not in da.encoding and "missing_value" not in da.encoding
    if from_netcdf and no_fill and dtype is not None and np.dtype(dtype).kind == "f":
        default = netCDF4.default_fillvals[np.dtype(dtype).str[1:]]
        unfilled = da != np.asarray(default, dtype=dtype)
        keep = unfilled if keep is None else keep & unfilled
    out = da if keep is None else da.where(keep)
    out.attrs = {k: v for k, v in da.attrs.items() if k not in ENCODING_ATTRS}
    return out


def convert_units(
    da: xr.DataArray, expected: str | None, target: str | None, where: str
) -> xr.DataArray:
    """Check the units attribute against ``expected`` and convert to ``target`` (lazily).

    A variable without a units attribute takes ``expected`` as declared. Errors are
    :class:`SourceError` prefixed with ``where`` (the file and the variable).
    """
    have = da.attrs.get("units")
    if expected is not None:
        if have is not None and not u.same(str(have), expected):
            raise SourceError(f"{where}: has units {have!r} but the spec expects {expected!r}")
        have = have if have is not None else expected
    if target is None or (have is not None and u.same(str(have), target)):
        if have is not None:
            da.attrs["units"] = str(have)
        return da
    if have is None:
        raise SourceError(
            f"{where}: has no units attribute, so it cannot be converted to {target!r} "
            "(declare the source units with units:)"
        )
    try:
        scale, offset = u.factors(str(have), target)
    except u.UnitsError as exc:
        raise SourceError(f"{where}: {exc}") from None
    attrs = dict(da.attrs, units=target, **{layout.SOURCE_UNITS: str(have)})
    out = da * scale + offset if offset else da * scale
    out.attrs = attrs
    return out
