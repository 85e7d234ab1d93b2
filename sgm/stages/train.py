"""Stage ``train``: ``fields.zarr`` + the spec's operator → ``model.pt`` and ``loss.csv``.

Training pairs are made on the fly: every batch draws fresh observation noise, so the model
sees y = A(x) + η·ε for new ε at every step. Checkpoints and the loss log live in ``workdir``
(undeclared to Snakemake), so a killed job resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgm.config import ModelEntry, load_spec, validate
from sgm.core import training
from sgm.core.network import count_parameters
from sgm.core.operators import build_operator
from sgm.io.stores import json_attr, open_store
from sgm.stages.conditioning import (
    ResidualTarget,
    Standardiser,
    noisy_observation,
    pack_paired,
    paired_observations,
    residual_scale,
    simulated_observations,
    stack_variables,
    static_channels,
    training_pairs,
)
from sgm.stages.modelfile import new_precond, write_model
from sgm.stages.observe import grid_of, paired_path

log = logging.getLogger(__name__)


def train_stage(
    spec_path: str | Path,
    fields_path: str | Path,
    out: str | Path,
    settings: dict[str, Any],
    workdir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train the conditional EDM model on the training split and write ``out`` (model.pt)."""
    out = Path(out)
    entry: ModelEntry = validate(ModelEntry, settings, "--settings")
    spec = load_spec(spec_path)
    fields = open_store(fields_path)
    variables = [v.name for v in spec.variables]
    stats = Standardiser.from_dict(json_attr(fields, "sgm_normalisation"), variables)
    op = build_operator(spec.operator_dict(), grid_of(fields))
    train_index = np.flatnonzero((fields.split == "train").values)
    z = stats.forward(stack_variables(fields.isel(time=train_index), variables))
    static = static_channels(fields, stats, spec.conditioning.climatology)
    noise_std = {v: spec.operator.noise_std for v in variables}
    channels = len(variables)
    if spec.paired is not None:  # real coarse fields, aligned in time with the targets
        paired = open_store(paired_path(fields_path)).isel(time=train_index)
        y = stats.forward(stack_variables(paired, variables))
        observer = paired_observations(op, channels)
        data = pack_paired(op, z, y)
    else:
        eta = stats.noise(noise_std)
        y = noisy_observation(op, z, eta, torch.Generator().manual_seed(entry.train.seed))
        observer = simulated_observations(op, eta)
        data = z
    target = None
    if entry.model.target == "residual":
        target = ResidualTarget(op, residual_scale(op, z, y))
        log.info("target: residual from the %s baseline, std %s (standardised units)",
                 op.name, [round(float(v), 4) for v in target.scale])
    make_pair = training_pairs(op, observer, static, target)

    in_channels = channels + channels * op.cond_channels + static.shape[0]
    precond = new_precond(entry.model, in_channels, channels)
    log.info("train %s: %d fields of %s, %s, %d parameters, %d steps at batch %d",
             spec.name, z.shape[0], tuple(z.shape[1:]), op, count_parameters(precond),
             entry.train.steps, entry.train.batch_size)

    workdir = Path(workdir) if workdir is not None else out.parent / "train_state"
    core_settings = training.TrainSettings(**entry.train.model_dump())
    result = training.train(precond, data, make_pair, core_settings, workdir, log=log,
                            progress=progress)
    if result is None:  # a non-zero rank of a multi-process run: rank 0 writes the model
        return out
    meta = {
        "spec": spec.name,
        "variables": variables,
        "normalisation": stats.to_dict(),
        "operator": op.to_dict(),
        "noise_std": noise_std,
        "grid": {"lat": fields.lat.values.tolist(), "lon": fields.lon.values.tolist()},
        "lat_attrs": {k: str(v) for k, v in fields.lat.attrs.items()},
        "lon_attrs": {k: str(v) for k, v in fields.lon.attrs.items()},
        "var_attrs": {v: {k: str(a) for k, a in fields[v].attrs.items()} for v in variables},
        "static": static.contiguous(),
        "residual_scale": None if target is None else target.scale.tolist(),
        "model": entry.model.model_dump(),
        "in_channels": in_channels,
        "out_channels": channels,
        "train": dataclasses.asdict(core_settings),
        "step": int(result.step),
        "final_loss": float(result.final_loss),
    }
    write_model(out, result.ema, meta)
    log.info("wrote %s (step %d, final loss %.4f)", out, result.step, result.final_loss)
    return out
