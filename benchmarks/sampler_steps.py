"""How many EDM sampling steps are enough? A Gaussian-oracle benchmark (not a test).

A Gaussian random field prior, a linear observation operator and Gaussian noise give an exact
Gaussian posterior and its exact denoiser, so the EDM sampler can be run without a network
and its ensemble compared with the truth. The table shows, per step count and churn:

  NFE          denoiser evaluations (2N - 1 for Heun): the cost driver with a real network.
  mean err/MC  RMS over pixels of (ensemble mean - exact mean) / (exact std / sqrt(M));
               ~1 for an exact sampler. (A floor of |mu_u| / sigma_max sds per posterior
               eigendirection u comes from starting at N(0, sigma_max^2 I); see
               sgm.core.gaussian.ode_output_law.)
  std ratio    ensemble std / exact std: mean over pixels and its 5-95 % range over pixels
               (MC standard error 1/sqrt(2M) per pixel).
  cover90      fraction of members inside the exact central 90 % interval (MC SE
               sqrt(0.09/M)).
  ms/member    wall time per member of the whole sampler with this (cheap, dense-matrix)
               denoiser; with a network multiply NFE by its cost instead.

Usage: .venv/bin/python benchmarks/sampler_steps.py [--grid 16] [--operator coarsen] ...
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sgm.core.gaussian import (
    GaussianRandomField,
    conditional_denoiser,
    exact_posterior,
    oracle_statistics,
)
from sgm.core.observation import build_operator
from sgm.core.sampler import edm_sampler, member_seed
from sgm.core.schedule import karras_sigmas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=16, help="grid size H = W")
    parser.add_argument("--length-scale", type=float, default=3.0, help="GRF length (pixels)")
    parser.add_argument("--operator", default="coarsen", choices=["coarsen", "sparse"])
    parser.add_argument("--noise-std", type=float, default=0.05)
    parser.add_argument("--members", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--churn", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--s-tmin", type=float, default=0.05, help="churn window (if churn>0)")
    parser.add_argument("--s-tmax", type=float, default=50.0, help="churn window (if churn>0)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    grid = (args.grid, args.grid)
    prior = GaussianRandomField(grid, length_scale=args.length_scale)
    cfg = {"kind": "coarsen", "factor": 4}
    if args.operator == "sparse":
        cfg = {"kind": "sparse", "fraction": 0.1, "seed": 0}
    op = build_operator(cfg, np.arange(args.grid), np.arange(args.grid))
    rng = np.random.default_rng(0)
    a = op.matrix()
    y = a @ prior.sample(1, rng).reshape(-1) + args.noise_std * rng.standard_normal(a.shape[0])
    mean, cov = exact_posterior(prior, a, args.noise_std, y)
    std = np.sqrt(np.diag(cov))
    denoise = conditional_denoiser(torch.as_tensor(mean), cov)

    print(
        f"GRF {grid[0]}x{grid[1]}, l = {args.length_scale} px, nu = 1.5; {op!r}, "
        f"noise std {args.noise_std}; exact posterior std in [{std.min():.3f}, {std.max():.3f}]; "
        f"M = {args.members} members (std-ratio SE {1 / np.sqrt(2 * args.members):.3f}, "
        f"coverage SE {np.sqrt(0.09 / args.members):.4f}); sigma in [0.002, 80], rho = 7."
    )
    header = (
        "| steps | churn | NFE | mean err/MC | std ratio | std ratio 5-95 % | cover90 | ms/member |"
    )
    print(header)
    print("|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|")
    for churn in args.churn:
        for steps in args.steps:
            sigmas = karras_sigmas(steps)
            window = {"s_tmin": args.s_tmin, "s_tmax": args.s_tmax} if churn > 0 else {}
            seeds = [member_seed(0, 0, m) for m in range(args.members)]
            start = time.perf_counter()
            samples = torch.cat(
                [
                    edm_sampler(
                        denoise,
                        (1, *grid),
                        seeds[i : i + args.batch],
                        sigmas,
                        churn=churn,
                        **window,
                    )  # fmt: skip
                    for i in range(0, args.members, args.batch)
                ]
            )
            elapsed = time.perf_counter() - start
            st = oracle_statistics(samples, mean, std, level=0.9)
            lo, hi = np.quantile(st.std_ratio, [0.05, 0.95])
            nfe = 2 * steps - 1
            print(
                f"| {steps} | {churn:g} | {nfe} | {np.sqrt(np.mean(st.mean_z**2)):.2f} "
                f"| {st.std_ratio.mean():.3f} | {lo:.3f}-{hi:.3f} | {st.coverage.mean():.3f} "
                f"| {1e3 * elapsed / args.members:.2f} |"
            )


if __name__ == "__main__":
    main()
