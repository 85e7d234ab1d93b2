"""What an analyst reads first: a verdict in words, each judgement with its threshold, and the
scores of the ensemble beside every baseline (the operator's interpolation, climatology-anomaly
interpolation, the Gaussian posterior), with the figures that compare them.

Everything here reads one variable's entry of ``metrics.json`` (``sgm evaluate``).
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from sgm.report.figures import per_variable, squared
from sgm.report.page import fmt

# The verdict's thresholds (one place, shown on the page beside each judgement).
SPREAD_SKILL_RANGE = (0.9, 1.1)
COVERAGE_TOLERANCE = 0.03
RANK_EDGE_RANGE = (0.7, 1.3)  # truth in the two outermost ranks, over its calibrated share
RANK_BIAS_LIMIT = 0.05  # |mean normalised rank − 0.5|
CHI2_RANGE = (0.8, 1.25)


def rank_shape(counts: list[int]) -> tuple[float, float]:
    """(edge ratio, rank bias) of a rank histogram over M + 1 ranks: the truth's share in the
    two outermost ranks over 2/(M + 1) (> 1: U-shaped, too little spread), and its mean
    rank normalised to [0, 1] minus 0.5 (> 0: the truth above the members, a low bias)."""
    c = np.asarray(counts, dtype=float)
    edge = (c[0] + c[-1]) / c.sum() / (2 / c.size)
    bias = float((np.arange(c.size) * c).sum() / c.sum() / (c.size - 1) - 0.5)
    return float(edge), bias


def verdict(e: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(aspect, finding, threshold) lines for one variable's metrics entry."""
    ens, out = e["ensemble"], []
    ssr = ens["spread_skill_ratio"]
    lo, hi = SPREAD_SKILL_RANGE
    word = "calibrated" if lo <= ssr <= hi else "over-confident (too little spread)" \
        if ssr < lo else "under-confident (too much spread)"
    out.append(("Spread", f"{word}: spread/skill {fmt(ssr)}",
                f"calibrated if spread/skill is in [{lo}, {hi}]"))
    for key, level in (("coverage_90", 90), ("coverage_50", 50)):
        cov, nominal = ens[key], e.get("nominal_coverage", {}).get(key)
        if cov is None or nominal is None:
            continue
        ok = abs(cov - nominal) <= COVERAGE_TOLERANCE
        side = "as it should" if ok else "too few (intervals too narrow)" if cov < nominal \
            else "too many (intervals too wide)"
        out.append((f"{level} % intervals", f"cover {fmt(cov)} of the truths, {side}",
                    f"nominal {fmt(nominal)} for {e['n_members']} members, ± "
                    f"{COVERAGE_TOLERANCE}"))
    if ens.get("rank_histogram"):
        edge, bias = rank_shape(ens["rank_histogram"])
        shape = "flat" if RANK_EDGE_RANGE[0] <= edge <= RANK_EDGE_RANGE[1] else \
            "U-shaped (too little spread)" if edge > RANK_EDGE_RANGE[1] else \
            "∩-shaped (too much spread)"
        sloped = abs(bias) > RANK_BIAS_LIMIT
        tilt = f", sloped: the members are biased {'low' if bias > 0 else 'high'}" if sloped \
            else ""
        out.append(("Rank histogram", f"{shape}{tilt} (edge ratio {fmt(edge)}, rank bias "
                    f"{bias:+.3f})", f"flat if the edge ratio is in {list(RANK_EDGE_RANGE)} "
                    f"and |rank bias| ≤ {RANK_BIAS_LIMIT}"))
    for name, b in e.get("baselines", {}).items():
        skill = 1.0 - ens["crps"] / b["crps"] if b["crps"] else float("nan")
        better = "better" if skill > 0 else "worse"
        out.append((f"Skill vs {name}", f"CRPS {abs(100 * skill):.1f} % {better} "
                    f"({fmt(ens['crps'])} vs {fmt(b['crps'])} {e['units']})",
                    "CRPS skill 1 − CRPS/CRPS_baseline > 0: better"))
    chi2 = ens.get("reobs_chi2")
    if chi2 is not None:
        lo, hi = CHI2_RANGE
        word = "consistent with the observations" if lo <= chi2 <= hi else \
            "further from the observations than their noise" if chi2 > hi else \
            "closer to the observations than their noise (over-fits it)"
        out.append(("Re-observation", f"{word}: χ²/dof {fmt(chi2)}",
                    f"consistent if χ²/dof is in [{lo}, {hi}]"))
    return out


