"""Tail scores on the heavy-tailed oracle: what an exact marginal, an interpolated observation
and its quantile mapping score (not a test).

Truth: the censored power-transformed Gaussian random field of ``sgm.core.heavy_tailed``,
P = s max(0, z + c)^gamma in mm/day (defaults s = 4, c = -0.3, gamma = 3 on a periodic grid,
Matern-3/2 latent with length scale 3 pixels), whose marginal is known exactly. Observation:
block means over factor x factor pixels plus Gaussian noise (mm/day). First the exact
marginal: dry fraction, 99th and 99.9th percentiles, return levels. Then, on the test fields:

  exact marginal   M independent oracle fields per test field: the right marginal and
                   nothing else (they ignore the observation). Pooled W1 and quantile
                   errors are Monte-Carlo error only; per-field errors are large, and CSI is
                   0: the exceedance probability stays near the climatological rate, below
                   1/2, so no event is ever forecast.
  bicubic          the block-mean operator's baseline, bicubic interpolation of y (point
                   forecast): drizzle everywhere, damped peaks.
  QM(bicubic)      empirical quantile mapping of it (``sgm.core.quantile_mapping``), pooled,
                   fitted on the training pairs, lower bound 0: the right marginal, the
                   bicubic's placement.

Columns (``sgm.core.tail_scores``): dry = fraction of values = 0; q99 / q99.9 err = pooled
quantile minus the truth's (mm/day); pk99.9 = mean over test fields of |99.9th percentile
error| per field (peak error); W1 = pooled pixel-value Wasserstein-1 (mm/day), W1/f per
field; CSI and freq. bias (B) of "P > t" at the thresholds t (the ensemble forecasts the
event where at least half its members exceed t); BS = Brier score at the middle threshold.
The test truth's own pooled percentiles carry sampling error (its values are spatially
correlated): it is printed beside the exact value, and quantile errors below that
difference are noise.

Usage: .venv/bin/python benchmarks/extremes_oracle.py [--grid 32] [--factor 4]
    [--noise-std 0.5] [--train 500] [--test 100] [--members 20]
    [--threshold-levels 0.9 0.99 0.999]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sgm.core.heavy_tailed import CensoredPowerField
from sgm.core.operators import Coarsen
from sgm.core.quantile_mapping import QuantileMapping
from sgm.core.tail_scores import tail_scores


def _row(name: str, ens: np.ndarray, truth: np.ndarray, thresholds: list[float]) -> None:
    s = tail_scores(ens, truth, thresholds)
    q, w = s["quantiles"], s["wasserstein_1"]
    cells = [f"{np.mean(ens == 0):6.3f}", f"{q['q99']['error']:+8.2f}",
             f"{q['q99.9']['error']:+8.2f}", f"{q['q99.9']['per_field_mae']:7.2f}",
             f"{w['pooled']:6.3f}", f"{w['per_field']:6.3f}"]
    cells += [f"{c['csi']:5.3f} {c['bias']:5.2f}" for c in s["csi"]]
    cells.append(f"{s['reliability'][len(thresholds) // 2]['brier']:7.4f}")
    print(f"  {name:<16} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--grid", type=int, default=32, help="grid size H = W")
    parser.add_argument("--factor", type=int, default=4, help="block-mean factor")
    parser.add_argument("--length-scale", type=float, default=3.0, help="latent GRF length")
    parser.add_argument("--noise-std", type=float, default=0.5, help="on block means, mm/day")
    parser.add_argument("--train", type=int, default=500, help="training fields (for QM)")
    parser.add_argument("--test", type=int, default=100, help="test fields")
    parser.add_argument("--members", type=int, default=20, help="exact-marginal members")
    parser.add_argument("--threshold-levels", type=float, nargs="+", default=[0.9, 0.99, 0.999],
                        help="event thresholds as quantile levels of the exact marginal")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    oracle = CensoredPowerField((args.grid, args.grid), args.length_scale)
    tr = oracle.transform
    rng = np.random.default_rng(args.seed)
    op = Coarsen(oracle.shape, args.factor)

    def observe(p: np.ndarray) -> np.ndarray:
        y = op.apply(torch.as_tensor(p)).numpy()
        noisy = torch.as_tensor(y + args.noise_std * rng.standard_normal(y.shape))
        return op.baseline(noisy).numpy()

    train, test = oracle.sample(args.train, rng), oracle.sample(args.test, rng)
    base_train, base_test = observe(train), observe(test)
    thresholds = [float(oracle.quantile(u)) for u in args.threshold_levels]

    print(f"oracle P = {tr.scale:g} max(0, z {tr.offset:+g})^{tr.exponent:g} mm/day on "
          f"{args.grid}x{args.grid}, latent length scale {args.length_scale:g}")
    print(f"  exact dry fraction Phi(-c) = {oracle.zero_fraction:.4f}  "
          f"(train sample {np.mean(train == 0):.4f})")
    for u in (0.99, 0.999):
        print(f"  exact {100 * u:g}th percentile {float(oracle.quantile(u)):8.3f} mm/day  "
              f"(train sample {np.quantile(train, u):8.3f})")
    print("  return levels (pixel values): "
          + ", ".join(f"R={r:g}: {float(oracle.return_level(r)):.1f}" for r in (1e2, 1e3, 1e4)))
    print(f"  test truth: 99th {np.quantile(test, 0.99):.3f}, 99.9th {np.quantile(test, 0.999):.3f}"
          " mm/day (its sampling error)")
    print("  thresholds t = " + ", ".join(f"{t:.2f}" for t in thresholds) + " mm/day "
          f"(levels {', '.join(f'{u:g}' for u in args.threshold_levels)})")
    print(f"\nobservation: {args.factor}x{args.factor} block means + N(0, {args.noise_std:g}^2); "
          f"{args.train} training, {args.test} test fields")
    head = " ".join(f"{'CSI':>5} {'B':>5}" for _ in thresholds)
    print(f"  {'':<16} {'dry':>6} {'q99 err':>8} {'q99.9err':>8} {'pk99.9':>7} {'W1':>6} "
          f"{'W1/f':>6} {head} {'BS':>7}")
    members = oracle.sample(args.members * args.test, rng).reshape(args.members, args.test,
                                                                  *oracle.shape)
    qm = QuantileMapping.fit(base_train, train, lower=0.0)
    _row("exact marginal", members, test, thresholds)
    _row("bicubic", base_test[None], test, thresholds)
    _row("QM(bicubic)", qm(base_test)[None], test, thresholds)


if __name__ == "__main__":
    main()
