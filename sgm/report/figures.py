"""The figures of the report pages, drawn with matplotlib's Agg canvas (no display needed).

Each function takes arrays (or the metrics of ``metrics.json``) and returns a
:class:`~matplotlib.figure.Figure`; the pages of :mod:`sgm.report.posterior` and
:mod:`sgm.report.external` embed them.
Maps put latitude up and longitude across on the data's own coordinates, with coastlines and
country borders drawn over them when the stage hands in :class:`~sgm.io.outlines.Outlines`
(geographic grids; none for the oracle's grid of indices).
"""

from __future__ import annotations

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from sgm.io.outlines import Outlines
from sgm.report.page import fmt

# Thin dark lines with a light halo: visible on dark (magma) and light (viridis) colours alike.
_HALO = [patheffects.withStroke(linewidth=1.3, foreground="white", alpha=0.6)]
COAST_STYLE = {"colors": "black", "linewidths": 0.55, "path_effects": _HALO, "zorder": 3}
BORDER_STYLE = {"colors": "0.15", "linewidths": 0.35, "linestyles": (0, (3, 1.5)),
                "zorder": 3}
THRESHOLD_COLOUR = "#1f77b4"  # the truth's threshold contour: blue, unlike the black coasts


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches with a constrained layout and an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _edges(c: np.ndarray) -> tuple[float, float]:
    """Outer cell edges of a regular 1-D coordinate c[n] (the extent of pcolormesh 'nearest')."""
    half = 0.5 * (c[1] - c[0]) if c.size > 1 else 0.5
    return float(c[0] - half), float(c[-1] + half)


def draw_outlines(ax: Axes, outlines: Outlines | None) -> None:
    """Coastlines and borders over a map, in its own lon/lat; the axes' limits stay as they are
    (lines are cropped to them). Nothing for None (a grid that is not geographic)."""
    if outlines is None:
        return
    for lines, style, gid in ((outlines.borders, BORDER_STYLE, "borders"),
                              (outlines.coast, COAST_STYLE, "coastlines")):
        if lines:
            collection = LineCollection(list(lines), **style)
            collection.set_gid(gid)
            ax.add_collection(collection, autolim=False)


def outlines_note(outlines: Outlines | None) -> str:
    """A caption's sentence on the lines drawn ('' without outlines); plain text."""
    if outlines is None:
        return ""
    return f" Coastlines (solid) and country borders (dashed): {outlines.source}."


def squared(units: str) -> str:
    """'K²', '(m s-1)²'; '1' for dimensionless."""
    return "1" if units in ("", "1") else f"({units})²" if " " in units else f"{units}²"


def map_rows(n_times: int, n_maps: int) -> np.ndarray:
    """Indices of ``n_maps`` times evenly spread over ``n_times`` (fewer if there are fewer)."""
    return np.unique(np.linspace(0, n_times - 1, max(1, n_maps)).round().astype(int))