def verdict_html(var: str, e: dict[str, Any]) -> str:
    """The verdict of one variable as a short table (findings escaped)."""
    best = e.get("best_baseline")
    headline = ""
    if best is not None:
        headline = (f"<p class='verdict'><b>{html.escape(var)}</b>: CRPS skill against the best "
                    f"baseline ({html.escape(best)}) is <b>{100 * e['crps_skill']:.1f} %</b>.</p>")
    rows = "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(f)}</td>"
                   f"<td class='expl'>{html.escape(t)}</td></tr>" for a, f, t in verdict(e))
    return (f"{headline}<table><tr><th>Aspect</th><th>Finding</th><th>Judged by</th></tr>{rows}"
            "</table>")


def columns(e: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, scores) of the ensemble, the raw ensemble when recalibrated, each baseline."""
    cols = [(f"Ensemble ({e['n_members']} members)", e["ensemble"])]
    if "raw_ensemble" in e:
        cols.append(("Before recalibration", e["raw_ensemble"]))
    cols += [(name, scores) for name, scores in e.get("baselines", {}).items()]
    return cols


def metrics_table(e: dict[str, Any], rows: list[tuple[str, str, Any, str]]) -> str:
    """Every metric row for every column; bold marks the best value of a row."""
    cols = columns(e)
    out = ["<table><tr><th>Metric</th>"
           + "".join(f"<th>{html.escape(label)}</th>" for label, _ in cols)
           + "<th>Meaning</th></tr>"]
    for key, label, target, expl in rows:
        values = [scores.get(key) for _, scores in cols]
        best = None
        numbers = [v for v in values if isinstance(v, float)]
        if target is not None and len(numbers) > 1:
            dist = [(v if target == "lower" else abs(v - target)) if isinstance(v, float)
                    else np.inf for v in values]
            if dist.count(min(dist)) == 1:
                best = int(np.argmin(dist))
        cells = "".join(f"<td class='num{' best' if i == best else ''}'>{fmt(v)}</td>"
                        for i, v in enumerate(values))
        out.append(f"<tr><th>{label}</th>{cells}<td class='expl'>{html.escape(expl)}</td></tr>")
    return "".join(out) + "</table>"


def spread_skill_figure(entries: dict[str, dict]) -> Figure:
    """Binned spread against RMSE of the ensemble, with the baselines' RMSE as lines."""
    fig, panels = per_variable(entries, 3.6)
    for ax, var, e in panels:
        bins = e["ensemble"]["spread_skill_bins"]
        ax.plot(bins["spread"], bins["rmse"], "o-", color="C0", label="ensemble (binned)")
        rmses = {n: b["rmse"] for n, b in e.get("baselines", {}).items()}
        top = max(max(bins["spread"]), max(bins["rmse"]), *rmses.values()) * 1.1
        ax.plot([0, top], [0, top], "k--", lw=1, label="spread = RMSE")
        for i, (name, rmse) in enumerate(rmses.items()):
            ax.axhline(rmse, color=f"C{i + 1}", lw=1, label=f"{name} RMSE")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel=f"ensemble spread [{e['units']}]",
               ylabel=f"RMSE of the mean [{e['units']}]",
               title=f"{var}: spread/skill = {fmt(e['ensemble']['spread_skill_ratio'])}")
        ax.legend(fontsize=7)
    return fig


