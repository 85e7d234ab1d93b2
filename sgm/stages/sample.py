"""Stage ``sample``: ``model.pt`` + ``obs.zarr`` → ``posterior.zarr``.

For every observation time t and member m, the configured solver (``sgm.core.solvers``: the
multistep ``dpm`` by default, EDM's Heun on request) integrates from pure noise with the seed
``member_seed(seed, t, m)``, where t is the time's index in ``obs.zarr``: a member is bitwise
the same whatever the batch size or the shard it was drawn in. With ``steps: auto`` the solver
and step count come from ``sgm tune-sampler`` (``--tuning``). A conditional model samples
p(x | y) for the observation system it was trained for; a prior model samples the posterior of
whatever observation model ``obs.zarr`` describes, with a zero-shot method (MMPS by default,
DPS, TMPD; ``sgm.core.zero_shot``). The ensemble is written in physical units with dims
(time, member, lat, lon), provenance attributes and the cost per member.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from sgm import __version__
from sgm.config import SampleSettings, validate
from sgm.core.device import pick_device
from sgm.core.observation import ObservationModel
from sgm.core.onestep import OneStep, OneStepModel
from sgm.core.posterior import ConditionalModel
from sgm.core.selection import inflate, inflation_at, observation_distance
from sgm.core.solvers import Solver
from sgm.core.tiling import Tiling
from sgm.core.zero_shot import PriorModel
from sgm.io import layout
from sgm.io.cf_export import with_cf_attributes
from sgm.io.modelfile import read_model, read_onestep
from sgm.io.stores import check_output, open_store, write_store

log = logging.getLogger(__name__)


def shard_times(n_times: int, shard: int, shards: int) -> np.ndarray:
    """Indices of the times in shard ``shard`` of ``shards`` (contiguous, balanced)."""
    if not 0 <= shard < shards:
        raise ValueError(f"--shard {shard}: not in 0..{shards - 1} (--shards {shards})")
    return np.array_split(np.arange(n_times), shards)[shard]


def read_tuning(path: str | Path) -> dict[str, Any]:
    """The choice of ``sgm tune-sampler`` ({solver, order, steps, nfe})."""
    try:
        tuning = json.loads(Path(path).read_text(encoding="utf-8"))
        choice = tuning["chosen"]
        return {k: choice[k] for k in ("solver", "order", "steps")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a tuning file written by sgm tune-sampler "
                         f"({exc.__class__.__name__}: {exc})") from None


def sample_stage(
    model_path: str | Path,
    obs_path: str | Path,
    out: str | Path,
    settings: dict[str, Any],
    shard: tuple[int, int] = (0, 1),
    split: str = "test",
    progress: bool = True,
    tuning: str | Path | None = None,
) -> Path:
    """Draw the posterior ensemble for the ``split`` times of ``obs.zarr`` (``all``: every time)."""
    cfg: SampleSettings = validate(SampleSettings, settings, "--settings")
    out = check_output(out)
    onestep = cfg.method == "onestep"  # the solver settings (and any tuning) do not apply
    if cfg.steps == "auto" and tuning is None and not onestep:
        raise ValueError("--settings: steps: auto needs --tuning (the output of sgm "
                         "tune-sampler)")
    tiling = Tiling.from_settings(cfg.model_dump())
    device = pick_device(cfg.device)
    model_file = read_onestep(model_path) if onestep else read_model(model_path)
    meta = model_file.meta
    if onestep:
        solver = OneStep(float(meta["onestep"]["sigma_g"]))
    else:
        solver = Solver.from_settings(cfg.model_dump(), read_tuning(tuning) if tuning else None)
    obs_store = open_store(obs_path)
    layout.check_same_spec(meta["spec"], {str(obs_path): layout.spec_of(obs_store)})
    layout.check_split(obs_store, split, obs_path)
    kind = meta.get("kind", "conditional")
    method = cfg.method if cfg.method != "auto" else ("mmps" if kind == "prior" else
                                                      "conditional")
    if onestep:
        pass  # read_onestep accepts only a one-step model
    elif (method == "conditional") != (kind == "conditional"):
        raise ValueError(f"--settings: method {method!r} needs a "
                         f"{'conditional' if method == 'conditional' else 'prior'} model, but "
                         f"{model_path} is a {kind} model")
    variables = list(meta["variables"])
    missing = [v for v in variables if v not in obs_store.data_vars]
    if missing:
        raise ValueError(f"{obs_path}: variable(s) {missing} missing; the model needs {variables}")
    observation = ObservationModel.from_dict(layout.observation_description(obs_store))
    index = layout.split_index(obs_store, split)
    index = index[shard_times(len(index), *shard)]
    y = torch.from_numpy(layout.stack(obs_store, variables, index))
    if not torch.isfinite(y).all():
        raise ValueError(f"{obs_path}: the observations of the {split} times are not all finite")
    log.info("sample %s: %d times × %d members, %s, %s, on %s", meta["spec"], len(index),
             cfg.members, method, solver.label(), device)
    cost: dict[str, Any] = {"solver_nfe": solver.nfe}
    start = time.perf_counter()
    if kind == "prior":
        model = PriorModel.from_state(model_file.weights, meta, device)
        x = model.sample(observation, y, index, cfg.members, solver, method, cfg.seed,
                         cfg.batch_size, cfg.cg_iterations, cfg.dps_step, progress,
                         tiling, cfg.covariance_sigma).numpy()
        evaluations, jacobians = model.cost.per_member(len(index) * cfg.members)
        cost.update(network_evaluations=evaluations, jacobian_products=jacobians)
    elif kind == "onestep":
        model = OneStepModel.from_state(model_file.weights, meta, device)
        trained = model.model.obs.operator.to_dict()
        if observation.operator.to_dict() != trained:
            raise ValueError(f"{obs_path}: its observations were made with "
                             f"{observation.operator.to_dict()}, but the one-step model "
                             f"{model_path} was distilled for {trained}")
        x = model.sample(y, index, cfg.members, cfg.seed, cfg.batch_size, progress).numpy()
        cost.update(solver_nfe=1, network_evaluations=1.0, jacobian_products=0.0)
    else:
        model = ConditionalModel.from_state(model_file.weights, meta, device)
        trained = model.obs.operator.to_dict()
        if observation.operator.to_dict() != trained:
            raise ValueError(f"{obs_path}: its observations were made with "
                             f"{observation.operator.to_dict()}, but the conditional model "
                             f"{model_path} was trained for {trained} (a prior model with a "
                             "zero-shot method inverts any observation system)")
        x = model.sample(y, index, cfg.members, solver, cfg.seed, cfg.batch_size,
                         progress, tiling).numpy()
        cost.update(network_evaluations=float(solver.nfe), jacobian_products=0.0)
    cost["seconds_per_member"] = (time.perf_counter() - start) / (len(index) * cfg.members)

    lat, lon = np.asarray(meta["grid"]["lat"]), np.asarray(meta["grid"]["lon"])
    dims = ("time", "member", "lat", "lon")
    data = {v: (dims, x[:, :, i], dict(meta["var_attrs"][v])) for i, v in enumerate(variables)}
    extra: dict[str, Any] = {}
    if cfg.recalibrate:
        if "recalibration" not in meta:
            raise ValueError(f"--settings: recalibrate needs a model chosen on the validation "
                             f"split (train.select), but {model_path} has no recalibration")
        recal = meta["recalibration"]
        factors = inflation_at(recal, observation_distance(y, recal["reference"], recal["scale"]))
        inflated = inflate(torch.from_numpy(x), factors).numpy()
        for i, v in enumerate(variables):
            raw = dict(meta["var_attrs"][v], long_name=f"{v}, members before recalibration")
            data[f"{v}_raw"] = (dims, x[:, :, i], raw)
            data[v] = (dims, inflated[:, :, i], dict(meta["var_attrs"][v]))
            extra[f"{v}_inflation"] = ("time", factors[:, i].numpy().astype(np.float32),
                                       {"long_name": f"spread inflation of {v} (fitted on the "
                                        "validation split)", "units": "1"})
    ds = xr.Dataset(
        data,
        coords={
            "time": obs_store.time.values[index],
            "member": np.arange(cfg.members),
            "lat": ("lat", lat, dict(meta["lat_attrs"])),
            "lon": ("lon", lon, dict(meta["lon_attrs"])),
            "obs_index": ("time", index),
            **extra,
        },
    )
    sampler = {**cfg.model_dump(), **solver.choice(), "method": method}
    attrs = {
        layout.SPEC: meta["spec"],
        layout.MODEL_HASH: model_file.digest,
        layout.MODEL_STEP: int(meta["step"]),
        layout.SAMPLER: json.dumps(sampler, sort_keys=True),
        layout.SAMPLE_SEED: cfg.seed,
        layout.SHARD: json.dumps(list(shard)),
        layout.SPLIT: split,
        layout.VERSION: __version__,
        layout.OBSERVATION: obs_store.attrs[layout.OBSERVATION],
        layout.COST: json.dumps(cost, sort_keys=True),
        layout.VARIABLES: json.dumps(variables),
        layout.SELECTION: json.dumps({k: meta[k] for k in ("selection", "recalibration")
                                      if k in meta}),
    }
    return write_store(with_cf_attributes(ds), out, attrs=attrs)
