"""Ingest of real and synthetic archives: multi-file sources, Zarr, CF decoding, levels, regions,
longitude conventions, units, several variables, static covariates, date splits, paired sources.
"""

from __future__ import annotations

import json
from pathlib import Path

import cftime
import numpy as np
import pytest
import xarray as xr
import yaml

from sgm.io.stores import open_store
from sgm.stages import ingest as ingest_module
from sgm.stages.ingest import build_fields, ingest
from sgm.stages.observe import observe

REPO = Path(__file__).resolve().parents[1]


def grid_dataset(
    n_time: int = 24,
    lat: np.ndarray | None = None,
    lon: np.ndarray | None = None,
    name: str = "tas",
    calendar: str = "360_day",
    start: int = 0,
    seed: int = 0,
    units: str | None = "K",
) -> xr.Dataset:
    """A (time, lat, lon) field of smooth noise around 280 on a small lat/lon grid."""
    lat = np.linspace(30, 50, 6) if lat is None else lat
    lon = np.linspace(0, 330, 12) if lon is None else lon
    rng = np.random.default_rng(seed)
    values = 280 + rng.normal(size=(n_time, lat.size, lon.size)).astype(np.float32)
    times = cftime.num2date(np.arange(start, start + n_time) * 30.0, "days since 2000-01-01",
                            calendar=calendar)
    ds = xr.Dataset(
        {name: (("time", "lat", "lon"), values, {"units": units} if units else {})},
        coords={"time": times, "lat": ("lat", lat, {"units": "degrees_north"}),
                "lon": ("lon", lon, {"units": "degrees_east"})},
    )
    return ds


def write_spec(path: Path, **spec: object) -> Path:
    base = {"name": "t", "variables": [{"name": "tas"}], "splits": {"train": 16, "val": 4,
            "test": 4}, "operator": {"kind": "coarsen", "factor": 2}}
    base.update(spec)
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


def test_hadcm3_spec_keeps_its_shape_units_and_splits(tmp_path: Path) -> None:
    out = ingest(REPO / "data_specs/hadcm3_tas_na.yaml", tmp_path / "fields.zarr")
    ds = open_store(out)
    assert ds.tas.shape == (240, 36, 48) and ds.tas.attrs["units"] == "K"
    assert list(ds.split.values).count("train") == 180 and ds.split.values[-1] == "test"
    lon = ds.lon.values
    assert lon[0] == pytest.approx(-135.0) and np.all(np.diff(lon) > 0)  # 225 E → −135
    train = ds.tas.values[:180].astype(np.float64)
    stats = json.loads(ds.attrs["sgm_normalisation"])["tas"]
    assert stats["mean"] == pytest.approx(train.mean(), rel=1e-7)
    assert stats["std"] == pytest.approx(train.std(), rel=1e-6)
    assert json.loads(ds.attrs["sgm_static"]) == [] and ds.tas.encoding["dtype"] == np.float32
    observe(REPO / "data_specs/hadcm3_tas_na.yaml", out, tmp_path / "obs.zarr")
    assert open_store(tmp_path / "obs.zarr").tas.shape == (60, 9, 12)


def test_ostia_spec_crosses_the_dateline_in_celsius(tmp_path: Path) -> None:
    spec = REPO / "data_specs/ostia_sst_pacific.yaml"
    ds = open_store(ingest(spec, tmp_path / "fields.zarr"))
    assert ds.sst.shape == (54, 18, 108) and ds.sst.attrs["units"] == "degC"
    assert ds.lon.values[0] == pytest.approx(175.0) and ds.lon.values[-1] > 180
    assert 15 < float(ds.sst.min()) and float(ds.sst.max()) < 35  # degC, no land fill values
    assert [int((ds.split == s).sum()) for s in ("train", "val", "test")] == [36, 6, 12]
    observe(spec, tmp_path / "fields.zarr", tmp_path / "obs.zarr")
    assert open_store(tmp_path / "obs.zarr").sst.shape == (18, 6, 36)


