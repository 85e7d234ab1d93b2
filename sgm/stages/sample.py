"""Stage ``sample``: ``model.pt`` + ``obs.zarr`` → ``posterior.zarr``.

For every observation time t and member m, the EDM Heun sampler integrates from pure noise
with the seed ``member_seed(seed, t, m)``, where t is the time's index in ``obs.zarr``: a member
is the same whatever the batch size or the shard it was drawn in. The ensemble is written in
physical units with dims (time, member, lat, lon) and provenance attributes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from sgm import __version__
from sgm.config import SampleSettings, validate
from sgm.core.operators import build_operator
from sgm.core.sampler import edm_sampler, member_seed
from sgm.core.schedule import karras_sigmas
from sgm.io.stores import json_attr, open_store, write_store
from sgm.stages.conditioning import (
    ResidualTarget,
    Standardiser,
    conditioning,
    stack_variables,
)
from sgm.stages.modelfile import file_hash, pick_device, read_model

log = logging.getLogger(__name__)


def shard_times(n_times: int, shard: int, shards: int) -> np.ndarray:
    """Indices of the times in shard ``shard`` of ``shards`` (contiguous, balanced)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in [0, {shards})")
    return np.array_split(np.arange(n_times), shards)[shard]


@torch.no_grad()
def draw_members(
    precond: torch.nn.Module,
    cond: torch.Tensor,
    time_index: np.ndarray,
    settings: SampleSettings,
    device: torch.device,
    progress: bool = True,
) -> torch.Tensor:
    """Posterior members in standardised units.

    Args:
        cond: conditioning [T, K, H, W] of the T selected times.
        time_index: [T] index of each time in obs.zarr (part of every member's seed).

    Returns:
        [T, M, C, H, W] on the CPU.
    """
    n_times, (_, height, width) = cond.shape[0], cond.shape[1:]
    members, channels = settings.members, precond.channels
    pairs = [(t, m) for t in range(n_times) for m in range(members)]
    sigmas = karras_sigmas(settings.steps, settings.sigma_min, settings.sigma_max, settings.rho)
    out = torch.empty(n_times, members, channels, height, width)
    batches = range(0, len(pairs), settings.batch_size)
    for start in tqdm(batches, desc="sample", unit="batch", disable=not progress):
        chunk = pairs[start : start + settings.batch_size]
        rows = torch.tensor([t for t, _ in chunk])
        cond_b = cond[rows].to(device)
        seeds = [member_seed(settings.seed, int(time_index[t]), m) for t, m in chunk]

        def denoise(x: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor = cond_b) -> torch.Tensor:
            return precond(x, sigma, c)

        x = edm_sampler(
            denoise, (channels, height, width), seeds, sigmas.to(device), churn=settings.churn,
            s_tmin=settings.s_tmin, s_tmax=settings.s_tmax, s_noise=settings.s_noise,
            device=device,
        ).cpu()
        for (t, m), member in zip(chunk, x, strict=True):
            out[t, m] = member
    return out


def sample_stage(
    model_path: str | Path,
    obs_path: str | Path,
    out: str | Path,
    settings: dict[str, Any],
    shard: tuple[int, int] = (0, 1),
    split: str = "test",
    progress: bool = True,
) -> Path:
    """Draw the posterior ensemble for the ``split`` times of ``obs.zarr`` (``all``: every time)."""
    cfg: SampleSettings = validate(SampleSettings, settings, "--settings")
    device = pick_device(cfg.device)
    precond, meta = read_model(model_path, device)
    obs = open_store(obs_path)
    variables = list(meta["variables"])
    missing = [v for v in variables if v not in obs.data_vars]
    if missing:
        raise ValueError(f"{obs_path}: variable(s) {missing} missing; the model needs {variables}")
    grid = (len(meta["grid"]["lat"]), len(meta["grid"]["lon"]))
    op = build_operator(meta["operator"], grid)
    expected = op.obs_shape(grid)
    for v in variables:
        if tuple(obs[v].shape[1:]) != tuple(expected):
            raise ValueError(
                f"{obs_path}: variable {v!r} has shape {tuple(obs[v].shape[1:])} per time but the"
                f" model's operator {op} observes {tuple(expected)}"
            )

    index = np.arange(obs.sizes["time"])
    if split != "all":
        index = index[(obs.split == split).values]
    index = index[shard_times(len(index), *shard)]
    stats = Standardiser.from_dict(meta["normalisation"], variables)
    y = stats.forward(stack_variables(obs.isel(time=index), variables))
    cond = conditioning(op, y, meta["static"])
    log.info("sample %s: %d times × %d members, %d steps, churn %s, on %s",
             meta["spec"], len(index), cfg.members, cfg.steps, cfg.churn, device)

    z = draw_members(precond, cond, index, cfg, device, progress)  # [T, M, C, H, W]
    if meta.get("residual_scale") is not None:
        target = ResidualTarget(op, torch.tensor(meta["residual_scale"]))
        members = z.flatten(0, 1)
        y_rep = y.repeat_interleave(cfg.members, dim=0)
        z = target.inverse(members, y_rep).view(z.shape)
    x = stats.inverse(z, dim=2).numpy().astype(np.float32)
    lat, lon = np.asarray(meta["grid"]["lat"]), np.asarray(meta["grid"]["lon"])
    data = {
        v: (("time", "member", "lat", "lon"), x[:, :, i], dict(meta["var_attrs"][v]))
        for i, v in enumerate(variables)
    }
    ds = xr.Dataset(
        data,
        coords={
            "time": obs.time.values[index],
            "member": np.arange(cfg.members),
            "lat": ("lat", lat, dict(meta["lat_attrs"])),
            "lon": ("lon", lon, dict(meta["lon_attrs"])),
            "obs_index": ("time", index),
        },
    )
    attrs = {
        "sgm_spec": meta["spec"],
        "sgm_model_hash": file_hash(model_path),
        "sgm_model_step": int(meta["step"]),
        "sgm_sampler": json.dumps({"name": "edm_heun", **cfg.model_dump()}, sort_keys=True),
        "sgm_seed": cfg.seed,
        "sgm_shard": json.dumps(list(shard)),
        "sgm_split": split,
        "sgm_version": __version__,
        "sgm_obs_operator": json.dumps(json_attr(obs, "sgm_operator")),
    }
    return write_store(ds, out, attrs=attrs)
