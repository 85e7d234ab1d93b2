"""A corpus of broken inputs: each gets one sentence naming the file, the variable and the
problem, a non-zero exit from ``sgm ingest``, and no store at the output path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cftime
import netCDF4
import numpy as np
import pytest
import xarray as xr
import yaml

from sgm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def field(n_time: int = 12, lat: np.ndarray | None = None, name: str = "tas",
          units: str = "K", start: int = 0, calendar: str = "360_day") -> xr.Dataset:
    lat = np.linspace(30, 50, 4) if lat is None else lat
    lon = np.linspace(-30, 30, 4)
    values = 280 + np.random.default_rng(start).normal(size=(n_time, lat.size, 4))
    times = cftime.num2date(np.arange(start, start + n_time) * 30.0, "days since 2000-01-01",
                            calendar=calendar)
    return xr.Dataset({name: (("time", "lat", "lon"), values.astype(np.float32),
                              {"units": units})},
                      coords={"time": times, "lat": lat, "lon": lon})


def spec(d: Path, **over: object) -> Path:
    base = {"name": "bad", "source": {"paths": ["f.nc"]}, "variables": [{"name": "tas"}],
            "splits": {"train": 8, "val": 2, "test": 2},
            "operator": {"kind": "coarsen", "factor": 2}}
    base.update(over)
    (d / "spec.yaml").write_text(yaml.safe_dump(base))
    return d / "spec.yaml"


def good(d: Path, **over: object) -> Path:
    field().to_netcdf(d / "f.nc")
    return spec(d, **over)


def truncated(fmt: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        field().to_netcdf(d / "full.nc", format=fmt)
        data = (d / "full.nc").read_bytes()
        (d / "f.nc").write_bytes(data[: len(data) - 100])
        return spec(d)

    return make


def times_out_of_order(d: Path) -> Path:
    ds = field()
    ds.isel(time=[0, 1, 2, 4, 3, 5, 6, 7, 8, 9, 10, 11]).to_netcdf(d / "f.nc")
    return spec(d)


def times_duplicated(d: Path) -> Path:
    with netCDF4.Dataset(d / "f.nc", "w") as nc:  # xarray refuses to write a repeated index
        for dim, n in (("time", 6), ("lat", 2), ("lon", 2)):
            nc.createDimension(dim, n)
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "days since 2000-01-01", "360_day"
        t[:] = [0, 30, 60, 60, 90, 120]
        nc.createVariable("lat", "f8", ("lat",))[:] = [10, 20]
        nc.createVariable("lon", "f8", ("lon",))[:] = [10, 20]
        v = nc.createVariable("tas", "f4", ("time", "lat", "lon"))
        v[:] = np.arange(24.0).reshape(6, 2, 2)
    return spec(d, splits={"train": 2, "val": 2, "test": 2})


def grids_differ(d: Path) -> Path:
    field(start=0).to_netcdf(d / "a.nc")
    field(start=12, lat=np.linspace(31, 51, 4)).to_netcdf(d / "b.nc")
    return spec(d, source={"paths": ["*.nc"]})


def files_overlap(d: Path) -> Path:
    field(start=0).to_netcdf(d / "a.nc")
    field(start=6).to_netcdf(d / "b.nc")
    return spec(d, source={"paths": ["a.nc", "b.nc"]})


def calendars_differ(d: Path) -> Path:
    field(start=0).to_netcdf(d / "a.nc")
    field(start=12, calendar="noleap").to_netcdf(d / "b.nc")
    return spec(d, source={"paths": ["a.nc", "b.nc"]})


def with_nans(d: Path) -> Path:
    ds = field()
    ds.tas.values[2, 1, 1] = np.nan
    ds.to_netcdf(d / "f.nc")
    return spec(d)


def with_levels(d: Path) -> Path:
    ds = field().expand_dims(plev=[100000.0, 85000.0]).transpose("time", "plev", ...)
    ds.plev.attrs.update(units="Pa", axis="Z")
    ds.to_netcdf(d / "f.nc")
    return spec(d, variables=[{"name": "tas", "level": 500, "level_units": "hPa"}])


def not_netcdf(d: Path) -> Path:
    (d / "f.nc").write_text("station,tas\nA,280.1\n")
    return spec(d)


def empty_file(d: Path) -> Path:
    (d / "f.nc").write_bytes(b"")
    return spec(d)


def folder_not_zarr(d: Path) -> Path:
    (d / "f.nc").mkdir()
    return spec(d)


# (case, builder, expected message after "<file>: ")
CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing file", lambda d: spec(d), r"f\.nc: variable 'tas': file does not exist$"),
    ("empty glob", lambda d: spec(d, source={"paths": ["data/*.nc"]}),
     r"data/\*\.nc: variable 'tas': no file matches the pattern$"),
    ("not netcdf", not_netcdf,
     r"f\.nc: variable 'tas': file is not a NetCDF file or Zarr store \(unrecognised header\)$"),
    ("empty file", empty_file, r"f\.nc: variable 'tas': file is empty$"),
    ("folder not zarr", folder_not_zarr,
     r"f\.nc: variable 'tas': file is a folder but not a Zarr store"),
    ("truncated netcdf4", truncated("NETCDF4"),
     r"f\.nc: variable 'tas': file is truncated \(\d+ bytes, but its header says \d+ bytes\)$"),
    ("truncated netcdf3", truncated("NETCDF3_64BIT"),
     r"f\.nc: variable 'tas': file is truncated \(\d+ bytes, but its header says \d+ bytes\)$"),
    ("missing variable", lambda d: good(d, variables=[{"name": "pr"}]),
     r"f\.nc: variable 'pr' not found; gridded variables present: tas$"),
    ("missing standard_name",
     lambda d: good(d, variables=[{"name": "pr", "standard_name": "precipitation_flux"}]),
     r"f\.nc: no variable has standard_name 'precipitation_flux'; gridded variables present: "
     r"tas$"),
    ("level selects nothing", with_levels,
     r"f\.nc: variable 'tas': level 500 hPa selects nothing; levels present: 100000, 85000 Pa$"),
    ("no vertical axis", lambda d: good(d, variables=[{"name": "tas", "level": 500}]),
     r"f\.nc: variable 'tas': has no vertical coordinate to select a level on"),
    ("region selects nothing", lambda d: good(d, region={"lat": [70, 80]}),
     r"f\.nc: variable 'tas': region lat \[70\.0, 80\.0\] selects nothing; the source covers "
     r"lat 30 to 50$"),
    ("region crosses the seam", lambda d: good(d, region={"lon": [170, -170]}),
     r"f\.nc: variable 'tas': region lon \[170\.0, -170\.0\] crosses the edge of the -180\.\.180 "
     r"longitudes; set longitudes: 0\.\.360 in the spec$"),
    ("nans", with_nans,
     r"f\.nc: variable 'tas': has 1 missing or non-finite values \(0\.521 % of the selected "
     r"fields\) but the spec allows at most 0 % \(variables\[0\]\.max_missing_fraction\)$"),
    ("times out of order", times_out_of_order,
     r"f\.nc: variable 'tas': has time steps out of order \(2000-04-01 00:00:00 follows "
     r"2000-05-01 00:00:00\)$"),
    ("times duplicated", times_duplicated,
     r"f\.nc: variable 'tas': has duplicated time steps \(2000-03-01 00:00:00\)$"),
    ("files overlap", files_overlap,
     r"b\.nc: variable 'tas': has time steps that overlap those of .*a\.nc$"),
    ("calendars differ", calendars_differ,
     r"b\.nc: variable 'tas': uses the noleap calendar but .*a\.nc uses 360_day$"),
    ("grids differ", grids_differ,
     r"b\.nc: variable 'tas': has a lat grid that differs from .*a\.nc$"),
    ("too few time steps", lambda d: good(d, splits={"train": 10, "val": 2, "test": 2}),
     r"f\.nc: variable 'tas': has 12 time steps but the splits need 10 \+ 2 \+ 2 \(each ≥ 1\)$"),
    ("date split selects nothing", lambda d: good(d, splits={
        "train": {"start": "2000-01-01", "end": "2000-06-30"},
        "val": {"start": "2000-07-01", "end": "2000-09-30"},
        "test": {"start": "2005-01-01", "end": "2005-12-30"}}),
     r"f\.nc: variable 'tas': split test \(2005-01-01 to 2005-12-30\) selects no time step; "
     r"the source covers 2000-01-01 00:00:00 to 2000-12-01 00:00:00$"),
    ("date not in calendar", lambda d: good(d, splits={
        "train": {"start": "2000-01-01", "end": "2000-06-31"},
        "val": {"start": "2000-07-01", "end": "2000-09-30"},
        "test": {"start": "2000-10-01", "end": "2000-12-30"}}),
     r"f\.nc: variable 'tas': split train \(2000-01-01 to 2000-06-31\): 2000-06-31 is not a "
     r"date of the 360_day calendar$"),
    ("units cannot be converted", lambda d: good(d, variables=[
        {"name": "tas", "convert_to": "mm/day"}]),
     r"f\.nc: variable 'tas': cannot convert units 'K' \(temperature\) to 'mm/day' "
     r"\(precipitation flux\)$"),
    ("units unknown", lambda d: good(d, variables=[{"name": "tas", "convert_to": "furlong"}]),
     r"f\.nc: variable 'tas': cannot convert units 'K' to 'furlong' \(units 'furlong' are not "
     r"known to sgm\)$"),
    ("units differ from the spec", lambda d: good(d, variables=[{"name": "tas", "units": "degC"}]),
     r"f\.nc: variable 'tas': has units 'K' but the spec expects 'degC'$"),
    ("missing static covariate", lambda d: good(d, static=[
        {"name": "orog", "source": {"paths": ["orog.nc"]}}]),
     r"orog\.nc: variable 'orog': file does not exist$"),
    ("point outside the grid", lambda d: good(d, operator={
        "kind": "sparse", "points": [[1, 1], [9, 0]]}),
     r"f\.nc: variable 'tas': operator: sparse point \[9, 0\] lies outside the 4x4 grid$"),
    ("station outside the grid", lambda d: good(d, operator={
        "kind": "stations", "stations": [{"id": "ok", "lat": 41, "lon": 1},
                                         {"id": "Reykjavik", "lat": 64.1, "lon": -21.9}]}),
     r"f\.nc: variable 'tas': operator: station 'Reykjavik' at lat 64\.1, lon -21\.9 lies "
     r"outside the grid \(lat .* to .*, lon .* to .*\)$"),
]


def run_ingest(spec_path: Path, out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["ingest", "--spec", str(spec_path), "--out", str(out)])
    return code, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(("case", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence_and_leaves_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str,
    make: Callable[[Path], Path], expected: str,
) -> None:
    spec_path = make(tmp_path)
    out = tmp_path / "results" / "fields.zarr"
    code, line = run_ingest(spec_path, out, capsys)
    assert code == 1
    assert line.startswith("sgm ingest: error: ") and line.count("\n") == 0
    message = line.removeprefix("sgm ingest: error: ")
    assert re.search(expected, message), message
    assert str(tmp_path) in message  # names the file by its path
    leftovers = list(out.parent.glob("*")) if out.parent.exists() else []
    assert leftovers == []  # no store, no temporary sibling


def test_allowed_missing_values_pass(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The same NaN that fails by default passes when the spec allows it (the check can fail)."""
    with_nans(tmp_path)
    spec_path = spec(tmp_path, variables=[{"name": "tas", "max_missing_fraction": 0.01}])
    code = main(["ingest", "--spec", str(spec_path), "--out", str(tmp_path / "fields.zarr")])
    assert code == 0 and (tmp_path / "fields.zarr").exists()


def sgm_command() -> list[str]:
    script = Path(sys.executable).parent / "sgm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sgm"]


@pytest.mark.parametrize("make", [truncated("NETCDF3_CLASSIC"), not_netcdf, with_nans],
                         ids=["truncated netcdf3", "not netcdf", "nans"])
def test_sgm_ingest_exits_non_zero(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    spec_path = make(tmp_path)
    out = tmp_path / "fields.zarr"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([*sgm_command(), "ingest", "--spec", str(spec_path), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("sgm ingest: error: ")
    assert str(tmp_path / "f.nc") in proc.stderr and "'tas'" in proc.stderr
    assert not out.exists()


def test_an_existing_store_survives_bad_input(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """A failed rerun leaves the previous complete store as it was."""
    spec_path = good(tmp_path)
    out = tmp_path / "fields.zarr"
    assert main(["ingest", "--spec", str(spec_path), "--out", str(out)]) == 0
    before = xr.open_zarr(out).tas.values
    not_netcdf(tmp_path)
    assert run_ingest(spec_path, out, capsys)[0] == 1
    np.testing.assert_array_equal(xr.open_zarr(out).tas.values, before)
