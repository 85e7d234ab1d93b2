"""The real Snakefile on a tiny config in a temporary folder.

One run of the whole pipeline (real HadCM3 data, a few training steps); then: every output opens
with xarray, a second dry run has nothing to do, changing only the sampler's step count
reruns sample → evaluate → report but not ingest, observe or train, and when one of two
sampling shards fails, the next run samples that shard alone. The results folder has a space
in its name: every path in the rules' shell commands must be quoted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"

pytestmark = pytest.mark.slow

TINY = {
    "specs": ["hadcm3_tas_na"],
    "spec_dir": str(REPO / "data_specs"),
    "results": "my results",  # a space: every path in the rules' shell commands is quoted
    "models": {
        "tiny": {
            "model": {"preset": "tiny", "base_channels": 8},
            "train": {"steps": 12, "batch_size": 8, "checkpoint_every": 6, "log_every": 3},
        }
    },
    "sample": {"members": 3, "steps": 3, "batch_size": 64},
    "report": {"n_maps": 1},
}


def snakemake(workdir: Path, *args: str, bin_first: Path | None = None
              ) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile in workdir (commands in bin_first shadow the venv's)."""
    path = [str(p) for p in (bin_first, Path(sys.executable).parent) if p is not None]
    env = dict(os.environ, PATH=os.pathsep.join([*path, os.environ["PATH"]]))
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config" / "config.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)


def job_counts(out: str) -> dict[str, int]:
    """Jobs per rule in a dry run's job table."""
    table = out.split("Job stats:")[-1] if "Job stats:" in out else ""
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
    counts.pop("total", None)
    return counts


def jobs_of_dry_run(out: str) -> set[str]:
    """Rule names listed in a dry run's job table."""
    return set(job_counts(out))


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("wf")
    write_config(workdir, TINY)
    dry = snakemake(workdir, "-n")
    assert dry.returncode == 0, dry.stderr + dry.stdout
    assert jobs_of_dry_run(dry.stdout + dry.stderr) == {
        "ingest", "observe", "train", "sample_shard", "gather", "evaluate", "report", "export",
        "products", "compare", "all"
    }
    real = snakemake(workdir)
    assert real.returncode == 0, real.stderr[-5000:]
    return workdir


def test_every_output_opens(run: Path) -> None:
    res = run / "my results" / "hadcm3_tas_na"
    fields = xr.open_zarr(res / "fields.zarr")
    obs = xr.open_zarr(res / "obs.zarr")
    post = xr.open_zarr(res / "tiny" / "posterior.zarr")
    maps = xr.open_zarr(res / "tiny" / "maps.zarr")
    assert fields.tas.shape == (240, 36, 48)
    assert fields.tas.attrs["units"] == "K"
    assert obs.tas.shape == (60, 9, 12)
    assert post.tas.dims == ("time", "member", "lat", "lon")
    assert post.tas.shape == (40, 3, 36, 48)
    assert post.tas.attrs["units"] == "K"
    assert np.isfinite(post.tas.values).all()
    assert len(maps.data_vars) > 0
    exported = xr.open_dataset(res / "tiny" / "posterior.nc")
    np.testing.assert_array_equal(exported.tas.values, post.tas.values)
    products = xr.open_zarr(res / "tiny" / "products.zarr")
    np.testing.assert_allclose(products.tas_mean.values, post.tas.mean("member").values,
                               rtol=1e-6)
    metrics = json.loads((res / "tiny" / "metrics.json").read_text())
    assert "tas" in metrics["variables"]
    html = (res / "tiny" / "report" / "index.html").read_text()
    assert "data:image/png;base64" in html and "network evaluations" in html  # cost per member
    rows = (res / "comparison.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("tiny,tas,K,")
    loss = (res / "tiny" / "loss.csv").read_text().splitlines()
    assert loss[0].startswith("step,loss") and len(loss) == 1 + 12 // 3
    assert (res / "tiny" / "logs" / "train.log").stat().st_size > 0


def test_second_dry_run_has_nothing_to_do(run: Path) -> None:
    dry = snakemake(run, "-n")
    assert dry.returncode == 0
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_bigger_jobs_rerun_nothing(run: Path) -> None:
    """Jobs' sizes (GPUs, threads: here torchrun instead of sgm) are no reason to retrain."""
    bigger = json.loads(json.dumps(TINY))
    bigger["resources"] = {"train": {"gpu": 2, "cpus_per_gpu": 8, "mem_mb": 64000},
                           "sample": {"cpus_per_gpu": 8, "runtime": 5}}
    write_config(run, bigger)
    try:
        dry = snakemake(run, "-n", "--resources", "gpu=2")
        assert dry.returncode == 0, dry.stderr
        assert "Nothing to be done" in dry.stdout + dry.stderr
    finally:
        write_config(run, TINY)


def test_sampler_change_reruns_only_downstream(run: Path) -> None:
    changed = json.loads(json.dumps(TINY))
    changed["sample"]["steps"] = 4
    write_config(run, changed)
    try:
        dry = snakemake(run, "-n")
        assert dry.returncode == 0, dry.stderr
        assert jobs_of_dry_run(dry.stdout + dry.stderr) == {
            "sample_shard", "gather", "evaluate", "report", "export", "products", "compare",
            "all"
        }
    finally:
        write_config(run, TINY)


FAIL_SHARD_1 = """#!/bin/sh
# sgm, except that sampling shard 1 fails (as a crashed or preempted GPU job would)
case " $* " in *" sample "*" --shard 1 "*) echo "injected failure of shard 1" >&2; exit 3;; esac
exec {sgm} "$@"
"""


def test_failed_shard_is_the_only_one_rerun(run: Path, tmp_path: Path) -> None:
    """With two shards of which the second fails, the rerun samples that shard alone, and the
    gathered ensemble equals the first run's one-shard ensemble."""
    res = run / "my results" / "hadcm3_tas_na" / "tiny"
    posterior = "my results/hadcm3_tas_na/tiny/posterior.zarr"
    one_shard = xr.open_zarr(run / posterior).load()
    sharded = json.loads(json.dumps(TINY))
    sharded["sample"]["shards"] = 2
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "sgm").write_text(FAIL_SHARD_1.format(sgm=Path(sys.executable).parent / "sgm"))
    (shim / "sgm").chmod(0o755)
    write_config(run, sharded)
    try:
        failed = snakemake(run, "--keep-going", posterior, bin_first=shim)
        assert failed.returncode != 0
        assert "injected failure of shard 1" in (res / "logs" / "sample-1-of-2.log").read_text()
        assert (res / "shards" / "posterior-0-of-2.zarr").is_dir()
        assert not (res / "shards" / "posterior-1-of-2.zarr").exists()

        dry = snakemake(run, "-n")
        assert dry.returncode == 0, dry.stderr
        assert job_counts(dry.stdout + dry.stderr) == {
            "sample_shard": 1, "gather": 1, "evaluate": 1, "report": 1, "export": 1,
            "products": 1, "compare": 1, "all": 1
        }
        rerun = snakemake(run, posterior)
        assert rerun.returncode == 0, rerun.stderr[-5000:]
        gathered = xr.open_zarr(run / posterior)
        np.testing.assert_array_equal(gathered.time.values, one_shard.time.values)
        np.testing.assert_array_equal(gathered.tas.values, one_shard.tas.values)
    finally:
        write_config(run, TINY)
