"""Ingest at scale: peak memory and throughput of ``sgm ingest`` on a multi-file NetCDF source.

Generates ``--files`` NetCDF4 files of float32 (time, ny, nx) fields, ``--size-gb`` in all
(default 2.2 GB: 20 files of 105 × 512 × 512), then runs, each in a fresh child process,

- ``sgm ingest`` on a spec that globs the files (all checks, statistics, atomic store), and
- a bare ``xr.open_mfdataset(...).to_zarr(...)`` copy (no checks), as the baseline,

and prints a table of wall time, MB/s (input bytes / wall time) and peak RSS (``ru_maxrss`` of
the child, from ``os.wait4``). The files are freshly written, so reads come from the page cache
when memory allows: the numbers measure sgm's own overhead, not the disk.

    python benchmarks/ingest_scale.py                 # 2.2 GB in a temporary folder
    python benchmarks/ingest_scale.py --size-gb 5 --workdir /scratch/bench --keep
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr
import yaml

BASELINE = """
import sys, xarray as xr
coder = xr.coders.CFDatetimeCoder(use_cftime=True)
ds = xr.open_mfdataset(sys.argv[1], decode_times=coder, combine="by_coords")
ds.to_zarr(sys.argv[2], mode="w", zarr_format=3, consolidated=False)
"""


def generate(folder: Path, n_files: int, n_time: int, ny: int, nx: int) -> int:
    """Write the files a few time steps at a time (bounded memory); return their total bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(-60, 60, ny), np.linspace(0, 360, nx, endpoint=False)
    for k in range(n_files):
        with netCDF4.Dataset(folder / f"tas_{k:03d}.nc", "w", format="NETCDF4") as nc:
            for dim, n in (("time", None), ("lat", ny), ("lon", nx)):
                nc.createDimension(dim, n)
            t = nc.createVariable("time", "f8", ("time",))
            t.units, t.calendar = "days since 2000-01-01", "360_day"
            nc.createVariable("lat", "f8", ("lat",), fill_value=False)[:] = lat
            nc.createVariable("lon", "f8", ("lon",), fill_value=False)[:] = lon
            nc["lat"].units, nc["lon"].units = "degrees_north", "degrees_east"
            v = nc.createVariable("tas", "f4", ("time", "lat", "lon"), chunksizes=(1, ny, nx))
            v.units, v.standard_name = "K", "air_temperature"
            for start in range(0, n_time, 8):
                stop = min(n_time, start + 8)
                t[start:stop] = np.arange(k * n_time + start, k * n_time + stop)
                v[start:stop] = 280 + rng.standard_normal((stop - start, ny, nx), np.float32)
    return sum(p.stat().st_size for p in folder.glob("*.nc"))


def measure(cmd: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit status) of ``cmd`` run as a child process."""
    os.sync()  # flush the previous step's writes so they do not slow this one
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(err[-3000:], file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, code


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gb", type=float, default=2.2, help="total input size (GB, 1e9 bytes)")
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--ny", type=int, default=512)
    p.add_argument("--nx", type=int, default=512)
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the files and stores")
    a = p.parse_args()

    work = a.workdir or Path(tempfile.mkdtemp(prefix="sgm-ingest-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    n_time = max(1, round(a.size_gb * 1e9 / (a.files * a.ny * a.nx * 4)))
    free = shutil.disk_usage(work).free / 1e9
    if free < 3.2 * a.size_gb:
        sys.exit(f"{work}: {free:.1f} GB free, need about {3.2 * a.size_gb:.1f} GB")
    print(f"generating {a.files} files of {n_time} x {a.ny} x {a.nx} float32 in {work} ...")
    t0 = time.perf_counter()
    nbytes = generate(work / "data", a.files, n_time, a.ny, a.nx)
    print(f"  {nbytes / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
    n_all = a.files * n_time
    spec = {
        "name": "scale", "source": {"paths": ["data/tas_*.nc"]},
        "variables": [{"name": "tas", "source_name": "tas", "units": "K"}],
        "splits": {"train": int(0.8 * n_all), "val": int(0.1 * n_all),
                   "test": n_all - int(0.8 * n_all) - int(0.1 * n_all)},
        "operator": {"kind": "coarsen", "factor": 4},
    }
    (work / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    sgm = [sys.executable, "-m", "sgm", "ingest", "--spec", str(work / "spec.yaml"),
           "--out", str(work / "fields.zarr")]
    bare = [sys.executable, "-c", BASELINE, str(work / "data" / "tas_*.nc"),
            str(work / "bare.zarr")]
    rows = []
    for name, cmd in (("sgm ingest", sgm), ("open_mfdataset().to_zarr()", bare)):
        wall, rss, code = measure(cmd)
        rows.append((name, wall, rss, code))

    a_, b_ = (xr.open_zarr(work / n, consolidated=False) for n in ("fields.zarr", "bare.zarr"))
    for i in (0, n_all // 2, n_all - 1):  # same values; sgm's lon 0..360 → −180..180
        np.testing.assert_array_equal(a_.tas.isel(time=i).values,
                                      np.roll(b_.tas.isel(time=i).values, -(a.nx // 2), -1))
    print(f"\ninput: {a.files} NetCDF4 files, {n_all} x {a.ny} x {a.nx} float32, "
          f"{nbytes / 1e9:.2f} GB (page cache warm); {os.cpu_count()} CPUs")
    print(f"{'command':<28} {'size GB':>8} {'wall s':>8} {'MB/s':>8} {'peak RSS MB':>12} "
          f"{'exit':>5}")
    for name, wall, rss, code in rows:
        print(f"{name:<28} {nbytes / 1e9:>8.2f} {wall:>8.1f} {nbytes / 1e6 / wall:>8.0f} "
              f"{rss:>12.0f} {code:>5}")
    if not a.keep and a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
