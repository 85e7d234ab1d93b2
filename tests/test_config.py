"""Data spec models: the shipped specs, error key paths, splits in model calendars, operators,
units, longitude conventions, and the exported JSON schemas kept in sync."""

from __future__ import annotations

from pathlib import Path

import cftime
import numpy as np
import pytest
import yaml

from sgm.cli import main
from sgm.config import DataSpec, SpecError, Splits, json_schemas, load_spec
from sgm.core.observation import ObservationModel
from sgm.io import units
from sgm.io.grid import _lon_bounds, wrap_longitudes

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"name": "m", "source": {"paths": ["a.nc"]}, "variables": [{"name": "tas"}],
           "splits": {"train": 8, "val": 2, "test": 2},
           "operator": {"kind": "coarsen", "factor": 2}}


def test_schemas_in_workflow_match_the_models() -> None:
    """Fails when a model changed without `sgm export-schemas`."""
    for name, text in json_schemas().items():
        path = REPO / "workflow" / "schemas" / name
        assert path.read_text() == text, f"{path} is stale: run `sgm export-schemas`"


@pytest.mark.parametrize("path", sorted((REPO / "data_specs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_specs_validate(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem


def test_every_error_names_the_file_and_key(tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    bad = dict(MINIMAL, source={"paths": ["a.nc"], "synthetic": {}},
               variables=[{"name": "tas", "max_missing_fraction": 2}],
               region={"lat": [50, 10]},
               splits={"train": 8, "val": {"start": "2001-01-01", "end": "2000-01-01"},
                       "test": 2},
               static=[{"name": "orog", "optional": "perhaps"}])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["validate-spec", str(path)]) == 1
    err = capsys.readouterr().err
    for key in ("source:", "variables.0.max_missing_fraction:", "region.lat:",
                "splits.val.dates:", "static.0.optional:"):
        assert f"{path}: {key}" in err, key


@pytest.mark.parametrize(("change", "message"), [
    ({"operator": {"kind": "sparse", "fraction": 0.1, "points": [[0, 1]]}},
     "exactly one of fraction or points"),
    ({"operator": {"kind": "blur", "sigma_pixels": 0}}, "greater than 0"),
    ({"paired": {"source": {"paths": ["c.nc"]}}, "operator": {"kind": "blur", "sigma_pixels": 1}},
     "paired: needs operator kind coarsen"),
    ({"paired": {"source": {"paths": ["c.nc"]}, "variables": [{"name": "pr"}]}},
     "paired.variables: pr not among the target variables"),
    ({"variables": [{"name": "tas"}, {"name": "tas"}]}, "names must be unique"),
    ({"splits": {"train": 2.5, "val": 1, "test": 1}}, "neither a whole count nor a fraction"),
    ({"splits": {"train": 0.7, "val": 0.2, "test": 0.2}}, "fractions add up to more than 1"),
    ({"splits": {"train": 8, "val": 2, "test": {"start": "2000-01-01", "end": "2000-02-01"}}},
     "all three splits"),
    ({"splits": {"train": {"start": "2000-01-01", "end": "2000-06-30"},
                 "val": {"start": "2000-06-01", "end": "2000-07-30"},
                 "test": {"start": "2000-08-01", "end": "2000-09-30"}}},
     "date ranges of train and val overlap"),
    ({"variables": [{"name": "tas", "level_units": "hPa"}]}, "level_units needs level"),
])
def test_invalid_specs_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, **change}))
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_unquoted_dates_stay_text_even_when_python_has_no_such_day(tmp_path: Path) -> None:
    text = yaml.safe_dump(MINIMAL).replace(
        "splits:\n  test: 2\n  train: 8\n  val: 2\n",
        "splits:\n  train: {start: 1860-01-01, end: 2039-02-30}\n"
        "  val: {start: 2040-01-01, end: 2059-12-30}\n"
        "  test: {start: 2060-01-01, end: 2099-12-30}\n",
    )
    (tmp_path / "s.yaml").write_text(text)
    spec = load_spec(tmp_path / "s.yaml")
    assert spec.splits.train.end == "2039-02-30"  # a 360-day date, not a Python date


def _times(calendar: str, n: int) -> np.ndarray:
    return cftime.num2date(np.arange(n), "days since 2000-02-27", calendar=calendar)


@pytest.mark.parametrize(("calendar", "n_feb"), [("360_day", 4), ("noleap", 2),
                                                  ("standard", 3)])
