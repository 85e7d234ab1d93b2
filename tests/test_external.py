"""External observations: ``coarsen_file``, the checks of ``observe_external``, and the no-truth
path from a trained model through ``sample --split external`` to ``report_external``."""

from __future__ import annotations

import re
from pathlib import Path

import cftime
import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from sgm.cli import main
from sgm.config import SpecError, WorkflowConfig, load_workflow_config, validate
from sgm.core import metrics
from sgm.core.observation import ObservationModel
from sgm.core.operators import Coarsen
from sgm.io.errors import SourceError
from sgm.io.stores import json_attr, open_store
from sgm.report.external import variable_summary
from sgm.stages.coarsen_file import coarsen_file
from sgm.stages.ingest import ingest
from sgm.stages.observe import observe
from sgm.stages.observe_external import observe_external
from sgm.stages.report_external import report_external
from sgm.stages.sample import sample_stage
from sgm.stages.train import train_stage

REPO = Path(__file__).resolve().parents[1]
NY, NX, FACTOR, ETA = 13, 17, 4, 0.1  # cropped to 12 x 16, observed on 3 x 4 blocks
LAT = 20.0 + 1.25 * np.arange(NY)
LON = 225.0 + 1.875 * np.arange(NX)  # 0..360 in the file, -180..180 in the stores
SPEC = {
    "name": "tiny_file",
    "source": {"paths": ["train.nc"]},
    "variables": [{"name": "tas", "source_name": "air_temperature", "units": "K"}],
    "splits": {"train": 40, "val": 4, "test": 4},
    "operator": {"kind": "coarsen", "factor": FACTOR, "noise_std": ETA},
    "conditioning": {"climatology": True},
}
MODEL = {"model": {"preset": "tiny", "base_channels": 8},
         "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 2}}
VARIABLES = {"tas": "air_temperature"}


def fields(n: int, first_year: int, warming: float, seed: int) -> xr.Dataset:
    """Smooth annual temperature fields (K) on LAT x LON, one per year from ``first_year``."""
    rng = np.random.default_rng(seed)
    lat2d, lon2d = np.meshgrid(LAT, LON, indexing="ij")
    base = 300.0 - 0.6 * (lat2d - 20.0) + 2.0 * np.sin(lon2d / 9.0)
    years = np.arange(n)
    anomaly = rng.normal(0.0, 1.0, (n, 1, 1)) * np.cos(lat2d / 5.0 + rng.uniform(0, 6, (n, 1, 1)))
    values = base + warming * years[:, None, None] / n + anomaly
    times = [cftime.Datetime360Day(first_year + int(y), 6, 1) for y in years]
    return xr.Dataset(
        {"air_temperature": (("time", "latitude", "longitude"), values.astype(np.float32),
                             {"units": "K", "standard_name": "air_temperature"})},
        coords={"time": times, "latitude": ("latitude", LAT, {"units": "degrees_north"}),
                "longitude": ("longitude", LON, {"units": "degrees_east"})},
    )


def open_nc(path: Path) -> xr.Dataset:
    return xr.open_dataset(path, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spec on a NetCDF file, ingested and observed; a second 'scenario' file beside it,
    stored with latitudes descending."""
    root = tmp_path_factory.mktemp("external")
    fields(48, 1900, 1.0, seed=0).to_netcdf(root / "train.nc")
    fields(12, 1990, 3.0, seed=1).isel(latitude=slice(None, None, -1)).to_netcdf(
        root / "scenario.nc"
    )
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    ingest(root / "spec.yaml", root / "fields.zarr")
    observe(root / "spec.yaml", root / "fields.zarr", root / "obs.zarr")
    return root


@pytest.fixture(scope="module")
def coarse(reference: Path) -> Path:
    return coarsen_file(reference / "spec.yaml", reference / "scenario.nc", "air_temperature",
                        reference / "coarse" / "scenario_coarse.nc",
                        fields_path=reference / "fields.zarr")


def test_coarsen_file_gives_block_means_on_the_observation_grid(
    reference: Path, coarse: Path
) -> None:
    out = open_nc(coarse)
    fine = xr.open_dataset(reference / "scenario.nc").air_temperature.values[:, ::-1]  # lat up
    crop = fine[:, : NY - NY % FACTOR, : NX - NX % FACTOR].astype(np.float64)
    t, h, w = crop.shape
    expected = crop.reshape(t, h // FACTOR, FACTOR, w // FACTOR, FACTOR).mean(axis=(2, 4))
    np.testing.assert_allclose(out.air_temperature.values, expected, rtol=0, atol=1e-4)
    obs = open_store(reference / "obs.zarr")
    np.testing.assert_allclose(out.lat.values, obs.lat_c.values, atol=1e-9)
    np.testing.assert_allclose(out.lon.values, obs.lon_c.values, atol=1e-9)
    assert out.lat.values[0] == pytest.approx(LAT[:FACTOR].mean())
    assert out.lon.values[0] == pytest.approx(LON[:FACTOR].mean() - 360.0)
    assert out.air_temperature.attrs["units"] == "K" and out.lat.attrs["units"] == "degrees_north"
    assert [d.year for d in out.time.values] == list(range(1990, 2002))
    assert sorted(p.name for p in coarse.parent.iterdir()) == [coarse.name]  # no temp file left


def test_coarsen_file_time_slice(reference: Path, tmp_path: Path) -> None:
    out = coarsen_file(reference / "spec.yaml", reference / "scenario.nc", ["air_temperature"],
                       tmp_path / "c.nc", time_slice=("1993-01-01", "1995-12-30"))
    years = [d.year for d in open_nc(tmp_path / "c.nc").time.values]
    assert out == tmp_path / "c.nc" and years == [1993, 1994, 1995]
    with pytest.raises(SourceError, match="selects no time step; the file covers 1990"):
        coarsen_file(reference / "spec.yaml", reference / "scenario.nc", "air_temperature",
                     tmp_path / "none.nc", time_slice=("2050-01-01", "2060-12-30"))
    assert not (tmp_path / "none.nc").exists()


def _broken(coarse: Path, out: Path, kind: str) -> Path:
    ds = open_nc(coarse).load()
    if kind == "grid":
        ds = ds.assign_coords(lat=ds.lat + 0.5)
    elif kind == "units":
        ds["air_temperature"] = (ds.air_temperature - 273.15).assign_attrs(units="degC")
    elif kind == "nan":
        ds["air_temperature"][2, 1, 1] = np.nan
    ds.to_netcdf(out)
    return out


@pytest.mark.parametrize(
    ("kind", "variables", "message"),
    [
        ("grid", VARIABLES, r"variable 'air_temperature': its lat grid \(3 points from 22\.375 "
         r"to 32\.375\) does not match the model's observation grid lat_c in .*obs\.zarr "
         r"\(3 points from 21\.875 to 31\.875, up to 0\.5 degrees apart\)"),
        ("missing", {"tas": "tas"}, r"variable 'tas' not found; gridded variables present: "
         "air_temperature"),
        ("units", VARIABLES, r"has units 'degC' but the model's observations \(.*obs\.zarr\) "
         r"are in 'K'"),
        ("nan", VARIABLES, r"has 1 missing or non-finite values"),
        ("mapping", {"pr": "air_temperature"}, r"the model observes \['tas'\]"),
    ],
)
def test_observe_external_rejects_bad_input_and_writes_nothing(
    reference: Path, coarse: Path, tmp_path: Path, kind: str, variables: dict, message: str
) -> None:
    source = _broken(coarse, tmp_path / f"{kind}.nc", kind)
    out = tmp_path / "out" / "obs.zarr"
    with pytest.raises(SourceError, match=message) as err:
        observe_external(reference / "obs.zarr", source, variables, out)
    text = str(err.value)
    assert text.startswith(str(source)) and "\n" not in text
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_cli_reports_bad_input_in_one_line(
    reference: Path, coarse: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "obs.zarr"
    rc = main(["observe-external", "--obs", str(reference / "obs.zarr"), "--file",
               str(reference / "scenario.nc"), "--variables", '{"tas": "air_temperature"}',
               "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and not out.exists()
    assert err[-1].startswith("sgm observe-external: error: ") and "sgm coarsen-file" in err[-1]


def test_external_posterior_and_report_without_truth(
    reference: Path, coarse: Path, tmp_path: Path
) -> None:
    model = train_stage(reference / "spec.yaml", reference / "fields.zarr",
                        reference / "obs.zarr", tmp_path / "model.pt", MODEL, progress=False)
    ext = observe_external(reference / "obs.zarr", coarse, VARIABLES, tmp_path / "ext.zarr")
    obs, ref = open_store(ext), open_store(reference / "obs.zarr")
    assert set(obs.split.values) == {"external"} and obs.tas.dims == ("time", "lat_c", "lon_c")
    np.testing.assert_array_equal(
        obs.tas.values, open_nc(coarse).air_temperature.values
    )
    for key in ("sgm_observation", "sgm_spec"):
        assert json_attr(obs, key) == json_attr(ref, key)
    assert obs.attrs["sgm_source_file"] == str(coarse)

    settings = {"members": 3, "steps": 2, "batch_size": 64, "device": "cpu"}
    post_path = sample_stage(model, ext, tmp_path / "posterior.zarr", settings,
                             split="external", progress=False)
    post = open_store(post_path)
    assert post.tas.shape == (12, 3, 12, 16) and post.attrs["sgm_split"] == "external"
    assert list(post.time.values) == list(obs.time.values)
    ens = post.tas.transpose("member", "time", "lat", "lon").values.astype(np.float64)
    assert np.isfinite(ens).all()

    html_path = report_external(ext, post_path, tmp_path / "report" / "index.html", n_maps=2)
    text = html_path.read_text()
    names = ["maps_tas.png", "domain_mean.png", "spread_map.png", "reobs_chi2.png"]
    assert text.count("data:image/png;base64,") == len(names)
    for name in names:
        assert (html_path.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model_obs = ObservationModel.from_dict(json_attr(obs, "sgm_observation"))
    a_ens = model_obs.operator.apply(torch.as_tensor(ens)).numpy()
    chi2 = metrics.reobs_chi2(a_ens, obs.tas.values.astype(np.float64), ETA)
    assert np.isfinite(chi2) and chi2 > 0
    assert f"<td class='num'>{chi2:.4g}</td>" in text
    thr = np.percentile(ens.mean(axis=0), 90)
    assert f"{thr:.4g} K (the 90th percentile of the posterior means)" in text
    assert str(coarse) in text and "Truth" not in text
    assert not re.search(r"src=['\"]http", text)


def test_reobs_chi2_is_one_for_members_consistent_with_y_and_large_otherwise() -> None:
    rng = np.random.default_rng(0)
    op = Coarsen((16, 16), 4)
    truth = rng.normal(280.0, 3.0, (20, 16, 16))
    y = op.apply(torch.as_tensor(truth)).numpy() + ETA * rng.standard_normal((20, 4, 4))

    def summary(ens: np.ndarray) -> dict:
        return variable_summary(ens, y, op.apply(torch.as_tensor(ens)).numpy(), ETA)

    good = summary(truth + 0.01 * rng.standard_normal((8, 20, 16, 16)))
    assert good["overall"] == pytest.approx(1.0, abs=0.25) and good["chi2"].shape == (20,)
    assert good["n_obs"] == 16 and good["members"].shape == (8, 20)
    np.testing.assert_allclose(good["obs"], truth.mean(axis=(1, 2)), atol=4 * ETA / 4)
    assert good["spread"].shape == (16, 16) and good["spread_mean"] == pytest.approx(0.01, rel=0.1)
    warm = summary(truth + 1.0 + 0.01 * rng.standard_normal((8, 20, 16, 16)))
    assert warm["overall"] == pytest.approx(1.0 + 1.0 / ETA**2, rel=0.1)  # 1 K off: χ² ≈ 101


def test_config_entry_and_the_demo_entry_validate() -> None:
    entry = {"spec": "hadcm3_tas_na", "name": "e1", "file": "package:p/f.nc",
             "variables": VARIABLES, "time_slice": ["2099-01-01", "2060-12-30"]}
    with pytest.raises(SpecError, match="external.0: .*start 2099-01-01 is after end"):
        validate(WorkflowConfig, {"specs": ["s"], "models": {"m": {}}, "external": [entry]}, "c")
    cfg = load_workflow_config(REPO / "config" / "config.yaml")
    (e1,) = cfg.external
    assert (e1.make_coarse, e1.time_slice) == (True, ("2080-01-01", "2099-12-30"))
    assert e1.variables == VARIABLES
