"""One-step sampling of the HadCM3 demo by Score-of-Mixture Distillation: CRPS, spread and speed
beside the tuned multistep sampler (not a test).

Distils the demo's trained conditional model (``sgm distill``'s stage, ``sgm.stages.distill``)
for --steps updates or until --time-budget seconds have passed, whichever comes first (the run
goes in chunks of --chunk steps and resumes exactly from its checkpoints in --workdir, so a
rerun with a larger budget continues where it stopped). Then it samples the test years of
``obs.zarr`` (40 years x --members members) with the one-step generator (1 network call per
member) and with the multistep sampler (dpm order 3, 10 steps, 10 calls per member) from the
same seed, and prints, against the true fields of those years (physical units):

  fair CRPS        mean fair CRPS (Ferro 2014) over years and pixels; the issue asks the one-step
                   ensemble to be within 10 % of the multistep one.
  spread/skill     sqrt((M+1)/M mean s^2) / RMSE(ensemble mean) (Fortin et al. 2014); 1 is
                   calibrated; the issue asks >= 0.85.
  RMSE             of the ensemble mean.
  sample s         wall time of the whole ensemble (same threads, same batch size); the issue
                   asks the one-step sampler to be >= 10 x faster. Both samplers run the same
                   network (1 vs 10 calls per member), so the ratio is about 10 by construction.

On fields with a known Gaussian prior (the workflow's data_specs/gaussian_oracle.yaml, e.g.
--model results/gaussian_oracle/<model>/model.pt --fields results/gaussian_oracle/fields.zarr
--obs results/gaussian_oracle/obs.zarr: a TRAINED teacher on the oracle) each row also gives the
std ratio, the exact-90 % coverage and CRPS / exact-posterior CRPS (sgm.core.verification).

Usage: .venv/bin/python benchmarks/distill_demo.py [--model results/hadcm3_tas_na/tiny/model.pt]
    [--fields results/hadcm3_tas_na/fields.zarr] [--obs results/hadcm3_tas_na/obs.zarr]
    [--workdir results/hadcm3_tas_na/tiny/distill_bench] [--time-budget 540] [--threads 2]
    [--settings '{"batch_size": 16, "sigma_g": 2.5}']
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from sgm.core import metrics
from sgm.core.device import pick_device
from sgm.core.gaussian import GaussianRandomField
from sgm.core.observation import ObservationModel
from sgm.core.onestep import OneStepModel
from sgm.core.posterior import ConditionalModel
from sgm.core.solvers import Solver
from sgm.core.verification import score_oracle
from sgm.io import layout
from sgm.io.modelfile import read_model, read_onestep
from sgm.io.stores import json_attr, open_store
from sgm.stages.distill import distill_stage

DEMO = Path("results/hadcm3_tas_na")


def scores(name: str, ens: np.ndarray, truth: np.ndarray, seconds: float,
           oracle: tuple[GaussianRandomField, ObservationModel, np.ndarray] | None = None
           ) -> dict[str, float]:
    """ens[T, M, C, H, W], truth[T, C, H, W] → the printed row (first variable's units)."""
    members = np.moveaxis(ens, 1, 0)  # [M, T, C, H, W]
    crps = float(metrics.crps_fair(members, truth).mean())
    ssr = metrics.spread_skill_ratio(members, truth)
    rmse = metrics.ensemble_mean_errors(members, truth)["rmse"]
    row = f"  {name:<40} {crps:10.4f} {ssr:13.3f} {rmse:8.4f} {seconds:9.2f}"
    if oracle is not None:
        prior, obs, y = oracle
        eta = obs.noise[obs.variables[0]]
        o = score_oracle(prior, obs.matrix(), eta, members[:, :, 0], truth[:, 0], y[:, 0])
        row += (f" {o['std_ratio_mean']:9.3f} {o['exact_interval_coverage']:8.3f} "
                f"{o['crps_ratio']:10.3f}")
    print(row)
    return {"crps": crps, "ssr": ssr, "rmse": rmse, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO / "tiny" / "model.pt"))
    parser.add_argument("--fields", default=str(DEMO / "fields.zarr"))
    parser.add_argument("--obs", default=str(DEMO / "obs.zarr"))
    parser.add_argument("--workdir", default=str(DEMO / "tiny" / "distill_bench"),
                        help="checkpoints, loss log and onestep.pt of this benchmark")
    parser.add_argument("--settings", type=json.loads, default={},
                        help="JSON: distillation settings (sgm.stages.distill.DistillSettings)")
    parser.add_argument("--steps", type=int, default=100_000, help="at most this many steps")
    parser.add_argument("--time-budget", type=float, default=540.0,
                        help="stop distilling after this many seconds (default 540)")
    parser.add_argument("--chunk", type=int, default=50, help="steps between budget checks")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=64, help="sampling batch")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    workdir = Path(args.workdir)
    out = workdir / "onestep.pt"
    settings = {"device": args.device, **args.settings}
    t0 = time.perf_counter()
    done = 0
    while done < args.steps and time.perf_counter() - t0 < args.time_budget:
        done = min(args.steps, done + args.chunk)
        settings["steps"] = done
        distill_stage(args.model, args.fields, args.obs, out, settings, workdir=workdir,
                      progress=False)
        done = read_onestep(out).meta["onestep"]["step"]  # a resumed run may be further on
    wall = time.perf_counter() - t0
    onestep_file = read_onestep(out)
    print(f"distilled {args.model}: {onestep_file.meta['onestep']['step']} steps "
          f"({wall:.0f} s this run); loss log {workdir / 'distill_loss.csv'}")

    device = pick_device(args.device)
    teacher_file = read_model(args.model)
    obs_store = open_store(args.obs)
    fields = open_store(args.fields)
    variables = list(teacher_file.meta["variables"])
    index = layout.split_index(obs_store, args.split)
    y = torch.from_numpy(layout.stack(obs_store, variables, index))
    truth = layout.stack(fields, variables,
                         fields.indexes["time"].get_indexer(obs_store.time.values[index]))
    print(f"  {len(index)} {args.split} times x {args.members} members, {args.threads} "
          f"thread(s), batch {args.batch_size}\n")
    oracle = None
    if layout.GAUSSIAN_PRIOR in fields.attrs:
        prior = GaussianRandomField.from_dict(json_attr(fields, layout.GAUSSIAN_PRIOR))
        obs = ObservationModel.from_dict(layout.observation_description(obs_store))
        oracle = (prior, obs, y.numpy())
    print(f"  {'sampler':<40} {'fair CRPS':>10} {'spread/skill':>13} {'RMSE':>8} "
          f"{'sample s':>9}" + (f" {'std ratio':>9} {'cover90':>8} {'CRPS/exact':>10}"
                                if oracle else ""))

    multistep = Solver("dpm", steps=10, order=3)
    teacher = ConditionalModel.from_state(teacher_file.weights, teacher_file.meta, device)
    start = time.perf_counter()
    ens = teacher.sample(y, index, args.members, multistep, args.seed, args.batch_size).numpy()
    ref = scores(f"multistep {multistep.label()}", ens, truth, time.perf_counter() - start,
                 oracle)

    onestep = OneStepModel.from_state(onestep_file.weights, onestep_file.meta, device)
    start = time.perf_counter()
    ens = onestep.sample(y, index, args.members, args.seed, args.batch_size).numpy()
    one = scores("SMD one-step (1 NFE)", ens, truth, time.perf_counter() - start, oracle)

    collapsed = OneStepModel(ConditionalModel.from_state(teacher_file.weights,
                                                         teacher_file.meta, device),
                             onestep.solver.sigma_g)
    start = time.perf_counter()
    ens = collapsed.sample(y, index, args.members, args.seed, args.batch_size).numpy()
    scores("teacher at sigma_g (no SMD)", ens, truth, time.perf_counter() - start, oracle)

    crps_ok = one["crps"] <= 1.10 * ref["crps"]
    ssr_ok = one["ssr"] >= 0.85
    speed = ref["seconds"] / one["seconds"]
    print(f"\n  one-step / multistep fair CRPS {one['crps'] / ref['crps']:.3f} (<= 1.10: "
          f"{'yes' if crps_ok else 'NO'}), spread/skill {one['ssr']:.3f} (>= 0.85: "
          f"{'yes' if ssr_ok else 'NO'}), {speed:.1f} x faster (>= 10: "
          f"{'yes' if speed >= 10 else 'NO'})")


if __name__ == "__main__":
    main()