def test_date_ranges_follow_the_calendar(calendar: str, n_feb: int) -> None:
    splits = Splits.model_validate({
        "train": {"start": "2000-02-01", "end": "2000-02-28"},  # 2000-02-28 included all day
        "val": {"start": "2000-02-29", "end": "2000-03-01T00:00"},
        "test": {"start": "2000-03-02", "end": "2000-03-10"},
    }) if calendar != "noleap" else Splits.model_validate({
        "train": {"start": "2000-02-01", "end": "2000-02-28"},
        "val": {"start": "2000-03-01", "end": "2000-03-01"},
        "test": {"start": "2000-03-02", "end": "2000-03-10"},
    })
    times = _times(calendar, 8)
    labels = splits.labels(times)
    assert list(labels[:2]) == ["train", "train"]  # 02-27 and 02-28
    feb = [t for t in times if t.month == 2]
    assert len(feb) == n_feb  # 360_day: 27..30; standard: 27..29; noleap: 27, 28
    assert labels[n_feb] == "val"  # 03-01 at 00:00 is the end of val
    assert set(labels[n_feb + 1:]) == {"test"}


def test_counts_and_fractions() -> None:
    times = _times("360_day", 10)
    labels = Splits(train=0.6, val=0.2, test=2).labels(times)
    assert list(labels) == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    assert list(Splits(train=3, val=1, test=1).labels(times)[5:]) == [""] * 5  # unused
    with pytest.raises(ValueError, match="has 10 time steps but the splits need 8 \\+ 2 \\+ 1"):
        Splits(train=8, val=2, test=1).labels(times)
    with pytest.raises(ValueError, match="not a date of the noleap calendar"):
        Splits.model_validate({
            "train": {"start": "2000-02-29", "end": "2000-03-01"},
            "val": {"start": "2000-03-02", "end": "2000-03-03"},
            "test": {"start": "2000-03-04", "end": "2000-03-05"},
        }).labels(_times("noleap", 10))


@pytest.mark.parametrize(("operator", "n_obs"), [
    ({"kind": "coarsen", "factor": 4}, 12),
    ({"kind": "sparse", "fraction": 0.25, "seed": 3}, 48),
    ({"kind": "sparse", "points": [[0, 0], [5, 7], [11, 15]]}, 3),
    ({"kind": "blur", "sigma_pixels": 1.5, "boundary": "reflect"}, 192),
])
def test_spec_observation_builds_the_observation_model(operator: dict, n_obs: int) -> None:
    spec = DataSpec.model_validate({**MINIMAL, "operator": {**operator, "noise_std": 0.1}})
    description = spec.observation()
    cfg = description["operator"]
    assert "noise_std" not in cfg and None not in cfg.values()
    assert description["noise_std"] == {v.name: 0.1 for v in spec.variables}
    grid = {"lat": list(range(12)), "lon": list(range(16))}
    obs = ObservationModel.from_dict({**description, "grid": grid})
    assert int(np.prod(obs.obs_shape)) == n_obs
    if "points" in operator:
        assert obs.operator.points == [(0, 0), (5, 7), (11, 15)]


def test_units_conversions() -> None:
    assert units.factors("K", "degC") == (1.0, pytest.approx(-273.15))
    scale, offset = units.factors("kg m**-2 s**-1", "mm/day")
    assert scale == pytest.approx(86400.0) and offset == 0
    scale, offset = units.factors("degF", "degC")
    assert 212 * scale + offset == pytest.approx(100.0)
    assert units.factors("hPa", "Pa") == (100.0, 0.0)
    assert units.same("kg.m-2.s-1", "kg m^-2 s^-1") and not units.same("K", "degC")
    with pytest.raises(units.UnitsError, match="cannot convert units 'K' \\(temperature\\)"):
        units.factors("K", "m s-1")


def test_longitude_conventions() -> None:
    np.testing.assert_allclose(wrap_longitudes(np.array([0, 180, 190, 359, -10]), "-180..180"),
                               [0, -180, -170, -1, -10])
    np.testing.assert_allclose(wrap_longitudes(np.array([-180, -10, 0, 360]), "0..360"),
                               [180, 350, 0, 0])
    assert _lon_bounds((-30, 0), "0..360") == (330, 360)
    assert _lon_bounds((170, -170), "0..360") == (170, 190)
    assert _lon_bounds((170, -170), "-180..180") == (170, -170)  # crosses the edge
    assert _lon_bounds((180, 360), "-180..180") == (-180, 0)
    assert _lon_bounds((0, 360), "-180..180") is None
