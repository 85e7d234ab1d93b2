"""Stores, conditioning, and the observe → train → sample stages on a tiny synthetic spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from sgm.cli import main
from sgm.core.operators import build_operator
from sgm.io.stores import IncompleteStoreError, open_store, write_store
from sgm.stages.conditioning import (
    ResidualTarget,
    Standardiser,
    conditioning,
    noisy_observation,
    pack_paired,
    paired_observations,
    residual_scale,
    simulated_observations,
    static_channels,
    training_pairs,
)
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
    train_stage(root / "spec.yaml", root / "fields.zarr", root / "model.pt", MODEL,
                progress=False)
    return root


def test_write_store_is_atomic_and_marked(tmp_path: Path) -> None:
    ds = xr.Dataset({"a": (("t",), np.arange(3.0))})
    write_store(ds, tmp_path / "s.zarr", attrs={"meta": {"k": 1}})
    back = open_store(tmp_path / "s.zarr")
    assert back.attrs["sgm_complete"] == 1 and json.loads(back.attrs["meta"]) == {"k": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]  # no temporary left behind
    ds.to_zarr(tmp_path / "partial.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(IncompleteStoreError, match="partial.zarr"):
        open_store(tmp_path / "partial.zarr")


def test_standardiser_round_trip() -> None:
    st = Standardiser(("a", "b"), (280.0, 5.0), (10.0, 2.0))
    x = torch.randn(3, 2, 4, 4) * 10 + 100
    z = st.forward(x)
    assert torch.allclose(z[:, 0], (x[:, 0] - 280) / 10)
    assert torch.allclose(st.inverse(z), x, atol=1e-4)
    assert torch.allclose(st.noise({"a": 1.0, "b": 1.0}), torch.tensor([0.1, 0.5]))


def test_training_pairs_observe_with_fresh_noise() -> None:
    op = build_operator({"kind": "coarsen", "factor": 2}, (4, 4))
    static = torch.full((1, 4, 4), 7.0)
    x0 = torch.randn(5, 1, 4, 4)
    exact = conditioning(op, op.apply(x0), static)
    assert exact.shape == (5, 2, 4, 4) and torch.all(exact[:, 1] == 7.0)
    observer = simulated_observations(op, torch.tensor([0.0]))
    target, cond = training_pairs(op, observer, static, None)(x0, torch.Generator().manual_seed(0))
    assert torch.equal(target, x0) and torch.allclose(cond, exact)
    noisy = training_pairs(op, simulated_observations(op, torch.tensor([0.5])), static, None)
    (_, a), (_, b) = (noisy(x0, torch.Generator().manual_seed(s)) for s in (0, 1))
    assert not torch.allclose(a, b)
    resid = (a[:, 0] - exact[:, 0]).std()
    assert 0.3 < float(resid) < 0.7  # noise of std 0.5, replicated over 2×2 blocks


def test_residual_target_round_trip_and_scale() -> None:
    op = build_operator({"kind": "coarsen", "factor": 4}, (8, 8))
    z = torch.randn(200, 1, 8, 8)
    noise = torch.tensor([0.1])
    y = noisy_observation(op, z, noise, torch.Generator().manual_seed(0))
    scale = residual_scale(op, z, y)
    # white noise: the bicubic baseline of block means explains little, the residual std is ~1
    assert 0.85 < float(scale) < 1.05
    smooth = z.mean(dim=(2, 3), keepdim=True).expand(-1, -1, 8, 8).contiguous()
    assert float(residual_scale(op, smooth, op.apply(smooth))) < 1e-4 + 1e-6
    target = ResidualTarget(op, scale)
    make_pair = training_pairs(op, simulated_observations(op, noise), None, target)
    r, cond = make_pair(z[:4], torch.Generator().manual_seed(2))
    y = cond[:, :1, ::4, ::4]  # nearest-upsampled observation → the coarse values
    assert torch.allclose(target.inverse(r, y), z[:4], atol=1e-5)


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
    np.testing.assert_allclose(gathered.field.values, one.field.values, rtol=0, atol=1e-5)
    assert list(one.obs_index.values) == [4, 5, 6, 7]  # the test times of obs.zarr
    members = one.field.values
    assert np.all(np.isfinite(members)) and members[:, 0].std() > 0
    assert not np.allclose(members[:, 0], members[:, 1])  # members differ
    json.loads(one.attrs["sgm_sampler"])


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


def test_paired_batches_carry_their_own_observations() -> None:
    op = build_operator({"kind": "coarsen", "factor": 2}, (4, 6))
    z, y = torch.randn(3, 2, 4, 6), torch.randn(3, 2, 2, 3)
    data = pack_paired(op, z, y)
    assert data.shape == (3, 4, 4, 6)
    z_back, y_back = paired_observations(op, 2)(data, torch.Generator())
    assert torch.equal(z_back, z) and torch.allclose(y_back, y, atol=1e-6)


def test_static_channels_climatology_then_covariates() -> None:
    rng = np.random.default_rng(0)
    fields = xr.Dataset(
        {"tas": (("time", "lat", "lon"), rng.normal(280, 5, (6, 2, 3)).astype("f4")),
         "static_orog": (("lat", "lon"), np.arange(6.0).reshape(2, 3))},
        coords={"split": ("time", ["train"] * 4 + ["test"] * 2)},
        attrs={"sgm_static": json.dumps(["orog"]), "sgm_normalisation": json.dumps(
            {"tas": {"mean": 280.0, "std": 5.0}, "static_orog": {"mean": 2.5, "std": 2.0}})},
    )
    st = Standardiser(("tas",), (280.0,), (5.0,))
    both = static_channels(fields, st, climatology=True)
    assert both.shape == (2, 2, 3)
    clim = (fields.tas.values[:4].mean(axis=0) - 280) / 5
    np.testing.assert_allclose(both[0].numpy(), clim, rtol=1e-5)
    np.testing.assert_allclose(both[1].numpy(), (np.arange(6.0).reshape(2, 3) - 2.5) / 2)
    assert static_channels(fields, st, climatology=False).shape == (1, 2, 3)


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
    train_stage(tmp_path / "spec.yaml", tmp_path / "fields.zarr", tmp_path / "model.pt", MODEL,
                progress=False)
    sample_stage(tmp_path / "model.pt", tmp_path / "obs.zarr", tmp_path / "post.zarr",
                 {"members": 2, "steps": 2}, progress=False)
    assert open_store(tmp_path / "post.zarr").tas.shape == (3, 2, 4, 8)
