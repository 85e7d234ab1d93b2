"""The workflow on a cluster: what the SLURM profile asks for, and a real run on SLURM.

Dry runs (seconds): every job of `--workflow-profile profiles/slurm` asks for the resources
that config/config.yaml and the profile give it, and the training launcher follows the job's
GPU count (torchrun with one process per GPU when it has several).

Real run (about two minutes): installs SLURM with apt-get where it is missing, starts a
one-node cluster on this machine (munged, slurmctld, slurmd; see /work/shared/SLURM_NOTES.md),
runs the tiny workflow through the profile, and checks the outputs and the sbatch command
lines. It needs root and apt-get, and is skipped with SGM_SKIP_SLURM=1. The machine has no GPU:
sampling asks for gpu: 0 (CPU jobs in the GPU partition), while the node advertises two GPUs
backed by /dev/null and /dev/zero (gres.conf) so that training asks for `--gpus=2` as on a real
cluster; SLURM allocates them and the CPU build of torch, finding no CUDA, trains its two
torchrun processes with gloo on the CPUs. The sbatch command lines are kept in the test's
folder, or in the file SGM_SBATCH_LOG names.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from test_workflow import REPO, SNAKEMAKE, TINY, snakemake, write_config

PROFILE = REPO / "profiles" / "slurm"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
WRITTEN_BY = "# written by sgm's tests/test_cluster.py"


# ------------------------------------------------------------------------------- dry runs


def dry_run_jobs(out: str) -> list[dict]:
    """The jobs of `snakemake -n -p` output: rule, threads, resources and shell command."""
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", out, flags=re.M)[1:]:
        job = {"rule": re.match(r"(?:local)?rule (\w+):", block).group(1), "threads": 1,
               "resources": {}, "shell": None}
        if m := re.search(r"^\s+threads: (\d+)$", block, re.M):
            job["threads"] = int(m.group(1))
        if m := re.search(r"^\s+resources: (.*)$", block, re.M):
            pairs = (item.split("=", 1) for item in m.group(1).split(", "))
            job["resources"] = {k: v for k, v in pairs}
        if m := re.search(r"^Shell command: (.*)$", block, re.M):
            job["shell"] = m.group(1)
        jobs.append(job)
    return jobs


def dry_run(workdir: Path, config: dict, *args: str) -> list[dict]:
    write_config(workdir, config)
    result = snakemake(workdir, "-n", "-p", *args)
    assert result.returncode == 0, result.stderr + result.stdout
    return dry_run_jobs(result.stdout)


def demo_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["spec_dir"] = str(REPO / "data_specs")
    return config


def test_slurm_profile_asks_for_the_configured_resources(tmp_path: Path) -> None:
    config = demo_config()
    config["sample"]["shards"] = 3
    jobs = dry_run(tmp_path, config, "--workflow-profile", str(PROFILE), "--cores", "256")
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    external = config.get("external", [])  # the demo's observations from other files
    expected = {
        "ingest": 1, "observe": 1, "train": 1, "sample_shard": 3, "gather": 1, "evaluate": 1,
        "report": 1, "compare": 1, "all": 1,
        "tune_sampler": int(config["sample"].get("steps") == "auto"),
        "export": 1, "products": 1,
        "coarsen_external": sum(e.get("make_coarse", False) for e in external),
        "observe_external": len(external),
        "sample_external": len(external) * len(config["models"]),
        "report_external": len(external) * len(config["models"]),
    }
    assert {rule: len(js) for rule, js in by_rule.items()} == {
        rule: n for rule, n in expected.items() if n
    }
    for rule, stage in (("train", "train"), ("sample_shard", "sample"),
                        ("sample_external", "sample"), ("tune_sampler", "sample")):
        want = config["resources"][stage]
        for job in by_rule.get(rule, []):
            res = job["resources"]
            assert {k: int(res[k]) for k in want} == want, rule
            assert res["slurm_partition"] == profile["set-resources"][rule]["slurm_partition"]
            assert job["threads"] == want["cpus_per_gpu"] * max(1, want["gpu"])
    shards = sorted(re.search(r"--shard (\d+) --shards (\d+)", j["shell"]).groups()
                    for j in by_rule["sample_shard"])
    assert shards == [("0", "3"), ("1", "3"), ("2", "3")]
    for rule in ("ingest", "observe", "evaluate", "report", "coarsen_external",
                 "observe_external", "report_external", "export", "products"):
        for job in by_rule.get(rule, []):
            res = job["resources"]
            assert "gpu" not in res and "slurm_partition" not in res, rule
            assert int(res["mem_mb"]) == profile["default-resources"]["mem_mb"]
            assert int(res["runtime"]) == profile["default-resources"]["runtime"]
            assert job["threads"] == 1


def test_a_distilled_entry_with_a_teacher_trains_nothing(tmp_path: Path) -> None:
    """models: tiny_onestep distils tiny's model.pt: no second training, no tuning of its
    one-step sampler, and the comparison page lists both posteriors."""
    config = demo_config()
    config["models"]["tiny_onestep"] = {"distill": {"enabled": True, "teacher": "tiny"}}
    jobs = dry_run(tmp_path, config)
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    assert len(by_rule["train"]) == 1 and "/tiny/model.pt" in by_rule["train"][0]["shell"]
    assert len(by_rule["tune_sampler"]) == 1 and "/tiny/" in by_rule["tune_sampler"][0]["shell"]
    (distill,) = by_rule["distill"]
    assert "--model results/hadcm3_tas_na/tiny/model.pt" in distill["shell"]
    assert "--out results/hadcm3_tas_na/tiny_onestep/onestep.pt" in distill["shell"]
    assert "teacher" not in distill["shell"]
    onestep = [j for j in by_rule["sample_shard"] if "tiny_onestep" in j["shell"]]
    assert len(onestep) == 1 and "onestep.pt" in onestep[0]["shell"]
    assert '"method": "onestep"' in onestep[0]["shell"] and "--tuning" not in onestep[0]["shell"]
    # settings of the zero-shot methods are no input of models that are not priors
    assert all("cg_iterations" not in j["shell"] for j in by_rule["sample_shard"])
    (compare,) = by_rule["compare"]
    assert "--run tiny=" in compare["shell"] and "--run tiny_onestep=" in compare["shell"]
    config["models"]["tiny_onestep"]["distill"]["teacher"] = "nope"
    write_config(tmp_path, config)
    bad = snakemake(tmp_path, "-n")
    assert bad.returncode != 0 and "teacher 'nope' is not another entry" in bad.stderr + bad.stdout


def train_launch(jobs: list[dict]) -> str:
    """What the train job's shell command runs, as `<launcher> --threads <per process>`."""
    (job,) = [j for j in jobs if j["rule"] == "train"]
    command = job["shell"]
    prefix = command[: command.index("$sgm train ")]
    done = subprocess.run(["bash", "-euc", prefix + 'echo "$sgm --threads $threads"'],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_training_launcher_follows_the_jobs_gpus(tmp_path: Path) -> None:
    config = json.loads(json.dumps(TINY))
    config["resources"] = {"train": {"gpu": 2, "cpus_per_gpu": 3}}
    slurm = ("--workflow-profile", str(PROFILE), "--cores", "256")
    torchrun = "torchrun --standalone --nproc-per-node"
    assert train_launch(dry_run(tmp_path, config, *slurm)) == f"{torchrun}=2 -m sgm --threads 3"
    # set-resources (here from the command line) wins over the config; threads stay 2 × 3
    assert train_launch(dry_run(tmp_path, config, *slurm, "--set-resources", "train:gpu=3")
                        ) == f"{torchrun}=3 -m sgm --threads 2"
    # locally the default profile has one gpu: the job shrinks to one process on 2 cores
    assert train_launch(dry_run(tmp_path, config)) == "sgm --threads 2"
    assert train_launch(dry_run(tmp_path, config, "--resources", "gpu=2")
                        ) == f"{torchrun}=2 -m sgm --threads 1"
    cpu_only = json.loads(json.dumps(TINY))
    cpu_only["resources"] = {"train": {"gpu": 0, "cpus_per_gpu": 2}}
    assert train_launch(dry_run(tmp_path, cpu_only)) == "sgm --threads 2"


# ------------------------------------------------------------------------- a real cluster


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("input", "")  # never the caller's stdin
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _skip_reason() -> str | None:
    if os.environ.get("SGM_SKIP_SLURM") == "1":
        return "SGM_SKIP_SLURM=1"
    if os.geteuid() != 0:
        return "installing and starting SLURM needs root"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "no apt-get to install SLURM with"
    for conf in (SLURM_CONF, GRES_CONF):
        if conf.exists() and WRITTEN_BY not in conf.read_text():
            return f"{conf} exists and was not written by this test"
    if shutil.which("scontrol") and _run(["scontrol", "ping"], timeout=20).returncode == 0:
        return "a SLURM controller is already running here"
    return None


def _install() -> None:
    """apt-get install the SLURM daemons and munge, unless they are there."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    done = _run(cmd, env=env, timeout=300)
    if done.returncode != 0:  # stale or missing package lists
        _run(["apt-get", "update"], env=env, timeout=300)
        done = _run(cmd, env=env, timeout=300)
    if done.returncode != 0:
        pytest.skip("apt-get could not install SLURM: " + done.stderr.strip()[-300:])


def _slurm_conf(base: Path) -> str:
    real_mb = int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    return f"""{WRITTEN_BY}: a one-node cluster on this machine, removed after the test
ClusterName=sgmtest
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/run/slurmctld.pid
SlurmdPidFile={base}/run/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={real_mb} Gres=gpu:2
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
"""


def _wait(check, what: str, daemons: list[tuple[str, subprocess.Popen]], base: Path,
          limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        dead = [name for name, p in daemons if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                             for p in sorted((base / "log").glob("*")))
            pytest.fail(f"{what}: {'; '.join(dead) + ' died' if dead else 'timed out'}\n{logs}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[Path]:
    """A running one-node SLURM (munged, slurmctld, slurmd), stopped by PID afterwards."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    _install()
    base = Path(tempfile.mkdtemp(prefix="sgm-slurm-"))
    base.chmod(0o755)
    for sub in ("state", "spool", "log", "run"):
        (base / sub).mkdir()
        shutil.chown(base / sub, "slurm", "slurm")
    for d in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(_slurm_conf(base))
    GRES_CONF.write_text(f"{WRITTEN_BY}: two pretend GPUs (no CUDA here)\nAutoDetect=off\n"
                         "NodeName=localhost Name=gpu File=/dev/null\n"
                         "NodeName=localhost Name=gpu File=/dev/zero\n")
    daemons: list[tuple[str, subprocess.Popen]] = []

    def start(name: str, cmd: list[str]) -> None:
        with (base / "log" / f"{name}.out").open("w") as out:
            daemons.append((name, subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)))

    def munge_works() -> bool:
        cred = _run(["munge", "-n"], timeout=10)
        return cred.returncode == 0 and _run(["unmunge"], input=cred.stdout,
                                             timeout=10).returncode == 0

    try:
        if not munge_works():
            start("munged", ["setpriv", "--reuid=munge", "--regid=munge", "--clear-groups",
                             "munged", "-F", "--force"])
            _wait(munge_works, "munged", daemons, base)
        start("slurmctld", ["slurmctld", "-D", "-i"])
        _wait(lambda: _run(["scontrol", "ping"], timeout=10).returncode == 0, "slurmctld",
              daemons, base)
        start("slurmd", ["slurmd", "-D", "-N", "localhost"])

        def idle() -> bool:
            states = _run(["sinfo", "-h", "-o", "%T"], timeout=10).stdout.split()
            return bool(states) and all(s == "idle" for s in states)

        _wait(idle, "slurmd (node idle)", daemons, base)
        yield base
    finally:
        for _, proc in reversed(daemons):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        SLURM_CONF.unlink(missing_ok=True)
        GRES_CONF.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)