def spectra_figure(entries: dict[str, dict]) -> Figure:
    """Radially averaged power spectra of the truth, the members and every baseline."""
    fig, panels = per_variable(entries, 3.6)
    for ax, var, e in panels:
        s = e["spectra"]
        ax.loglog(s["k"], s["truth"], "k-", lw=2, label="truth")
        ax.loglog(s["k"], s["ensemble"], "C0-", label="members")
        for i, name in enumerate(e.get("baselines", {})):
            if name in s:
                ax.loglog(s["k"], s[name], f"C{i + 1}--", label=name)
        ax.set(title=var, xlabel=f"wavenumber [{s['k_units']}]",
               ylabel=f"power [{squared(e['units'])}]")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7)
    return fig


def selection_figure(selection: dict[str, Any], variables: list[str]) -> Figure:
    """Validation fair CRPS and spread/skill of every snapshot (train.select), the chosen one
    marked."""
    from sgm.report.figures import new_figure

    fig = new_figure(9.0, 3.2)
    left, right = fig.subplots(1, 2)
    steps = [r["step"] for r in selection["curve"]]
    chosen = selection["chosen_step"]
    for c, var in enumerate(variables):
        crps = [r["crps"][c] for r in selection["curve"]]
        ssr = [r["spread_skill_ratio"][c] for r in selection["curve"]]
        left.plot(steps, crps, "o-", ms=3, color=f"C{c}", label=var)
        right.plot(steps, ssr, "o-", ms=3, color=f"C{c}", label=var)
        left.plot(chosen, crps[steps.index(chosen)], "*", ms=14, color="k")
        right.plot(chosen, ssr[steps.index(chosen)], "*", ms=14, color="k")
    right.axhline(1.0, color="k", ls="--", lw=1)
    left.set(xlabel="training step", ylabel="validation fair CRPS", title="chosen: ★")
    right.set(xlabel="training step", ylabel="validation spread/skill")
    left.legend(fontsize=7)
    return fig


def selection_html(selection: dict[str, Any], recalibration: dict[str, Any] | None) -> str:
    """The model choice and the recalibration in words."""
    text = (f"<p>The model is the snapshot of step <b>{selection['chosen_step']}</b>: of "
            f"{len(selection['curve'])} snapshots, the one with the lowest fair CRPS on the "
            f"validation split ({selection['n_times']} times × {selection['members']} members, "
            f"{html.escape(str(selection['solver']['solver']))} with "
            f"{selection['solver']['nfe']} NFE).")
    if recalibration:
        fitted_a = recalibration.get("fitted_a", recalibration["a"])
        fitted_b = recalibration.get("fitted_b", recalibration["b"])
        text += (" Its spread is recalibrated there: members are inflated about their mean by "
                 "k, k² = a + b·|d|, d the observation's distance from the training climate "
                 f"(a = {', '.join(fmt(v) for v in fitted_a)}, b = "
                 f"{', '.join(fmt(v) for v in fitted_b)}; validation spread/skill before: "
                 f"{', '.join(fmt(v) for v in recalibration['spread_skill_ratio'])}).")
        if "applied" in recalibration:
            text += (" A fit is kept only where the validation times show a spread error and "
                     "it lowers the fair CRPS of validation times it was not fitted to "
                     "(leave-one-out: "
                     f"{', '.join(fmt(v) for v in recalibration['loo_crps_raw'])} raw, "
                     f"{', '.join(fmt(v) for v in recalibration['loo_crps_recalibrated'])} "
                     "recalibrated), each by more than two standard errors: ")
            kept = recalibration["applied"]
            text += ("kept." if all(kept) else "not kept: the members are left as sampled."
                     if not any(kept) else "kept for some variables only (a = 1, b = 0 for "
                     "the others).")
    return text + "</p>"
