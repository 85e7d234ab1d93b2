"""Stage ``report``: stores + ``metrics.json`` + ``loss.csv`` → one self-contained HTML page.

The page is meant for an analyst: provenance, a table of the ensemble's and the baseline's
scores with what each one means, maps of a few test times (truth, observation, posterior mean,
spread, members, exceedance probability), the calibration diagnostics (rank histogram,
spread-skill), radially averaged power spectra, the Gaussian oracle's scores when present and the
training loss. Figures are drawn with matplotlib's Agg canvas, embedded as base64 PNG (no
external requests) and also written as PNG files next to the HTML. Everything is rendered in
memory first; nothing is written if any step fails.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from sgm.core.operators import ObservationOperator, build_operator
from sgm.io.stores import json_attr, open_store
from sgm.stages.evaluate import select_test_times

# One metric per line (a trailing backslash continues it):
# key | label | target ("lower", the ideal value or "-") | meaning and what good is.
_METRICS = """
crps | CRPS | lower | Continuous ranked probability score (fair estimator), in the variable's \
units; for the deterministic baseline it equals its MAE. Lower is better.
rmse | RMSE of the mean | lower | Root-mean-square error of the ensemble mean. Lower is better.
mae | MAE of the mean | lower | Mean absolute error of the ensemble mean. Lower is better.
bias | Bias of the mean | 0 | Mean of (ensemble mean − truth). 0 is best.
spread | Spread | - | Root mean ensemble variance; should match the RMSE of the mean.
spread_skill_ratio | Spread/skill | 1 | √((M+1)/M)·spread / RMSE. 1 = calibrated; < 1 \
over-confident (too little spread), > 1 under-confident.
coverage_50 | 50 % coverage | 0.5 | Fraction of truths inside the ensemble's central 50 % \
interval. Good: 0.5.
coverage_90 | 90 % coverage | 0.9 | Fraction of truths inside the central 90 % interval. \
Good: 0.9, but M members reach at most (M−1)/(M+1).
energy_score | Energy score | lower | Multivariate CRPS of each whole field (fair). Lower is better.
spectrum_error | Spectrum error | 0 | Mean |log10 P_forecast(k) − log10 P_truth(k)| over \
wavenumbers: 0 = realistic spatial variability; smooth fields score high.
reobs_chi2 | Re-observation χ² | 1 | mean (A(x) − y)² / η²: ≈ 1 = consistent with the \
observations and their noise; ≫ 1 ignores them, ≪ 1 over-fits their noise.
"""
_ORACLE = """
mean_error_over_std | Mean error / std | - | RMS(ensemble mean − exact mean) / mean exact std; \
Monte-Carlo noise alone gives ≈ 1/√M.
std_ratio_mean | Std ratio (mean) | 1 | Ensemble std / exact std per pixel, averaged. Good: 1.
std_ratio_q05 | Std ratio (5 %) | 1 | 5 % quantile over pixels of that ratio.
std_ratio_q95 | Std ratio (95 %) | 1 | 95 % quantile over pixels of that ratio.
exact_interval_coverage | Exact-interval coverage | 0.9 | Fraction of members inside the exact \
central 90 % interval. Good: 0.9.
crps_ratio | CRPS ratio | 1 | Fair CRPS of the ensemble / expected CRPS of the exact posterior \
(σ/√π). ≥ 1 in expectation; 1 is optimal.
"""


def _rows(table: str) -> list[tuple[str, str, str | float | None, str]]:
    """Parse a metric table above into (key, label, target, meaning) tuples."""
    out = []
    for line in table.strip().splitlines():
        key, label, target, meaning = (part.strip() for part in line.split(" | ", 3))
        goal = None if target == "-" else target if target == "lower" else float(target)
        out.append((key, label, goal, meaning))
    return out


METRIC_ROWS = _rows(_METRICS)
ORACLE_ROWS = _rows(_ORACLE)
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;
max-width:1500px;padding:1em 2em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.3em .6em;
vertical-align:top}th{background:#f3f3f3;text-align:left}td.num{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}td.expl{color:#555;font-size:.9em}
.best{font-weight:700;background:#eef7ee}dl.prov{display:grid;grid-template-columns:max-content
auto;gap:.15em 1em}dl.prov dt{font-weight:600}dl.prov dd{margin:0;font-family:monospace;
word-break:break-all}figure{margin:1em 0}figure img{max-width:100%;height:auto;
border:1px solid #eee}figcaption{color:#444;font-size:.92em;max-width:70em}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _time_label(t: Any) -> str:
    return t.strftime("%Y-%m-%d") if hasattr(t, "strftime") else str(t)[:10]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _edges(c: np.ndarray) -> tuple[float, float]:
    """Outer cell edges of a regular 1-D coordinate c[n] (the extent of pcolormesh 'nearest')."""
    half = 0.5 * (c[1] - c[0]) if c.size > 1 else 0.5
    return float(c[0] - half), float(c[-1] + half)


def _units(units: str) -> str:
    """' K' for a unit to print after a number; '' for dimensionless ('1' or empty)."""
    return "" if units in ("", "1") else f" {units}"


def _squared(units: str) -> str:
    """'K²', '(m s-1)²'; '1' for dimensionless."""
    return "1" if units in ("", "1") else f"({units})²" if " " in units else f"{units}²"


def _obs_positions(
    op: ObservationOperator, obs: xr.Dataset, lat: np.ndarray, lon: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon)[*obs_shape] of every observation.

    Observations on the target grid (dims lat, lon) sit on it; otherwise the ``obs_lat`` /
    ``obs_lon`` coordinates of obs.zarr are used, or else A applied to the lat/lon grids (block
    centres for coarsening, the points themselves for sparse observations).
    """
    lat2d, lon2d = np.meshgrid(lat, lon, indexing="ij")
    if op.obs_dims == ("lat", "lon"):
        return lat2d, lon2d
    if "obs_lat" in obs.coords and "obs_lon" in obs.coords:
        return tuple(obs[c].transpose(*op.obs_dims).values for c in ("obs_lat", "obs_lon"))
    return tuple(op.apply(torch.as_tensor(g, dtype=torch.float64)).numpy() for g in (lat2d, lon2d))


