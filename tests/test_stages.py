"""Stores and the ingest → observe → train → sample → gather stages on a tiny synthetic spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from sgm.cli import main
from sgm.io.stores import IncompleteStoreError, StoreError, open_store, write_store
from sgm.stages.gather import gather_shards
from sgm.stages.ingest import ingest
from sgm.stages.observe import observe
from sgm.stages.sample import sample_stage, shard_times
from sgm.stages.train import train_stage

SPEC = {
    "name": "tiny_grf",
    "source": {"synthetic": {"shape": [8, 12], "length_scale": 2.0, "n_times": 48, "seed": 3}},
    "variables": [{"name": "field"}],
    "splits": {"train": 40, "val": 4, "test": 4},
    "operator": {"kind": "coarsen", "factor": 4, "noise_std": 0.05},
    "conditioning": {"climatology": True},
}
MODEL = {"model": {"preset": "tiny", "base_channels": 8},
         "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 2}}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stages")
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    ingest(root / "spec.yaml", root / "fields.zarr")
    observe(root / "spec.yaml", root / "fields.zarr", root / "obs.zarr")
    train_stage(root / "spec.yaml", root / "fields.zarr", root / "obs.zarr", root / "model.pt",
                MODEL, progress=False)
    return root


def test_write_store_is_atomic_and_marked(tmp_path: Path) -> None:
    ds = xr.Dataset({"a": (("t",), np.arange(3.0))})
    write_store(ds, tmp_path / "s.zarr", attrs={"meta": {"k": 1}})
    back = open_store(tmp_path / "s.zarr")
    assert back.attrs["sgm_complete"] == 1 and json.loads(back.attrs["meta"]) == {"k": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]  # no temporary left behind
    ds.to_zarr(tmp_path / "foreign.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="foreign.zarr: not a store written by sgm"):
        open_store(tmp_path / "foreign.zarr")
    ds.attrs["sgm_complete"] = 0  # what a killed write_store leaves
    ds.to_zarr(tmp_path / "partial.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(IncompleteStoreError, match="partial.zarr"):
        open_store(tmp_path / "partial.zarr")


def test_fields_and_obs(pipeline: Path) -> None:
    fields = open_store(pipeline / "fields.zarr")
    obs = open_store(pipeline / "obs.zarr")
    assert fields.field.shape == (48, 8, 12)
    assert list(fields.split.values[:40]) == ["train"] * 40
    stats = json.loads(fields.attrs["sgm_normalisation"])["field"]
    train = fields.field.values[:40]
    assert stats["mean"] == pytest.approx(float(train.mean()), abs=1e-5)
    assert obs.field.shape == (8, 2, 3)
    # y = block mean + noise of std 0.05
    truth = fields.field.values[40:].reshape(8, 2, 4, 3, 4).mean(axis=(2, 4))
    resid = obs.field.values - truth
    assert 0.02 < resid.std() < 0.09
    assert np.allclose(obs.lat_c.values, fields.lat.values.reshape(2, 4).mean(axis=1))


def test_sample_is_independent_of_batch_size_and_shards(pipeline: Path, tmp_path: Path) -> None:
    settings = {"members": 3, "steps": 3, "seed": 5}
    sample_stage(pipeline / "model.pt", pipeline / "obs.zarr", tmp_path / "a.zarr",
                 {**settings, "batch_size": 64}, progress=False)
    for k in range(2):
        sample_stage(pipeline / "model.pt", pipeline / "obs.zarr", tmp_path / f"s{k}.zarr",
                     {**settings, "batch_size": 2}, shard=(k, 2), progress=False)
    gather_shards([tmp_path / "s1.zarr", tmp_path / "s0.zarr"], tmp_path / "g.zarr")
    one, gathered = open_store(tmp_path / "a.zarr"), open_store(tmp_path / "g.zarr")
    assert one.field.shape == (4, 3, 8, 12)
    np.testing.assert_array_equal(gathered.field.values, one.field.values)  # bitwise
    assert list(one.obs_index.values) == [4, 5, 6, 7]  # the test times of obs.zarr
    members = one.field.values
    assert np.all(np.isfinite(members)) and members[:, 0].std() > 0
    assert not np.allclose(members[:, 0], members[:, 1])  # members differ
    json.loads(one.attrs["sgm_sampler"])
    # the gathered cost per member is the shards' mean weighted by their times
    shards = [json.loads(open_store(tmp_path / f"s{k}.zarr").attrs["sgm_cost"]) for k in range(2)]
    cost = json.loads(gathered.attrs["sgm_cost"])
    nfe = json.loads(one.attrs["sgm_sampler"])["nfe"]
    assert cost["network_evaluations"] == shards[0]["network_evaluations"] == nfe
    assert cost["seconds_per_member"] == pytest.approx(
        (shards[0]["seconds_per_member"] + shards[1]["seconds_per_member"]) / 2)


def test_shard_times_partition() -> None:
    parts = [shard_times(10, k, 3) for k in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    with pytest.raises(ValueError):
        shard_times(10, 3, 3)


def test_cli_reports_bad_spec_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = dict(SPEC, operator={"kind": "coarsen", "factor": 1})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["ingest", "--spec", str(tmp_path / "bad.yaml"), "--out",
                 str(tmp_path / "f.zarr")]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml: operator.coarsen.factor" in err
    assert not (tmp_path / "f.zarr").exists()


def test_paired_source_feeds_observe_and_train(tmp_path: Path) -> None:
    """Real downscaling pairs: obs.zarr holds the paired coarse fields, not simulated ones."""
    import cftime

    rng = np.random.default_rng(1)
    times = cftime.num2date(np.arange(20) * 360, "days since 2000-01-01", calendar="360_day")
    lat, lon = np.arange(4.0), np.arange(8.0)
    fine = rng.normal(280, 3, (20, 4, 8)).astype("f4")
    coarse = fine.reshape(20, 2, 2, 4, 2).mean(axis=(2, 4)) + 0.7  # a biased coarse model
    attrs = {"units": "K", "standard_name": "air_temperature"}
    xr.Dataset({"tas": (("time", "lat", "lon"), fine, attrs)},
               coords={"time": times, "lat": lat, "lon": lon}).to_netcdf(tmp_path / "fine.nc")
    xr.Dataset({"tas": (("time", "lat", "lon"), coarse, attrs)},
               coords={"time": times, "lat": lat.reshape(2, 2).mean(1),
                       "lon": lon.reshape(4, 2).mean(1)}).to_netcdf(tmp_path / "coarse.nc")
    spec = {"name": "paired", "source": {"paths": ["fine.nc"]},
            "variables": [{"name": "tas", "source_name": "tas", "units": "K"}],
            "paired": {"source": {"paths": ["coarse.nc"]}},
            "splits": {"train": 14, "val": 3, "test": 3},
            "operator": {"kind": "coarsen", "factor": 2, "noise_std": 0.1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    ingest(tmp_path / "spec.yaml", tmp_path / "fields.zarr")
    observe(tmp_path / "spec.yaml", tmp_path / "fields.zarr", tmp_path / "obs.zarr")
    obs = open_store(tmp_path / "obs.zarr")
    np.testing.assert_allclose(obs.tas.values, coarse[14:], rtol=0, atol=1e-4)
    assert obs.attrs["sgm_observations"] == "paired"
    train_stage(tmp_path / "spec.yaml", tmp_path / "fields.zarr", tmp_path / "obs.zarr",
                tmp_path / "model.pt", MODEL, progress=False)
    sample_stage(tmp_path / "model.pt", tmp_path / "obs.zarr", tmp_path / "post.zarr",
                 {"members": 2, "steps": 2}, progress=False)
    assert open_store(tmp_path / "post.zarr").tas.shape == (3, 2, 4, 8)


def test_same_seed_trains_bitwise_the_same_model(pipeline: Path, tmp_path: Path) -> None:
    """Initial weights, batches, noise and dropout all come from the seed: two trainings with the
    same settings write byte-identical model.pt files; another seed gives another model."""
    settings = {"model": {"preset": "tiny", "base_channels": 8, "dropout": 0.1},
                "train": {"steps": 3, "batch_size": 4, "checkpoint_every": 3, "log_every": 1}}
    paths = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        settings["train"]["seed"] = seed
        paths.append(train_stage(pipeline / "spec.yaml", pipeline / "fields.zarr",
                                 pipeline / "obs.zarr", tmp_path / f"{name}.pt", settings,
                                 workdir=tmp_path / name, progress=False))
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b
    assert a != c


def test_validation_selection_and_recalibration(pipeline: Path, tmp_path: Path) -> None:
    """train.select scores every snapshot on the validation split and keeps the best; sample
    with recalibrate inflates the members about their mean by the fitted factor and keeps the
    raw ones; evaluate scores both."""
    from sgm.io.modelfile import read_model
    from sgm.stages.evaluate import evaluate

    settings = {"model": {"preset": "tiny", "base_channels": 8},
                "train": {"steps": 6, "batch_size": 4, "checkpoint_every": 3, "log_every": 1,
                          "snapshot_every": 2, "select": {"enabled": True, "members": 2, "solver": {
                              "solver": "dpm", "order": 2, "steps": 3}}}}
    model = train_stage(pipeline / "spec.yaml", pipeline / "fields.zarr", pipeline / "obs.zarr",
                        tmp_path / "m.pt", settings, workdir=tmp_path / "w", progress=False)
    meta = read_model(model).meta
    curve = meta["selection"]["curve"]
    assert [r["step"] for r in curve] == [2, 4, 6]
    best = min(curve, key=lambda r: r["score"])
    assert meta["selection"]["chosen_step"] == meta["step"] == best["step"]
    recal = meta["recalibration"]
    assert recal["b"][0] >= 0 and recal["a"][0] > 0 and recal["fitted_on"] == "val"
    post_path = sample_stage(model, pipeline / "obs.zarr", tmp_path / "p.zarr",
                             {"members": 4, "steps": 3, "recalibrate": True}, progress=False)
    post = open_store(post_path)
    raw, new = post.field_raw.values, post.field.values
    k = post.field_inflation.values  # one factor per time
    assert k.shape == (4,) and np.all(k > 0)
    np.testing.assert_allclose(new.mean(axis=1), raw.mean(axis=1), atol=1e-4)
    np.testing.assert_allclose(new.std(axis=1), k[:, None, None] * raw.std(axis=1), rtol=1e-3,
                               atol=1e-6)
    result = evaluate(pipeline / "fields.zarr", pipeline / "obs.zarr", post_path,
                      tmp_path / "m.json", tmp_path / "maps.zarr")
    e = result["variables"]["field"]
    assert e["raw_ensemble"]["spread"] != e["ensemble"]["spread"]
    with pytest.raises(ValueError, match="recalibrate needs a model chosen"):
        sample_stage(pipeline / "model.pt", pipeline / "obs.zarr", tmp_path / "q.zarr",
                     {"members": 2, "steps": 2, "recalibrate": True}, progress=False)
