"""Stage ``export``: ``posterior.zarr`` → one CF-1.10 NetCDF4 file analysts open in their tools.

The members keep their values, dims (time, member, lat, lon) and float32 type; the file adds
what CF readers (xarray, iris, cf-python, Panoply, CDO, ncview) look for: the member dimension
as a ``realization`` coordinate, latitude/longitude with axes and cell bounds, the time encoded
with its calendar, standard names where the source gave them, ``cell_methods``, and the
posterior's provenance as global attributes (:mod:`sgm.io.cf_export`). The file is compressed,
checksummed (fletcher32) and chunked by time or by pixel (:mod:`sgm.io.chunking`), and written
to a temporary sibling first: a failure leaves no file, or the previous one, behind.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dask
import numpy as np

from sgm.io.cf_export import (
    MEMBER_DIMS,
    cf_posterior,
    check_netcdf_output,
    history_line,
    netcdf_encoding,
    write_netcdf,
)
from sgm.io.chunking import DEFAULT_LAYOUT, check_layout, chunk_dataset
from sgm.io.stores import StoreError, open_store

log = logging.getLogger(__name__)


def export(
    posterior_path: str | Path,
    out_nc: str | Path,
    chunks: str = DEFAULT_LAYOUT,
) -> Path:
    """Write the posterior store ``posterior_path`` as the CF NetCDF4 file ``out_nc``.

    ``chunks``: ``time`` (a few whole maps per chunk, fast maps) or ``pixel`` (every time of a
    block of pixels per chunk, fast series). Returns the path written.
    """
    check_layout(chunks)
    out_nc = check_netcdf_output(out_nc)
    post = open_store(posterior_path)
    variables = [str(v) for v in post.data_vars]
    if not variables:
        raise StoreError(f"{posterior_path}: has no variables; not a posterior store")
    for var in variables:
        if post[var].dims != MEMBER_DIMS:
            raise StoreError(f"{posterior_path}: variable {var!r} has dims {post[var].dims}, "
                             f"not {MEMBER_DIMS}; not a posterior store")
    for var in variables:
        with dask.config.set(scheduler="synchronous"):
            bad = int((~np.isfinite(post[var].data)).sum().compute())
        if bad:
            raise StoreError(f"{posterior_path}: variable {var!r} has {bad} NaN or infinite "
                             "values; refusing to export it")
    history = history_line(f"export --posterior {posterior_path} --out {out_nc} "
                           f"--chunks {chunks}")
    # dask blocks = the file's chunks: every block writes whole chunks, compressed once
    ds = chunk_dataset(cf_posterior(post, history, where=posterior_path), chunks)
    with dask.config.set(scheduler="synchronous"):
        path = write_netcdf(ds, out_nc, netcdf_encoding(ds, chunks))
    log.info("export %s: %d variable(s), %d times × %d members → %s (%s chunks)",
             posterior_path, len(variables), post.sizes["time"], post.sizes["member"], path,
             chunks)
    return path
