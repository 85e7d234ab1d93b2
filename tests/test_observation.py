"""The observation model y = A(x) + η ⊙ ε: one object, described completely, per-variable
noise, and the station operator as a spec states it (inline or from a CSV file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sgm.config import SpecError, load_spec
from sgm.core.observation import ObservationModel
from sgm.io.stores import open_store
from sgm.stages.ingest import ingest
from sgm.stages.observe import observe

GRID = {"lat": [10.0, 11.0, 12.0, 13.0], "lon": [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]}


def two_variables(noise: dict[str, float]) -> ObservationModel:
    return ObservationModel.from_dict({"operator": {"kind": "coarsen", "factor": 2},
                                       "variables": ["tas", "pr"], "noise_std": noise,
                                       "grid": GRID})


def test_description_round_trip_is_complete() -> None:
    obs = two_variables({"tas": 0.1, "pr": 2.0})
    d = obs.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain data: a store attribute or model.pt entry
    clone = ObservationModel.from_dict(d)
    assert clone.to_dict() == d
    x = torch.randn(3, 2, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(clone.apply(x), obs.apply(x))


def test_noise_is_drawn_per_variable_in_its_own_units() -> None:
    obs = two_variables({"tas": 0.1, "pr": 2.0})
    x = torch.zeros(5000, 2, 4, 6, dtype=torch.float64)
    y = obs.sample(x, torch.Generator().manual_seed(0))
    assert y.shape == (5000, 2, 2, 3)
    std = y.transpose(0, 1).reshape(2, -1).std(dim=1)
    assert abs(float(std[0]) - 0.1) < 0.002 and abs(float(std[1]) - 2.0) < 0.04
    assert torch.equal(obs.sample(x, torch.Generator().manual_seed(0)), y)  # seeded draws
    assert not torch.equal(obs.sample(x, torch.Generator().manual_seed(1)), y)


def test_bad_descriptions_are_refused() -> None:
    with pytest.raises(ValueError, match="no value for variable"):
        two_variables({"tas": 0.1})
    with pytest.raises(ValueError, match="≥ 0"):
        two_variables({"tas": 0.1, "pr": -1.0})
    obs = two_variables({"tas": 0.1, "pr": 2.0})
    with pytest.raises(ValueError, match="2 variable channel"):
        obs.apply(torch.zeros(3, 1, 4, 6))


def test_coords_of_block_means_and_stations() -> None:
    coords = two_variables({"tas": 0.0, "pr": 0.0}).coords()
    np.testing.assert_allclose(coords["lat_c"][1], [10.5, 12.5])
    np.testing.assert_allclose(coords["lon_c"][1], [1.0, 5.0, 9.0])
    st = ObservationModel.from_dict({
        "operator": {"kind": "stations", "stations": [{"id": "a", "lat": 11.5, "lon": 3.0}]},
        "variables": ["tas"], "noise_std": {"tas": 0.1}, "grid": GRID})
    assert st.coords()["obs_lat"][0] == ("station",)
    assert float(st.coords()["obs_lon"][1][0]) == 3.0


SPEC = {
    "name": "st",
    "source": {"synthetic": {"shape": [8, 12], "length_scale": 2.0, "n_times": 30, "seed": 1}},
    "variables": [{"name": "field"}],
    "splits": {"train": 20, "val": 5, "test": 5},
    "operator": {"kind": "stations", "noise_std": 0.05,
                 "stations": [{"id": "n", "lat": 1.5, "lon": 2.25}, {"id": "s", "lat": 6.0,
                                                                    "lon": 10.5}]},
}


def test_stations_spec_end_to_end(tmp_path: Path) -> None:
    """Stations inline in a spec: ingest checks them against the grid, observe interpolates."""
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    ingest(tmp_path / "spec.yaml", tmp_path / "fields.zarr")
    observe(tmp_path / "spec.yaml", tmp_path / "fields.zarr", tmp_path / "obs.zarr")
    fields, obs = open_store(tmp_path / "fields.zarr"), open_store(tmp_path / "obs.zarr")
    assert obs.field.dims == ("time", "station") and obs.field.shape == (10, 2)
    x = fields.field.values[20:]
    north = (0.5 * 0.75 * x[:, 1, 2] + 0.5 * 0.25 * x[:, 1, 3]
             + 0.5 * 0.75 * x[:, 2, 2] + 0.5 * 0.25 * x[:, 2, 3])
    resid = obs.field.values[:, 0] - north
    assert 0.01 < resid.std() < 0.12  # noise of std 0.05
    assert json.loads(obs.attrs["sgm_observation"])["operator"]["kind"] == "stations"


def test_station_outside_the_grid_fails_ingest_with_its_name(tmp_path: Path) -> None:
    spec = dict(SPEC, operator={"kind": "stations", "noise_std": 0.1,
                                "stations": [{"id": "lost", "lat": 40.0, "lon": 3.0}]})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    from sgm.io.errors import SourceError

    with pytest.raises(SourceError, match="operator: station 'lost' at lat 40, lon 3 lies "
                                          "outside the grid"):
        ingest(tmp_path / "spec.yaml", tmp_path / "fields.zarr")
    assert not (tmp_path / "fields.zarr").exists()


def test_station_file_is_read_relative_to_the_spec(tmp_path: Path) -> None:
    (tmp_path / "net.csv").write_text("id,lat,lon,elevation\nA,1.5,2.0,100\n\nB,3,4,5\n")
    spec = dict(SPEC, operator={"kind": "stations", "file": "net.csv", "noise_std": 0.1})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    loaded = load_spec(tmp_path / "spec.yaml")
    assert [s.id for s in loaded.operator.stations] == ["A", "B"]
    assert loaded.observation()["operator"]["stations"][1] == {"id": "B", "lat": 3.0, "lon": 4.0}


@pytest.mark.parametrize(("text", "message"), [
    ("id,lat\nA,1\n", r"net.csv: line 1: the header lacks column\(s\) lon"),
    ("id,lat,lon\nA,1,2\nB,,4\n", r"net.csv: line 3: missing value\(s\) for lat"),
    ("id,lat,lon\nA,north,2\n", r"net.csv: line 2: station 'A': could not convert"),
    ("id,lat,lon\nA,91,2\n", r"net.csv: line 2: station 'A': Input should be less than or equal"),
    ("id,lat,lon\n", r"net.csv: the station file lists no station"),
])
def test_bad_station_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "net.csv").write_text(text)
    spec = dict(SPEC, operator={"kind": "stations", "file": "net.csv", "noise_std": 0.1})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=message):
        load_spec(tmp_path / "spec.yaml")


def test_noise_std_mapping_per_variable(tmp_path: Path) -> None:
    spec = dict(SPEC, variables=[{"name": "field"}],
                operator={"kind": "coarsen", "factor": 2, "noise_std": {"field": 0.3}})
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(spec))
    assert load_spec(tmp_path / "a.yaml").noise_std() == {"field": 0.3}
    spec["operator"]["noise_std"] = {"other": 0.3}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="give one value per variable"):
        load_spec(tmp_path / "b.yaml")
