"""Stage ``tune-sampler``: ``model.pt`` + validation fields and observations → ``tuning.json``.

Sampling costs network evaluations (NFE) and nothing else, so the only choice that matters is
the solver and its step count. This stage samples the validation split with a high-NFE
reference (``tune.reference``, by default the order-3 multistep solver with 32 steps) and with
each candidate in order of cost, every one from the same initial noise (the same seeds), and
keeps the cheapest candidate whose ensemble matches the reference: fair CRPS against the
validation truth within ``tune.crps_tolerance`` and spread within ``tune.spread_tolerance``
(relative, every variable). ``sample --tuning`` then uses that choice (``steps: auto``); the
report shows it with the whole curve. If no candidate matches, the reference is chosen. A prior
model is tuned with its zero-shot method on the observations of ``obs.zarr``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgm.config import TuneStageSettings, validate
from sgm.core import metrics
from sgm.core.device import pick_device
from sgm.core.observation import ObservationModel
from sgm.core.posterior import ConditionalModel
from sgm.core.solvers import Solver
from sgm.core.tiling import Tiling
from sgm.core.zero_shot import PriorModel
from sgm.io import layout
from sgm.io.atomic import atomic_write_text
from sgm.io.modelfile import read_model
from sgm.io.stores import StoreError, open_store

log = logging.getLogger(__name__)


def ensemble_scores(ens: np.ndarray, truth: np.ndarray) -> dict[str, list[float]]:
    """Per variable: fair CRPS against the truth and spread (root mean member variance).

    ens[T, M, C, H, W], truth[T, C, H, W].
    """
    crps, spread = [], []
    for c in range(truth.shape[1]):
        e = ens[:, :, c].transpose(1, 0, 2, 3).astype(np.float64)
        crps.append(float(metrics.crps_fair(e, truth[:, c].astype(np.float64)).mean()))
        spread.append(float(np.sqrt(e.var(axis=0, ddof=1).mean())))
    return {"crps": crps, "spread": spread}


def tune_sampler(
    model_path: str | Path,
    fields_path: str | Path,
    obs_path: str | Path,
    out: str | Path,
    settings: dict[str, Any],
    progress: bool = True,
) -> dict[str, Any]:
    """Choose the cheapest solver and step count that matches the reference; write ``out``."""
    cfg: TuneStageSettings = validate(TuneStageSettings, settings, "--settings")
    tune = cfg.tune
    device = pick_device(cfg.device)
    model_file = read_model(model_path)
    fields, obs_store = open_store(fields_path), open_store(obs_path)
    layout.check_same_spec(model_file.meta["spec"], {str(fields_path): layout.spec_of(fields),
                                                     str(obs_path): layout.spec_of(obs_store)})
    meta = model_file.meta
    prior = meta.get("kind", "conditional") == "prior"
    if prior:
        model = PriorModel.from_state(model_file.weights, meta, device)
        observation = ObservationModel.from_dict(layout.observation_description(obs_store))
        method = cfg.method if cfg.method != "auto" else "mmps"
    else:
        model = ConditionalModel.from_state(model_file.weights, meta, device)
    index = layout.split_index(obs_store, "val")[: tune.max_times]
    if index.size == 0:
        raise StoreError(f"{obs_path}: has no validation times to tune the sampler on")
    times = obs_store.time.values[index]
    truth_index = fields.indexes["time"].get_indexer(times)
    if (truth_index < 0).any():
        raise StoreError(f"{fields_path}: lacks validation times of {obs_path}")
    truth = layout.stack(fields, model.variables, truth_index)
    y = torch.from_numpy(layout.stack(obs_store, model.variables, index))
    base = cfg.model_dump()
    tiling = Tiling.from_settings(base)

    def run(choice: dict[str, Any]) -> tuple[Solver, dict[str, Any], np.ndarray]:
        solver = Solver.from_settings(base, choice)
        start = time.perf_counter()
        if prior:
            ens = model.sample(observation, y, index, tune.members, solver, method, cfg.seed,
                               cfg.batch_size, cfg.cg_iterations, cfg.dps_step, progress,
                               tiling, cfg.covariance_sigma)
        else:
            ens = model.sample(y, index, tune.members, solver, cfg.seed, cfg.batch_size,
                               progress, tiling)
        seconds = time.perf_counter() - start
        scores = ensemble_scores(ens.numpy(), truth)
        row = {**solver.choice(), **scores, "seconds": round(seconds, 3),
               "seconds_per_member": seconds / (len(index) * tune.members)}
        log.info("tune %s: CRPS %s, spread %s, %.1f s", solver.label(),
                 [f"{v:.4g}" for v in scores["crps"]], [f"{v:.4g}" for v in scores["spread"]],
                 seconds)
        return solver, row, ens

    _, reference, _ = run(tune.reference.model_dump())
    candidates = sorted((c.model_dump() for c in tune.candidates),
                        key=lambda c: Solver.from_settings(base, c).nfe)
    curve, chosen = [], None
    for choice in candidates:
        _, row, _ = run(choice)
        row["crps_rel"] = [a / b - 1 for a, b in zip(row["crps"], reference["crps"], strict=True)]
        row["spread_rel"] = [a / b - 1 for a, b in zip(row["spread"], reference["spread"],
                                                       strict=True)]
        row["ok"] = (max(map(abs, row["crps_rel"])) <= tune.crps_tolerance
                     and max(map(abs, row["spread_rel"])) <= tune.spread_tolerance)
        curve.append(row)
        if row["ok"]:
            chosen = {k: row[k] for k in ("solver", "order", "steps", "nfe")}
            break
    if chosen is None:
        log.warning("no candidate matched the reference within the tolerances: using it")
        chosen = {k: reference[k] for k in ("solver", "order", "steps", "nfe")}
    result = {
        "spec": model_file.meta["spec"],
        "model_hash": model_file.digest,
        "split": "val",
        "n_times": int(index.size),
        "members": tune.members,
        "variables": model.variables,
        "tolerances": {"crps": tune.crps_tolerance, "spread": tune.spread_tolerance},
        "reference": reference,
        "curve": curve,
        "chosen": chosen,
    }
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    log.info("tune-sampler %s: chose %s", result["spec"], Solver.from_settings(base, chosen)
             .label())
    return result
