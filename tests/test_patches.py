"""Patch training and tiled sampling through the stages (train.patch, sample.tile), and the
matrix-free oracle of evaluate on grids too large for dense matrices.

The statistics of tiling itself (seams, bias against the exact posterior) are measured with
the exact local denoiser in ``tests/test_tiling_oracle.py``; here: the wiring. A tile as large
as the grid must give bitwise the untiled members (conditional and zero-shot), smaller tiles a
different but finite ensemble, bad patch sizes one clear error, and evaluate's matrix-free
oracle the dense oracle's numbers where both can be computed, with a negative control.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sgm.core.gaussian import GaussianRandomField
from sgm.core.large_oracle import MatrixFreePosterior
from sgm.core.observation import ObservationModel
from sgm.core.operators import Coarsen
from sgm.core.tiling import grid_coordinates, patch_pairs
from sgm.core.verification import score_oracle, score_oracle_matrix_free
from sgm.io.modelfile import read_model
from sgm.io.stores import open_store, write_store
from sgm.stages.evaluate import evaluate
from sgm.stages.ingest import ingest
from sgm.stages.observe import observe
from sgm.stages.sample import sample_stage
from sgm.stages.train import train_stage

GRID = (16, 24)
SPEC = {
    "name": "patch_grf",
    "source": {"synthetic": {"shape": list(GRID), "length_scale": 2.0, "n_times": 28,
                             "seed": 4}},
    "variables": [{"name": "field"}],
    "splits": {"train": 24, "val": 2, "test": 2},
    "operator": {"kind": "coarsen", "factor": 4, "noise_std": 0.1},
}


def _model(kind: str, patch: list[int]) -> dict:
    return {"model": {"preset": "tiny", "base_channels": 8, "kind": kind},
            "train": {"steps": 3, "batch_size": 4, "checkpoint_every": 3, "log_every": 1,
                      "patch": patch}}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("patches")
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    ingest(root / "spec.yaml", root / "fields.zarr")
    observe(root / "spec.yaml", root / "fields.zarr", root / "obs.zarr")
    for kind in ("conditional", "prior"):
        train_stage(root / "spec.yaml", root / "fields.zarr",
                    root / "obs.zarr" if kind == "conditional" else None,
                    root / f"{kind}.pt", _model(kind, [8, 8]), workdir=root / kind,
                    progress=False)
    return root


def test_patch_pairs_cut_target_and_conditioning_at_the_same_place() -> None:
    """The target patch and its position channels come from the same window of the grid."""
    positions = grid_coordinates((12, 20))

    def make_pair(batch: torch.Tensor, generator: torch.Generator) -> tuple:
        target = positions[:1].expand(batch.shape[0], 1, 12, 20) * 10.0  # the row coordinate
        return target, positions.expand(batch.shape[0], -1, -1, -1)

    pair = patch_pairs(make_pair, (4, 8), align=4)
    target, cond = pair(torch.zeros(64, 1, 12, 20), torch.Generator().manual_seed(0))
    assert target.shape == (64, 1, 4, 8) and cond.shape == (64, 2, 4, 8)
    torch.testing.assert_close(target[:, 0], 10.0 * cond[:, 0], rtol=0, atol=0)
    corners = {(float(c[0, 0, 0]), float(c[1, 0, 0])) for c in cond}
    assert len(corners) > 4  # patches come from many places, at multiples of 4
    rows = torch.linspace(-1, 1, 12)
    assert {float(c[0, 0, 0]) for c in cond} <= {float(rows[i]) for i in (0, 4, 8)}


def test_patch_model_has_position_channels(data: Path) -> None:
    for kind, obs_channels in (("conditional", 1), ("prior", 0)):
        meta = read_model(data / f"{kind}.pt").meta
        assert meta["in_channels"] == 1 + obs_channels + 2  # field, y, row and column
        torch.testing.assert_close(meta["static"][-2:], grid_coordinates(GRID))
        assert meta["train"]["patch"] == [8, 8]


@pytest.mark.parametrize("kind", ["conditional", "prior"])
def test_one_tile_as_large_as_the_grid_is_untiled_sampling(data: Path, tmp_path: Path,
                                                           kind: str) -> None:
    settings = {"members": 2, "steps": 3, "seed": 1}
    if kind == "prior":
        settings.update(method="mmps", cg_iterations=2)
    paths = {}
    for name, extra in (("whole", {}), ("one", {"tile": list(GRID), "tile_overlap": 0}),
                        ("tiled", {"tile": [8, 8], "tile_overlap": 4})):
        paths[name] = sample_stage(data / f"{kind}.pt", data / "obs.zarr",
                                   tmp_path / f"{name}.zarr", {**settings, **extra},
                                   progress=False)
    whole, one, tiled = (open_store(paths[n]).field.values for n in ("whole", "one", "tiled"))
    np.testing.assert_array_equal(one, whole)  # bitwise: one tile of weight 1
    assert np.isfinite(tiled).all() and tiled.shape == whole.shape
    assert not np.allclose(tiled, whole)  # 6 overlapping tiles: another denoiser
    sampler = json.loads(open_store(paths["tiled"]).attrs["sgm_sampler"])
    assert sampler["tile"] == [8, 8] and sampler["tile_overlap"] == 4


@pytest.mark.parametrize(("patch", "message"), [
    ([6, 8], r"train.patch \[6, 8\] must be multiples of 4"),
    ([8, 32], r"train.patch \[8, 32\] is larger than the grid \[16, 24\]"),
    ([8], r"train.patch must be \[h, w\]"),
])
def test_bad_patch_sizes_are_refused(data: Path, tmp_path: Path, patch: list[int],
                                     message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_stage(data / "spec.yaml", data / "fields.zarr", data / "obs.zarr",
                    tmp_path / "m.pt", _model("conditional", patch), workdir=tmp_path / "w",
                    progress=False)
    assert not (tmp_path / "m.pt").exists()


def test_tiles_off_the_coarse_cells_are_refused(data: Path, tmp_path: Path) -> None:
    message = r"tile \[6, 8\], tile_overlap 2 on the grid \[16, 24\]: .*multiples of align = 4"
    with pytest.raises(ValueError, match=message):
        sample_stage(data / "conditional.pt", data / "obs.zarr", tmp_path / "p.zarr",
                     {"members": 2, "steps": 2, "tile": [6, 8], "tile_overlap": 2},
                     progress=False)
    assert not (tmp_path / "p.zarr").exists()


def _oracle_problem(grid: tuple[int, int], members: int, times: int, inflate: float):
    prior = GaussianRandomField(grid, length_scale=2.0, nu=1.5, variance=1.0, mean=0.0)
    lat, lon = np.arange(grid[0], dtype=float), np.arange(grid[1], dtype=float)
    obs = ObservationModel(Coarsen(grid, 4), ["field"], {"field": 0.1}, lat, lon)
    post = MatrixFreePosterior(prior, obs)
    g = torch.Generator().manual_seed(3)
    truth = post.prior_sample(times, g)  # [T, 1, H, W]
    y = obs.sample(truth, g)
    ens = []
    for t in range(times):
        draws = post.sample(y[t], members, g)
        mean = draws.mean(0, keepdim=True)
        ens.append(mean + inflate * (draws - mean))
    return prior, obs, torch.stack(ens, dim=1).numpy(), truth.numpy(), y.numpy()


def test_matrix_free_oracle_scores_are_the_dense_ones() -> None:
    prior, obs, ens, truth, y = _oracle_problem((16, 16), members=8, times=3, inflate=1.0)
    dense = score_oracle(prior, obs.matrix(), 0.1, ens[:, :, 0], truth[:, 0], y[:, 0])
    pixels = [(i, j) for i in range(16) for j in range(16)]
    free = score_oracle_matrix_free(prior, obs, ens, truth, y, {"all": pixels})["all"][0]
    assert free["pixels"] == 256
    for key, value in dense.items():
        assert free[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize(("inflate", "ratio"), [(1.0, (0.9, 1.1)), (1.4, (1.3, 1.5))])
def test_evaluate_scores_a_large_grid_against_the_matrix_free_oracle(
        tmp_path: Path, inflate: float, ratio: tuple[float, float]) -> None:
    """Exact posterior draws put in a posterior store of a 64 x 72 grid (> the dense limit)
    score std ratio ~1 and exact-90 % coverage ~0.9 everywhere and at the tile overlaps;
    the same draws with their spread inflated 1.4x do not (negative control)."""
    grid = (64, 72)
    spec = {"name": "large_grf",
            "source": {"synthetic": {"shape": list(grid), "length_scale": 2.0, "n_times": 8,
                                     "seed": 5}},
            "variables": [{"name": "field"}], "splits": {"train": 4, "val": 2, "test": 2},
            "operator": {"kind": "coarsen", "factor": 4, "noise_std": 0.1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    ingest(tmp_path / "spec.yaml", tmp_path / "fields.zarr")
    observe(tmp_path / "spec.yaml", tmp_path / "fields.zarr", tmp_path / "obs.zarr")
    train_stage(tmp_path / "spec.yaml", tmp_path / "fields.zarr", tmp_path / "obs.zarr",
                tmp_path / "m.pt", _model("conditional", [16, 16]), workdir=tmp_path / "w",
                progress=False)
    settings = {"members": 16, "steps": 2, "tile": [32, 32], "tile_overlap": 8}
    sample_stage(tmp_path / "m.pt", tmp_path / "obs.zarr", tmp_path / "net.zarr", settings,
                 progress=False)
    net = open_store(tmp_path / "net.zarr").load()
    fields, obs_store = open_store(tmp_path / "fields.zarr"), open_store(tmp_path / "obs.zarr")
    prior = GaussianRandomField.from_dict(json.loads(fields.attrs["sgm_gaussian_prior"]))
    obs = ObservationModel.from_dict(json.loads(obs_store.attrs["sgm_observation"]))
    post = MatrixFreePosterior(prior, obs)
    g = torch.Generator().manual_seed(0)
    for t, index in enumerate(net.obs_index.values):
        y = torch.from_numpy(obs_store.field.values[index][None])
        draws = post.sample(y, 16, g)[:, 0].numpy()
        mean = draws.mean(0)
        net.field.values[t] = mean + inflate * (draws - mean)
    attrs = {k: v for k, v in net.attrs.items() if k != "sgm_complete"}
    write_store(net.drop_attrs(deep=False), tmp_path / "exact.zarr", attrs=attrs)
    result = evaluate(tmp_path / "fields.zarr", tmp_path / "obs.zarr", tmp_path / "exact.zarr",
                      tmp_path / "metrics.json", tmp_path / "maps.zarr")
    entry = result["variables"]["field"]
    for name in ("oracle", "oracle_tile_overlaps"):
        o = entry[name]
        assert o["pixels"] == 512
        assert ratio[0] < o["std_ratio_mean"] < ratio[1], (name, o)
        coverage = o["exact_interval_coverage"]
        assert (0.86 < coverage < 0.94) == (inflate == 1.0), (name, o)
        assert o["mean_error_over_std"] < 0.4  # ~1/sqrt(16) for exact draws
