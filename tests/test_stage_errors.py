"""Bad input to every stage after ingest, through the real command (``sgm.cli.main``): one line
``sgm <stage>: error: <file or option>: <problem>``, exit status 1, no traceback, nothing
partial left, old outputs intact. Also damaged stores and model files (flipped bits, missing
chunks), the training folder's lock, leftovers of killed writes, outputs that belong together,
and full disks (a real small tmpfs when this runs as root).

The ingest corpus is in tests/test_bad_input.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from sgm.cli import main
from sgm.io.lock import FolderLock
from sgm.io.stores import write_store

SPEC = {
    "name": "a",
    "source": {"synthetic": {"shape": [8, 12], "length_scale": 2.0, "n_times": 24, "seed": 3}},
    "variables": [{"name": "field", "units": "K"}],
    "splits": {"train": 16, "val": 4, "test": 4},
    "operator": {"kind": "coarsen", "factor": 4, "noise_std": 0.05},
}
MODEL = json.dumps({"model": {"preset": "tiny", "base_channels": 8},
                    "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2,
                              "log_every": 1}})
SAMPLE = json.dumps({"members": 2, "steps": 2})


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """Exit status and the last line on stderr of ``sgm *argv``."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def pipeline(root: Path, name: str) -> dict[str, Path]:
    """ingest → observe → train → sample → evaluate for a tiny spec called ``name``."""
    root.mkdir(parents=True, exist_ok=True)
    p = {k: root / v for k, v in {
        "spec": "spec.yaml", "fields": "fields.zarr", "obs": "obs.zarr", "model": "model.pt",
        "work": "work", "post": "post.zarr", "metrics": "metrics.json", "maps": "maps.zarr",
        "loss": "work/loss.csv", "html": "report/index.html"}.items()}
    p["spec"].write_text(yaml.safe_dump({**SPEC, "name": name}))
    steps = [
        ["ingest", "--spec", p["spec"], "--out", p["fields"]],
        ["observe", "--spec", p["spec"], "--fields", p["fields"], "--out", p["obs"]],
        ["train", "--no-progress", "--spec", p["spec"], "--fields", p["fields"], "--obs",
         p["obs"], "--out", p["model"], "--workdir", p["work"], "--settings", MODEL],
        ["sample", "--no-progress", "--model", p["model"], "--obs", p["obs"], "--out",
         p["post"], "--settings", SAMPLE],
        ["evaluate", "--fields", p["fields"], "--obs", p["obs"], "--posterior", p["post"],
         "--metrics", p["metrics"], "--maps", p["maps"]],
    ]
    for argv in steps:
        assert main([str(a) for a in argv]) == 0, argv
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("errors")
    return {"a": pipeline(root / "a", "a"), "b": pipeline(root / "b", "b")}


def flip_bit(store: Path, variable: str) -> None:
    """Flip one bit in the middle of a chunk of ``variable`` of a Zarr store."""
    chunk = sorted(p for p in (store / variable / "c").rglob("*") if p.is_file())[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))


def copy(path: Path, to: Path) -> Path:
    (shutil.copytree if path.is_dir() else shutil.copy)(path, to)
    return to


# Each case: (name, argv builder from (runs, tmp_path), expected message regex). The builder may
# damage copies of the inputs under tmp_path; every case must fail with exit status 1.
Builder = Callable[[dict, Path], list]


def _sample(model: Path, obs: Path, out: Path, *extra: str) -> list:
    return ["sample", "--no-progress", "--model", model, "--obs", obs, "--out", out,
            "--settings", SAMPLE, *extra]


def _evaluate(p: dict, tmp: Path, **over: Path) -> list:
    q = {**p, **over}
    return ["evaluate", "--fields", q["fields"], "--obs", q["obs"], "--posterior", q["post"],
            "--metrics", tmp / "m.json", "--maps", tmp / "maps.zarr"]


def _report(p: dict, tmp: Path, **over: Path) -> list:
    q = {**p, **over}
    return ["report", "--fields", q["fields"], "--obs", q["obs"], "--posterior", q["post"],
            "--metrics", q["metrics"], "--loss", q["loss"], "--out", tmp / "r" / "index.html"]


def _bad_model(content: bytes) -> Builder:
    def build(r: dict, tmp: Path) -> list:
        (tmp / "model.pt").write_bytes(content(r) if callable(content) else content)
        return _sample(tmp / "model.pt", r["a"]["obs"], tmp / "out.zarr")
    return build


