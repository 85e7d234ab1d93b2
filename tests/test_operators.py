"""Tests of the linear observation operators in sgm.core.operators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sgm.core.observation import build_operator
from sgm.core.operators import (
    Blur,
    Coarsen,
    ObservationOperator,
    SparseMask,
    Stations,
)

GRID = (32, 24)
LAT, LON = np.linspace(20.0, 51.0, GRID[0]), np.linspace(-130.0, -107.0, GRID[1])


def _ramp(grid: tuple[int, int], a: float, b: float, c: float) -> torch.Tensor:
    i, j = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64),
        torch.arange(grid[1], dtype=torch.float64),
        indexing="ij",
    )
    return a * i + b * j + c


def _smooth(grid: tuple[int, int]) -> torch.Tensor:
    """A smooth periodic field with wavelengths of 16+ pixels, amplitude ~1."""
    i, j = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64),
        torch.arange(grid[1], dtype=torch.float64),
        indexing="ij",
    )
    return torch.sin(2 * torch.pi * i / grid[0]) * torch.cos(2 * torch.pi * j / grid[1]) + 0.3 * (
        torch.cos(2 * torch.pi * (i / grid[0] + j / grid[1]))
    )


def _operators() -> list[ObservationOperator]:
    return [
        Coarsen(GRID, 4),
        Coarsen(GRID, 2),
        SparseMask(GRID, fraction=0.1, seed=3),
        SparseMask(GRID, points=[(0, 0), (5, 7), (31, 23), (10, 2)]),
        Blur(GRID, 1.5, boundary="periodic"),
        Blur(GRID, 2.0, boundary="reflect"),
        Stations(GRID, [{"id": "a", "lat": 20.0, "lon": -130.0}, {"id": "b", "lat": 33.3,
                         "lon": -120.25}, {"id": "c", "lat": 51.0, "lon": -107.0}], LAT, LON),
    ]


# ---------------------------------------------------------------- Coarsen


def test_coarsen_constant_and_linear_field() -> None:
    op = Coarsen(GRID, 4)
    y = op.apply(torch.full((2, *GRID), 3.5, dtype=torch.float64))
    assert y.shape == (2, 8, 6)
    torch.testing.assert_close(y, torch.full_like(y, 3.5))
    # Block mean of a linear field = its value at the block centre I*f + (f-1)/2.
    y = op.apply(_ramp(GRID, 0.7, -0.2, 1.0))
    ci = torch.arange(8, dtype=torch.float64)[:, None] * 4 + 1.5
    cj = torch.arange(6, dtype=torch.float64)[None, :] * 4 + 1.5
    torch.testing.assert_close(y, 0.7 * ci - 0.2 * cj + 1.0)


def test_coarsen_to_grid_replicates_blocks() -> None:
    op = Coarsen(GRID, 4)
    y = torch.randn(3, 8, 6, dtype=torch.float64)
    g = op.to_grid(y)
    assert g.shape == (3, op.cond_channels, *GRID) == (3, 1, 32, 24)
    assert torch.equal(g[:, 0, 4:8, 8:12], y[:, 1:2, 2:3].expand(3, 4, 4))
    torch.testing.assert_close(op.apply(g[:, 0]), y)  # block means of the replicated field


def test_coarsen_baseline_geometry_and_accuracy() -> None:
    op = Coarsen(GRID, 4)
    # Bicubic (a = -0.75) on block centres: on a ramp the interior error oscillates with zero
    # mean; a half-pixel geometry error would shift it by 0.5 * slope = 0.5.
    x = _ramp(GRID, 1.0, 0.0, 0.0)
    err = (op.baseline(op.apply(x)) - x)[8:-8, 8:-8]
    assert abs(float(err.mean())) < 1e-9
    assert float(err.abs().max()) < 0.2
    # A smooth field is recovered far better than by block replication.
    x = _smooth(GRID)
    y = op.apply(x)
    rms_bicubic = float((op.baseline(y) - x).pow(2).mean().sqrt())
    rms_nearest = float((op.to_grid(y)[0] - x).pow(2).mean().sqrt())
    assert rms_bicubic < 0.06
    assert rms_bicubic < 0.6 * rms_nearest


def test_coarsen_rejects_non_divisible_grid() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        Coarsen((30, 24), 4)
    with pytest.raises(ValueError, match="positive integer"):
        Coarsen(GRID, 0)


# ---------------------------------------------------------------- SparseMask


def test_sparse_points_are_sorted_unique_and_seeded() -> None:
    op = SparseMask(GRID, fraction=0.1, seed=3)
    idx = op.index.numpy()
    assert op.n_points == round(0.1 * 32 * 24) == 77
    assert np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, SparseMask(GRID, fraction=0.1, seed=3).index.numpy())
    assert not np.array_equal(idx, SparseMask(GRID, fraction=0.1, seed=4).index.numpy())
    assert op.obs_shape == (77,)


def test_sparse_apply_to_grid_and_baseline() -> None:
    pts = [(0, 0), (5, 7), (31, 23), (10, 2)]
    op = SparseMask(GRID, points=pts)
    x = torch.randn(2, *GRID, dtype=torch.float64)
    y = op.apply(x)
    # Sorted row-major order: (0,0), (5,7), (10,2), (31,23).
    torch.testing.assert_close(y, x[:, [0, 5, 10, 31], [0, 7, 2, 23]])
    g = op.to_grid(y)
    assert g.shape == (2, 2, *GRID)
    mask = torch.zeros(GRID, dtype=torch.float64)
    for i, j in pts:
        mask[i, j] = 1.0
    assert torch.equal(g[:, 1], mask.expand(2, *GRID))
    assert torch.equal(g[:, 0], x * mask)
    # Nearest-neighbour fill: every pixel takes the value of a point at minimal distance.
    b = op.baseline(y)
    pa = torch.tensor(pts, dtype=torch.float64)
    ii, jj = torch.meshgrid(torch.arange(32.0), torch.arange(24.0), indexing="ij")
    d2 = (ii[..., None] - pa[:, 0]) ** 2 + (jj[..., None] - pa[:, 1]) ** 2
    vals = x[:, pa[:, 0].long(), pa[:, 1].long()]  # [2, n] in pts order
    chosen = (b[..., None] == vals[:, None, None, :]) & (d2 == d2.min(-1, keepdim=True).values)
    assert bool(chosen.any(-1).all())


def test_sparse_baseline_of_smooth_field() -> None:
    op = SparseMask(GRID, fraction=0.25, seed=0)
    x = _smooth(GRID)
    b = op.baseline(op.apply(x))
    assert torch.equal(b.flatten()[op.index], x.flatten()[op.index])
    # Nearest fill of 25 % of the pixels: error well below the field's own spread.
    assert float((b - x).pow(2).mean().sqrt()) < 0.3 * float(x.std())


def test_sparse_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'fraction' or 'points'"):
        SparseMask(GRID)
    with pytest.raises(ValueError, match=r"sparse point \[32, 0\] lies outside the 32x24 grid"):
        SparseMask(GRID, points=[(32, 0)])
    with pytest.raises(ValueError, match="fraction"):
        SparseMask(GRID, fraction=1.5)


# ---------------------------------------------------------------- Blur


def test_blur_preserves_constants_and_mean() -> None:
    for boundary in ("periodic", "reflect"):
        op = Blur(GRID, 2.0, boundary=boundary)
        torch.testing.assert_close(
            op.apply(torch.full(GRID, 2.0, dtype=torch.float64)),
            torch.full(GRID, 2.0, dtype=torch.float64),
        )
    op = Blur(GRID, 2.0)
    x = torch.randn(*GRID, dtype=torch.float64)
    y = op.apply(x)
    torch.testing.assert_close(y.mean(), x.mean())  # circulant: mass preserving
    assert float(y.std()) < 0.5 * float(x.std())  # white noise is strongly smoothed


# ---------------------------------------------------------------- all operators


@pytest.mark.parametrize("op", _operators(), ids=repr)
def test_matrix_agrees_with_apply(op: ObservationOperator) -> None:
    x = torch.randn(5, *GRID, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = op.matrix()
    n_obs = int(np.prod(op.obs_shape))
    assert a.shape == (n_obs, GRID[0] * GRID[1])
    y = op.apply(x).reshape(5, -1).numpy()
    np.testing.assert_allclose(x.reshape(5, -1).numpy() @ a.T, y, atol=1e-12)
    # The specialised matrix equals the generic one built column by column.
    np.testing.assert_allclose(a, ObservationOperator.matrix(op), atol=1e-14)


@pytest.mark.parametrize("op", _operators(), ids=repr)
def test_shapes_and_round_trip(op: ObservationOperator) -> None:
    x = torch.randn(3, 2, *GRID)
    y = op.apply(x)
    assert y.shape == (3, 2, *op.obs_shape)
    assert len(op.obs_dims) == len(op.obs_shape)
    assert op.to_grid(y).shape == (3, 2, op.cond_channels, *GRID)
    assert op.baseline(y).shape == (3, 2, *GRID)
    cfg = op.to_dict()
    clone = build_operator(cfg, LAT, LON)
    assert type(clone) is type(op)
    assert clone.to_dict() == cfg
    np.testing.assert_array_equal(clone.matrix(), op.matrix())


def test_build_operator_errors_name_the_problem() -> None:
    assert isinstance(build_operator({"kind": "coarsen", "factor": 4}, LAT, LON), Coarsen)
    assert build_operator({"kind": "sparse", "fraction": 0.1, "seed": 0}, LAT, LON).n_points == 77
    with pytest.raises(ValueError, match="'wavelet'"):
        build_operator({"kind": "wavelet"}, LAT, LON)
    with pytest.raises(ValueError, match="'factr'"):
        build_operator({"kind": "coarsen", "factr": 4}, LAT, LON)
    with pytest.raises(ValueError, match="'kind'"):
        build_operator({"factor": 4}, LAT, LON)
    with pytest.raises(ValueError, match="coarsen"):
        build_operator({"kind": "coarsen"}, LAT, LON)  # missing factor
    with pytest.raises(ValueError, match="not divisible"):
        build_operator({"kind": "coarsen", "factor": 5}, LAT, LON)


@pytest.mark.parametrize("op", _operators(), ids=repr)
def test_adjoint_is_the_transpose(op: ObservationOperator) -> None:
    """<A x, y> = <x, Aᵀ y> for random x and y, and Aᵀ agrees with the dense matrix."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, *GRID, dtype=torch.float64, generator=g)
    y = torch.randn(4, *op.obs_shape, dtype=torch.float64, generator=g)
    lhs = (op.apply(x) * y).flatten(1).sum(1)
    rhs = (x * op.adjoint(y)).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    a = op.matrix()
    np.testing.assert_allclose(op.adjoint(y).reshape(4, -1).numpy(),
                               y.reshape(4, -1).numpy() @ a, atol=1e-12)


