"""The evaluation report: a verdict, scores of the ensemble and the baselines, maps of a few test
times, calibration diagnostics, spectra, the Gaussian oracle's scores when present, the sampler
and the training.

The page is meant for an analyst: provenance, the verdict in words (``sgm.report.skill``), a
table of the ensemble's and the baselines' scores with what each one means, maps (truth,
observation, posterior mean, spread, members, exceedance probability), the rank histogram and
spread-skill, radially averaged power spectra.
Everything here works on arrays and the metrics of ``metrics.json``; the ``report`` stage reads
the stores. Figures come from :mod:`sgm.report.figures`, the page from :class:`Page`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgm.io.outlines import Outlines
from sgm.report.figures import (
    domain_mean_figure,
    loss_figure,
    maps_figure,
    outlines_note,
    rank_histogram_figure,
    tuning_figure,
)
from sgm.report.page import Page, fmt, generated, header_html, threshold_text
from sgm.report.provenance import operator_text
from sgm.report.skill import (
    metrics_table,
    selection_figure,
    selection_html,
    spectra_figure,
    spread_skill_figure,
    verdict_html,
)
from sgm.report.tails import qq_figure, reliability_figure, tails_table


@dataclass(frozen=True)
class MapRows:
    """What the maps of one variable show, one row per mapped time.

    truth[R, H, W] (None without truth), y[R, *obs], ens[M, R, H, W]; the exceedance
    threshold, and whether it is the default (the 90th percentile of ``threshold_of``).
    """

    truth: np.ndarray | None
    y: np.ndarray
    ens: np.ndarray
    threshold: float
    default_threshold: bool


@dataclass(frozen=True)
class MapGrid:
    """The grid of the maps: lat[H], lon[W], the observations' (lat, lon)[*obs], row labels,
    and the coastlines and borders drawn on the maps (None: a grid that is not geographic)."""

    lat: np.ndarray
    lon: np.ndarray
    obs_pos: tuple[np.ndarray, np.ndarray]
    labels: list[str]
    outlines: Outlines | None = None


# One metric per line (a trailing backslash continues it):
# key | label | target ("lower", the ideal value or "-") | meaning and what good is.
_METRICS = """
crps | CRPS | lower | Continuous ranked probability score (fair estimator), in the variable's \
units; for a deterministic baseline it equals its MAE. Lower is better.
rmse | RMSE of the mean | lower | Root-mean-square error of the ensemble mean. Lower is better.
mae | MAE of the mean | lower | Mean absolute error of the ensemble mean. Lower is better.
bias | Bias of the mean | 0 | Mean of (ensemble mean − truth). 0 is best.
spread | Spread | - | Root mean ensemble variance; should match the RMSE of the mean.
spread_skill_ratio | Spread/skill | 1 | √((M+1)/M)·spread / RMSE. 1 = calibrated; < 1 \
over-confident (too little spread), > 1 under-confident.
coverage_50 | 50 % coverage | 0.5 | Fraction of truths inside the ensemble's central 50 % \
interval. Good: 0.5.
coverage_90 | 90 % coverage | 0.9 | Fraction of truths inside the central 90 % interval. \
Good: 0.9, but M members reach at most (M−1)/(M+1) (0.882 for 16).
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
DOMAIN_MEAN_TEXT = (
    "Domain mean (unweighted mean over grid cells) per test time: the mean over members "
    "(blue line) and the 5–95 % range of the members (band, a 90 % band) against the domain "
    "mean of the truth (black line; the legend gives the fraction of times inside the band). "
    "A calibrated ensemble's band holds the truth about 90 % of the time (M members at most "
    "(M−1)/(M+1)); a truth outside the band for many consecutive times is a drift the "
    "ensemble does not know about (a climate warmer than the training years, for example)."
)
INTRO = (
    "<p>Scores compare the posterior ensemble with the baselines a statistician would use, on "
    "the test times, in physical units: the operator's own interpolation of the observations, "
    "climatology-anomaly interpolation (the training climatology plus the interpolated "
    "anomaly) and, for linear operators, a Gaussian posterior ensemble whose prior is fitted on "
    "the training years (covariance shrinkage chosen on the validation years). Deterministic "
    "baselines have no spread, so their CRPS is their MAE. In the tables, <b>bold</b> marks "
    "the best value of a row where a best value is defined.</p>"
)


def _oracle_table(o: dict) -> str:
    if "skipped" in o:
        return f"<p>Exact posterior not computed: {html.escape(o['skipped'])}.</p>"
    rows = "".join(
        f"<tr><th>{label}</th><td class='num'>{fmt(o.get(key))}</td>"
        f"<td class='expl'>{html.escape(expl)}</td></tr>"
        for key, label, _, expl in ORACLE_ROWS
    )
    return f"<table><tr><th>Metric</th><th>Value</th><th>Meaning</th></tr>{rows}</table>"


