"""Stage ``compare``: the ``metrics.json`` of every posterior of one spec → one HTML page and
one CSV beside it (:mod:`sgm.report.comparison`), written together or not at all."""

from __future__ import annotations

from pathlib import Path

from sgm.io.atomic import write_files_together
from sgm.io.metricsfile import read_metrics
from sgm.report.comparison import comparison_csv, comparison_html, comparison_rows


def compare(runs: list[str], out_html: str | Path, out_csv: str | Path) -> Path:
    """``runs``: 'LABEL=path/to/metrics.json' for each posterior, in the order shown."""
    loaded = []
    spec = None
    for item in runs:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"--run {item!r}: give LABEL=path/to/metrics.json")
        metrics = read_metrics(path)
        if spec is not None and metrics.get("spec") not in (None, spec):
            raise ValueError(f"{path}: belongs to spec {metrics.get('spec')!r}, the others to "
                             f"{spec!r}; compare the posteriors of one spec")
        spec = spec or metrics.get("spec")
        loaded.append((label, metrics))
    if not loaded:
        raise ValueError("compare: no --run given")
    rows = comparison_rows(loaded)
    write_files_together([(Path(out_csv), comparison_csv(rows)),
                          (Path(out_html), comparison_html(str(spec or "?"), rows))])
    return Path(out_html)