def test_adjoint_control_a_wrong_adjoint_fails_the_check() -> None:
    """The identity above can fail: the block replication without 1/f² is not Aᵀ."""
    op = Coarsen(GRID, 4)
    x, y = torch.randn(*GRID, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    wrong = (x * op.to_grid(y)[0]).sum()
    assert not torch.isclose((op.apply(x) * y).sum(), wrong)


# ---------------------------------------------------------------- Stations


def test_stations_interpolate_linear_fields_exactly() -> None:
    """Bilinear interpolation reproduces a field linear in lat and lon at any station."""
    rng = np.random.default_rng(0)
    pts = [{"id": f"s{i}", "lat": float(rng.uniform(LAT[0], LAT[-1])),
            "lon": float(rng.uniform(LON[0], LON[-1]))} for i in range(25)]
    op = Stations(GRID, pts, LAT, LON)
    lat2d, lon2d = np.meshgrid(LAT, LON, indexing="ij")
    x = torch.as_tensor(0.3 * lat2d - 0.7 * lon2d + 2.0)
    want = np.array([0.3 * p["lat"] - 0.7 * p["lon"] + 2.0 for p in pts])
    np.testing.assert_allclose(op.apply(x).numpy(), want, atol=1e-10)
    # On a grid point the station takes that pixel's value; the weights sum to one.
    on = Stations(GRID, [{"id": "g", "lat": float(LAT[5]), "lon": float(LON[7])}], LAT, LON)
    assert float(on.apply(x)[0]) == pytest.approx(float(x[5, 7]), abs=1e-12)
    torch.testing.assert_close(op.weights.sum(dim=1), torch.ones(25, dtype=torch.float64))
    lat_o, lon_o = op.coords(LAT, LON)
    np.testing.assert_allclose(lat_o, [p["lat"] for p in pts])


def test_stations_match_the_grids_longitude_convention() -> None:
    lon360 = np.linspace(230.0, 253.0, GRID[1])  # the same longitudes as LON, 0..360
    a = Stations(GRID, [{"id": "x", "lat": 30.2, "lon": -121.4}], LAT, lon360)
    b = Stations(GRID, [{"id": "x", "lat": 30.2, "lon": -121.4}], LAT, LON)
    torch.testing.assert_close(a.weights, b.weights)
    assert torch.equal(a.index, b.index)


def test_stations_outside_the_grid_are_named() -> None:
    with pytest.raises(ValueError, match=r"station 'far' at lat 60, lon -120 lies outside the "
                                         r"grid \(lat 20 to 51, lon -130 to -107\)"):
        Stations(GRID, [{"id": "ok", "lat": 30.0, "lon": -120.0},
                        {"id": "far", "lat": 60.0, "lon": -120.0}], LAT, LON)
    with pytest.raises(ValueError, match="repeated: a"):
        Stations(GRID, [{"id": "a", "lat": 30, "lon": -120}, {"id": "a", "lat": 31, "lon": -121}],
                 LAT, LON)


def test_stations_baseline_is_the_nearest_station() -> None:
    pts = [{"id": "w", "lat": 35.0, "lon": -128.0}, {"id": "e", "lat": 35.0, "lon": -109.0}]
    op = Stations(GRID, pts, LAT, LON)
    b = op.baseline(torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert float(b[16, 0]) == 1.0 and float(b[16, -1]) == 2.0
    g = op.to_grid(torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert g.shape == (2, *GRID) and float(g[1].sum()) == pytest.approx(2.0)


# ---------------------------------------------------------------- sensors (sgm.core.sensors)


def test_gaps_observe_everything_outside_the_boxes() -> None:
    from sgm.core.sensors import Gaps

    op = Gaps(GRID, [[30.0, 35.0, -125.0, -120.0]], LAT, LON)
    inside = (LAT[:, None] >= 30) & (LAT[:, None] <= 35) & (LON >= -125) & (LON <= -120)
    assert op.n_points == GRID[0] * GRID[1] - int(inside.sum()) and op.missing == inside.sum()
    x = torch.randn(*GRID, dtype=torch.float64)
    y = op.apply(x)
    np.testing.assert_array_equal(y.numpy(), x.numpy()[~inside])
    b = op.baseline(y)  # infilled: observed pixels kept, gaps from their nearest neighbour
    np.testing.assert_array_equal(b.numpy()[~inside], x.numpy()[~inside])
    g = torch.randn(op.n_points, dtype=torch.float64)
    torch.testing.assert_close((op.apply(x) * g).sum(), (x * op.adjoint(g)).sum())
    with pytest.raises(ValueError, match="contain no grid point"):
        Gaps(GRID, [[80.0, 85.0, 0.0, 1.0]], LAT, LON)


def test_saturating_sensor_is_nonlinear_and_its_baseline_inverts_it() -> None:
    from sgm.core.sensors import Saturating

    op = Saturating(Coarsen(GRID, 4), center=0.0, scale=2.0)
    x = _smooth(GRID)
    y = op.apply(x)
    torch.testing.assert_close(y, 2.0 * torch.tanh(Coarsen(GRID, 4).apply(x) / 2.0))
    assert not op.linear and bool((op.apply(10 * x).abs() < 2.0).all())
    torch.testing.assert_close(op.unsaturate(y), Coarsen(GRID, 4).apply(x))
    torch.testing.assert_close(op.baseline(y), Coarsen(GRID, 4).baseline(Coarsen(GRID, 4)
                                                                         .apply(x)))
    assert not torch.allclose(op.apply(2 * x), 2 * op.apply(x))
    with pytest.raises(ValueError, match="no adjoint"):
        op.adjoint(y)
    clone = build_operator(op.to_dict(), LAT, LON)
    torch.testing.assert_close(clone.apply(x), y)


USER_OPERATOR = '''
import torch


def towers(x, lat, lon):
    """Two towers averaging 2x2 pixels, squared (nonlinear)."""
    a = x[..., 3:5, 4:6].mean(dim=(-2, -1))
    b = x[..., 10:12, 7:9].mean(dim=(-2, -1))
    return torch.stack([a, b], dim=-1) ** 2
'''


def test_python_operator_runs_the_users_function(tmp_path: Path) -> None:
    from sgm.core.sensors import PythonOperator

    (tmp_path / "my_ops.py").write_text(USER_OPERATOR)
    op = PythonOperator(GRID, "my_ops:towers", str(tmp_path), trust_code=True, lat=LAT, lon=LON)
    x = _smooth(GRID)
    assert op.obs_shape == (2,)
    torch.testing.assert_close(op.apply(x)[0], x[3:5, 4:6].mean() ** 2)
    assert not op.linear
    clone = build_operator(op.to_dict(), LAT, LON)
    torch.testing.assert_close(clone.apply(x), op.apply(x))
    with pytest.raises(ValueError, match="trust_code: true"):
        PythonOperator(GRID, "my_ops:towers", str(tmp_path), trust_code=False)
    (tmp_path / "my_ops.py").write_text(USER_OPERATOR.replace("** 2", "** 3"))
    with pytest.raises(ValueError, match="changed since these observations were made"):
        build_operator(op.to_dict(), LAT, LON)
    with pytest.raises(ValueError, match="has no function 'nope'"):
        PythonOperator(GRID, "my_ops:nope", str(tmp_path), trust_code=True)


def test_python_operator_adjoint_is_exact_for_a_linear_function(tmp_path: Path) -> None:
    from sgm.core.sensors import PythonOperator

    (tmp_path / "lin.py").write_text(USER_OPERATOR.replace(" ** 2", ""))
    op = PythonOperator(GRID, "lin:towers", str(tmp_path), trust_code=True)
    x, g = torch.randn(*GRID, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    torch.testing.assert_close((op.apply(x) * g).sum(), (x * op.adjoint(g)).sum())
    b = op.baseline(op.apply(x))  # back-projection: the tower means where they are observed
    torch.testing.assert_close(b[3, 4], x[3:5, 4:6].mean())
