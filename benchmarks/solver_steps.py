"""Which solver, and how many denoiser evaluations? A Gaussian-oracle benchmark (not a test).

A Gaussian random field prior, a linear observation operator and Gaussian noise give an exact
Gaussian posterior and its exact denoiser, so each solver can be run without a network and
its ensemble compared with the truth (as benchmarks/sampler_steps.py does for EDM's Heun
sampler). Solvers (sgm.core.sampler, sgm.core.multistep), all on the Karras rho = 7 grid on
[0.002, 80] followed by 0:

  heun      edm_sampler, deterministic (EDM Algorithm 1): 2 evaluations per step, 1 at the
            last, so it gets the largest odd NFE not above the requested one.
  dpm2/3    dpm_solver, order 2/3: multistep, noise prediction (exponential Adams-Bashforth).
  dpm++2/3  dpm_solver_pp, order 2/3: multistep, data prediction (DPM-Solver++(2M) / EAB3).
  sde2      sde_dpm_solver_pp, order 2, eta = 1: SDE-DPM-Solver++(2M).

The multistep solvers take one evaluation per step. With --start-sigma they start at that
noise level and take one grid step fewer, so the NFE stays the requested one.

Columns:
  NFE          denoiser evaluations per member, counted: the cost driver with a network.
  mean err/MC  RMS over pixels of (ensemble mean - exact posterior mean) / (exact std /
               sqrt(M)); ~1 for an exact sampler. The ODE solvers started at N(0, 80^2 I)
               carry a bias of mu_u / 80 posterior sds per eigen-direction u (see
               sgm.core.gaussian.ode_output_law), which raises it above 1 with a few thousand
               members; --start-sigma 1000 divides that bias by 12.5. The SDE forgets its
               start.
  std ratio    ensemble std / exact std: mean over pixels, and its 5-95 % range over pixels
               (MC standard error 1/sqrt(2M) per pixel).
  cover90      fraction of members inside the exact central 90 % interval (MC SE
               sqrt(0.09/M)).
  ms/member    wall time per member of the whole solver with this (cheap, dense-matrix)
               denoiser; with a network multiply NFE by its cost instead.

Usage: .venv/bin/python benchmarks/solver_steps.py [--operators coarsen sparse] [--nfe 4 8] ...
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from sgm.core.gaussian import (
    GaussianRandomField,
    conditional_denoiser,
    exact_posterior,
    oracle_statistics,
)
from sgm.core.multistep import dpm_solver, dpm_solver_pp, sde_dpm_solver_pp
from sgm.core.operators import Coarsen, SparseMask
from sgm.core.sampler import Denoiser, edm_sampler, member_seed
from sgm.core.schedule import karras_sigmas

# name -> (sampler, its keyword arguments, one evaluation per step (multistep)?)
SOLVERS: dict[str, tuple[Callable[..., Tensor], dict[str, float], bool]] = {
    "heun": (edm_sampler, {}, False),
    "dpm2": (dpm_solver, {"order": 2}, True),
    "dpm3": (dpm_solver, {"order": 3}, True),
    "dpm++2": (dpm_solver_pp, {"order": 2}, True),
    "dpm++3": (dpm_solver_pp, {"order": 3}, True),
    "sde2": (sde_dpm_solver_pp, {"order": 2, "eta": 1.0}, True),
}


class _Counted:
    """A denoiser that counts its evaluations (summed over members)."""

    def __init__(self, denoise: Denoiser) -> None:
        self.denoise = denoise
        self.evaluations = 0

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.evaluations += x.shape[0]
        return self.denoise(x, sigma)


def _problem(
    operator: str, grid: tuple[int, int], length_scale: float, noise_std: float
) -> tuple[str, np.ndarray, np.ndarray, Denoiser]:
    """(operator description, exact posterior mean[N], std[N], exact posterior denoiser): the
    problem of tests/test_sampler_oracle.py (x4 block means or 10 % point values)."""
    prior = GaussianRandomField(grid, length_scale=length_scale)
    op = Coarsen(grid, 4) if operator == "coarsen" else SparseMask(grid, fraction=0.1, seed=0)
    rng = np.random.default_rng(0)
    a = op.matrix()
    y = a @ prior.sample(1, rng).reshape(-1) + noise_std * rng.standard_normal(a.shape[0])
    mean, cov = exact_posterior(prior, a, noise_std, y)
    what = "x4 block means" if operator == "coarsen" else "10 % point values"
    label = f"{operator}: {a.shape[0]} {what}"
    return label, mean, np.sqrt(np.diag(cov)), conditional_denoiser(torch.as_tensor(mean), cov)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", type=int, default=16, help="grid size H = W")
    parser.add_argument("--length-scale", type=float, default=3.0, help="GRF length (pixels)")
    parser.add_argument(
        "--operators", nargs="+", default=["coarsen", "sparse"], choices=["coarsen", "sparse"]
    )
    parser.add_argument("--noise-std", type=float, default=0.05)
    parser.add_argument("--members", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[4, 6, 8, 12, 16, 32, 64])
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    parser.add_argument(
        "--start-sigma",
        type=float,
        default=None,
        help="start the multistep solvers at this sigma (one extra step, e.g. 1000)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = (args.grid, args.grid)
    seeds = [member_seed(0, 0, m) for m in range(args.members)]
    extra = 1 if args.start_sigma is not None else 0

    for operator in args.operators:
        op, mean, std, denoise = _problem(operator, grid, args.length_scale, args.noise_std)
        print(
            f"\nGRF {grid[0]}x{grid[1]}, l = {args.length_scale} px, nu = 1.5; {op}, noise std "
            f"{args.noise_std}; exact posterior std in [{std.min():.3f}, {std.max():.3f}]; "
            f"M = {args.members} (std-ratio SE {1 / np.sqrt(2 * args.members):.3f}, coverage "
            f"SE {np.sqrt(0.09 / args.members):.4f}); start sigma "
            f"{args.start_sigma or 80.0:g} (heun: 80)."
        )
        header = (
            "| solver | NFE | mean err/MC | std ratio | std ratio 5-95 % | cover90 | ms/member |"
        )
        print(header)
        print("|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|")
        for name in args.solvers:
            sampler, kw, multistep = SOLVERS[name]
            for nfe in args.nfe:
                steps = nfe - extra if multistep else (nfe + 1) // 2
                if steps < 1:
                    continue
                start = {"start_sigma": args.start_sigma} if multistep and extra else {}
                counted = _Counted(denoise)
                t0 = time.perf_counter()
                samples = torch.cat(
                    [
                        sampler(
                            counted,
                            (1, *grid),
                            seeds[i : i + args.batch],
                            karras_sigmas(steps),
                            **kw,
                            **start,
                        )  # fmt: skip
                        for i in range(0, args.members, args.batch)
                    ]
                )
                elapsed = time.perf_counter() - t0
                st = oracle_statistics(samples, mean, std, level=0.9)
                lo, hi = np.quantile(st.std_ratio, [0.05, 0.95])
                print(
                    f"| {name} | {counted.evaluations / args.members:g} "
                    f"| {np.sqrt(np.mean(st.mean_z**2)):.2f} | {st.std_ratio.mean():.3f} "
                    f"| {lo:.3f}-{hi:.3f} | {st.coverage.mean():.3f} "
                    f"| {1e3 * elapsed / args.members:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