def maps_figure(
    var: str,
    units: str,
    lat: np.ndarray,
    lon: np.ndarray,
    truth: np.ndarray,
    y: np.ndarray,
    obs_pos: tuple[np.ndarray, np.ndarray],
    ens: np.ndarray,
    labels: list[str],
    threshold: float,
) -> Figure:
    """Rows of panels, one per time: truth[R, H, W], y[R, *obs], ens[M, R, H, W].

    Truth, observation, posterior mean and members share a colour scale per row.
    """
    members = min(3, ens.shape[0])
    titles = ["Truth", "Observation", "Posterior mean"] + [
        f"Member {i + 1}" for i in range(members)
    ]
    n_shared = len(titles)
    ratios = [1.0] * n_shared + [0.06, 1.0, 0.06, 1.0, 0.06]
    rows = truth.shape[0]
    dlat, dlon = abs(lat[-1] - lat[0]) or 1.0, abs(lon[-1] - lon[0]) or 1.0
    aspect = float(np.clip(dlat / dlon, 0.3, 2.0))
    fig = _new_figure(2.2 * (n_shared + 2) + 1.0, (2.0 * aspect + 0.4) * rows + 0.3)
    axes = fig.subplots(rows, len(ratios), width_ratios=ratios, squeeze=False)
    mean, std = ens.mean(axis=0), ens.std(axis=0, ddof=1)
    prob = (ens > threshold).mean(axis=0)
    std_kw = {"vmin": 0.0, "vmax": float(std.max()) or 1.0, "cmap": "magma"}
    for r in range(rows):
        row = axes[r]
        shown = [truth[r], y[r], mean[r], *ens[:members, r]]
        kw = {
            "vmin": min(np.nanmin(v) for v in shown),
            "vmax": max(np.nanmax(v) for v in shown),
            "cmap": "viridis",
        }
        for c, values in enumerate(shown):
            if c == 1 and values.ndim == 1:  # point observations
                im = row[c].scatter(
                    obs_pos[1], obs_pos[0], c=values, s=16, edgecolors="k", linewidths=0.3, **kw
                )
                row[c].set_xlim(*_edges(lon)), row[c].set_ylim(*_edges(lat))
            else:
                x_, y_ = (obs_pos[1], obs_pos[0]) if c == 1 else (lon, lat)
                im = row[c].pcolormesh(x_, y_, values, shading="nearest", **kw)
        fig.colorbar(im, cax=row[n_shared], label=units)
        im = row[n_shared + 1].pcolormesh(lon, lat, std[r], shading="nearest", **std_kw)
        fig.colorbar(im, cax=row[n_shared + 2], label=units)
        ax = row[n_shared + 3]
        im = ax.pcolormesh(lon, lat, prob[r], shading="nearest", vmin=0, vmax=1, cmap="Reds")
        if truth[r].min() < threshold < truth[r].max():
            ax.contour(lon, lat, truth[r], levels=[threshold], colors="k", linewidths=0.8)
        fig.colorbar(im, cax=row[n_shared + 4], label="probability")
        panels = [row[c] for c in range(n_shared)] + [row[n_shared + 1], row[n_shared + 3]]
        for c, ax in enumerate(panels):
            ax.set_aspect("equal", adjustable="box")
            ax.tick_params(labelsize=7)
            if r == 0:
                name = (titles + ["Posterior std", f"P({var} > {threshold:.4g})"])[c]
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{labels[r]}\nlat", fontsize=8)
            else:
                ax.tick_params(labelleft=False)
            if r == rows - 1:
                ax.set_xlabel("lon", fontsize=8)
            else:
                ax.tick_params(labelbottom=False)
    return fig


