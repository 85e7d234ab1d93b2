"""The report on external observations: a posterior without truth.

External observations (``sgm observe-external``) have no truth, so this page cannot score skill
or calibration. It shows what can be shown without truth: maps of the observation, the
posterior mean, spread, members and exceedance probabilities for a few times; the domain-mean
posterior over time against the domain-mean observation; the ensemble spread map; and
re-observation consistency, χ² per degree of freedom of A(member) against y with the stored
noise std, overall and per time. Everything here works on arrays; the ``report-external`` stage
reads the stores.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from sgm.core import metrics
from sgm.report.figures import (
    domain_mean_figure,
    maps_figure,
    outlines_note,
    reobs_chi2_figure,
    spread_map_figure,
)
from sgm.report.page import Page, fmt, header_html, threshold_text, unit_suffix
from sgm.report.posterior import MapGrid, MapRows

INTRO = (
    "<p>These observations come from a file the model was not trained on, and there is no "
    "truth for them: this page cannot score skill or calibration (the report on the test "
    "years does). It shows the posterior ensemble, its spread, and whether its members "
    "reproduce the observations they were conditioned on.</p>"
)
CHI2_TEXT = (
    "Re-observation consistency: every member x<sub>m</sub> is observed again with the "
    "noise-free operator, and χ²/dof is the mean over members and observed values of "
    "(A(x<sub>m</sub>) − y)² / η², with η the observation noise std stored with the model "
    "({eta}). Members consistent with the observation give ≈ 1: they differ from y by about "
    "the observation noise, as the truth would. ≫ 1 means they ignore or contradict y (for "
    "example a climate far from the training data); ≪ 1 that they copy its noise. Block means "
    "computed without noise (as <code>sgm coarsen-file</code> makes them) give about the same "
    "value when η is small against the variability of the coarse fields."
)


def variable_summary(
    ens: np.ndarray, y: np.ndarray, a_ens: np.ndarray, eta: float
) -> dict[str, Any]:
    """Everything the page shows of one variable: ens[M, T, H, W], y[T, *obs], a_ens[M, T, *obs].

    Returns domain means (members [M, T], obs [T]), the spread map [H, W] and its root mean,
    χ²/dof overall and per time [T], and the number of observed values per time.
    """
    n_times = ens.shape[1]
    return {
        "members": ens.mean(axis=(2, 3)),
        "obs": y.reshape(n_times, -1).mean(axis=1),
        "spread": np.sqrt(ens.var(axis=0, ddof=1).mean(axis=0)),
        "spread_mean": float(np.sqrt(ens.var(axis=0, ddof=1).mean())),
        "overall": metrics.reobs_chi2(a_ens, y, eta),
        "chi2": np.array([metrics.reobs_chi2(a_ens[:, t], y[t], eta) for t in range(n_times)]),
        "n_obs": int(y[0].size),
    }


def _summary_table(entries: dict[str, dict]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(var)}</th><td class='num'>{e['chi2'].size}</td>"
        f"<td class='num'>{e['members'].shape[0]}</td>"
        f"<td class='num'>{fmt(e['spread_mean'])}{html.escape(unit_suffix(e['units']))}</td>"
        f"<td class='num'>{fmt(e['overall'])}</td>"
        f"<td class='num'>{fmt(float(e['chi2'].min()))} – {fmt(float(e['chi2'].max()))}</td></tr>"
        for var, e in entries.items()
    )
    return (
        "<table><tr><th>Variable</th><th>Times</th><th>Members</th><th>Spread</th>"
        "<th>Re-observation χ²/dof</th><th>χ²/dof per time (min – max)</th></tr>"
        f"{rows}</table><p class='expl'>Spread: the square root of the mean member variance "
        "over all grid cells and times. Ideal χ²/dof: 1.</p>"
    )


def write_external_report(
    out_html: str | Path,
    entries: dict[str, dict[str, Any]],
    maps: dict[str, MapRows],
    grid: MapGrid,
    all_labels: list[str],
    noise: dict[str, float],
    title: str,
    provenance: dict[str, Any],
    raw_provenance: dict[str, Any] | None = None,
) -> Path:
    """Write the no-truth report ``out_html`` (and its figures as PNG files beside it).

    ``entries`` hold each variable's units and :func:`variable_summary`; ``all_labels`` label
    every time of the series figures; ``provenance`` is the header's list in words and
    ``raw_provenance`` (optional) what it comes from, shown folded as JSON.
    """
    page = Page()
    outlines = grid.outlines
    lines = html.escape(outlines_note(outlines))
    for var, e in entries.items():
        rows = maps[var]
        page.add_html(f"<h2>{html.escape(var)} [{html.escape(e['units'])}]</h2>")
        thr = threshold_text(rows.threshold, e["units"], rows.default_threshold,
                             "the posterior means")
        page.add_figure(
            f"maps_{var}.png",
            maps_figure(var, e["units"], grid.lat, grid.lon, None, rows.y, grid.obs_pos,
                        rows.ens, grid.labels, rows.threshold, outlines),
            "One row per time. Observation (on its own grid), posterior mean and members share "
            "the colour scale of their row; the posterior std has its own scale; the last panel "
            f"is the fraction of members above the threshold {thr}.{lines}",
        )

    page.add_html("<h2>Spread and consistency with the observations</h2>"
                  + _summary_table(entries))
    page.add_figure(
        "domain_mean.png",
        domain_mean_figure(entries, all_labels),
        "Domain mean (unweighted mean over grid cells) per time: the mean over members (line) "
        "and the 5–95 % range of the members (band, a 90 % band) against the domain mean of the "
        "observation (dots). For block averages the two means are directly comparable: a member "
        "consistent with y differs from it by about η/√n (n observed values).",
    )
    page.add_figure(
        "spread_map.png",
        spread_map_figure(entries, grid.lat, grid.lon, outlines),
        "Ensemble spread per grid cell: the square root of the time-mean member variance. It "
        "shows where the fine-scale field is uncertain given the coarse observation; whether it "
        f"matches the actual error needs truth (see the report on the test years).{lines}",
    )
    eta_text = ", ".join(f"{v}: {fmt(float(noise[v]))}{unit_suffix(e['units'])}"
                         for v, e in entries.items())
    page.add_figure(
        "reobs_chi2.png",
        reobs_chi2_figure(entries, all_labels),
        CHI2_TEXT.format(eta=html.escape(eta_text)) + " Per time, the grey band 1 ± 2√(2/n) "
        "is the ~95 % range of one consistent member's χ²/dof (n observed values per time); "
        "the mean over members varies less.",
    )
    return page.write(out_html, title, header_html(title, provenance, INTRO, raw_provenance))
