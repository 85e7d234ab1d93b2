"""A training job killed midway resumes from its last checkpoint when Snakemake runs again.

The real Snakefile trains the tiny model in a temporary folder; once the first checkpoint is
on disk the training process gets SIGKILL (as from the out-of-memory killer or a node failure).
Snakemake reports the job as failed; the next run resumes from the checkpoint, reaches the
final step, and the loss log has every logged step exactly once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_workflow import REPO, SNAKEMAKE, TINY, snakemake, write_config

pytestmark = pytest.mark.slow

STEPS, CHECKPOINT_EVERY, LOG_EVERY = 60, 10, 5
MODEL = "results/hadcm3_tas_na/tiny/model.pt"


def training_processes(workdir: Path) -> list[int]:
    """PIDs of the `sgm train` processes (not their shells) running in workdir."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            words = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            comm = (proc / "comm").read_text().strip()
            cwd = Path(os.readlink(proc / "cwd"))
        except (OSError, ValueError):
            continue
        if cwd == workdir and comm not in ("sh", "bash") and "train" in words \
                and "--workdir" in words:
            pids.append(int(proc.name))
    return pids


def wait_for(condition, what: str, process: subprocess.Popen, limit_s: float = 120) -> None:
    """Poll until condition() holds; fail if the process ends first or after limit_s."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"snakemake ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} after {limit_s} s")
        time.sleep(0.05)


def loss_steps(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("step,loss")
    return [int(line.split(",")[0]) for line in lines[1:]]


def test_killed_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    config = json.loads(json.dumps(TINY))
    config["results"] = "results"
    config["models"]["tiny"]["train"].update(
        steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, log_every=LOG_EVERY
    )
    write_config(tmp_path, config)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config" / "config.yaml"), "--cores", "2", MODEL]
    state = tmp_path / "results" / "hadcm3_tas_na" / "tiny" / "train_state"
    with (tmp_path / "first_run.txt").open("w") as out:
        first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        wait_for(lambda: any(state.glob("*/checkpoints/ckpt-*.pt")), "a checkpoint", first)
        pids = training_processes(tmp_path)
        assert len(pids) == 1, f"expected one training process, found {pids}"
        os.kill(pids[0], signal.SIGKILL)
        assert first.wait(timeout=120) != 0
    (workdir,) = state.iterdir()
    killed_at = loss_steps(workdir / "loss.csv")
    assert not (tmp_path / MODEL).exists()
    assert killed_at and killed_at[-1] < STEPS, "training ended before it was killed"

    second = snakemake(tmp_path, MODEL)
    assert second.returncode == 0, second.stderr[-5000:]
    log = (tmp_path / "results" / "hadcm3_tas_na" / "tiny" / "logs" / "train.log").read_text()
    resumed = re.search(r"resumed from \S+ at step (\d+)", log)
    assert resumed, log[-3000:]
    step = int(resumed.group(1))
    assert step % CHECKPOINT_EVERY == 0 and 0 < step < STEPS
    assert f"(step {STEPS}," in log
    expected = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    assert loss_steps(workdir / "loss.csv") == expected
    assert loss_steps(tmp_path / "results" / "hadcm3_tas_na" / "tiny" / "loss.csv") == expected