def maps_figure(
    var: str,
    units: str,
    lat: np.ndarray,
    lon: np.ndarray,
    truth: np.ndarray | None,
    y: np.ndarray,
    obs_pos: tuple[np.ndarray, np.ndarray],
    ens: np.ndarray,
    labels: list[str],
    threshold: float,
    outlines: Outlines | None = None,
) -> Figure:
    """Rows of panels, one per time: truth[R, H, W] (or None), y[R, *obs], ens[M, R, H, W].

    Truth (when given), observation, posterior mean and members share a colour scale per row;
    then the posterior std and the fraction of members above ``threshold`` (with the truth's
    threshold contour when there is a truth). ``outlines``: coastlines and borders on every
    panel.
    """
    members = min(3, ens.shape[0])
    first = [] if truth is None else ["Truth"]
    titles = [*first, "Observation", "Posterior mean"] + [
        f"Member {i + 1}" for i in range(members)
    ]
    obs_col, n_shared = len(first), len(titles)
    ratios = [1.0] * n_shared + [0.06, 1.0, 0.06, 1.0, 0.06]
    rows = ens.shape[1]
    dlat, dlon = abs(lat[-1] - lat[0]) or 1.0, abs(lon[-1] - lon[0]) or 1.0
    aspect = float(np.clip(dlat / dlon, 0.3, 2.0))
    fig = new_figure(2.2 * (n_shared + 2) + 1.0, (2.0 * aspect + 0.4) * rows + 0.3)
    axes = fig.subplots(rows, len(ratios), width_ratios=ratios, squeeze=False)
    mean, std = ens.mean(axis=0), ens.std(axis=0, ddof=1)
    prob = (ens > threshold).mean(axis=0)
    std_kw = {"vmin": 0.0, "vmax": float(std.max()) or 1.0, "cmap": "magma"}
    for r in range(rows):
        row = axes[r]
        shown = ([] if truth is None else [truth[r]]) + [y[r], mean[r], *ens[:members, r]]
        kw = {
            "vmin": min(np.nanmin(v) for v in shown),
            "vmax": max(np.nanmax(v) for v in shown),
            "cmap": "viridis",
        }
        for c, values in enumerate(shown):
            if c == obs_col and values.ndim == 1:  # point observations
                im = row[c].scatter(
                    obs_pos[1], obs_pos[0], c=values, s=16, edgecolors="k", linewidths=0.3, **kw
                )
                row[c].set_xlim(*_edges(lon)), row[c].set_ylim(*_edges(lat))
            else:
                x_, y_ = (obs_pos[1], obs_pos[0]) if c == obs_col else (lon, lat)
                im = row[c].pcolormesh(x_, y_, values, shading="nearest", **kw)
        fig.colorbar(im, cax=row[n_shared], label=units)
        im = row[n_shared + 1].pcolormesh(lon, lat, std[r], shading="nearest", **std_kw)
        fig.colorbar(im, cax=row[n_shared + 2], label=units)
        ax = row[n_shared + 3]
        im = ax.pcolormesh(lon, lat, prob[r], shading="nearest", vmin=0, vmax=1, cmap="Reds")
        if truth is not None and truth[r].min() < threshold < truth[r].max():
            ax.contour(lon, lat, truth[r], levels=[threshold], colors=THRESHOLD_COLOUR,
                       linewidths=1.0)
        fig.colorbar(im, cax=row[n_shared + 4], label="probability")
        panels = [row[c] for c in range(n_shared)] + [row[n_shared + 1], row[n_shared + 3]]
        for c, ax in enumerate(panels):
            draw_outlines(ax, outlines)
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


def per_variable(entries: dict[str, dict], height: float,
                 least_width: float = 0.0) -> tuple[Figure, list]:
    """A figure with one panel per variable (4.2 inches wide each, and ``least_width`` inches
    in all at least): (figure, [(axes, name, entry), ...])."""
    fig = new_figure(max(4.2 * len(entries), least_width), height)
    axes = fig.subplots(1, len(entries), squeeze=False)[0]
    return fig, [(ax, var, e) for ax, (var, e) in zip(axes, entries.items(), strict=True)]


def rank_histogram_figure(entries: dict[str, dict]) -> Figure:
    fig, panels = per_variable(entries, 3.2)
    for ax, var, e in panels:
        counts = np.asarray(e["ensemble"]["rank_histogram"], dtype=float)
        ax.bar(np.arange(counts.size), counts / counts.sum(), color="C0", width=0.85)
        ax.axhline(1 / counts.size, color="k", ls="--", lw=1, label="flat (calibrated)")
        ax.set(title=var, xlabel="rank of the truth among the members", ylabel="relative frequency")
        ax.legend(fontsize=8)
    return fig


