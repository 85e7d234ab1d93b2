"""Zero-shot guidance on the Gaussian oracle: calibration and cost per method (not a test).

A Gaussian random field prior with its EXACT prior denoiser, linear observations
(4x4 block means of a 16x16 field, or 10 % of its pixels) and Gaussian noise: the exact
posterior is known, so the guided denoisers of ``sgm.core.guidance`` (MMPS, several CG
iteration counts), ``sgm.core.guidance_dps`` (DPS, several step sizes) and
``sgm.core.guidance_tmpd`` (TMPD) can be run with ``edm_sampler`` (Heun ODE) and their
ensembles compared with the truth. The row "exact" drives the sampler with the exact
posterior denoiser: its errors are the sampler's own (discretisation), so a method's excess
over it is the guidance's. Each ensemble is compared with the exact law of the ODE output
from N(0, sigma_max^2 I) (``sgm.core.gaussian.ode_output_law``), as in the tests.

Columns:
  NFE/mem      prior-denoiser evaluations per member (2N - 1 for N Heun steps).
  VJP/mem      vector-Jacobian products through the prior denoiser per member (a backward
               pass each: with a network, 2-3 evaluations' worth).
  mean err/MC  RMS over pixels of (ensemble mean - exact) / (exact std / sqrt(M)); ~1 for an
               exact sampler.
  bias/sd      the largest |ensemble mean - exact| over pixels, in exact stds (MC noise
               alone gives about 3 / sqrt(M)).
  std ratio    ensemble std / exact std, mean over pixels, and its 5-95 % range over pixels
               (MC SE 1/sqrt(2M) per pixel).
  cover90      fraction of members in the exact central 90 % interval (MC SE sqrt(0.09/M)).
  ms/mem       wall time per member of the whole sampler (this cheap FFT denoiser, one
               thread); with a network, count NFE and VJP instead.

Usage:
  .venv/bin/python benchmarks/guidance_oracle.py [--operator coarsen sparse]
      [--steps 16 32 64] [--members 1000] [--mmps-cg 1 2 4 8 16] [--dps-zeta 0.1 0.3 1]
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
    ode_output_law,
    oracle_statistics,
)
from sgm.core.guidance import MMPS, GuidanceCost, GuidedDenoiser
from sgm.core.guidance_dps import DPS
from sgm.core.guidance_tmpd import TMPD
from sgm.core.operators import Coarsen, ObservationOperator, SparseMask
from sgm.core.sampler import edm_sampler, member_seed
from sgm.core.schedule import karras_sigmas


def _operator(name: str, grid: tuple[int, int]) -> ObservationOperator:
    return Coarsen(grid, 4) if name == "coarsen" else SparseMask(grid, fraction=0.1, seed=0)


def _methods(
    prior: GaussianRandomField,
    forward: Callable[[Tensor], Tensor],
    y: Tensor,
    args: argparse.Namespace,
) -> list[tuple[str, GuidedDenoiser]]:
    eta = args.noise_std
    out: list[tuple[str, GuidedDenoiser]] = [
        (f"MMPS cg={k}", MMPS(prior.denoise, forward, y, eta, cg_iterations=k))
        for k in args.mmps_cg
    ]
    out += [(f"DPS zeta={z:g}", DPS(prior.denoise, forward, y, eta, zeta=z)) for z in args.dps_zeta]
    if not args.no_tmpd:
        out.append(("TMPD", TMPD(prior.denoise, forward, y, eta)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--grid", type=int, default=16, help="grid size H = W")
    parser.add_argument("--length-scale", type=float, default=3.0, help="GRF length (pixels)")
    parser.add_argument("--operator", nargs="+", default=["coarsen", "sparse"],
                        choices=["coarsen", "sparse"])
    parser.add_argument("--noise-std", type=float, default=0.05, help="observation noise eta")
    parser.add_argument("--members", type=int, default=1000, help="ensemble size M")
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64], help="Heun steps")
    parser.add_argument("--mmps-cg", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                        help="CG iterations of the MMPS rows")
    parser.add_argument("--dps-zeta", type=float, nargs="+", default=[0.1, 0.3, 1.0],
                        help="step sizes of the DPS rows")
    parser.add_argument("--no-tmpd", action="store_true", help="skip TMPD (m products per call)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    grid = (args.grid, args.grid)
    prior = GaussianRandomField(grid, length_scale=args.length_scale)
    seeds = [member_seed(0, 0, m) for m in range(args.members)]
    print(
        f"GRF {grid[0]}x{grid[1]}, l = {args.length_scale} px, nu = 1.5, mean 0; noise std "
        f"{args.noise_std}; M = {args.members} (std-ratio SE {1 / np.sqrt(2 * args.members):.3f},"
        f" coverage SE {np.sqrt(0.09 / args.members):.4f}); Heun ODE, sigma in [0.002, 80]."
    )
    header = ("| operator | method | steps | NFE/mem | VJP/mem | mean err/MC | bias/sd "
              "| std ratio | std 5-95 % | cover90 | ms/mem |")
    print(header)
    print("|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|")
    for name in args.operator:
        op = _operator(name, grid)
        rng = np.random.default_rng(0)
        a = op.matrix()
        y = a @ prior.sample(1, rng).reshape(-1) + args.noise_std * rng.standard_normal(a.shape[0])
        mean, cov = exact_posterior(prior, a, args.noise_std, y)
        obs_shape = op.apply(torch.zeros(grid)).shape
        y_t = torch.as_tensor(y).reshape(1, *obs_shape)
        rows: list[tuple[str, Callable[[Tensor, Tensor], Tensor], GuidanceCost | None]] = [
            ("exact", conditional_denoiser(torch.as_tensor(mean), cov), None)
        ]
        rows += [(label, g, g.cost) for label, g in _methods(prior, op.apply, y_t, args)]
        for steps in args.steps:
            sigmas = karras_sigmas(steps)
            target_mean, target_cov = ode_output_law(mean, cov, float(sigmas[0]))
            target_std = np.sqrt(np.diag(target_cov))
            for label, denoise, cost in rows:
                if cost is not None:
                    cost.reset()
                start = time.perf_counter()
                samples = edm_sampler(denoise, (1, *grid), seeds, sigmas, dtype=torch.float64)
                ms = 1e3 * (time.perf_counter() - start) / args.members
                st = oracle_statistics(samples, target_mean, target_std)
                nfe, vjp = cost.per_member(args.members) if cost else (2 * steps - 1, 0)
                bias = np.abs(samples.reshape(args.members, -1).mean(0).numpy() - target_mean)
                lo, hi = np.percentile(st.std_ratio, [5, 95])
                print(
                    f"| {name} | {label} | {steps} | {nfe:.0f} | {vjp:.0f} "
                    f"| {np.sqrt(np.mean(st.mean_z**2)):.2f} | {(bias / target_std).max():.3f} "
                    f"| {st.std_ratio.mean():.3f} | {lo:.2f}-{hi:.2f} "
                    f"| {st.coverage.mean():.3f} | {ms:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
