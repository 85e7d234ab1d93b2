"""The HTML page of a report: formatting, embedded figures, provenance, an atomic write.

Both report pages (:mod:`sgm.report.posterior` with truth, :mod:`sgm.report.external` without)
are built with :class:`Page`: sections and figures are collected in memory, figures are
embedded as base64 PNG (no external requests) and also written as PNG files next to the HTML,
each caption ending with a link to its file (for reuse in slides and papers), and the HTML is
written to a temporary sibling and moved into place, so a failure leaves no page behind. The
header is a provenance list in words and, folded away, the raw provenance as JSON.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sgm.io.atomic import write_files_together

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;
max-width:1500px;padding:1em 2em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.3em .6em;
vertical-align:top}th{background:#f3f3f3;text-align:left}td.num{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}td.expl{color:#555;font-size:.9em}
.best{font-weight:700;background:#eef7ee}dl.prov{display:grid;grid-template-columns:max-content
auto;gap:.15em 1em}dl.prov dt{font-weight:600}dl.prov dd{margin:0;overflow-wrap:anywhere}
details.raw{margin:.6em 0}details.raw summary{cursor:pointer;color:#444}details.raw pre{
background:#f7f7f7;border:1px solid #e3e3e3;padding:.6em;overflow:auto;max-height:32em;
font-size:.85em}figure{margin:1em 0}figure img{max-width:100%;height:auto;
border:1px solid #eee}figcaption{color:#444;font-size:.92em;max-width:70em}
figcaption a.file{white-space:nowrap}
"""


def fmt(value: Any) -> str:
    """A value for a table cell or a title: 4 significant digits, '—' for None, escaped text."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def time_label(t: Any) -> str:
    """YYYY-MM-DD of a cftime/datetime (or numpy datetime64) time."""
    return t.strftime("%Y-%m-%d") if hasattr(t, "strftime") else str(t)[:10]


def unit_suffix(units: str) -> str:
    """' K' for a unit to print after a number; '' for dimensionless ('1' or empty)."""
    return "" if units in ("", "1") else f" {units}"


def threshold_text(threshold: float, units: str, default: bool, of_what: str) -> str:
    """'281.3 K (the 90th percentile of <of_what>)' for a default threshold, else '… (given)';
    HTML-escaped (units come from the data files)."""
    how = f"the 90th percentile of {of_what}" if default else "given"
    return html.escape(f"{threshold:.4g}{unit_suffix(units)} ({how})")


def period(times: Any) -> str:
    """'first – last (n times)' of a non-empty sequence of times."""
    return f"{time_label(times[0])} – {time_label(times[-1])} ({len(times)} times)"


def generated() -> str:
    """The time the page is generated, in UTC, for the provenance list."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG at 100 dpi."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def figure_html(name: str, png: bytes, caption: str) -> str:
    """A <figure> with the PNG embedded as base64 and its (HTML) caption, which ends with a
    link to the PNG file ``name`` written beside the page."""
    data = base64.b64encode(png).decode("ascii")
    ref = html.escape(name, quote=True)
    return (
        f"<figure><img src='data:image/png;base64,{data}' alt='{ref}'>"
        f"<figcaption>{caption} <a class='file' href='{ref}'>{html.escape(name)}</a>"
        "</figcaption></figure>"
    )


def json_text(value: Any, indent: int = 0) -> str:
    """``value`` as indented JSON, lists of numbers (and of short lists) on one line each."""
    pad = "  " * (indent + 1)
    if isinstance(value, dict) and value:
        rows = [f"{pad}{json.dumps(str(k), ensure_ascii=False)}: {json_text(v, indent + 1)}"
                for k, v in value.items()]
        return "{\n" + ",\n".join(rows) + "\n" + "  " * indent + "}"
    if isinstance(value, list | tuple) and value and any(isinstance(v, dict) for v in value):
        rows = [pad + json_text(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(rows) + "\n" + "  " * indent + "]"
    return json.dumps(value, ensure_ascii=False, default=str)


def raw_provenance_html(raw: Any) -> str:
    """A folded block with ``raw`` as JSON (escaped): everything the words above come from."""
    return ("<details class='raw'><summary>Raw provenance</summary>"
            f"<pre>{html.escape(json_text(raw))}</pre></details>")


def header_html(title: str, items: dict[str, Any], intro: str, raw: Any = None) -> str:
    """The page title, a provenance list (label → value, escaped), the raw provenance folded
    away (when given) and an introduction (HTML)."""
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
                   for k, v in items.items())
    folded = "" if raw is None else raw_provenance_html(raw)
    return f"<h1>{html.escape(title)}</h1><dl class='prov'>{rows}</dl>{folded}{intro}"


def page_html(title: str, body: str) -> str:
    """A whole self-contained HTML document: the escaped ``title``, the CSS and ``body``."""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"{body}</body></html>")


class Page:
    """A report page being assembled in memory: HTML pieces and named figures."""

    def __init__(self) -> None:
        self.body: list[str] = []
        self.figures: list[tuple[str, bytes]] = []

    def add_html(self, text: str) -> None:
        """Append trusted HTML (escape any user text before)."""
        self.body.append(text)

    def add_figure(self, name: str, fig: Figure, caption: str) -> None:
        """Render ``fig`` as ``name`` (a PNG file name) with an HTML ``caption``."""
        png = png_bytes(fig)
        self.figures.append((name, png))
        self.body.append(figure_html(name, png, caption))

    def write(self, out_html: str | Path, title: str, header: str) -> Path:
        """Write the figures as PNG files beside ``out_html`` and the page, all or none."""
        out_html = Path(out_html)
        page = page_html(title, header + "".join(self.body))
        files = [(out_html.parent / name, png) for name, png in self.figures]
        return write_files_together([*files, (out_html, page.encode("utf-8"))])