def _flipped_model(r: dict, tmp: Path) -> list:
    data = bytearray(r["a"]["model"].read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights' bytes
    (tmp / "model.pt").write_bytes(bytes(data))
    return _sample(tmp / "model.pt", r["a"]["obs"], tmp / "out.zarr")


def _flipped(key: str, variable: str, command: Callable[[dict, Path, Path], list]) -> Builder:
    def build(r: dict, tmp: Path) -> list:
        damaged = copy(r["a"][key], tmp / f"damaged-{r['a'][key].name}")
        flip_bit(damaged, variable)
        return command(r, tmp, damaged)
    return build


def _missing_chunk(r: dict, tmp: Path) -> list:
    obs = copy(r["a"]["obs"], tmp / "obs.zarr")
    next(p for p in (obs / "field" / "c").rglob("*") if p.is_file()).unlink()
    return _sample(r["a"]["model"], obs, tmp / "out.zarr")


def _nan_posterior(r: dict, tmp: Path) -> list:
    post = xr.open_zarr(r["a"]["post"]).load()
    post["field"][0, 0, 0, 0] = np.nan
    write_store(post, tmp / "post.zarr", require_finite=False)
    return _evaluate(r["a"], tmp, post=tmp / "post.zarr")


def _short_posterior(r: dict, tmp: Path) -> list:
    post = xr.open_zarr(r["a"]["post"]).load().isel(time=slice(1, None))
    write_store(post, tmp / "post.zarr")
    return _evaluate(r["a"], tmp, post=tmp / "post.zarr")


def _shards(r: dict, tmp: Path, which: tuple[int, ...], seeds: tuple[int, ...] = (0, 0)) -> list:
    paths = []
    for k in which:
        out = tmp / f"s{k}-{seeds[k]}.zarr"
        if not out.exists():
            settings = json.dumps({**json.loads(SAMPLE), "seed": seeds[k]})
            assert main([str(a) for a in ["sample", "--no-progress", "--model", r["a"]["model"],
                                          "--obs", r["a"]["obs"], "--out", out, "--settings",
                                          settings, "--shard", k, "--shards", 2]]) == 0
        paths.append(out)
    return ["gather", *paths, "--out", tmp / "g.zarr"]


def _other_factor(r: dict, tmp: Path) -> list:
    (tmp / "spec.yaml").write_text(yaml.safe_dump(
        {**SPEC, "operator": {"kind": "coarsen", "factor": 5, "noise_std": 0.1}}))
    return ["observe", "--spec", tmp / "spec.yaml", "--fields", r["a"]["fields"], "--out",
            tmp / "obs.zarr"]


def _settings(stage: str, settings: dict) -> Builder:
    def build(r: dict, tmp: Path) -> list:
        if stage == "sample":
            return [*_sample(r["a"]["model"], r["a"]["obs"], tmp / "out.zarr")[:-2],
                    "--settings", json.dumps(settings)]
        return ["train", "--no-progress", "--spec", r["a"]["spec"], "--fields",
                r["a"]["fields"], "--obs", r["a"]["obs"], "--out", tmp / "model.pt",
                "--workdir", tmp / "work", "--settings", json.dumps(settings)]
    return build


def _metrics(text: str) -> Builder:
    def build(r: dict, tmp: Path) -> list:
        (tmp / "metrics.json").write_text(text)
        return _report(r["a"], tmp, metrics=tmp / "metrics.json")
    return build


def _loss(text: str) -> Builder:
    def build(r: dict, tmp: Path) -> list:
        (tmp / "loss.csv").write_text(text)
        return _report(r["a"], tmp, loss=tmp / "loss.csv")
    return build


def _spec(**over: object) -> Builder:
    def build(r: dict, tmp: Path) -> list:
        (tmp / "spec.yaml").write_text(yaml.safe_dump({**SPEC, **over}))
        return ["ingest", "--spec", tmp / "spec.yaml", "--out", tmp / "fields.zarr"]
    return build


def _existing(kind: str) -> Builder:
    def build(r: dict, tmp: Path) -> list:
        target = tmp / "mine"
        if kind == "file":
            target.write_text("my own notes\n")
            return _sample(r["a"]["model"], r["a"]["obs"], target)
        target.mkdir()
        (target / "data.txt").write_text("my own data\n")
        return ["ingest", "--spec", r["a"]["spec"], "--out", target]
    return build


CASES: list[tuple[str, Builder, str]] = [
    ("model of another spec", lambda r, t: _sample(r["a"]["model"], r["b"]["obs"], t / "o.zarr"),
     r"b/obs.zarr: belongs to data spec 'b', not 'a'"),
    ("evaluate: posterior of another spec", lambda r, t: _evaluate(r["a"], t, post=r["b"]["post"]),
     r"b/post.zarr: belongs to data spec 'b', not 'a'"),
    ("evaluate: obs of another spec", lambda r, t: _evaluate(r["a"], t, obs=r["b"]["obs"]),
     r"b/obs.zarr: belongs to data spec 'b', not 'a'"),
    ("observe: factor does not divide", _other_factor,
     r"spec.yaml: operator: Grid \(8, 12\) is not divisible by the coarsening factor 5"),
    ("observe: fields of another spec", lambda r, t: [
        "observe", "--spec", r["a"]["spec"], "--fields", r["b"]["fields"], "--out",
        t / "obs.zarr"], r"b/fields.zarr: belongs to data spec 'b', not 'a'"),
    ("gather: a shard given twice",
     lambda r, t: [*_shards(r, t, (0,))[:2], *_shards(r, t, (0,))[1:]], r"s0-0.zarr: given twice"),
    ("gather: one of two shards", lambda r, t: _shards(r, t, (1,)),
     r"shard\(s\) 0 of 2 missing: gather needs all 2 \(got 1\)"),
    ("gather: shards of two runs", lambda r, t: _shards(r, t, (0, 1), seeds=(0, 1)),
     r"s1-1.zarr: its sgm_sampler differs from that of .*s0-0.zarr"),
    ("garbage model", _bad_model(b"this is not a model\n" * 20),
     r"model.pt: not a readable sgm file"),
    ("empty model", _bad_model(b""), r"model.pt: not a readable sgm file"),
    ("truncated model", _bad_model(lambda r: r["a"]["model"].read_bytes()[:5000]),
     r"model.pt: not a readable sgm file"),
    ("flipped bit in the model", _flipped_model,
     r"model.pt: (fails its content hash|not a readable sgm file)"),
    ("checkpoint given as model", lambda r, t: _sample(
        sorted((r["a"]["work"] / "checkpoints").glob("*.pt"))[-1], r["a"]["obs"], t / "o.zarr"),
     r"ckpt-\d+\.pt: not an sgm model file \(a training checkpoint"),
    ("bad metrics JSON", _metrics("{not json"), r"metrics.json: not valid JSON"),
    ("metrics of another kind", _metrics(json.dumps({"spec": "a", "variables": {"field": {}}})),
     r"metrics.json: variable 'field' lacks the scores sgm evaluate writes"),
    ("metrics of another spec", lambda r, t: _report(r["a"], t, metrics=r["b"]["metrics"]),
     r"b/metrics.json: belongs to data spec 'b', not 'a'"),
    ("garbage loss log", _loss("step,loss,sigma_median,lr,wall_s\n1,abc,1,1,1\n"),
     r"loss.csv: line 2: not a row of numbers"),
    ("report: posterior of another spec", lambda r, t: _report(r["a"], t, post=r["b"]["post"]),
     r"b/post.zarr: belongs to data spec 'b', not 'a'"),
    ("shard out of range", lambda r, t: _sample(r["a"]["model"], r["a"]["obs"], t / "o.zarr",
                                                "--shard", "3", "--shards", "2"),
     r"--shard 3: not in 0..1 \(--shards 2\)"),
    ("unknown split", lambda r, t: _sample(r["a"]["model"], r["a"]["obs"], t / "o.zarr",
                                           "--split", "tst"),
     r"--split 'tst': .*obs.zarr has the splits test, val \(or all\)"),
    ("negative threads", lambda r, t: _sample(r["a"]["model"], r["a"]["obs"], t / "o.zarr",
                                              "--threads", "-2"),
     r"argument --threads: -2 is not ≥ 1"),
    ("zero threads", lambda r, t: _sample(r["a"]["model"], r["a"]["obs"], t / "o.zarr",
                                          "--threads", "0"),
     r"argument --threads: 0 is not ≥ 1"),
    ("device typo", _settings("sample", {"members": 2, "steps": 2, "device": "gpu"}),
     r"device 'gpu' is not known; use auto, cpu, cuda, cuda:N or mps"),
    ("train: device typo", _settings("train", {"train": {"steps": 2, "device": "gpu"}}),
     r"device 'gpu' is not known"),
    ("too few members", _settings("sample", {"members": 1}),
     r"--settings: members: Input should be greater than or equal to 2"),
    ("package not installed", _spec(source={"package_file": {"package": "no_such_pkg_sgm",
                                                             "path": "x.nc"}}),
     r"no_such_pkg_sgm/x.nc: variable 'field': package 'no_such_pkg_sgm' is not installed"),
    ("dotted package not installed", _spec(source={"package_file": {"package": "nope.sub",
                                                                    "path": "x.nc"}}),
     r"package 'nope.sub' is not installed"),
    ("package path leaves the package", _spec(source={"package_file": {
        "package": "iris_sample_data", "path": "../../../etc/passwd"}}),
     r"source.package_file.path: Value error, must be a relative path inside the package"),
    ("evaluate: NaN posterior", _nan_posterior, r"post.zarr: has NaN or infinite values"),
    ("evaluate: incomplete gather", _short_posterior,
     r"post.zarr: 1 of the 4 test times have no posterior member"),
    ("out is my file", _existing("file"),
     r"mine: exists and is a file, not a store sgm wrote; refusing to replace it"),
    ("out is my folder", _existing("folder"),
     r"mine: exists and is a folder, not a store sgm wrote; refusing to replace it"),
    ("flipped bit in fields", _flipped("fields", "field", lambda r, t, d: _evaluate(
        r["a"], t, fields=d)), r"damaged-fields.zarr: variable 'field': chunk c/\S+ fails its "
     r"checksum; the store is damaged"),
    ("flipped bit in obs", _flipped("obs", "field", lambda r, t, d: _sample(
        r["a"]["model"], d, t / "o.zarr")), r"damaged-obs.zarr: variable 'field': chunk .* fails"),
    ("flipped bit in posterior", _flipped("post", "field", lambda r, t, d: _evaluate(
        r["a"], t, post=d)), r"damaged-post.zarr: variable 'field': chunk .* fails its checksum"),
    ("flipped bit in a coordinate", _flipped("post", "lat", lambda r, t, d: _evaluate(
        r["a"], t, post=d)), r"damaged-post.zarr: variable 'lat': chunk .* fails its checksum"),
    ("obs chunk missing", _missing_chunk,
     r"obs.zarr: variable 'field': chunk \S+ is missing; the store is damaged"),
]


@pytest.mark.parametrize(("case", "build", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_1(
    runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture, case: str, build: Builder,
    expected: str,
) -> None:
    argv = build(runs, tmp_path)
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    before = sorted(p.name for p in out.parent.iterdir()) if out and out.parent.exists() else []
    code, line = run(capsys, *argv)
    assert code == 1, line
    assert line.startswith(f"sgm {argv[0]}: error: "), line
    assert "Traceback" not in line
    assert re.search(expected, line), line
    if out is not None and out.parent.exists():  # nothing new, nothing partial, nothing lost
        after = sorted(p.name for p in out.parent.iterdir())
        assert after == before, (before, after)
    assert len(CASES) >= 30


def test_verbose_adds_the_traceback(runs: dict, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    code = main(["-v", *map(str, _sample(runs["a"]["model"], runs["b"]["obs"], tmp_path / "o"))])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("sgm sample: error: ")


def test_no_code_runs_from_a_package_named_by_a_spec(tmp_path: Path) -> None:
    """A module of the spec's package name in the working directory is never imported."""
    (tmp_path / "evilpkg").mkdir()
    marker = tmp_path / "ran.txt"
    (tmp_path / "evilpkg" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (tmp_path / "evilpkg" / "data.nc").write_text("x")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(
        {**SPEC, "source": {"package_file": {"package": "evilpkg", "path": "data.nc"}}}))
    proc = subprocess.run([sys.executable, "-m", "sgm", "ingest", "--spec", "spec.yaml",
                           "--out", "f.zarr"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "package 'evilpkg' is not installed" in proc.stderr
    assert not marker.exists() and not (tmp_path / "f.zarr").exists()


def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(
    runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    p = runs["a"]
    argv = ["train", "--no-progress", "--spec", p["spec"], "--fields", p["fields"], "--obs",
            p["obs"], "--out", tmp_path / "model.pt", "--workdir", tmp_path / "work",
            "--settings", MODEL]
    with FolderLock(tmp_path / "work"):  # a live trainer holds the folder
        code, line = run(capsys, *argv)
    assert code == 1 and not (tmp_path / "model.pt").exists()
    assert re.search(rf"work: another process \(pid {os.getpid()} on .*\) is using this "
                     "training folder", line), line
    # A lock file left by a process that died (no lock held): the next run takes it over.
    (tmp_path / "work" / ".lock").write_text("pid 999999 on elsewhere\n")
    code, line = run(capsys, *argv)
    assert code == 0, line
    assert (tmp_path / "model.pt").exists()


def test_leftovers_of_killed_writes_are_removed(runs: dict, tmp_path: Path) -> None:
    out = tmp_path / "post.zarr"
    for stale in (f".{out.name}.tmp-deadbeef", f".{out.name}.old-deadbeef"):
        (tmp_path / stale / "field").mkdir(parents=True)
    assert main([str(a) for a in _sample(runs["a"]["model"], runs["a"]["obs"], out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post.zarr"]


def test_maps_and_metrics_appear_together(runs: dict, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill after the maps were moved into place but before the metrics: the old metrics are
    gone (the pair is incomplete, Snakemake reruns evaluate), never beside the new maps."""
    import sgm.io.stores as stores

    p = runs["a"]
    metrics, maps = tmp_path / "m.json", tmp_path / "maps.zarr"
    argv = _evaluate(p, tmp_path)
    assert main([str(a) for a in argv]) == 0
    old = metrics.read_text()
    real = os.replace

    def killed(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == metrics:
            raise SystemExit("killed")
        real(src, dst)

    monkeypatch.setattr(stores.os, "replace", killed)
    with pytest.raises(SystemExit):
        main([str(a) for a in argv])
    monkeypatch.undo()
    assert maps.exists() and not metrics.exists()
    assert main([str(a) for a in argv]) == 0 and metrics.read_text() == old  # deterministic


def test_html_escapes_text_from_files(runs: dict, tmp_path: Path) -> None:
    """Units from a source file reach the report's HTML escaped."""
    p = runs["a"]
    evil = "K<script>alert(1)</script>"
    fields = xr.open_zarr(p["fields"]).load()
    fields["field"].attrs["units"] = evil
    attrs = {k: v for k, v in fields.attrs.items() if k != "sgm_complete"}
    fields.attrs = {}
    write_store(fields, tmp_path / "fields.zarr", attrs=attrs)
    metrics = json.loads(p["metrics"].read_text())
    metrics["variables"]["field"]["units"] = evil
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    argv = _report(p, tmp_path, fields=tmp_path / "fields.zarr", metrics=tmp_path / "metrics.json")
    assert main([str(a) for a in argv]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


# ------------------------------------------------------------------ full disks

def _tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 3 MB file system (a tmpfs mounted as root); skipped where that is not possible."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "3m"):
        pytest.skip("a full disk needs a tmpfs mount, which needs root (run as root to test)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)  # lazy: a leaked handle


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` bytes."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("stage", ["ingest", "observe", "train", "sample", "gather", "evaluate",
                                   "report"])
def test_a_full_disk_is_one_line_and_old_outputs_survive(
    runs: dict, small_disk: Path, capsys: pytest.CaptureFixture, stage: str
) -> None:
    p = runs["a"]
    argv = {
        "ingest": ["ingest", "--spec", p["spec"], "--out", small_disk / "out.zarr"],
        "observe": ["observe", "--spec", p["spec"], "--fields", p["fields"], "--out",
                    small_disk / "out.zarr"],
        "train": ["train", "--no-progress", "--spec", p["spec"], "--fields", p["fields"],
                  "--obs", p["obs"], "--out", small_disk / "model.pt", "--workdir",
                  small_disk / "work", "--settings", MODEL],
        "sample": _sample(p["model"], p["obs"], small_disk / "out.zarr"),
        "gather": ["gather", p["post"], "--out", small_disk / "out.zarr"],
        "evaluate": ["evaluate", "--fields", p["fields"], "--obs", p["obs"], "--posterior",
                     p["post"], "--metrics", small_disk / "m.json", "--maps",
                     small_disk / "out.zarr"],
        "report": _report(p, small_disk),
    }[stage]
    if stage in ("sample", "gather", "evaluate"):  # an old output that must survive
        assert main([str(a) for a in argv]) == 0
    def outputs() -> dict:  # the training folder is resumable state, not an output
        return {q.relative_to(small_disk): q.read_bytes() for q in small_disk.rglob("*")
                if q.is_file() and "work" not in q.relative_to(small_disk).parts}

    before = outputs()
    _fill(small_disk, leave=2048)
    code, line = run(capsys, *argv)
    assert code == 1, line
    assert "no space left on device" in line, line
    (small_disk / "filler").unlink()
    assert outputs() == before  # nothing partial added, nothing old changed