def sbatch_calls(log: str) -> dict[str, list[str]]:
    """The sbatch command lines the plugin logged (--verbose), by rule."""
    calls: dict[str, list[str]] = {}
    for m in re.finditer(r"sbatch call: (sbatch .*)$", log, re.M):
        rule = re.search(r"--comment '?rule_(\w+?)(?:_wildcards_|'| )", m.group(1)).group(1)
        calls.setdefault(rule, []).append(m.group(1))
    return calls


def sbatch_options(call: str) -> list[str]:
    """The options of an sbatch call, without the wrapped command."""
    return shlex.split(call.split(" --wrap=")[0])


@pytest.mark.slow
def test_workflow_runs_on_slurm(slurm_cluster: Path, tmp_path: Path) -> None:
    config = json.loads(json.dumps(TINY))
    config["results"] = "results"
    config["sample"]["shards"] = 2
    config["resources"] = {
        "train": {"gpu": 2, "cpus_per_gpu": 1, "mem_mb": 2000, "runtime": 10},
        "sample": {"gpu": 0, "cpus_per_gpu": 1, "mem_mb": 1500, "runtime": 5},
    }
    write_config(tmp_path, config)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = ["timeout", "-s", "KILL", "300", SNAKEMAKE, "-s", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config" / "config.yaml"),
           "--workflow-profile", str(PROFILE), "--slurm-init-seconds-before-status-checks", "2",
           "--retries", "0", "--verbose"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    log = done.stdout + done.stderr
    (tmp_path / "snakemake.log").write_text(log)
    assert done.returncode == 0, log[-8000:]

    calls = sbatch_calls(log)
    Path(os.environ.get("SGM_SBATCH_LOG", tmp_path / "sbatch.txt")).write_text(
        "\n".join(c for cs in calls.values() for c in cs) + "\n")
    # gather and all are local rules: no job of theirs went to SLURM
    assert {rule: len(c) for rule, c in calls.items()} == {
        "ingest": 1, "observe": 1, "train": 1, "sample_shard": 2, "evaluate": 1, "report": 1,
        "export": 1, "products": 1,
    }
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    opts = sbatch_options(calls["train"][0])
    assert opts[opts.index("-p") + 1] == "gpu"
    assert opts[opts.index("--mem") + 1] == "2000"
    assert opts[opts.index("-t") + 1] == "10"
    assert "--gpus=2" in opts and "--cpus-per-gpu=1" in opts
    for call in calls["sample_shard"]:  # gpu: 0, a CPU job in the GPU partition
        opts = sbatch_options(call)
        assert opts[opts.index("-p") + 1] == "gpu"
        assert opts[opts.index("--mem") + 1] == "1500"
        assert opts[opts.index("-t") + 1] == "5"
        assert "--cpus-per-task=1" in opts
        assert not any(o.startswith("--gpus") for o in opts)
    for rule in ("ingest", "observe", "evaluate", "report", "export", "products"):
        opts = sbatch_options(calls[rule][0])
        assert opts[opts.index("-p") + 1] == "cpu"  # the cluster's default partition
        assert opts[opts.index("--mem") + 1] == str(profile["default-resources"]["mem_mb"])
        assert opts[opts.index("-t") + 1] == str(profile["default-resources"]["runtime"])
        assert "--cpus-per-task=1" in opts

    res = tmp_path / "results" / "hadcm3_tas_na" / "tiny"
    train_log = (res / "logs" / "train.log").read_text()
    assert train_log.count("sgm.stages.train: train hadcm3_tas_na (conditional):") == 2  # DDP
    assert "(step 12," in train_log
    post = xr.open_zarr(res / "posterior.zarr")
    assert post.tas.shape == (40, 3, 36, 48)
    assert np.isfinite(post.tas.values).all()
    assert np.array_equal(post.obs_index.values, np.sort(post.obs_index.values))
    assert "tas" in json.loads((res / "metrics.json").read_text())["variables"]
    assert "data:image/png;base64" in (res / "report" / "index.html").read_text()
    again = snakemake(tmp_path, "-n", "--workflow-profile", str(PROFILE))
    assert "Nothing to be done" in again.stdout + again.stderr