def loss_figure(step: np.ndarray, loss: np.ndarray) -> Figure:
    """The training loss per logged step (and a running mean), log scale."""
    fig = new_figure(7.0, 3.4)
    ax = fig.subplots()
    ax.plot(step, loss, color="C0", alpha=0.35, lw=0.8, label="loss")
    window = max(1, len(loss) // 50)
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(step[window - 1 :], smooth, color="C0", lw=1.8, label=f"running mean ({window})")
    ax.set(yscale="log", xlabel="step", ylabel="denoising loss", title="Training loss")
    ax.legend(fontsize=8)
    return fig


# ------------------------------------------------------------- pages without truth


def _time_ticks(ax: Axes, labels: list[str], most: int = 6) -> None:
    """Label about ``most`` evenly spaced positions 0..T−1 of a time axis with their dates."""
    ticks = np.unique(np.linspace(0, len(labels) - 1, min(most, len(labels))).round().astype(int))
    ax.set_xticks(ticks, [labels[i] for i in ticks], fontsize=7, rotation=20)


def domain_mean_figure(entries: dict[str, dict], labels: list[str]) -> Figure:
    """Domain-mean posterior (member mean, 5–95 % band) against the domain-mean truth and/or
    observation, per time.

    Each entry holds ``members``[M, T] (domain means of the members) and ``units``, and
    ``truth``[T] (drawn as a black line: the test years) and/or ``obs``[T] (black dots: external
    observations), each optional.
    """
    fig, panels = per_variable(entries, 3.6, least_width=9.0)
    t = np.arange(len(labels))
    for ax, var, e in panels:
        lo, hi = np.percentile(e["members"], [5, 95], axis=0)
        ax.fill_between(t, lo, hi, color="C0", alpha=0.25, lw=0, label="members, 5–95 %")
        ax.plot(t, e["members"].mean(axis=0), color="C0", lw=1.5, label="posterior mean")
        if e.get("truth") is not None:
            inside = float(np.mean((lo <= e["truth"]) & (e["truth"] <= hi)))
            ax.plot(t, e["truth"], "k-", lw=1.2, label=f"truth ({100 * inside:.0f} % in band)")
        if e.get("obs") is not None:
            ax.plot(t, e["obs"], "k.", ms=4, label="observation")
        ax.set(title=var, ylabel=f"domain mean [{e['units']}]")
        _time_ticks(ax, labels)
        ax.legend(fontsize=8)
    return fig


def spread_map_figure(entries: dict[str, dict], lat: np.ndarray, lon: np.ndarray,
                      outlines: Outlines | None = None) -> Figure:
    """Maps of the ensemble spread per variable: each entry holds ``spread``[H, W], ``units``;
    ``outlines``: coastlines and borders over them."""
    fig, panels = per_variable(entries, 3.4)
    for ax, var, e in panels:
        im = ax.pcolormesh(lon, lat, e["spread"], shading="nearest", cmap="magma", vmin=0.0)
        draw_outlines(ax, outlines)
        fig.colorbar(im, ax=ax, label=e["units"], shrink=0.85)
        ax.set_aspect("equal", adjustable="box")
        ax.set(title=var, xlabel="lon", ylabel="lat")
    return fig


def reobs_chi2_figure(entries: dict[str, dict], labels: list[str]) -> Figure:
    """Re-observation χ² per degree of freedom per time, with 1 and its sampling range.

    Each entry holds ``chi2``[T] (members pooled), ``overall`` and ``n_obs`` (values per time);
    the band 1 ± 2√(2/n_obs) is the ~95 % range of one consistent member's χ²/dof.
    """
    fig, panels = per_variable(entries, 3.6)
    t = np.arange(len(labels))
    for ax, var, e in panels:
        half = 2.0 * np.sqrt(2.0 / e["n_obs"])
        ax.axhspan(max(1 - half, 1e-2), 1 + half, color="0.85", label="1 ± 2√(2/n)")
        ax.axhline(1.0, color="k", ls="--", lw=1, label="consistent (1)")
        ax.plot(t, e["chi2"], "o-", color="C3", ms=3, lw=1, label="per time")
        ax.set(title=f"{var}: overall χ²/dof = {fmt(e['overall'])}", ylabel="χ² / dof",
               yscale="log")
        _time_ticks(ax, labels)
        ax.legend(fontsize=8)
    return fig


# ------------------------------------------------------------- sampler tuning


def tuning_figure(tuning: dict) -> Figure:
    """Relative fair-CRPS and spread differences from the reference against NFE, per solver
    (the curve of ``sgm tune-sampler``), with the tolerance bands and the chosen setting."""
    fig = new_figure(9.0, 3.2)
    axes = fig.subplots(1, 2)
    lines: dict[str, list[dict]] = {}
    for row in tuning["curve"]:
        name = row["solver"] if row["solver"] == "heun" else f"{row['solver']} order {row['order']}"
        lines.setdefault(name, []).append(row)
    chosen = tuning["chosen"]
    for ax, key, tol, label in ((axes[0], "crps_rel", tuning["tolerances"]["crps"], "fair CRPS"),
                                (axes[1], "spread_rel", tuning["tolerances"]["spread"],
                                 "spread")):
        ax.axhspan(-100 * tol, 100 * tol, color="0.9", label=f"±{100 * tol:g} % tolerance")
        for name, rows in lines.items():
            nfe = [r["nfe"] for r in rows]
            worst = [100 * max(r[key], key=abs) for r in rows]
            ax.plot(nfe, worst, "o-", ms=4, label=name)
        for r in tuning["curve"]:
            if all(r[k] == chosen[k] for k in ("solver", "order", "steps")):
                ax.plot(r["nfe"], 100 * max(r[key], key=abs), "*", ms=14, color="k",
                        label="chosen")
        ax.set(xlabel="network evaluations per member (NFE)",
               ylabel=f"{label} vs reference (%)", xscale="log")
        ax.set_ylim(max(ax.get_ylim()[0], -60), min(ax.get_ylim()[1], 60))
    axes[0].legend(fontsize=7)
    return fig
