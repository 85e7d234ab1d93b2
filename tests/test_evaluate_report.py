"""Stages ``evaluate`` and ``report`` on small fixture stores written with ``write_store``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cftime
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
import zarr

from sgm.core.gaussian import GaussianRandomField, exact_posterior
from sgm.core.observation import ObservationModel
from sgm.io.stores import IncompleteStoreError, write_store
from sgm.stages.compare import compare
from sgm.stages.evaluate import evaluate
from sgm.stages.report import report

H, W, M, ETA = 8, 12, 8, 0.1
COARSEN = {"kind": "coarsen", "factor": 2}


def make_stores(
    root: Path,
    *,
    op_cfg: dict = COARSEN,
    n_test: int = 5,
    oracle: bool = False,
    member_noise: float = 0.05,
    seed: int = 0,
) -> dict[str, Path]:
    """fields/obs/posterior stores and loss.csv in the formats of the stage contract.

    Truth: a Gaussian random field (K around 280, or unit-variance for ``oracle``).
    Posterior: truth + ``member_noise``·ε, or exact-posterior samples when ``oracle``.
    """
    rng = np.random.default_rng(seed)
    n_train, n_val = 6, 4
    n = n_train + n_val + n_test
    prior = GaussianRandomField(
        (H, W), 3.0, variance=1.0 if oracle else 4.0, mean=0.0 if oracle else 280.0
    )
    truth = prior.sample(n, rng).astype(np.float32)
    times = cftime.num2date(np.arange(n), "days since 2000-01-01", calendar="360_day")
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test, dtype=object)
    lat, lon = np.linspace(40.0, 47.0, H), np.linspace(-5.0, 6.0, W)
    units = "1" if oracle else "K"
    attrs = {
        "sgm_spec": "fixture",
        "sgm_variables": ["tas"],
        "sgm_normalisation": {"tas": {"mean": 280.0, "std": 2.0}},
    }
    if oracle:
        attrs["sgm_gaussian_prior"] = prior.to_dict()
    fields = xr.Dataset(
        {
            "tas": (
                ("time", "lat", "lon"),
                truth,
                {"units": units, "standard_name": "air_temperature", "long_name": "tas"},
            )
        },
        coords={"time": times, "lat": lat, "lon": lon, "split": ("time", split)},
    )
    obs_model = ObservationModel.from_dict({
        "operator": op_cfg, "variables": ["tas"], "noise_std": {"tas": ETA},
        "grid": {"lat": lat.tolist(), "lon": lon.tolist()}})
    op = obs_model.operator
    later = slice(n_train, n)
    clean = op.apply(torch.as_tensor(truth[later], dtype=torch.float64)).numpy()
    y = (clean + ETA * rng.standard_normal(clean.shape)).astype(np.float32)
    obs_coords: dict = {"time": times[later], "split": ("time", split[later]),
                        **obs_model.coords()}
    obs = xr.Dataset({"tas": (("time", *op.obs_dims), y, {"units": units})}, coords=obs_coords)

    test = slice(n_train + n_val, n)
    if oracle:
        mean, cov = exact_posterior(prior, op.matrix(), ETA, y[-n_test:].reshape(n_test, -1))
        chol = np.linalg.cholesky(cov + 1e-10 * np.eye(H * W))
        members = mean + rng.standard_normal((M, n_test, H * W)) @ chol.T
        members = members.reshape(M, n_test, H, W)
    else:
        members = truth[test] + member_noise * rng.standard_normal((M, n_test, H, W))
    post = xr.Dataset(
        {
            "tas": (
                ("time", "member", "lat", "lon"),
                members.transpose(1, 0, 2, 3).astype(np.float32),
                {"units": units},
            )
        },
        coords={"time": times[test], "member": np.arange(M), "lat": lat, "lon": lon},
    )
    paths = {k: root / f"{k}.zarr" for k in ("fields", "obs", "posterior")}
    write_store(fields, paths["fields"], attrs=attrs)
    write_store(
        obs,
        paths["obs"],
        attrs={"sgm_observation": obs_model.to_dict(), "sgm_seed": 7},
    )
    write_store(
        post,
        paths["posterior"],
        attrs={
            "sgm_spec": "fixture",
            "sgm_model_hash": "abc123",
            "sgm_sampler": {"steps": 18, "guidance": "dps"},
            "sgm_seed": 3,
        },
    )
    loss = root / "loss.csv"
    steps = np.arange(1, 301)
    lines = [
        f"{s},{1 / math.sqrt(s) + 0.01 * rng.random():.6f},1.0,1e-4,{0.01 * s:.2f}" for s in steps
    ]
    loss.write_text("step,loss,sigma_median,lr,wall_s\n" + "\n".join(lines) + "\n")
    paths["loss"] = loss
    paths["truth"] = truth[test]  # type: ignore[assignment]
    paths["y"] = y[-n_test:]  # type: ignore[assignment]
    return paths


def _run(paths: dict, out: Path, **kw: object) -> dict:
    return evaluate(
        paths["fields"],
        paths["obs"],
        paths["posterior"],
        out / "metrics.json",
        out / "maps.zarr",
        **kw,
    )


@pytest.fixture(scope="module")
def coarse(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("coarse")
    paths = make_stores(root)
    return paths, _run(paths, root)


def test_evaluate_scores_and_baseline(coarse: tuple[dict, dict]) -> None:
    paths, result = coarse
    on_disk = json.loads((paths["fields"].parent / "metrics.json").read_text())
    assert on_disk == result
    e = result["variables"]["tas"]
    assert (e["units"], e["n_times"], e["n_members"]) == ("K", 5, M)
    assert "oracle" not in e
    ens, base = e["ensemble"], e["baselines"]["bicubic"]
    assert set(e["baselines"]) == {"bicubic", "climatology anomaly", "quantile mapping",
                                   "Gaussian posterior"}
    assert e["best_baseline"] in e["baselines"]
    best = e["baselines"][e["best_baseline"]]["crps"]
    assert best == min(b["crps"] for b in e["baselines"].values())
    assert e["crps_skill"] == pytest.approx(1 - ens["crps"] / best)
    gauss = e["baselines"]["Gaussian posterior"]
    assert gauss["kind"] == "ensemble" and gauss["spread"] > 0 and gauss["rank_histogram"]
    assert 0.0 <= gauss["selection"]["shrinkage"] <= 1.0 and gauss["selection"]["curve"]
    assert e["nominal_coverage"]["coverage_90"] == pytest.approx(7 / 9)  # 8 members
    # The baseline is bicubic interpolation of the test observations, scored as a point forecast.
    y = torch.as_tensor(paths["y"], dtype=torch.float64)[:, None]
    bicubic = F.interpolate(y, scale_factor=2, mode="bicubic", align_corners=False)[:, 0].numpy()
    assert base["mae"] == pytest.approx(np.abs(bicubic - paths["truth"]).mean(), rel=1e-6)
    assert base["crps"] == pytest.approx(base["mae"], rel=1e-12)
    assert base["spread"] == 0.0 and base["coverage_90"] == 0.0
    # Members = truth + 0.05 K noise: far better than interpolating 2x2 block means.
    assert ens["crps"] < 0.5 * base["crps"]
    assert ens["rmse"] < base["rmse"]
    assert ens["spectrum_error"] < base["spectrum_error"]
    assert ens["spread"] == pytest.approx(0.05, rel=0.1)
    assert sum(ens["rank_histogram"]) == 5 * H * W and len(ens["rank_histogram"]) == M + 1
    # A(x_m) − y = A(0.05 ε) − η ε': χ² ≈ (0.05²/4 + η²)/η² ≈ 1.06.
    assert ens["reobs_chi2"] == pytest.approx(1.06, abs=0.35)
    spectra = e["spectra"]
    assert len(spectra["k"]) == len(spectra["truth"]) == len(spectra["bicubic"])
    assert result["provenance"]["sgm_model_hash"] == "abc123"


def test_maps_store_matches_metrics(coarse: tuple[dict, dict]) -> None:
    paths, result = coarse
    from sgm.io.stores import open_store

    maps = open_store(paths["fields"].parent / "maps.zarr")
    e = result["variables"]["tas"]
    assert maps["tas_crps"].dims == ("lat", "lon")
    assert float(maps["tas_crps"].mean()) == pytest.approx(e["ensemble"]["crps"], rel=1e-5)
    err = float(maps["tas_baseline_abs_error"].mean())
    assert err == pytest.approx(e["baselines"]["bicubic"]["mae"], rel=1e-5)
    assert float(maps["tas_std"].mean()) == pytest.approx(0.05, rel=0.15)
    assert maps["tas_bias"].attrs["units"] == "K"


def test_oracle_metrics_of_exact_samples(tmp_path: Path) -> None:
    paths = make_stores(tmp_path, n_test=30, oracle=True)
    e = _run(paths, tmp_path)["variables"]["tas"]
    o = e["oracle"]
    assert o["std_ratio_mean"] == pytest.approx(1.0, abs=0.1)
    assert o["exact_interval_coverage"] == pytest.approx(0.9, abs=0.04)
    assert o["crps_ratio"] == pytest.approx(1.0, abs=0.15)
    assert o["mean_error_over_std"] == pytest.approx(1 / math.sqrt(M), rel=0.3)
    assert e["ensemble"]["reobs_chi2"] == pytest.approx(1.0, abs=0.3)
    assert e["ensemble"]["spread_skill_ratio"] == pytest.approx(1.0, abs=0.2)


def test_sparse_baseline_reproduces_its_observations(tmp_path: Path) -> None:
    cfg = {"kind": "sparse", "fraction": 0.25, "seed": 1}
    paths = make_stores(tmp_path, op_cfg=cfg)
    e = _run(paths, tmp_path)["variables"]["tas"]
    assert "nearest" in e["baselines"]
    assert e["baselines"]["nearest"]["reobs_chi2"] == 0.0  # nearest fill keeps the observations
    out = report(
        paths["fields"],
        paths["obs"],
        paths["posterior"],
        tmp_path / "metrics.json",
        paths["loss"],
        tmp_path / "rep" / "index.html",
        n_maps=2,
    )
    assert "data:image/png;base64," in out.read_text()


@pytest.mark.parametrize("broken", ["missing", "incomplete"])
def test_evaluate_writes_nothing_on_bad_input(tmp_path: Path, broken: str) -> None:
    paths = make_stores(tmp_path)
    if broken == "missing":
        paths["posterior"] = tmp_path / "nope.zarr"
        error: type[Exception] = FileNotFoundError
    else:
        zarr.open_group(paths["obs"], mode="r+").attrs["sgm_complete"] = 0
        error = IncompleteStoreError
    out = tmp_path / "out"
    with pytest.raises(error):
        _run(paths, out)
    with pytest.raises(error):
        report(
            paths["fields"],
            paths["obs"],
            paths["posterior"],
            out / "metrics.json",
            paths["loss"],
            out / "index.html",
        )
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("defect", "message"),
    [("grid", "lat grid"), ("time", "1 of the 5 test times"), ("nan", "NaN")],
)
def test_evaluate_writes_nothing_on_bad_posterior(
    tmp_path: Path, defect: str, message: str
) -> None:
    paths = make_stores(tmp_path)
    bad = xr.open_zarr(paths["posterior"], consolidated=False).load()
    if defect == "grid":
        bad = bad.assign_coords(lat=bad.lat + 1.0)
    elif defect == "time":
        bad = bad.isel(time=slice(1, None))
    else:
        bad["tas"][0, 0, 0, 0] = np.nan
    write_store(bad, paths["posterior"], require_finite=defect != "nan")
    with pytest.raises(ValueError, match=message):
        _run(paths, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_html(coarse: tuple[dict, dict], tmp_path: Path) -> None:
    paths, result = coarse
    out = report(
        paths["fields"],
        paths["obs"],
        paths["posterior"],
        paths["fields"].parent / "metrics.json",
        paths["loss"],
        tmp_path / "report" / "index.html",
        n_maps=3,
        title="Fixture <report>",
    )
    text = out.read_text()
    names = ["maps_tas.png", "rank_histogram.png", "spread_skill.png", "spectra.png",
             "quantiles.png", "reliability.png", "domain_mean.png", "loss.png"]
    assert text.count("data:image/png;base64,") == len(names)
    for name in names:
        png = (out.parent / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Fixture &lt;report&gt;" in text  # escaped title
    assert "<table>" in text and "CRPS" in text and "bicubic" in text and "abc123" in text
    crps = result["variables"]["tas"]["baselines"]["bicubic"]["crps"]
    assert "Verdict" in text and "CRPS skill against the best baseline" in text
    assert f"{crps:.4g}" in text
    thr = np.percentile(paths["truth"], 90)
    assert f"{thr:.4g} K (the 90th percentile of the test truth)" in text
    assert "src='http" not in text and 'src="http' not in text and "<link" not in text
    assert "Gaussian oracle" not in text


def test_report_oracle_section_and_threshold(tmp_path: Path) -> None:
    paths = make_stores(tmp_path, n_test=4, oracle=True)
    _run(paths, tmp_path)
    out = report(
        paths["fields"],
        paths["obs"],
        paths["posterior"],
        tmp_path / "metrics.json",
        paths["loss"],
        tmp_path / "index.html",
        n_maps=1,
        threshold=1.5,
    )
    text = out.read_text()
    assert "Gaussian oracle" in text and "Exact-interval coverage" in text
    assert "1.5 (given)" in text


def test_compare_puts_runs_side_by_side(coarse: tuple[dict, dict], tmp_path: Path) -> None:
    paths, result = coarse
    metrics = paths["fields"].parent / "metrics.json"
    onestep = json.loads(metrics.read_text())
    onestep["variables"]["tas"]["ensemble"]["crps"] = 12.5
    onestep["cost"] = {"network_evaluations": 1.0, "jacobian_products": 0.0,
                       "seconds_per_member": 0.004}
    (tmp_path / "onestep.json").write_text(json.dumps(onestep))
    out = compare([f"multistep={metrics}", f"one <step>={tmp_path / 'onestep.json'}"],
                  tmp_path / "c" / "comparison.html", tmp_path / "c" / "comparison.csv")
    rows = list(csv.DictReader((tmp_path / "c" / "comparison.csv").open()))
    assert [r["run"] for r in rows] == ["multistep", "one <step>"]
    assert float(rows[0]["fair CRPS"]) == pytest.approx(
        result["variables"]["tas"]["ensemble"]["crps"])
    assert float(rows[1]["fair CRPS"]) == 12.5
    assert rows[1]["network evaluations per member"] == "1.0"
    text = out.read_text()
    assert "one &lt;step&gt;" in text and "12.5" in text and "1 network evaluations" in text
    with pytest.raises(ValueError, match="LABEL=path"):
        compare(["no-label"], tmp_path / "d.html", tmp_path / "d.csv")
    with pytest.raises(ValueError, match="loss.csv: not valid JSON"):
        compare([f"x={paths['loss']}"], tmp_path / "d.html", tmp_path / "d.csv")
    (tmp_path / "other.json").write_text('{"spec": "fixture"}')
    with pytest.raises(ValueError, match="not a metrics file"):
        compare([f"x={tmp_path / 'other.json'}"], tmp_path / "d.html", tmp_path / "d.csv")
    assert not (tmp_path / "d.html").exists() and not (tmp_path / "d.csv").exists()
