"""Memory and time of tiled denoising as the grid grows (a benchmark, not a test).

A tiny U-Net (``sgm.core.network`` preset "tiny" in ``EDMPrecond``, untrained: only its cost
matters) denoises tiles of a fixed size; ``sgm.core.tiling.TiledDenoiser`` cuts the field and
its conditioning (block-replicated 4 x 4 block means, 1 channel, and 3 position channels from
``sphere_coordinates`` on a CONUS-like 25-50 N, 125-65 W grid) into overlapping tiles, calls the
network on at most ``--batch`` tiles at a time and blends the outputs; ``dpm_solver`` draws the
members. Every grid runs in a fresh child process, so that its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own.

Columns:
  grid          H = W.
  tiles         tiles per field, i.e. network tiles per member per evaluation.
  peak MB       peak resident memory of the child (Python, torch and the model included).
  +MB           peak minus the resident memory after set-up: what sampling itself added.
  field MB      one float64 state of all members (M x H x W x 8 bytes); the solvers keep a
                few of those, which is the only part that grows with the grid.
  s/member      wall time of the whole solve per member.
  us/px/NFE     microseconds per pixel per evaluation: time is linear in the number of
                tiles, which the even layout makes roughly proportional to the pixels (the
                tiles' total area is 1-2.3 x the grid's, depending on how the overlaps fall).
  ms/tile       milliseconds per network tile: flat once calls are full (>= --batch tiles
                per evaluation), i.e. time is linear in the tile count.
With --untiled a second child per grid times one untiled network call on the whole field
(one member) for contrast: its memory grows with the grid (activations of every layer).

Usage: .venv/bin/python benchmarks/tiled_scale.py [--grids 64 128 256 512] [--tile 64]
           [--overlap 16] [--batch 16] [--members 2] [--nfe 4] [--threads 1] [--untiled]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from sgm.core.multistep import dpm_solver
from sgm.core.operators import Coarsen
from sgm.core.precond import EDMPrecond, new_denoiser
from sgm.core.schedule import karras_sigmas
from sgm.core.tiling import TiledDenoiser, TileLayout, sphere_coordinates

FACTOR = 4


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB on Linux


def _setup(n: int) -> tuple[EDMPrecond, torch.Tensor]:
    """The network and the conditioning channels [1, 4, n, n] of an n x n grid."""
    net = new_denoiser("tiny", in_channels=1 + 1 + 3, out_channels=1, seed=0).eval()
    coarse = torch.randn(1, 1, n // FACTOR, n // FACTOR, generator=torch.Generator().manual_seed(0))
    obs = Coarsen((n, n), FACTOR).to_grid(coarse)[:, 0]  # [1, 1, n, n]
    pos = sphere_coordinates(np.linspace(25.0, 50.0, n), np.linspace(-125.0, -65.0, n))
    return net, torch.cat([obs, pos[None]], dim=1)


def run_child(args: argparse.Namespace) -> dict[str, float]:
    """One grid in this process: tiled sampling (or one untiled call with --untiled)."""
    torch.set_num_threads(args.threads)
    n = args.child
    net, cond = _setup(n)
    before = _rss_mb()
    start = time.perf_counter()
    with torch.no_grad():
        if args.untiled:
            net(torch.randn(1, 1, n, n), torch.ones(1), cond)
            tiles = 1
        else:
            layout = TileLayout((n, n), (args.tile, args.tile), (args.overlap, args.overlap),
                                align=FACTOR)
            denoise = TiledDenoiser(net, layout, cond, batch=args.batch)
            dpm_solver(denoise, (1, n, n), list(range(args.members)), karras_sigmas(args.nfe))
            tiles = len(layout)
    seconds = time.perf_counter() - start
    return {"grid": n, "tiles": tiles, "peak": _peak_mb(), "added": _peak_mb() - before,
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grids", type=int, nargs="+", default=[64, 128, 256, 512],
                        help="grid sizes H = W (multiples of 4)")
    parser.add_argument("--tile", type=int, default=64, help="tile size h = w (pixels)")
    parser.add_argument("--overlap", type=int, default=16, help="nominal tile overlap (pixels)")
    parser.add_argument("--batch", type=int, default=16, help="most tiles per network call")
    parser.add_argument("--members", type=int, default=2, help="ensemble members per grid")
    parser.add_argument("--nfe", type=int, default=4, help="denoiser evaluations per member")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--untiled", action="store_true",
                        help="also time one untiled network call per grid (memory grows)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_child(args)))
        return

    def child(n: int, untiled: bool) -> dict[str, float]:
        cmd = [sys.executable, __file__, "--child", str(n), "--tile", str(args.tile),
               "--overlap", str(args.overlap), "--batch", str(args.batch),
               "--members", str(args.members), "--nfe", str(args.nfe),
               "--threads", str(args.threads)] + (["--untiled"] if untiled else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    print(f"tile {args.tile}, overlap {args.overlap}, batch {args.batch}, members "
          f"{args.members}, NFE {args.nfe} (dpm_solver), {args.threads} thread(s)")
    header = (f"{'grid':>6} {'tiles':>6} {'peak MB':>8} {'+MB':>7} {'field MB':>9} "
              f"{'s/member':>9} {'us/px/NFE':>10} {'ms/tile':>8}")
    print(header + ("   untiled call: +MB, s" if args.untiled else ""))
    for n in args.grids:
        r = child(n, untiled=False)
        field = args.members * n * n * 8 / 1e6
        per_px = r["seconds"] / (args.members * n * n * args.nfe) * 1e6
        per_tile = r["seconds"] / (args.members * r["tiles"] * args.nfe) * 1e3
        line = (f"{n:>6} {r['tiles']:>6} {r['peak']:>8.0f} {r['added']:>7.1f} {field:>9.2f} "
                f"{r['seconds'] / args.members:>9.2f} {per_px:>10.2f} {per_tile:>8.2f}")
        if args.untiled:
            u = child(n, untiled=True)
            line += f"   {u['added']:>7.0f} MB, {u['seconds']:.2f} s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
