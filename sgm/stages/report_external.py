"""Stage ``report-external``: external ``obs.zarr`` + ``posterior.zarr`` → one HTML page.

Reads the observations and members, re-observes the members with the stored observation model
and hands the summaries to :func:`sgm.report.external.write_external_report` (a page without
truth: maps, spread, re-observation consistency).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from sgm.core.observation import ObservationModel
from sgm.io import layout
from sgm.io.outlines import outlines_of
from sgm.io.stores import json_attr, open_store
from sgm.report.external import variable_summary, write_external_report
from sgm.report.figures import map_rows
from sgm.report.page import generated, period, time_label
from sgm.report.posterior import MapGrid, MapRows, sampler_text
from sgm.report.provenance import operator_text


def report_external(
    obs_path: str | Path,
    posterior_path: str | Path,
    out_html: str | Path,
    n_maps: int = 3,
    threshold: float | None = None,
    title: str | None = None,
) -> Path:
    """Write the no-truth report ``out_html`` (and its figures as PNG files beside it).

    ``n_maps`` times evenly spread over the posterior's times are mapped; ``threshold`` (in each
    variable's units, the same for all variables) defaults per variable to the 90th percentile
    of the posterior means. Returns the path of the HTML file.
    """
    obs_store, post = open_store(obs_path), open_store(posterior_path)
    layout.check_same_spec(layout.spec_of(obs_store) or "?",
                           {str(posterior_path): layout.spec_of(post)})
    obs = ObservationModel.from_dict(layout.observation_description(obs_store))
    lat, lon = layout.grid_coords(post)
    index = post["obs_index"].values if "obs_index" in post.coords else None
    sub = obs_store.isel(time=index) if index is not None else obs_store.sel(
        time=post["time"].values)
    times = post["time"].values
    labels = [time_label(t) for t in times]
    rows = map_rows(times.size, n_maps)
    variables = layout.posterior_variables(post)
    entries: dict[str, dict] = {}
    maps: dict[str, MapRows] = {}
    for var in variables:
        units = str(post[var].attrs.get("units", ""))
        ens = post[var].transpose("member", "time", "lat", "lon").values.astype(np.float64)
        y = sub[var].transpose("time", *obs.obs_dims).values.astype(np.float64)
        for name, values in (("posterior", ens), ("observations", y)):
            if not np.isfinite(values).all():
                raise ValueError(f"{var}: the {name} contain NaN or infinite values")
        a_ens = obs.operator.apply(torch.as_tensor(ens)).numpy()
        entries[var] = {"units": units, **variable_summary(ens, y, a_ens, obs.noise[var])}
        mean_field = ens.mean(axis=0)
        thr = float(np.percentile(mean_field, 90)) if threshold is None else float(threshold)
        maps[var] = MapRows(None, y[rows], ens[:, rows], thr, threshold is None)
    grid = MapGrid(lat, lon, layout.observation_positions(obs_store, variables[0]),
                   [labels[i] for i in rows], outlines_of(post))
    spec = post.attrs.get(layout.SPEC) or obs_store.attrs.get(layout.SPEC, "?")
    source = obs_store.attrs.get(layout.SOURCE_FILE, "?")
    title = title or f"sgm posterior for external observations — {spec}, {Path(source).name}"
    return write_external_report(out_html, entries, maps, grid, labels, obs.noise, title,
                                 _provenance(obs_store, post, times, entries),
                                 _raw_provenance(obs_store, post))


def _raw_provenance(obs: xr.Dataset, post: xr.Dataset) -> dict[str, Any]:
    """What the provenance list says, as stored: the stores' sgm_* attributes."""
    def attrs(ds: xr.Dataset) -> dict[str, Any]:
        return {k: json_attr(ds, k) if isinstance(v, str) and v[:1] in "[{" else v
                for k, v in ds.attrs.items() if k.startswith("sgm_")}

    return {"observations": attrs(obs), "posterior": attrs(post)}


def _provenance(obs: xr.Dataset, post: xr.Dataset, times: np.ndarray,
                entries: dict[str, dict]) -> dict[str, Any]:
    """The provenance list: the observations' file, the model and the sampler."""
    description = layout.observation_description(obs)
    return {
        "Data spec": post.attrs.get(layout.SPEC, "—"),
        "Observations file": obs.attrs.get(layout.SOURCE_FILE, "—"),
        "Time slice": json_attr(obs, layout.TIME_SLICE) if layout.TIME_SLICE in obs.attrs
        else "all times",
        "Model hash": post.attrs.get(layout.MODEL_HASH, "—"),
        "Model step": post.attrs.get(layout.MODEL_STEP, "—"),
        "Sampler": sampler_text(json_attr(post, layout.SAMPLER)) if layout.SAMPLER in post.attrs
        else "—",
        "Sampling seed": post.attrs.get(layout.SAMPLE_SEED, "—"),
        "Observations": operator_text(description["operator"], description["noise_std"],
                                      {var: e["units"] for var, e in entries.items()}),
        "Period": period(times),
        "Generated": generated(),
    }
