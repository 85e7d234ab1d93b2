"""Stage ``train``: ``fields.zarr`` + the observation model of ``obs.zarr`` → ``model.pt`` and
``loss.csv``.

Training pairs are made on the fly: every batch draws fresh observation noise from the
observation model, so the model sees y = A(x) + η·ε for new ε at every step. Checkpoints and
the loss log live in ``workdir`` (undeclared to Snakemake), so a killed job resumes where it
stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
import xarray as xr

from sgm.config import ModelEntry, load_spec, validate
from sgm.core import training
from sgm.core.anomaly import AnomalyTarget
from sgm.core.conditioning import (
    ResidualTarget,
    Standardiser,
    pack_paired,
    paired_observations,
    prior_pairs,
    residual_scale,
    simulate_observations,
    simulated_observations,
    static_channels,
    training_pairs,
)
from sgm.core.device import pick_device
from sgm.core.level_shift import level_shifted_pairs
from sgm.core.network import count_parameters
from sgm.core.observation import ObservationModel
from sgm.core.posterior import ConditionalModel
from sgm.core.precond import new_denoiser
from sgm.core.selection import choose_inflation, observation_distance, validation_scores
from sgm.core.solvers import Solver
from sgm.core.tiling import grid_coordinates, patch_pairs, sphere_coordinates
from sgm.io import layout
from sgm.io.checkpoint import SnapshotFolder
from sgm.io.lock import FolderLock
from sgm.io.losslog import run_files
from sgm.io.modelfile import write_model
from sgm.io.stores import json_attr, open_store

log = logging.getLogger(__name__)


def _static(fields: xr.Dataset, stats: Standardiser, climatology: bool) -> torch.Tensor:
    """The static conditioning channels of ``fields.zarr`` (climatology, covariates)."""
    clim = None
    if climatology:
        train = layout.split_index(fields, "train")
        clim = torch.from_numpy(layout.stack(fields, stats.variables, train)).mean(dim=0)
    names, values, cov_stats = layout.static_arrays(fields)
    covariates = None if values is None else torch.from_numpy(values)
    cov_standardiser = Standardiser.from_dict(cov_stats, names) if names else None
    grid = (fields.sizes["lat"], fields.sizes["lon"])
    return static_channels(stats, grid, clim, covariates, cov_standardiser)


def _positions(fields: xr.Dataset, kind: str) -> torch.Tensor:
    """Position channels [P, H, W] of a patch-trained model (P = 0 for ``none``)."""
    if kind == "sphere":
        return sphere_coordinates(fields.lat.values, fields.lon.values)
    if kind == "grid":
        return grid_coordinates((fields.sizes["lat"], fields.sizes["lon"]))
    return torch.zeros(0, fields.sizes["lat"], fields.sizes["lon"])


def _check_patch(patch: list[int], grid: tuple[int, int], align: int) -> tuple[int, int]:
    """train.patch as (h, w), or a clear error when it cannot be cut from ``grid``."""
    if len(patch) != 2 or min(patch) < 1:
        raise ValueError(f"--settings: train.patch must be [h, w] of positive sizes, got {patch}")
    h, w = patch
    if h > grid[0] or w > grid[1]:
        raise ValueError(f"--settings: train.patch {patch} is larger than the grid "
                         f"{list(grid)}")
    if h % align or w % align:
        raise ValueError(f"--settings: train.patch {patch} must be multiples of {align}, the "
                         f"observation's coarse cell, so that patches hold whole cells")
    return h, w


def _level_shift(setting: float | dict[str, float], stats: Standardiser,
                 paired: bool) -> list[float] | None:
    """train.level_shift in standardised units per variable (τ_c / std_c), or None when off;
    a clear error where a shift has no meaning (paired coarse fields, transformed variables,
    a variable the spec does not have)."""
    if isinstance(setting, dict):
        unknown = sorted(set(setting) - set(stats.variables))
        if unknown:
            raise ValueError(f"--settings: train.level_shift names {unknown}, which the spec "
                             f"does not have (its variables: {list(stats.variables)})")
        tau = [float(setting.get(v, 0.0)) for v in stats.variables]
    else:
        tau = [float(setting)] * len(stats.variables)
    if not any(tau):
        return None
    if paired:
        raise ValueError("--settings: train.level_shift cannot shift the targets of a paired "
                         "spec: its coarse fields are data, not simulated from the target")
    for v, t, transform in zip(stats.variables, tau, stats.transforms or [None] * len(tau),
                               strict=True):
        if t and transform is not None:
            raise ValueError(f"--settings: train.level_shift of {v}: a uniform offset has no "
                             f"meaning for a transformed (non-negative) variable")
    return [t / s for t, s in zip(tau, stats.std, strict=True)]


def _lock(workdir: Path) -> contextlib.AbstractContextManager:
    """The training folder's lock, held by the one process that writes it (rank 0)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return FolderLock(workdir, what="training folder")


