"""``snakemake --report`` on the finished tiny run of tests/test_workflow.py bundles our page.

The bundle (a zip) has Snakemake's index, ``report.html``, which lists the page under its
category, and the page itself, byte for byte as the report rule wrote it, with the PNG file of
every figure beside it, so the links at the end of the captions work inside the bundle too
(the rule registers the report folder with ``htmlindex``). Snakemake's report needs pygments
(its ``reports`` extra).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
import test_workflow

pytestmark = pytest.mark.slow
run = test_workflow.run  # the module-scoped fixture: one tiny run for this module's tests


def test_snakemake_report_bundles_the_page(run: Path) -> None:
    bundle = run / "bundle.zip"
    done = test_workflow.snakemake(run, "--report", str(bundle))
    assert done.returncode == 0, done.stderr[-3000:]
    page_on_disk = (run / "my results" / "hadcm3_tas_na" / "tiny" / "report" / "index.html")
    with zipfile.ZipFile(bundle) as z:
        names = z.namelist()
        assert "bundle/report.html" in names
        index = z.read("bundle/report.html").decode("utf-8")
        assert "Posterior ensembles" in index and "hadcm3_tas_na / tiny" in index
        pages = [n for n in names if n.endswith("/index.html")]
        ours = [n for n in pages if z.read(n) == page_on_disk.read_bytes()]
        assert len(ours) == 1, pages
        page = z.read(ours[0]).decode("utf-8")
        assert "<h1>sgm posterior report — hadcm3_tas_na</h1>" in page
        folder = ours[0].rsplit("/", 1)[0]
        links = re.findall(r"<a class='file' href='([^']+)'>", page)
        assert "maps_tas.png" in links and len(links) == page.count("<figure>")
        missing = [href for href in links if f"{folder}/{href}" not in names]
        assert missing == [], f"figure files not bundled beside the page: {missing}"
        for href in links:
            assert z.read(f"{folder}/{href}")[:8] == b"\x89PNG\r\n\x1a\n"
