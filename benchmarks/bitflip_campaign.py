"""How much silent corruption gets through? A bit-flip campaign against sgm's stores and model
files (not a test; the test suite has one flip per kind in tests/test_stage_errors.py).

A tiny pipeline (synthetic 8 x 12 field, ingest → observe → train → sample) is built in a
temporary folder. Then, for each target, N times: flip one random bit at a random byte of a
random file (any chunk of any array of a store, coordinates included, or anywhere in model.pt),
run the stage that reads it through the real command, and restore the file. A flip is

  detected    the stage exits 1 with one line ``sgm <stage>: error: <the damaged file>: ...``;
  harmless    the stage succeeds and its output equals the output on intact input bitwise
              (the flip hit bytes that carry no content, e.g. zip padding in model.pt);
  SILENT      the stage succeeds with a different output, or fails without naming the file.

Usage: .venv/bin/python benchmarks/bitflip_campaign.py [--flips 25] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import tempfile
from pathlib import Path

import torch
import xarray as xr
import yaml

from sgm.cli import main

SPEC = {
    "name": "flips",
    "source": {"synthetic": {"shape": [8, 12], "length_scale": 2.0, "n_times": 24, "seed": 3}},
    "variables": [{"name": "field"}],
    "splits": {"train": 16, "val": 4, "test": 4},
    "operator": {"kind": "coarsen", "factor": 4, "noise_std": 0.05},
}
MODEL = {"model": {"preset": "tiny", "base_channels": 8},
         "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2}}
SAMPLE = {"members": 2, "steps": 2}


def sgm(*argv: object) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    lines = err.getvalue().strip().splitlines()
    return code, lines[-1] if lines else ""


def build(root: Path) -> dict[str, Path]:
    p = {k: root / v for k, v in {"spec": "spec.yaml", "fields": "fields.zarr", "obs": "obs.zarr",
                                   "model": "model.pt", "post": "post.zarr"}.items()}
    root.mkdir(parents=True, exist_ok=True)
    p["spec"].write_text(yaml.safe_dump(SPEC))
    for argv in (
        ["ingest", "--spec", p["spec"], "--out", p["fields"]],
        ["observe", "--spec", p["spec"], "--fields", p["fields"], "--out", p["obs"]],
        ["train", "--no-progress", "--spec", p["spec"], "--fields", p["fields"], "--obs",
         p["obs"], "--out", p["model"], "--workdir", root / "work", "--settings",
         json.dumps(MODEL)],
        ["sample", "--no-progress", "--model", p["model"], "--obs", p["obs"], "--out",
         p["post"], "--settings", json.dumps(SAMPLE)],
    ):
        code, line = sgm(*argv)
        assert code == 0, line
    return p


def consumer(target: str, p: dict[str, Path], out: Path) -> list[object]:
    """The command that reads ``target`` (its output goes to ``out``)."""
    if target in ("obs", "model"):
        return ["sample", "--no-progress", "--model", p["model"], "--obs", p["obs"], "--out",
                out / "post.zarr", "--settings", json.dumps(SAMPLE)]
    return ["evaluate", "--fields", p["fields"], "--obs", p["obs"], "--posterior", p["post"],
            "--metrics", out / "metrics.json", "--maps", out / "maps.zarr"]


def output_of(target: str, out: Path) -> bytes:
    if target in ("obs", "model"):
        return xr.open_zarr(out / "post.zarr").field.values.tobytes()
    return (out / "metrics.json").read_bytes()


def files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(q for q in path.rglob("*") if q.is_file() and "/c/" in str(q))


def campaign(p: dict[str, Path], target: str, flips: int, rng: random.Random,
             work: Path) -> dict[str, int]:
    counts = {"detected": 0, "harmless": 0, "SILENT": 0}
    reference = work / "reference"
    reference.mkdir()
    code, line = sgm(*consumer(target, p, reference))
    assert code == 0, line
    expected = output_of(target, reference)
    for i in range(flips):
        victim = rng.choice(files_of(p[target]))
        original = victim.read_bytes()
        data = bytearray(original)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        victim.write_bytes(bytes(data))
        out = work / f"run{i}"
        out.mkdir()
        try:
            code, line = sgm(*consumer(target, p, out))
        finally:
            victim.write_bytes(original)
        if code == 1 and str(p[target]) in line and line.count("\n") == 0:
            counts["detected"] += 1
        elif code == 0 and output_of(target, out) == expected:
            counts["harmless"] += 1
        else:
            counts["SILENT"] += 1
            print(f"  silent: {victim.relative_to(p[target].parent)} -> {code} {line[:120]}")
        shutil.rmtree(out)
    return counts


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=25, help="flips per target")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        p = build(root / "run")
        print(f"{'target':<10} {'flips':>5} {'detected':>9} {'harmless':>9} {'SILENT':>7}")
        for target in ("fields", "obs", "post", "model"):
            work = root / f"work-{target}"
            work.mkdir()
            c = campaign(p, target, args.flips, rng, work)
            print(f"{target:<10} {args.flips:>5} {c['detected']:>9} {c['harmless']:>9} "
                  f"{c['SILENT']:>7}")


if __name__ == "__main__":
    main_()