def _conditional(spec: Any, fields: xr.Dataset, fields_path: str | Path, obs: ObservationModel,
                 stats: Standardiser, z: torch.Tensor, static: torch.Tensor,
                 train_index: Any, entry: ModelEntry) -> tuple:
    """Training data, make_pair, input channels and residual target of a conditional model."""
    channels = z.shape[1]
    if spec.paired is not None:  # real coarse fields, aligned in time with the targets
        paired = open_store(layout.paired_path(fields_path))
        y = stats.forward(torch.from_numpy(layout.stack(paired, stats.variables, train_index)))
        observer = paired_observations(obs, channels)
        data = pack_paired(obs, z, y)
    else:
        y = simulate_observations(obs, stats, z, torch.Generator().manual_seed(entry.train.seed))
        observer = simulated_observations(obs, stats)
        data = z
    target = None
    if entry.model.target == "residual":
        target = ResidualTarget(obs, residual_scale(obs, z, y))
        log.info("target: residual from the %s baseline, std %s (standardised units)",
                 obs.baseline_name, [round(float(v), 4) for v in target.scale])
    make_pair = training_pairs(obs, observer, static, target)
    in_channels = channels + channels * obs.cond_channels + static.shape[0]
    return data, make_pair, in_channels, target


def train_stage(
    spec_path: str | Path,
    fields_path: str | Path,
    obs_path: str | Path | None,
    out: str | Path,
    settings: dict[str, Any],
    workdir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train an EDM model on the training split and write ``out`` (model.pt).

    A conditional model learns p(x | y) for the observation model of ``obs_path``; a prior
    (``model.kind: prior``) learns p(x) from the fields alone and needs no ``obs_path``.
    """
    out = Path(out)
    entry: ModelEntry = validate(ModelEntry, settings, "--settings")
    pick_device(entry.train.device)  # an unknown or absent device fails before any work
    spec = load_spec(spec_path)
    fields = open_store(fields_path)
    prior = entry.model.kind == "prior"
    if not prior and obs_path is None:
        raise ValueError("--obs: a conditional model needs the observations it learns from "
                         "(obs.zarr)")
    named = {str(fields_path): layout.spec_of(fields)}
    obs = None
    if not prior:
        obs_store = open_store(obs_path)
        named[str(obs_path)] = layout.spec_of(obs_store)
        obs = ObservationModel.from_dict(layout.observation_description(obs_store))
    layout.check_same_spec(spec.name, named)
    variables = layout.variables_of(fields)
    stats = Standardiser.from_dict(json_attr(fields, layout.NORMALISATION), variables)
    train_index = layout.split_index(fields, "train")
    z = stats.forward(torch.from_numpy(layout.stack(fields, variables, train_index)))
    static = _static(fields, stats, spec.conditioning.climatology)
    patch = entry.train.patch
    if patch:  # a patch knows where it is: position channels join the static ones
        static = torch.cat([static, _positions(fields, entry.train.position)])
    channels = len(variables)
    shift = _level_shift(entry.train.level_shift, stats, spec.paired is not None)
    anomaly = None
    if prior:
        data, make_pair, target = z, prior_pairs(static), None
        in_channels = channels + static.shape[0]
        if entry.model.target == "anomaly":
            anomaly = AnomalyTarget.fit(z, shift)
            data = anomaly.forward(z)
            shift = None if shift is None else [t / float(s) for t, s in
                                                zip(shift, anomaly.scale, strict=True)]
            log.info("target: anomaly from the training mean, std %s (standardised units)",
                     [round(float(v), 4) for v in anomaly.scale])
    else:
        data, make_pair, in_channels, target = _conditional(
            spec, fields, fields_path, obs, stats, z, static, train_index, entry)
    if shift is not None:
        make_pair = level_shifted_pairs(make_pair, shift)
        log.info("level shift: uniform offsets of std %s (the target's units) per member",
                 [round(v, 4) for v in shift])
    if patch:
        align = 1 if obs is None else obs.operator.grid_multiple
        size = _check_patch(patch, (fields.sizes["lat"], fields.sizes["lon"]), align)
        make_pair = patch_pairs(make_pair, size, align)
        log.info("patches of %s (aligned to %d), position channels: %s", list(size), align,
                 entry.train.position)

    m = entry.model
    precond = new_denoiser(m.preset, in_channels, channels, m.sigma_data, m.base_channels,
                           m.dropout, seed=entry.train.seed)
    log.info("train %s (%s): %d fields of %s, %s, %d parameters, %d steps at batch %d",
             spec.name, m.kind, z.shape[0], tuple(z.shape[1:]), obs or "no observations",
             count_parameters(precond), entry.train.steps, entry.train.batch_size)

    workdir = Path(workdir) if workdir is not None else out.parent / "train_state"
    select = entry.train.select if entry.train.select.enabled else None
    if select is not None and prior:
        raise ValueError("--settings: train.select chooses among snapshots by sampling the "
                         "validation observations, which a prior model does not have")
    snapshots = SnapshotFolder(workdir / "snapshots") if select is not None else None
    with _lock(workdir):
        result = training.train(precond, data, make_pair, entry.train, *run_files(workdir),
                                log=log, progress=progress, snapshots=snapshots)
    if result is None:  # a non-zero rank of a multi-process run: rank 0 writes the model
        return out
    weights = result.ema.state_dict()
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{workdir}: training diverged: the weights ({bad[0]}, ...) are not "
                         f"finite at step {result.step}; lower train.lr or check the data")
    meta = {
        "spec": spec.name,
        "variables": variables,
        "normalisation": stats.to_dict(),
        "kind": m.kind,
        "observation": None if obs is None else obs.to_dict(),
        "grid": {"lat": fields.lat.values.tolist(), "lon": fields.lon.values.tolist()},
        "lat_attrs": {k: str(v) for k, v in fields.lat.attrs.items()},
        "lon_attrs": {k: str(v) for k, v in fields.lon.attrs.items()},
        "var_attrs": {v: {k: str(a) for k, a in fields[v].attrs.items()} for v in variables},
        "static": static.contiguous(),
        "residual_scale": None if target is None else target.scale.tolist(),
        "anomaly": None if anomaly is None else anomaly.to_meta(),
        "model": entry.model.model_dump(),
        "in_channels": in_channels,
        "out_channels": channels,
        "train": entry.train.model_dump(),
        "step": int(result.step),
        "final_loss": float(result.final_loss),
    }
    if select is not None:
        weights = _select(meta, weights, snapshots, select, fields, obs_store, entry, log)
    write_model(out, weights, meta)
    log.info("wrote %s (step %d, final loss %.4f)", out, meta["step"], result.final_loss)
    return out


def _select(meta: dict[str, Any], weights: dict[str, torch.Tensor], snapshots: SnapshotFolder,
            select: Any, fields: xr.Dataset, obs_store: xr.Dataset, entry: ModelEntry,
            log: logging.Logger) -> dict[str, torch.Tensor]:
    """The snapshot with the best validation score; the selection curve and the spread
    recalibration go into ``meta`` (``sgm.core.selection``)."""
    index = layout.split_index(obs_store, "val")[: select.max_times]
    if index.size == 0:
        raise ValueError("train.select: the observations have no validation times")
    variables = meta["variables"]
    y = torch.from_numpy(layout.stack(obs_store, variables, index))
    truth = layout.stack(fields, variables,
                         fields.indexes["time"].get_indexer(obs_store.time.values[index]))
    scale = [meta["normalisation"][v]["std"] for v in variables]
    solver = Solver.from_settings({}, select.solver.model_dump())
    curve = []
    device = pick_device(entry.train.device)
    for step in snapshots.steps():
        model = ConditionalModel.from_state(snapshots.load(step), meta, device)
        ens = model.sample(y, index, select.members, solver, entry.train.seed).numpy()
        scores = validation_scores(ens, truth, scale)
        curve.append({"step": step, **scores})
        log.info("select: step %d validation CRPS %s, spread/skill %s", step,
                 [f"{v:.4g}" for v in scores["crps"]],
                 [f"{v:.3g}" for v in scores["spread_skill_ratio"]])
    best = min(curve, key=lambda r: r["score"])
    # The distance of each observation from the training climate: domain mean of y − A(μ).
    train = torch.from_numpy(layout.stack(fields, variables, layout.split_index(fields, "train")))
    model = ConditionalModel.from_state(snapshots.load(best["step"]), meta, device)
    reference = model.obs.apply(train.mean(0).to(torch.float64)).flatten(1).mean(1).tolist()
    ens = model.sample(y, index, select.recalibration_members, solver, entry.train.seed).numpy()
    fit = choose_inflation(ens, truth, observation_distance(y, reference, scale).numpy())
    meta["selection"] = {"criterion": "validation fair CRPS / std, mean over variables",
                         "members": select.members, "n_times": int(index.size),
                         "solver": solver.choice(), "curve": curve, "chosen_step": best["step"]}
    meta["recalibration"] = {
        "method": "k_t^2 = a + b |d_t|, d_t the observation's distance from the training climate",
        "fitted_on": "val", **fit, "reference": reference,
        "scale": scale, "spread_skill_ratio": best["spread_skill_ratio"],
    }
    meta["step"] = int(best["step"])
    log.info("select: chose step %d; spread inflation k² = %s + %s |d| (fitted %s + %s |d|; "
             "leave-one-out validation CRPS %s raw, %s recalibrated)", best["step"], fit["a"],
             fit["b"], fit["fitted_a"], fit["fitted_b"], fit["loo_crps_raw"],
             fit["loo_crps_recalibrated"])
    return snapshots.load(best["step"])