def _per_variable(entries: dict[str, dict], height: float) -> tuple[Figure, list]:
    """A figure with one panel per variable: (figure, [(axes, name, entry), ...])."""
    fig = _new_figure(4.2 * len(entries), height)
    axes = fig.subplots(1, len(entries), squeeze=False)[0]
    return fig, [(ax, var, e) for ax, (var, e) in zip(axes, entries.items(), strict=True)]


def rank_histogram_figure(entries: dict[str, dict]) -> Figure:
    fig, panels = _per_variable(entries, 3.2)
    for ax, var, e in panels:
        counts = np.asarray(e["ensemble"]["rank_histogram"], dtype=float)
        ax.bar(np.arange(counts.size), counts / counts.sum(), color="C0", width=0.85)
        ax.axhline(1 / counts.size, color="k", ls="--", lw=1, label="flat (calibrated)")
        ax.set(title=var, xlabel="rank of the truth among the members", ylabel="relative frequency")
        ax.legend(fontsize=8)
    return fig


def spread_skill_figure(entries: dict[str, dict]) -> Figure:
    fig, panels = _per_variable(entries, 3.6)
    for ax, var, e in panels:
        bins = e["ensemble"]["spread_skill_bins"]
        ax.plot(bins["spread"], bins["rmse"], "o-", color="C0", label="ensemble (binned)")
        top = max(max(bins["spread"]), max(bins["rmse"]), e["baseline"]["rmse"]) * 1.1
        ax.plot([0, top], [0, top], "k--", lw=1, label="spread = RMSE")
        ax.axhline(e["baseline"]["rmse"], color="C1", lw=1, label=f"{e['baseline']['name']} RMSE")
        ax.set(
            xlim=(0, top),
            ylim=(0, top),
            xlabel=f"ensemble spread [{e['units']}]",
            ylabel=f"RMSE of the mean [{e['units']}]",
            title=f"{var}: spread/skill = {_fmt(e['ensemble']['spread_skill_ratio'])}",
        )
        ax.legend(fontsize=8)
    return fig