def write_posterior_report(
    out_html: str | Path,
    metrics: dict[str, Any],
    maps: dict[str, MapRows],
    grid: MapGrid,
    loss: tuple[np.ndarray, np.ndarray, str],
    title: str,
    test_period: str,
    tuning: dict[str, Any] | None = None,
    domain_means: dict[str, dict[str, Any]] | None = None,
    all_labels: list[str] | None = None,
) -> Path:
    """Write the evaluation report ``out_html`` (and its figures as PNG files beside it).

    ``loss`` is the training loss log: (step[N], loss[N], the log's file name); ``tuning``
    the output of ``sgm tune-sampler`` when the sampler was tuned; ``domain_means`` per
    variable the domain means of the members [M, T] and of the truth [T] (and ``units``) at
    every test time, labelled by ``all_labels``.
    """
    page = Page()
    entries: dict[str, dict] = metrics["variables"]
    page.add_html("<h2>Verdict</h2>" + "".join(verdict_html(v, e) for v, e in entries.items()))
    for var, e in entries.items():
        rows = maps[var]
        recalibrated = ""
        if "raw_ensemble" in e:
            recalibrated = (" The members were recalibrated: their deviations from the ensemble "
                            "mean inflated by a factor fitted on the validation years (column "
                            "'Before recalibration': the raw members).")
        page.add_html(
            f"<h2>{html.escape(var)} [{html.escape(e['units'])}]</h2>"
            f"<p>{e['n_times']} test times, {e['n_members']} members.{recalibrated}</p>"
            + metrics_table(e, METRIC_ROWS)
        )
        fig = maps_figure(var, e["units"], grid.lat, grid.lon, rows.truth, rows.y, grid.obs_pos,
                          rows.ens, grid.labels, rows.threshold, grid.outlines)
        thr = threshold_text(rows.threshold, e["units"], rows.default_threshold, "the test truth")
        page.add_figure(
            f"maps_{var}.png",
            fig,
            "One row per test time. Truth, observation (on its own grid), posterior mean and "
            "members share the colour scale of their row; the posterior std has its own scale; "
            "the last panel is the fraction of members above the threshold "
            f"{thr}, with the truth's threshold contour in blue."
            + html.escape(outlines_note(grid.outlines)),
        )
        if "oracle" in e:
            page.add_html(
                "<h3>Gaussian oracle: ensemble vs exact posterior</h3>" + _oracle_table(e["oracle"])
            )
            if "pixels" in e["oracle"]:
                page.add_html(f"<p>The grid is too large for dense matrices: exact marginals "
                              f"at {e['oracle']['pixels']} random pixels (matrix-free: FFT and "
                              "conjugate gradients).</p>")
            if "oracle_raw" in e:
                page.add_html("<p>Before recalibration:</p>" + _oracle_table(e["oracle_raw"]))
            if "oracle_tile_overlaps" in e:
                page.add_html("<p>At pixels shared by tiles (where a seam would show), "
                              f"{e['oracle_tile_overlaps']['pixels']} of them:</p>"
                              + _oracle_table(e["oracle_tile_overlaps"]))

    if domain_means:
        page.add_html("<h2>Domain mean over the test period</h2>")
        page.add_figure("domain_mean.png",
                        domain_mean_figure(domain_means, all_labels or []), DOMAIN_MEAN_TEXT)
    page.add_html("<h2>Calibration and spatial structure</h2>")
    page.add_figure(
        "rank_histogram.png",
        rank_histogram_figure(entries),
        "Rank of the truth among the members at every test pixel. Flat (dashed line) is "
        "calibrated; U-shaped means too little spread, ∩-shaped too much, sloped a bias.",
    )
    page.add_figure(
        "spread_skill.png",
        spread_skill_figure(entries),
        "Pixels binned by ensemble spread; RMSE of the ensemble mean per bin. A calibrated "
        "ensemble lies on the dashed diagonal: its spread predicts its error.",
    )
    page.add_figure(
        "spectra.png",
        spectra_figure(entries),
        "Radially averaged power spectra, averaged over test times (and members). Members "
        "should follow the truth at all scales; smooth interpolation loses power at small "
        "scales (high k), blocky fills gain it.",
    )
    page.add_html("<h2>Extremes</h2>" + "".join(
        f"<h3>{html.escape(v)}</h3>" + tails_table(e) for v, e in entries.items()))
    page.add_figure(
        "quantiles.png", qq_figure(entries),
        "Pooled quantiles of every forecast against those of the truth, from the median to the "
        "99.99th percentile: on the diagonal, a forecast's distribution of values matches the "
        "truth's, tail included; below it at the top, the extremes are too weak.",
    )
    page.add_figure(
        "reliability.png", reliability_figure(entries),
        "Reliability of the exceedance probability of the highest tail threshold: the observed "
        "frequency of the event among the pixels given each forecast probability k/M. On the "
        "diagonal, the probabilities can be taken at face value.",
    )
    if tuning is not None:
        page.add_html("<h2>Sampler</h2>" + _tuning_html(tuning))
        page.add_figure(
            "tuning.png", tuning_figure(tuning),
            "How the sampler was chosen (sgm tune-sampler, steps: auto): every candidate and a "
            "high-NFE reference sample the validation split from the same initial noise; the "
            "cheapest candidate whose fair CRPS and spread are within the tolerances (grey "
            "band) of the reference's is used. Curves show the largest relative difference "
            "over variables; candidates dearer than the chosen one are not run.",
        )
    page.add_html("<h2>Training</h2>")
    chosen = metrics.get("model_selection", {})
    if "selection" in chosen:
        page.add_html(selection_html(chosen["selection"], chosen.get("recalibration")))
        page.add_figure("selection.png", selection_figure(chosen["selection"], list(entries)),
                        "Model selection: the validation scores of every snapshot kept during "
                        "training; later snapshots fit the training years better but can be "
                        "over-confident on others.")
    page.add_figure("loss.png", loss_figure(loss[0], loss[1]),
                    f"Denoising loss per step from {html.escape(loss[2])}.")
    raw = {k: v for k, v in metrics.items() if k != "variables"}
    header = header_html(title, _provenance(metrics, test_period), INTRO, raw)
    return page.write(out_html, title, header)


