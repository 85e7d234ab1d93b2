"""One-step posterior sampling by Score-of-Mixture Distillation on the Gaussian oracle (not a test).

A periodic Matern-3/2 Gaussian random field (16 x 16, length 3 pixels) observed through 4 x 4
block means with noise 0.05: the exact posterior N(m(y), S) is known for every y, and so is its
exact denoiser, the teacher (``sgm.core.distill_oracle``). A one-step generator
G(z, y) = D_T(s_g z; s_g, y) + c_out F(z, y), with F a U-Net whose output starts at zero (so
G starts as the teacher at s_g: at the default s_g = 2.5 an ensemble with about 0.37 of the
posterior spread; at s_g = 80, the reference code's, the posterior mean), and the
alpha-conditioned mixture denoiser (same form, one more input channel) are trained by SMD
(``sgm.core.distill``, ``sgm.core.distillation``) on fresh prior draws and observation noise,
for --steps updates or until --time-budget seconds have passed, whichever comes first. Then
--members members for each of --test fresh observations are drawn with ONE network call each
and compared with the exact posterior, beside the tuned multistep sampler (dpm order 3,
10 steps) with the same (exact) teacher and the generator before distillation (the teacher at
s_g). With a TRAINED teacher (a model.pt of the workflow's data_specs/gaussian_oracle.yaml) use
benchmarks/distill_demo.py, which prints the same oracle columns for such a model.

Columns:
  std ratio    member std / exact std, per pixel over the test times, mean over pixels (1 is
               right; the issue asks for 1 +- 0.10 at NFE = 1).
  cover90      fraction of members inside the exact central 90 % interval (0.90 is right).
  CRPS/exact   mean fair CRPS of the members against the truth over the expected CRPS of the
               exact posterior (>= 1 in expectation; the issue asks for <= 1.15; a collapsed
               ensemble, the posterior mean, gets sqrt(2) = 1.41).
  mean err     RMS (member mean - exact mean) / mean exact std (~1/sqrt(M) for exact samples).
  ms/member    wall time per member (one core unless --threads). The exact teacher is a dense
               256 x 256 matrix product, far cheaper than a network: the generator costs one
               U-Net call per member; a U-Net teacher would cost 10 such calls per member with
               the multistep sampler (see benchmarks/distill_demo.py for that comparison).

Usage: .venv/bin/python benchmarks/distill_oracle.py [--time-budget 540] [--steps 100000]
    [--base-channels 16] [--batch-size 32] [--members 200] [--test 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from sgm.config import DistillSettings
from sgm.core import metrics
from sgm.core.distill_oracle import CoarsenOracle, coarsen_oracle, students
from sgm.core.distillation import DistillRow, distill
from sgm.core.onestep import OneStep
from sgm.core.sampler import member_seed
from sgm.core.solvers import Solver
from sgm.core.training import MemoryCheckpoints, MemoryLog

# The stage's validated defaults (sgm distill), run on the CPU, logged every 50 steps.
DEFAULTS: dict[str, Any] = {**DistillSettings().model_dump(), "steps": 100_000, "device": "cpu",
                            "log_every": 50}


def _print_row(row: DistillRow) -> None:
    print(f"    step {row.step:6d}  score loss {row.score_loss:.4f}  generator "
          f"{row.generator_loss:.3g}  {row.wall_s:6.0f} s", flush=True)



def draw(sampler: Any, denoiser: nn.Module, cond: Tensor, members: int, batch: int = 256
         ) -> Tensor:
    """Members Tensor[M, T, H*W] for the T conditions in ``cond``."""
    t_count = cond.shape[0]
    pairs = [(t, m) for t in range(t_count) for m in range(members)]
    out = torch.empty(members, t_count, cond[0, 0].numel())
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        rows = torch.tensor([t for t, _ in chunk])
        seeds = [member_seed(0, t, m) for t, m in chunk]
        c = cond[rows]
        with torch.no_grad():
            x = sampler.sample(lambda x, s, c=c: denoiser(x, s, c), (1, *cond.shape[2:]), seeds)
        for (t, m), member in zip(chunk, x, strict=True):
            out[m, t] = member.reshape(-1)
    return out


def evaluate(name: str, sampler: Any, denoiser: nn.Module, problem: CoarsenOracle,
             test: tuple[Tensor, Tensor, Tensor], members: int) -> dict[str, float]:
    truth, cond, mean = test
    t0 = time.perf_counter()
    ens = draw(sampler, denoiser, cond, members)
    ms = 1000 * (time.perf_counter() - t0) / (members * cond.shape[0])
    res = metrics.oracle_metrics(ens.numpy(), mean.numpy(), problem.exact_std,
                                 truth.reshape(truth.shape[0], -1).numpy())
    res["ms_per_member"] = ms
    print(f"  {name:<30} {res['std_ratio_mean']:9.3f} {res['exact_interval_coverage']:8.3f} "
          f"{res['crps_ratio']:10.3f} {res['mean_error_over_std']:9.3f} {ms:10.3f}")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-budget", type=float, default=540.0,
                        help="stop distilling after this many seconds (default 540)")
    parser.add_argument("--chunk", type=int, default=100, help="steps between budget checks")
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--noise-std", type=float, default=0.05)
    parser.add_argument("--base-channels", type=int, default=16, help="U-Net width (tiny)")
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--test", type=int, default=20, help="test observations")
    parser.add_argument("--threads", type=int, default=1)
    for key, value in DEFAULTS.items():
        if key in ("device", "checkpoint_every"):
            continue
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(value, bool) else \
            type(value)
        parser.add_argument(f"--{key.replace('_', '-')}", type=kind, default=value,
                            help=f"distillation setting (default {value})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    problem = coarsen_oracle(args.grid, args.factor, noise_std=args.noise_std)
    test = problem.test_set(args.test, seed=12345)
    generator, mixture = students(problem, args.base_channels, args.seed)
    collapsed = copy.deepcopy(generator).eval()
    settings = SimpleNamespace(**{**DEFAULTS, **{k: getattr(args, k) for k in DEFAULTS
                                                 if hasattr(args, k)}})
    print(f"coarsen x{args.factor} on {args.grid}x{args.grid}, noise {args.noise_std:g}; "
          f"exact posterior std {problem.exact_std.mean():.4f} (mean over pixels)")
    print(f"  distilling: {vars(settings)}")
    store, losses = MemoryCheckpoints(), MemoryLog(_print_row)
    t0 = time.perf_counter()
    target = 0
    result = None
    while target < args.steps and time.perf_counter() - t0 < args.time_budget:
        target = min(args.steps, target + args.chunk)
        settings.steps, settings.checkpoint_every = target, target
        result = distill(problem.teacher, generator, mixture, problem.fields,
                         problem.make_pair, settings, store, losses, progress=False)
    wall = time.perf_counter() - t0
    assert result is not None
    print(f"  distilled {result.step} steps in {wall:.0f} s ({wall / max(1, result.step):.3f} "
          "s/step)\n")
    print(f"  {'sampler':<30} {'std ratio':>9} {'cover90':>8} {'CRPS/exact':>10} "
          f"{'mean err':>9} {'ms/member':>10}")
    onestep = OneStep(settings.sigma_g)
    evaluate("multistep dpm-3, 10 steps", Solver("dpm", steps=10, order=3), problem.teacher,
             problem, test, args.members)
    evaluate("teacher at sigma_g (NFE 1)", onestep, collapsed, problem, test, args.members)
    evaluate("SMD one-step, raw", onestep, result.raw, problem, test, args.members)
    res = evaluate("SMD one-step, EMA (NFE 1)", onestep, result.ema, problem, test,
                   args.members)
    ok_std = abs(res["std_ratio_mean"] - 1) <= 0.10
    ok_crps = res["crps_ratio"] <= 1.15
    print(f"\n  issue criteria at NFE = 1: std ratio within +-10 % {'yes' if ok_std else 'NO'}, "
          f"CRPS/exact <= 1.15 {'yes' if ok_crps else 'NO'}"
          f"{'' if math.isfinite(res['crps_ratio']) else ' (not finite)'}")


if __name__ == "__main__":
    main()
