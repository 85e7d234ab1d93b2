"""Zero-shot inversion through the real Snakefile with a user-defined operator.

A tiny config trains a prior on the demo data and inverts an observation system written as a
Python function beside the spec (``kind: python``): five "towers" reading the field at fixed
pixels. The workflow simulates the towers' observations, samples their posterior with MMPS and
evaluates and reports it like any other; the observations record the function's file hash.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from test_workflow import REPO, snakemake, write_config

pytestmark = pytest.mark.slow

TOWERS = '''"""Five towers reading the temperature at fixed pixels (a user's own operator)."""


def towers(x, lat, lon):
    rows, cols = [5, 10, 18, 25, 30], [6, 14, 24, 33, 41]
    return x[..., rows, cols]
'''


def test_a_python_operator_inverts_end_to_end(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(REPO / "data_specs" / "hadcm3_tas_na.yaml", specs)
    (specs / "my_ops.py").write_text(TOWERS)
    config = {
        "specs": ["hadcm3_tas_na"],
        "spec_dir": str(specs),
        "results": "results",
        "models": {"prior": {"model": {"kind": "prior", "preset": "tiny", "base_channels": 8},
                             "train": {"steps": 6, "batch_size": 8, "checkpoint_every": 6,
                                       "log_every": 3}}},
        "sample": {"members": 3, "steps": 3, "cg_iterations": 2, "batch_size": 64},
        "products": {"enabled": False},
        "report": {"n_maps": 1},
        "inversions": [{"spec": "hadcm3_tas_na", "name": "towers", "prior": "prior",
                        "operator": {"kind": "python", "function": "my_ops:towers",
                                     "trust_code": True, "noise_std": 0.1}}],
    }
    write_config(tmp_path, config)
    result = snakemake(tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]

    res = tmp_path / "results" / "hadcm3_tas_na"
    obs = xr.open_zarr(res / "inversions" / "towers" / "obs.zarr")
    assert obs.tas.shape[-1] == 5
    description = json.loads(obs.attrs["sgm_observation"])["operator"]
    assert description["kind"] == "python" and len(description["sha256"]) == 64
    fields = xr.open_zarr(res / "fields.zarr")
    t = obs.time.values[-1]
    truth = fields.tas.sel(time=t).values[[5, 10, 18, 25, 30], [6, 14, 24, 33, 41]]
    assert np.abs(obs.tas.sel(time=t).values - truth).max() < 0.6  # towers + 0.1 K noise

    inv = res / "prior" / "inversions" / "towers"
    post = xr.open_zarr(inv / "posterior.zarr")
    assert post.tas.shape == (40, 3, 36, 48) and np.isfinite(post.tas.values).all()
    assert json.loads(post.attrs["sgm_sampler"])["method"] == "mmps"
    metrics = json.loads((inv / "metrics.json").read_text())
    assert metrics["operator"]["kind"] == "python"
    assert np.isfinite(metrics["variables"]["tas"]["ensemble"]["reobs_chi2"])
    assert "data:image/png;base64" in (inv / "report" / "index.html").read_text()
