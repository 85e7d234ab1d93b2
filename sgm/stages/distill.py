"""Stage ``distill``: a trained conditional ``model.pt`` + ``fields.zarr`` + ``obs.zarr`` →
``onestep.pt``, a one-step posterior sampler (Score-of-Mixture Distillation,
``sgm.core.distill``), and its loss log.

The teacher is the model's EMA denoiser; the generator and the α-conditioned mixture denoiser
start as copies of it. The real samples are the teacher's own training pairs, rebuilt from the
model's metadata (its standardisation, static channels and residual target, never recomputed)
with fresh observation noise every batch, or the paired coarse fields when ``paired.zarr`` lies
beside ``fields.zarr``. Checkpoints and ``distill_loss.csv`` live in ``workdir`` (locked, one
process at a time), so a killed job resumes where it stopped.

``onestep.pt`` has the format ``sgm-onestep-1``: a content-hashed file like ``model.pt`` (same
writer and reader, ``sgm.io.checkpoint``) but with another format name, so that no stage that
runs a multistep solver on a ``model.pt`` can take the generator for a denoiser. Its metadata is
the teacher's (minus the teacher's validation selection and spread recalibration, which do not
hold for the generator) with ``kind: onestep`` and an ``onestep`` section: σ_g, the teacher's
hash and step, the settings and the final losses.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from sgm.config import DistillSettings, validate
from sgm.core.conditioning import (
    ResidualTarget,
    Standardiser,
    pack_paired,
    paired_observations,
    simulated_observations,
    training_pairs,
)
from sgm.core.device import pick_device
from sgm.core.distill import with_alpha_channel
from sgm.core.distillation import distill
from sgm.core.observation import ObservationModel
from sgm.core.posterior import ConditionalModel
from sgm.io import layout
from sgm.io.checkpoint import CheckpointFolder
from sgm.io.lock import FolderLock
from sgm.io.losslog import LossCSV
from sgm.io.modelfile import read_model, write_onestep
from sgm.io.stores import open_store

log = logging.getLogger(__name__)

DISTILL_HEADER = "step,score_loss,generator_loss,lr,wall_s"


def _training_data(meta: dict[str, Any], fields_path: str | Path, obs: ObservationModel
                   ) -> tuple[torch.Tensor, Any]:
    """The teacher's training batches and ``make_pair``, from its metadata and the fields."""
    fields = open_store(fields_path)
    variables = list(meta["variables"])
    missing = [v for v in variables if v not in fields.data_vars]
    if missing:
        raise ValueError(f"{fields_path}: variable(s) {missing} missing; the model needs "
                         f"{variables}")
    stats = Standardiser.from_dict(meta["normalisation"], variables)
    index = layout.split_index(fields, "train")
    if index.size == 0:
        raise ValueError(f"{fields_path}: has no training times to distil on")
    z = stats.forward(torch.from_numpy(layout.stack(fields, variables, index)))
    paired = layout.paired_path(fields_path)
    if paired.exists():  # the teacher learned from real coarse fields
        y = stats.forward(torch.from_numpy(layout.stack(open_store(paired), variables, index)))
        data, observer = pack_paired(obs, z, y), paired_observations(obs, len(variables))
    else:
        data, observer = z, simulated_observations(obs, stats)
    scale = meta.get("residual_scale")
    target = None if scale is None else ResidualTarget(obs, torch.tensor(scale))
    log.info("distil on %d training fields (%s observations)", z.shape[0],
             "paired" if paired.exists() else "simulated")
    return data, training_pairs(obs, observer, meta["static"], target)


def distill_stage(
    model_path: str | Path,
    fields_path: str | Path,
    obs_path: str | Path,
    out: str | Path,
    settings: dict[str, Any],
    workdir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Distil the conditional model ``model_path`` into the one-step sampler ``out``."""
    out = Path(out)
    cfg: DistillSettings = validate(DistillSettings, settings, "--settings")
    device = pick_device(cfg.device)
    model_file = read_model(model_path)
    meta = dict(model_file.meta)
    kind = meta.get("kind", "conditional")
    if kind != "conditional":
        raise ValueError(f"{model_path}: a {kind} model; distill needs a conditional model "
                         "(model.kind: conditional), whose denoiser knows the observations")
    obs_store = open_store(obs_path)
    layout.check_same_spec(meta["spec"], {str(fields_path): layout.spec_of(open_store(
        fields_path)), str(obs_path): layout.spec_of(obs_store)})
    obs = ObservationModel.from_dict(layout.observation_description(obs_store))
    trained = ObservationModel.from_dict(meta["observation"])
    if {k: v for k, v in obs.to_dict().items() if k != "grid"} != {
            k: v for k, v in trained.to_dict().items() if k != "grid"}:
        raise ValueError(f"{obs_path}: its observation model {obs.to_dict()['operator']} "
                         f"(noise {obs.to_dict()['noise_std']}) is not the one {model_path} "
                         f"was trained for ({trained.to_dict()['operator']}, noise "
                         f"{trained.to_dict()['noise_std']})")
    data, make_pair = _training_data(meta, fields_path, obs)

    teacher = ConditionalModel.from_state(model_file.weights, meta, torch.device("cpu")).precond
    generator = copy.deepcopy(teacher)
    mixture = with_alpha_channel(teacher)
    workdir = Path(workdir) if workdir is not None else out.parent / "distill_state"
    log.info("distill %s (step %d) on %s: %d steps at batch %d, sigma_g %g", model_path,
             meta["step"], device, cfg.steps, cfg.batch_size, cfg.sigma_g)
    with FolderLock(workdir, what="distillation folder"):
        result = distill(teacher, generator, mixture, data, make_pair, cfg,
                         CheckpointFolder(workdir / "checkpoints"),
                         LossCSV(workdir / "distill_loss.csv", DISTILL_HEADER), log=log,
                         progress=progress)
    weights = result.ema.state_dict()
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{workdir}: distillation diverged: the generator's weights ({bad[0]}, "
                         f"...) are not finite at step {result.step}; lower the learning rates")
    for key in ("selection", "recalibration"):
        meta.pop(key, None)
    meta["kind"] = "onestep"
    meta["onestep"] = {
        "method": "score-of-mixture distillation (Jayashankar et al. 2025)",
        "sigma_g": float(cfg.sigma_g),
        "teacher": {"sha256": model_file.digest, "step": int(model_file.meta["step"]),
                    "kind": kind},
        "settings": cfg.model_dump(),
        "step": int(result.step),
        "score_loss": float(result.score_loss),
        "generator_loss": float(result.generator_loss),
    }
    write_onestep(out, weights, meta)
    log.info("wrote %s (step %d, score loss %.4f)", out, result.step, result.score_loss)
    return out