def test_glob_of_files_is_concatenated_in_time_order(tmp_path: Path) -> None:
    full = grid_dataset(n_time=24)
    # File names sort as b, a, c but hold times 0-7, 8-15, 16-23 → order by time, not name.
    for name, part in zip("bac", (slice(0, 8), slice(8, 16), slice(16, 24)), strict=True):
        full.isel(time=part).to_netcdf(tmp_path / f"{name}.nc")
    spec = write_spec(tmp_path / "s.yaml", source={"paths": "*.nc"})
    ds = build_fields(load(spec), tmp_path)
    np.testing.assert_array_equal(ds.time.values, full.time.values)
    # 0..330 E becomes −180..150 sorted: column of 0 E is now at index 6.
    np.testing.assert_allclose(ds.tas.values[:, :, 6], full.tas.values[:, :, 0])
    np.testing.assert_allclose(ds.lon.values, np.arange(-180, 180, 30))


def load(path: Path):  # noqa: ANN201 - the spec model
    from sgm.config import load_spec

    return load_spec(path)


def test_zarr_store_source_and_standard_name(tmp_path: Path) -> None:
    ds = grid_dataset()
    ds["tas"].attrs["standard_name"] = "air_temperature"
    ds = ds.rename(tas="t2m")
    ds.to_zarr(tmp_path / "src.zarr", zarr_format=3, consolidated=False)
    spec = write_spec(tmp_path / "s.yaml", source={"paths": ["src.zarr"]},
                      variables=[{"name": "tas", "standard_name": "air_temperature"}])
    out = build_fields(load(spec), tmp_path)
    np.testing.assert_allclose(out.tas.values[:, :, 6], ds.t2m.values[:, :, 0])


def test_cf_decoding_packing_fill_and_valid_range(tmp_path: Path) -> None:
    ds = grid_dataset(n_time=24)
    truth = ds.tas.values.copy()
    truth[3, 2, 1] = np.nan  # _FillValue
    truth[5, 0, 0] = 400.0  # beyond valid_max: becomes missing
    ds["tas"].values = np.where(np.isnan(truth), 0, truth)
    ds["tas"].attrs.update(valid_min=np.int16(-20000), valid_max=np.int16(10000))
    packed = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280.0, "_FillValue": -32767}
    ds["tas"].values[3, 2, 1] = np.nan
    ds.to_netcdf(tmp_path / "p.nc", encoding={"tas": packed})
    spec = write_spec(tmp_path / "s.yaml", source={"paths": ["p.nc"]},
                      variables=[{"name": "tas", "max_missing_fraction": 0.01}])
    out = open_store(ingest(spec, tmp_path / "f.zarr"))
    values = out.tas.values
    # 400 K packs to 12000 > valid_max 10000 (packed units) → missing → training-mean filled.
    train = np.where(np.isnan(truth[:16]), np.nan, truth[:16])
    train[5, 0, 0] = np.nan
    clim = np.nanmean(train, axis=0)
    col = lambda j: (j + 6) % 12  # noqa: E731 - 0..330 E stored as −180..150
    assert values[5, 0, col(0)] == pytest.approx(clim[0, 0], abs=0.006)  # packing step 0.01
    assert values[3, 2, col(1)] == pytest.approx(clim[2, 1], abs=0.006)
    assert values[7, 4, col(5)] == pytest.approx(truth[7, 4, 5], abs=0.006)  # unpacked
    assert int(out.tas.attrs["sgm_missing_filled"]) == 2
    assert "scale_factor" not in out.tas.encoding and out.tas.dtype == np.float32
    assert not {"valid_min", "valid_max", "_FillValue"} & set(out.tas.attrs)


def test_default_netcdf_fill_is_missing(tmp_path: Path) -> None:
    ds = grid_dataset(n_time=24)
    ds["tas"].values[0, 0, 0] = 9.969209968386869e36  # netCDF's default float fill
    ds.to_netcdf(tmp_path / "d.nc", encoding={"tas": {"_FillValue": None}})
    spec = write_spec(tmp_path / "s.yaml", source={"paths": ["d.nc"]},
                      variables=[{"name": "tas", "max_missing_fraction": 0.5}])
    out = build_fields(load(spec), tmp_path)
    assert float(out.tas.max()) < 300 and out.tas.attrs["sgm_missing_filled"] == 1


