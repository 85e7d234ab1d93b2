"""The statisticians' baselines on the Gaussian oracle: how close is each to the exact posterior?

A Gaussian random field prior (periodic, Matern-3/2) observed through 4x4 block means or 10 %
of its pixels with Gaussian noise: the exact posterior is known, so the CRPS a baseline
reaches on test fields can be set beside the best possible one. Rows:

  exact posterior     N(m, s^2) from ``sgm.core.gaussian.exact_posterior``.
  gauss true cov      the Gaussian baseline given the true prior (equals the exact posterior).
  gauss n=N           the Gaussian baseline fitted on N training fields, shrinkage alpha
                      chosen on the validation fields by the closed-form CRPS.
  clim anomaly n=N    climatology-anomaly interpolation mu + b(y - A mu), mu the mean of the
                      smallest training set (point forecast; for this stationary prior mu is
                      nearly flat, so it is close to the plain baseline).
  plain baseline      the operator's baseline interpolation b(y) (point forecast).

Columns:
  CRPS        mean CRPS over test fields and pixels: closed form for a Gaussian N(m, s^2),
              |x - pred| (= MAE) for a point forecast.
  ens CRPS    fair CRPS of ``--members`` members drawn from the posterior (what the
              evaluation scores); close to CRPS up to Monte-Carlo error.
  RMSE        of the posterior mean (or point forecast).
  SSR         spread-skill ratio of the members (1 for a calibrated ensemble).
  alpha       the chosen shrinkage.
  s/exact     mean over pixels of the posterior std over the exact one.

Usage: .venv/bin/python benchmarks/baselines_oracle.py [--operator coarsen sparse]
    [--train 2000 180] [--grid 16] [--noise-std 0.1] [--members 50]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from torch import Tensor

from sgm.core import metrics
from sgm.core.baselines import climatology_anomaly, crps_gaussian, select_shrinkage
from sgm.core.gaussian import GaussianRandomField, exact_posterior
from sgm.core.gaussian_baseline import GaussianPosterior, GaussianPrior
from sgm.core.observation import ObservationModel

OPERATORS = {"coarsen": {"kind": "coarsen", "factor": 4},
             "sparse": {"kind": "sparse", "fraction": 0.1, "seed": 0}}


def _row(name: str, crps: float, rmse: float, ens: Tensor | None = None,
         truth: Tensor | None = None, alpha: str = "", ratio: float = math.nan) -> None:
    ens_crps = ssr = math.nan
    if ens is not None and truth is not None:
        ens_crps = float(metrics.crps_fair(ens.numpy(), truth.numpy()).mean())
        ssr = metrics.spread_skill_ratio(ens.numpy(), truth.numpy())
    cells = [f"{v:{w}.{p}f}" if not math.isnan(v) else f"{'-':>{w}}"
             for v, w, p in ((crps, 8, 4), (ens_crps, 9, 4), (rmse, 8, 4), (ssr, 6, 3))]
    last = f"{ratio:8.3f}" if not math.isnan(ratio) else f"{'-':>8}"
    print(f"  {name:<18} {' '.join(cells)} {alpha:>6} {last}")


def _posterior_row(name: str, post: GaussianPosterior, truth: Tensor, exact_std: np.ndarray,
                   members: int, alpha: str = "") -> None:
    crps = float(crps_gaussian(post.mean, post.std, truth).mean())
    rmse = float(((post.mean - truth) ** 2).mean().sqrt())
    ens = post.sample(members, seed=0)
    ratio = float((post.std.reshape(-1).numpy() / exact_std).mean())
    _row(name, crps, rmse, ens, truth, alpha, ratio)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--operator", nargs="+", default=list(OPERATORS), choices=list(OPERATORS))
    parser.add_argument("--train", type=int, nargs="+", default=[2000, 180],
                        help="training-set sizes to fit the Gaussian baseline on")
    parser.add_argument("--val", type=int, default=100, help="validation fields")
    parser.add_argument("--test", type=int, default=100, help="test fields")
    parser.add_argument("--grid", type=int, default=16, help="grid size H = W")
    parser.add_argument("--length-scale", type=float, default=3.0, help="GRF length (pixels)")
    parser.add_argument("--noise-std", type=float, default=0.1)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    shape = (args.grid, args.grid)
    grf = GaussianRandomField(shape, length_scale=args.length_scale, mean=0.5)
    rng = np.random.default_rng(0)

    def fields(n: int) -> Tensor:
        return torch.as_tensor(grf.sample(n, rng))[:, None]

    val, test = fields(args.val), fields(args.test)
    trains = {n: fields(n) for n in args.train}
    axis = np.arange(args.grid, dtype=float).tolist()
    for kind in args.operator:
        obs = ObservationModel.from_dict({"operator": OPERATORS[kind], "variables": ["x"],
                                          "noise_std": {"x": args.noise_std},
                                          "grid": {"lat": axis, "lon": axis}})
        gen = torch.Generator().manual_seed(1)
        val_y, y = obs.sample(val, gen), obs.sample(test, gen)
        mean, cov = exact_posterior(grf, obs.matrix(), args.noise_std,
                                    y.reshape(args.test, -1).numpy())
        std = np.sqrt(np.diag(cov))
        truth = test.reshape(args.test, -1)
        print(f"\n{kind}: {obs.obs_shape} observations, noise {args.noise_std:g}, "
              f"{args.test} test fields (expected exact CRPS s/sqrt(pi) = "
              f"{std.mean() / math.sqrt(math.pi):.4f})")
        print(f"  {'':<18} {'CRPS':>8} {'ens CRPS':>9} {'RMSE':>8} {'SSR':>6} {'alpha':>6} "
              f"{'s/exact':>8}")
        exact_crps = crps_gaussian(torch.as_tensor(mean), torch.as_tensor(std), truth)
        _row("exact posterior", float(exact_crps.mean()),
             float(((torch.as_tensor(mean) - truth) ** 2).mean().sqrt()), ratio=1.0)
        true = GaussianPrior.from_covariance(torch.full((1, *shape), grf.mean, dtype=torch.float64),
                                             torch.as_tensor(grf.covariance())[None])
        _posterior_row("gauss true cov", true.posterior(obs, y), test, std, args.members)
        for n, train in trains.items():
            sel = select_shrinkage(train, val, val_y, obs)
            _posterior_row(f"gauss n={n}", sel.prior.posterior(obs, y), test, std, args.members,
                           f"{sel.shrinkage[0]:g}")
        n_clim = min(trains)
        clim = climatology_anomaly(obs, trains[n_clim].mean(0), y)
        for name, pred in ((f"clim anomaly n={n_clim}", clim), ("plain baseline", obs.baseline(y))):
            _row(name, float((pred - test).abs().mean()), float(((pred - test) ** 2).mean().sqrt()))


if __name__ == "__main__":
    main()