def spectra_figure(entries: dict[str, dict]) -> Figure:
    fig, panels = _per_variable(entries, 3.6)
    for ax, var, e in panels:
        s = e["spectra"]
        ax.loglog(s["k"], s["truth"], "k-", lw=2, label="truth")
        ax.loglog(s["k"], s["ensemble"], "C0-", label="members")
        ax.loglog(s["k"], s["baseline"], "C1--", label=e["baseline"]["name"])
        ax.set(
            title=var,
            xlabel=f"wavenumber [{s['k_units']}]",
            ylabel=f"power [{_squared(e['units'])}]",
        )
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=8)
    return fig


def loss_figure(loss_csv: Path) -> Figure:
    with open(loss_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{loss_csv}: no training steps")
    step = np.array([float(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    fig = _new_figure(7.0, 3.4)
    ax = fig.subplots()
    ax.plot(step, loss, color="C0", alpha=0.35, lw=0.8, label="loss")
    window = max(1, len(loss) // 50)
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(step[window - 1 :], smooth, color="C0", lw=1.8, label=f"running mean ({window})")
    ax.set(yscale="log", xlabel="step", ylabel="denoising loss", title="Training loss")
    ax.legend(fontsize=8)
    return fig


def _metrics_table(e: dict) -> str:
    ens, base = e["ensemble"], e["baseline"]
    out = [
        f"<table><tr><th>Metric</th><th>Ensemble ({e['n_members']} members)</th>"
        f"<th>Baseline ({html.escape(base['name'])})</th><th>Meaning</th></tr>"
    ]
    for key, label, target, expl in METRIC_ROWS:
        a, b = ens.get(key), base.get(key)
        best = None
        if isinstance(a, float) and isinstance(b, float) and target is not None and a != b:
            da, db = (a, b) if target == "lower" else (abs(a - target), abs(b - target))
            best = 0 if da < db else 1 if db < da else None
        cells = "".join(
            f"<td class='num{' best' if best == i else ''}'>{_fmt(v)}</td>"
            for i, v in enumerate((a, b))
        )
        out.append(f"<tr><th>{label}</th>{cells}<td class='expl'>{html.escape(expl)}</td></tr>")
    return "".join(out) + "</table>"


def _oracle_table(o: dict) -> str:
    if "skipped" in o:
        return f"<p>Exact posterior not computed: {html.escape(o['skipped'])}.</p>"
    rows = "".join(
        f"<tr><th>{label}</th><td class='num'>{_fmt(o.get(key))}</td>"
        f"<td class='expl'>{html.escape(expl)}</td></tr>"
        for key, label, _, expl in ORACLE_ROWS
    )
    return f"<table><tr><th>Metric</th><th>Value</th><th>Meaning</th></tr>{rows}</table>"


def _figure_html(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(name)}'>"
        f"<figcaption>{caption} <em>({html.escape(name)})</em></figcaption></figure>"
    )


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
) -> Path:
    """Write the HTML report ``out_html`` and its figures as PNG files beside it.

    ``n_maps`` test times evenly spread over the test period are mapped; ``threshold`` (in each
    variable's units, the same for all variables) defaults per variable to the 90th percentile
    of the test truth. Returns the path of the HTML file.
    """
    fields, obs, post = open_store(fields_path), open_store(obs_path), open_store(posterior_path)
    m = json.loads(Path(metrics_path).read_text())
    loss_csv, out_html = Path(loss_csv), Path(out_html)
    lat, lon = fields["lat"].values, fields["lon"].values
    op = build_operator(json_attr(obs, "sgm_operator"), (lat.size, lon.size))
    obs_pos = _obs_positions(op, obs, lat, lon)
    times = select_test_times(fields, post, posterior_path)
    t_idx = np.unique(np.linspace(0, times.size - 1, max(1, n_maps)).round().astype(int))
    labels = [_time_label(t) for t in times.values[t_idx]]
    figures: list[tuple[str, bytes]] = []
    body: list[str] = []

    def add(name: str, fig: Figure, caption: str) -> None:
        png = _png(fig)
        figures.append((name, png))
        body.append(_figure_html(name, png, caption))

    entries: dict[str, dict] = m["variables"]
    for var, e in entries.items():
        truth_all = fields[var].sel(time=times).transpose("time", "lat", "lon").values
        thr = float(np.percentile(truth_all, 90)) if threshold is None else float(threshold)
        thr_text = (
            f"{thr:.4g}{_units(e['units'])} (the 90th percentile of the test truth)"
            if threshold is None
            else f"{thr:.4g}{_units(e['units'])} (given)"
        )
        sel = times.isel(time=t_idx)
        ens = post[var].sel(time=sel).transpose("member", "time", "lat", "lon").values
        y = obs[var].sel(time=sel).transpose("time", *op.obs_dims).values
        body.append(
            f"<h2>{html.escape(var)} [{html.escape(e['units'])}]</h2>"
            f"<p>{e['n_times']} test times, {e['n_members']} members.</p>" + _metrics_table(e)
        )
        fig = maps_figure(var, e["units"], lat, lon, truth_all[t_idx], y, obs_pos, ens, labels, thr)
        add(
            f"maps_{var}.png",
            fig,
            "One row per test time. Truth, observation (on its own grid), posterior mean and "
            "members share the colour scale of their row; the posterior std has its own scale; "
            f"the last panel is the fraction of members above the threshold {thr_text}, with "
            "the truth's threshold contour in black.",
        )
        if "oracle" in e:
            body.append(
                "<h3>Gaussian oracle: ensemble vs exact posterior</h3>" + _oracle_table(e["oracle"])
            )

    body.append("<h2>Calibration and spatial structure</h2>")
    add(
        "rank_histogram.png",
        rank_histogram_figure(entries),
        "Rank of the truth among the members at every test pixel. Flat (dashed line) is "
        "calibrated; U-shaped means too little spread, ∩-shaped too much, sloped a bias.",
    )
    add(
        "spread_skill.png",
        spread_skill_figure(entries),
        "Pixels binned by ensemble spread; RMSE of the ensemble mean per bin. A calibrated "
        "ensemble lies on the dashed diagonal: its spread predicts its error.",
    )
    add(
        "spectra.png",
        spectra_figure(entries),
        "Radially averaged power spectra, averaged over test times (and members). Members "
        "should follow the truth at all scales; smooth interpolation loses power at small "
        "scales (high k), blocky fills gain it.",
    )
    body.append("<h2>Training</h2>")
    add("loss.png", loss_figure(loss_csv), f"Denoising loss per step from {loss_csv.name}.")

    head = _header(m, post, title, times)
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(head[0])}</title><style>{CSS}</style></head><body>"
        f"{head[1]}{''.join(body)}</body></html>"
    )
    out_html.parent.mkdir(parents=True, exist_ok=True)
    for name, png in figures:
        (out_html.parent / name).write_bytes(png)
    tmp = out_html.with_name(f".{out_html.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out_html)
    finally:
        tmp.unlink(missing_ok=True)
    return out_html


def _header(m: dict, post: xr.Dataset, title: str | None, times: xr.DataArray) -> tuple[str, str]:
    """(title, HTML of the title and provenance list)."""
    spec = m.get("spec") or post.attrs.get("sgm_spec", "?")
    title = title or f"sgm posterior report — {spec}"
    prov = m.get("provenance", {})
    items = {
        "Data spec": spec,
        "Model hash": prov.get("sgm_model_hash", "—"),
        "Sampler": json.dumps(prov.get("sgm_sampler", "—")),
        "Sampling seed": prov.get("sgm_seed", "—"),
        "Operator": json.dumps(m.get("operator")),
        "Noise std": json.dumps(m.get("noise_std")),
        "Test period": f"{_time_label(times.values[0])} – {_time_label(times.values[-1])} "
        f"({times.size} times)",
        "Generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    rows = "".join(f"<dt>{k}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items())
    intro = (
        "<p>Scores compare the posterior ensemble with a deterministic interpolation of the "
        "observations (the baseline) on the test times, in physical units. In the tables, "
        "<b>bold</b> marks the better of the two where a better value is defined.</p>"
    )
    return title, f"<h1>{html.escape(title)}</h1><dl class='prov'>{rows}</dl>{intro}"