def sampler_text(sampler: dict[str, Any] | str) -> str:
    """The sampler of a posterior in words: 'dpm order 3, 8 steps (8 NFE), 16 members'."""
    if not isinstance(sampler, dict):
        return str(sampler)
    name = sampler.get("solver", sampler.get("name", "?"))
    order = "" if name in ("heun", "edm_heun") else f" order {sampler.get('order')}"
    nfe = f" ({sampler['nfe']} NFE)" if "nfe" in sampler else ""
    method = sampler.get("method", "conditional")
    if method == "onestep":
        return (f"onestep: the distilled generator, one network evaluation per member, "
                f"{sampler.get('members')} members, seed {sampler.get('seed')}")
    return (f"{method}: {name}{order}, {sampler.get('steps')} steps{nfe}, "
            f"{sampler.get('members')} members, seed {sampler.get('seed')}")


def cost_text(cost: dict[str, Any] | None) -> str:
    """What one member cost: '16 network evaluations, 128 Jacobian products, 0.012 s'."""
    if not cost:
        return "—"
    parts = [f"{cost['network_evaluations']:g} network evaluations"
             if "network_evaluations" in cost else f"{cost.get('solver_nfe', '?')} NFE"]
    if cost.get("jacobian_products"):
        parts.append(f"{cost['jacobian_products']:g} Jacobian products")
    if "seconds_per_member" in cost:
        parts.append(f"{cost['seconds_per_member']:.3g} s of sampling")
    return ", ".join(parts)


def _tuning_html(tuning: dict[str, Any]) -> str:
    c, ref = tuning["chosen"], tuning["reference"]
    return (f"<p>Chosen on the validation split ({tuning['n_times']} times × "
            f"{tuning['members']} members): <b>{html.escape(str(c['solver']))}"
            f"{'' if c['solver'] == 'heun' else ' order ' + str(c['order'])}, {c['steps']} "
            f"steps = {c['nfe']} network evaluations per member</b>, against the reference "
            f"{html.escape(str(ref['solver']))} order {ref['order']} with {ref['nfe']} NFE "
            f"(tolerances: fair CRPS within {100 * tuning['tolerances']['crps']:g} %, spread "
            f"within {100 * tuning['tolerances']['spread']:g} %).</p>")


def _provenance(m: dict, test_period: str) -> dict[str, Any]:
    """The provenance list of the page: where the data, the model and the sampler come from."""
    prov = m.get("provenance", {})
    units = {var: e.get("units", "") for var, e in m.get("variables", {}).items()}
    return {
        "Data spec": m.get("spec") or prov.get("sgm_spec", "?"),
        "Model hash": prov.get("sgm_model_hash", "—"),
        "Sampler": sampler_text(prov.get("sgm_sampler", "—")),
        "Sampling seed": prov.get("sgm_seed", "—"),
        "Cost per member": cost_text(m.get("cost")),
        "Observations": operator_text(m.get("operator"), m.get("noise_std"), units),
        "Observation seed": m.get("obs_seed", "—"),
        "Test period": test_period,
        "Generated": generated(),
    }
