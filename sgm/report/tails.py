"""The tails of the report: how the ensemble and every baseline do on extremes.

A table per variable (99th/99.9th-percentile errors of the pooled values, the Wasserstein-1
distance of the pixel-value distributions, CSI and frequency bias of the event "value >
threshold", the Brier score and its reliability part, and, for the heavy-tailed oracle, the
distance to the exact marginal and the zero fraction), a quantile–quantile plot and the
reliability diagram of the highest threshold. Reads the ``tail`` entries of ``metrics.json``
(``sgm.core.tail_scores``).
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sgm.report.figures import per_variable
from sgm.report.page import fmt
from sgm.report.skill import columns


def tails_table(e: dict[str, Any]) -> str:
    """One row per forecast (ensemble, raw ensemble, baselines), the tail scores as columns."""
    cols = columns(e)
    thresholds = e.get("tail_thresholds", [])
    exact = e.get("exact_marginal")
    head = ["q99 error", "q99.9 error", "W₁ (pixel values)"]
    if exact is not None:
        head += ["W₁ to the exact marginal", "zero fraction"]
    for t in thresholds:
        head += [f"CSI > {fmt(t)}", f"freq. bias > {fmt(t)}", f"Brier > {fmt(t)}"]
    rows = []
    for label, scores in cols:
        tail = scores.get("tail")
        if tail is None:
            continue
        cells = [tail["quantiles"].get("q99", {}).get("error"),
                 tail["quantiles"].get("q99.9", {}).get("error"),
                 tail["wasserstein_1"]["pooled"]]
        if exact is not None:
            m = tail.get("exact_marginal", {})
            cells += [m.get("w1_exact"), m.get("zero_fraction")]
        for csi, rel in zip(tail["csi"], tail["reliability"], strict=True):
            cells += [csi["csi"], csi["bias"], rel["brier"]]
        rows.append(f"<tr><th>{html.escape(label)}</th>"
                    + "".join(f"<td class='num'>{fmt(v)}</td>" for v in cells) + "</tr>")
    exact_note = ""
    if exact is not None:
        exact_note = (f" The exact marginal has zero fraction {fmt(exact['zero_fraction'])}, "
                      f"99th percentile {fmt(exact.get('q99'))} and 99.9th "
                      f"{fmt(exact.get('q99.9'))} {html.escape(e['units'])}.")
    return ("<table><tr><th>Forecast</th>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr>" + "".join(rows) + "</table>"
            f"<p class='expl'>Quantile errors: pooled quantile of the forecast minus the truth's "
            f"({html.escape(e['units'])}). CSI (critical success index) and frequency bias of "
            "the event forecast 'exceedance probability ≥ 0.5' (a point forecast: its value); "
            "1 is perfect for both. Brier: of the exceedance probability, lower is better."
            f"{exact_note}</p>")


def qq_figure(entries: dict[str, dict]) -> Figure:
    """Pooled quantiles of every forecast against the truth's, from the median to 1 − 1e-4."""
    fig, panels = per_variable(entries, 3.8)
    for ax, var, e in panels:
        top = 0.0
        for i, (label, scores) in enumerate(columns(e)):
            qq = scores.get("tail", {}).get("qq")
            if not qq:
                continue
            ax.plot(qq["truth"], qq["ensemble"], "o-" if i == 0 else ".--", ms=3,
                    color=f"C{i}", label=label)
            top = max(top, max(qq["truth"]), max(qq["ensemble"]))
        ax.plot([0, top], [0, top], "k-", lw=0.8, label="1:1")
        ax.set(xlabel=f"truth quantile [{e['units']}]", ylabel=f"forecast quantile "
               f"[{e['units']}]", title=f"{var}: quantile–quantile (upper half)")
        ax.legend(fontsize=7)
    return fig


def reliability_figure(entries: dict[str, dict]) -> Figure:
    """Observed frequency against forecast probability of the highest threshold's event."""
    fig, panels = per_variable(entries, 3.8)
    for ax, var, e in panels:
        rel = e["ensemble"].get("tail", {}).get("reliability")
        if not rel:
            continue
        last = rel[-1]
        p, f, n = (np.asarray(last[k], dtype=float) for k in ("probability",
                                                               "observed_frequency", "count"))
        used = n > 0
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="reliable")
        ax.scatter(p[used], f[used], s=10 + 40 * n[used] / n.max(), color="C0", zorder=3,
                   label="ensemble (size: count)")
        ax.axhline(last["base_rate"], color="0.6", lw=0.8, label="base rate")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="forecast probability",
               ylabel="observed frequency",
               title=f"{var} > {fmt(last['threshold'])} {e['units']}: Brier "
                     f"{fmt(last['brier'])} (rel. {fmt(last['reliability'])})")
        ax.legend(fontsize=7)
    return fig
