"""Stage ``report``: stores + ``metrics.json`` + ``loss.csv`` → one self-contained HTML page.

Reads the test times' truth, observations and members that the maps show and hands them, with
the metrics, to :func:`sgm.report.posterior.write_posterior_report`. Nothing is written if a
step fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sgm.io import layout
from sgm.io.losslog import read_loss_csv
from sgm.io.metricsfile import read_metrics
from sgm.io.outlines import outlines_of
from sgm.io.stores import StoreError, open_store
from sgm.report.figures import map_rows
from sgm.report.page import period, time_label
from sgm.report.posterior import MapGrid, MapRows, write_posterior_report


def read_tuning(path: str | Path) -> dict[str, Any]:
    """The output of ``sgm tune-sampler``; one sentence if it is not."""
    try:
        tuning = json.loads(Path(path).read_text(encoding="utf-8"))
        if not {"chosen", "curve", "reference", "tolerances"} <= set(tuning):
            raise KeyError("chosen, curve, reference, tolerances")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a tuning file written by sgm tune-sampler ({exc})"
                         ) from None
    return tuning


def report(
    fields_path: str | Path,
    obs_path: str | Path,
    posterior_path: str | Path,
    metrics_path: str | Path,
    loss_csv: str | Path,
    out_html: str | Path,
    n_maps: int = 3,
    threshold: float | None = None,
    title: str | None = None,
    tuning: str | Path | None = None,
) -> Path:
    """Write the HTML report ``out_html`` and its figures as PNG files beside it.

    ``n_maps`` test times evenly spread over the test period are mapped; ``threshold`` (in each
    variable's units, the same for all variables) defaults per variable to the 90th percentile
    of the test truth. ``tuning`` (tuning.json) adds how the sampler was chosen. Returns the
    path of the HTML file.
    """
    fields, obs, post = open_store(fields_path), open_store(obs_path), open_store(posterior_path)
    m = read_metrics(metrics_path)
    spec = layout.spec_of(fields) or "?"
    layout.check_same_spec(spec, {str(obs_path): layout.spec_of(obs),
                                  str(posterior_path): layout.spec_of(post),
                                  str(metrics_path): m.get("spec")})
    unknown = [v for v in m["variables"] if v not in post.data_vars or v not in fields.data_vars]
    if unknown:
        raise StoreError(f"{metrics_path}: scores variable(s) {', '.join(unknown)} that "
                         f"{posterior_path} or {fields_path} lack")
    steps, losses = read_loss_csv(loss_csv)
    lat, lon = layout.grid_coords(fields)
    times = layout.test_times(fields, post, posterior_path)
    t_idx = map_rows(times.size, n_maps)
    sel = times.isel(time=t_idx)
    maps, domain_means = {}, {}
    for var in m["variables"]:
        truth_all = fields[var].sel(time=times).transpose("time", "lat", "lon").values
        domain_means[var] = {
            "units": m["variables"][var]["units"],
            "truth": truth_all.mean(axis=(1, 2), dtype=np.float64),
            "members": post[var].sel(time=times).mean(("lat", "lon"), dtype=np.float64)
            .transpose("member", "time").values,
        }
        thr = float(np.percentile(truth_all, 90)) if threshold is None else float(threshold)
        maps[var] = MapRows(
            truth=truth_all[t_idx],
            y=obs[var].sel(time=sel).values,
            ens=post[var].sel(time=sel).transpose("member", "time", "lat", "lon").values,
            threshold=thr,
            default_threshold=threshold is None,
        )
    first = next(iter(m["variables"]))
    grid = MapGrid(lat, lon, layout.observation_positions(obs, first),
                   [time_label(t) for t in times.values[t_idx]], outlines_of(fields))
    title = title or f"sgm posterior report — {spec}"
    tuned = read_tuning(tuning) if tuning is not None else None
    return write_posterior_report(out_html, m, maps, grid, (steps, losses, Path(loss_csv).name),
                                  title, period(times.values), tuned, domain_means,
                                  [time_label(t) for t in times.values])
