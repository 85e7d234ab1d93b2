"""One spec's posteriors side by side: every model and every inversion on one page and in a CSV.

Each run's ``metrics.json`` (written by ``sgm evaluate``) already holds its scores, its
sampler and its cost per member; this module puts them in one table per variable, so that a
conditional model, its one-step distillation and a zero-shot inversion of the same prior can
be compared at a glance: accuracy (fair CRPS, against the best statistical baseline),
calibration (spread–skill, 90 % coverage, re-observation χ²/dof), distance to the exact
posterior when the spec is a Gaussian oracle, and cost (network evaluations, Jacobian products
and seconds per member).
"""

from __future__ import annotations

import csv
import html
import io
from typing import Any

from sgm.report.page import fmt, generated, header_html, page_html
from sgm.report.posterior import cost_text, sampler_text
from sgm.report.provenance import operator_text

# (column, how to read it from (metrics, variable entry)); None where a run lacks it.
COLUMNS: list[tuple[str, Any]] = [
    ("method", lambda m, e: (m.get("provenance", {}).get("sgm_sampler") or {}).get("method")),
    ("fair CRPS", lambda m, e: e["ensemble"].get("crps")),
    ("best baseline", lambda m, e: e.get("best_baseline")),
    ("CRPS skill vs best baseline", lambda m, e: e.get("crps_skill")),
    ("spread-skill", lambda m, e: e["ensemble"].get("spread_skill_ratio")),
    ("coverage 90 %", lambda m, e: e["ensemble"].get("coverage_90")),
    ("re-obs chi2/dof", lambda m, e: e["ensemble"].get("reobs_chi2")),
    ("CRPS / exact CRPS", lambda m, e: (e.get("oracle") or {}).get("crps_ratio")),
    ("std / exact std", lambda m, e: (e.get("oracle") or {}).get("std_ratio_mean")),
    ("network evaluations per member",
     lambda m, e: (m.get("cost") or {}).get("network_evaluations")),
    ("Jacobian products per member", lambda m, e: (m.get("cost") or {}).get("jacobian_products")),
    ("seconds per member", lambda m, e: (m.get("cost") or {}).get("seconds_per_member")),
]

INTRO = (
    "<p>Every posterior of this data spec: the models trained for its observation system "
    "(conditional, or distilled to one step) and the inversions of other observation systems "
    "with a prior model. Lower fair CRPS is better; a CRPS skill above 0 beats the best "
    "statistical baseline of that run; a calibrated ensemble has spread–skill near 1, 90 % "
    "coverage near its nominal value and re-observation χ²/dof near 1. Runs with different "
    "observations answer different questions: compare their scores with care. Seconds are "
    "wall time of sampling on the machine that ran it.</p>"
)


def comparison_rows(runs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per run and variable: ``runs`` is [(label, metrics)], in the order shown."""
    rows = []
    for label, metrics in runs:
        units = {v: e.get("units", "") for v, e in metrics.get("variables", {}).items()}
        for var, entry in metrics.get("variables", {}).items():
            row: dict[str, Any] = {"run": label, "variable": var, "units": entry.get("units", "")}
            row["observations"] = operator_text(metrics.get("operator"),
                                                metrics.get("noise_std"), units)
            for name, read in COLUMNS:
                row[name] = read(metrics, entry)
            row["sampler"] = sampler_text(
                metrics.get("provenance", {}).get("sgm_sampler") or "—")
            row["cost"] = cost_text(metrics.get("cost"))
            rows.append(row)
    return rows


def comparison_csv(rows: list[dict[str, Any]]) -> bytes:
    """The rows as CSV (one header line; empty cells where a run lacks a score)."""
    names = ["run", "variable", "units", "observations", *[c for c, _ in COLUMNS]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in names})
    return buf.getvalue().encode("utf-8")


def comparison_html(spec: str, rows: list[dict[str, Any]]) -> bytes:
    """The comparison page: one table per variable, with each run's sampler and cost."""
    title = f"sgm: every posterior of {spec}"
    body = [header_html(title, {"Data spec": spec, "Runs": len({r['run'] for r in rows}),
                                "Generated": generated()}, INTRO)]
    for var in dict.fromkeys(r["variable"] for r in rows):
        mine = [r for r in rows if r["variable"] == var]
        body.append(f"<h2>{html.escape(var)} [{html.escape(mine[0]['units'])}]</h2><table><tr>"
                    "<th>run</th>" + "".join(f"<th>{html.escape(c)}</th>" for c, _ in COLUMNS)
                    + "</tr>")
        for r in mine:
            cells = "".join(f"<td class='num'>{fmt(r[c])}</td>" for c, _ in COLUMNS)
            body.append(f"<tr><td>{html.escape(r['run'])}</td>{cells}</tr>")
        body.append("</table><dl class='prov'>" + "".join(
            f"<dt>{html.escape(r['run'])}</dt><dd>{html.escape(r['observations'])}; "
            f"{html.escape(r['sampler'])}; {html.escape(r['cost'])} per member</dd>"
            for r in mine) + "</dl>")
    return page_html(title, "".join(body)).encode("utf-8")