def test_level_units_and_conversions(tmp_path: Path) -> None:
    base = grid_dataset(n_time=24)
    plev = np.array([100000.0, 85000.0, 50000.0])
    ta = np.stack([base.tas.values + k for k in range(3)], axis=1)
    ds = xr.Dataset(
        {"ta": (("time", "plev", "lat", "lon"), ta, {"units": "K"}),
         "pr": (("time", "lat", "lon"), np.abs(base.tas.values - 280) * 1e-5,
                {"units": "kg m-2 s-1"})},
        coords={"time": base.time, "plev": ("plev", plev, {"units": "Pa", "axis": "Z"}),
                "lat": base.lat, "lon": base.lon},
    )
    ds.to_netcdf(tmp_path / "l.nc")
    spec = write_spec(
        tmp_path / "s.yaml", source={"paths": ["l.nc"]},
        variables=[{"name": "ta500", "source_name": "ta", "level": 500, "level_units": "hPa",
                    "units": "K", "convert_to": "degC"},
                   {"name": "pr", "convert_to": "mm/day"}],
    )
    out = build_fields(load(spec), tmp_path)
    np.testing.assert_allclose(out.ta500.values[:, :, 6], ta[:, 2, :, 0] - 273.15, atol=1e-4)
    np.testing.assert_allclose(out.pr.values[:, :, 6], ds.pr.values[:, :, 0] * 86400, rtol=1e-5)
    assert out.pr.attrs["units"] == "mm/day" and out.ta500.attrs["sgm_source_units"] == "K"
    assert json.loads(json.dumps(out.attrs["sgm_variables"])) == ["ta500", "pr"]


def test_region_in_either_convention_and_descending_latitudes(tmp_path: Path) -> None:
    ds = grid_dataset(lat=np.linspace(50, 30, 6), lon=np.arange(0, 360, 30.0))
    ds.to_netcdf(tmp_path / "r.nc")
    src = {"paths": ["r.nc"]}
    # Bounds in 0..360 while storing −180..180: [300, 90] is −60..90 (across 0 E).
    a = build_fields(load(write_spec(tmp_path / "a.yaml", source=src,
                                     region={"lat": [30, 50], "lon": [300, 90]})), tmp_path)
    np.testing.assert_allclose(a.lon.values, [-60, -30, 0, 30, 60, 90])
    np.testing.assert_allclose(a.lat.values, [30, 34, 38, 42, 46, 50])
    np.testing.assert_allclose(a.tas.values[:, 1, 2], ds.tas.values[:, 4, 0])
    # Across 180° with 0..360 longitudes: bounds 150..−120 wrap to 150..240.
    b = build_fields(load(write_spec(tmp_path / "b.yaml", source=src, longitudes="0..360",
                                     region={"lon": [150, -120]})), tmp_path)
    np.testing.assert_allclose(b.lon.values, [150, 180, 210, 240])


def test_static_covariates_and_optional_ones(tmp_path: Path) -> None:
    ds = grid_dataset()
    ds.to_netcdf(tmp_path / "f.nc")
    orog = xr.Dataset({"orog": (("lat", "lon"), np.arange(72.0).reshape(6, 12), {"units": "m"})},
                      coords={"lat": ds.lat, "lon": ds.lon})
    orog.to_netcdf(tmp_path / "orog.nc")
    spec = write_spec(tmp_path / "s.yaml", source={"paths": ["f.nc"]}, static=[
        {"name": "orog", "source": {"paths": ["orog.nc"]}, "units": "m", "convert_to": "km"},
        {"name": "lsm", "source": {"paths": ["lsm.nc"]}, "optional": True},
    ])
    out = open_store(ingest(spec, tmp_path / "fields.zarr"))
    assert json.loads(out.attrs["sgm_static"]) == ["static_orog"]
    assert json.loads(out.attrs["sgm_variables"]) == ["tas"]
    assert out.static_orog.dims == ("lat", "lon") and out.static_orog.attrs["units"] == "km"
    np.testing.assert_allclose(out.static_orog.values[:, 6], orog.orog.values[:, 0] / 1000)
    stats = json.loads(out.attrs["sgm_normalisation"])["static_orog"]
    assert stats["mean"] == pytest.approx(35.5 / 1000)


