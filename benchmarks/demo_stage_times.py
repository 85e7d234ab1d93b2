"""Wall time and peak memory of every stage of a finished workflow run (not a test).

Every rule writes a Snakemake benchmark file under ``results/<spec>[/<model>]/benchmarks/``; this
prints them as one table, with the total, so a change's cost per stage can be compared.

Usage: .venv/bin/python benchmarks/demo_stage_times.py [--results results]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="the workflow's results folder")
    args = parser.parse_args()
    rows = []
    for path in sorted(Path(args.results).rglob("benchmarks/*.tsv")):
        with path.open() as fh:
            record = next(csv.DictReader(fh, delimiter="\t"))
        where = path.parent.parent.relative_to(args.results)
        rss = record.get("max_rss", "NA")
        rows.append((f"{where}/{path.stem}", float(record["s"]),
                     float(rss) if rss not in ("NA", "-", "") else float("nan")))
    if not rows:
        raise SystemExit(f"no benchmark files under {args.results}: run the workflow first")
    width = max(len(r[0]) for r in rows)
    print(f"{'stage':<{width}}  {'wall s':>8}  {'max RSS MB':>10}")
    for name, seconds, rss in rows:
        print(f"{name:<{width}}  {seconds:8.1f}  {rss:10.0f}")
    print(f"{'total (sequential)':<{width}}  {sum(r[1] for r in rows):8.1f}")


if __name__ == "__main__":
    main()