@pytest.mark.parametrize("calendar", ["360_day", "noleap", "standard"])
def test_date_range_splits_in_model_calendars(tmp_path: Path, calendar: str) -> None:
    ds = grid_dataset(n_time=24, calendar=calendar)  # every 30 days from 2000-01-01
    ds.to_netcdf(tmp_path / "c.nc")
    spec = write_spec(tmp_path / "s.yaml", source={"paths": ["c.nc"]}, splits={
        "train": {"start": "2000-01-01", "end": "2000-12-30"},
        "val": {"start": "2001-01-01", "end": "2001-03-30"},
        "test": {"start": "2001-04-01", "end": "2001-12-30"},
    })
    out = build_fields(load(spec), tmp_path)
    labels = list(out.split.values)
    years = [t.year for t in out.time.values]
    n_2000 = years.count(2000)  # 12 in 360_day (days 0..330), 13 otherwise
    assert labels[:n_2000] == ["train"] * n_2000 and labels[n_2000] == "val"
    assert labels.count("test") == sum(1 for t in out.time.values if t.year == 2001
                                       and t.month >= 4 and (t.month, t.day) <= (12, 30))


def test_paired_low_resolution_source(tmp_path: Path) -> None:
    longer = grid_dataset(n_time=30, lat=np.linspace(30, 47.5, 8), lon=np.arange(0, 360, 22.5),
                          start=-6)
    fine = longer.isel(time=slice(6, None))
    fine.to_netcdf(tmp_path / "fine.nc")
    coarse = longer.coarsen(lat=4, lon=4).mean() + 0.5  # a different model: offset by 0.5 K
    coarse.to_netcdf(tmp_path / "coarse.nc")  # 6 more time steps: aligned by time
    spec = write_spec(tmp_path / "s.yaml", source={"paths": ["fine.nc"]},
                      operator={"kind": "coarsen", "factor": 4},
                      paired={"source": {"paths": ["coarse.nc"]}})
    ingest(spec, tmp_path / "fields.zarr")
    fields, paired = open_store(tmp_path / "fields.zarr"), open_store(tmp_path / "paired.zarr")
    assert paired.tas.dims == ("time", "lat_c", "lon_c") and paired.tas.shape == (24, 2, 4)
    blocks = fields.tas.values.reshape(24, 2, 4, 4, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(paired.tas.values, blocks + 0.5, atol=1e-4)
    assert list(paired.split.values) == list(fields.split.values)


def test_small_chunks_stream_and_give_the_same_store(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ds = grid_dataset(n_time=24)
    ds.to_netcdf(tmp_path / "f.nc")
    spec = write_spec(tmp_path / "s.yaml", source={"paths": ["f.nc"]})
    whole = open_store(ingest(spec, tmp_path / "a.zarr"))
    monkeypatch.setattr("sgm.io.sources.READ_CHUNK_BYTES", 6 * 12 * 4 * 3)  # 3 steps a read
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 6 * 12 * 4 * 5)  # 5 steps a store chunk
    lazy = build_fields(load(spec), tmp_path)
    assert lazy.tas.chunks[0] == (3,) * 8  # dask-backed, not loaded
    parts = open_store(ingest(spec, tmp_path / "b.zarr"))
    assert parts.tas.encoding["chunks"][0] == 5
    np.testing.assert_array_equal(parts.tas.values, whole.tas.values)
    a, b = (json.loads(x.attrs["sgm_normalisation"])["tas"] for x in (parts, whole))
    assert a["mean"] == pytest.approx(b["mean"], rel=1e-12)  # float64 sums, any order
    assert a["std"] == pytest.approx(b["std"], rel=1e-9)
