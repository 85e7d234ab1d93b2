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
from sgm.core.conditioning import ResidualTarget, Standardiser, conditioning
from sgm.core.device import pick_device
from sgm.core.observation import ObservationModel
from sgm.core.precond import new_denoiser
from sgm.core.sampler import edm_sampler, fixed_batch, member_seed
from sgm.core.schedule import karras_sigmas
from sgm.io import layout
from sgm.io.modelfile import read_model
from sgm.io.stores import check_output, open_store, write_store

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
    network = fixed_batch(precond)
    batches = range(0, len(pairs), settings.batch_size)
    for start in tqdm(batches, desc="sample", unit="batch", disable=not progress):
        chunk = pairs[start : start + settings.batch_size]
        rows = torch.tensor([t for t, _ in chunk])
        cond_b = cond[rows].to(device)
        seeds = [member_seed(settings.seed, int(time_index[t]), m) for t, m in chunk]

        def denoise(x: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor = cond_b) -> torch.Tensor:
            return network(x, sigma, c)

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
    out = check_output(out)
    device = pick_device(cfg.device)
    model = read_model(model_path)
    meta = model.meta
    obs_store = open_store(obs_path)
    layout.check_same_spec(meta["spec"], {str(obs_path): layout.spec_of(obs_store)})
    layout.check_split(obs_store, split, obs_path)
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"--shard {shard[0]}: not in 0..{shard[1] - 1} (--shards {shard[1]})")
    obs = ObservationModel.from_dict(meta["observation"])
    variables = list(meta["variables"])
    missing = [v for v in variables if v not in obs_store.data_vars]
    if missing:
        raise ValueError(f"{obs_path}: variable(s) {missing} missing; the model needs {variables}")
    observed = layout.observation_description(obs_store)["operator"]
    if observed != obs.operator.to_dict():
        raise ValueError(f"{obs_path}: its observations were made with {observed}, but the "
                         f"model {model_path} was trained for {obs.operator.to_dict()}")
    m = meta["model"]
    precond = new_denoiser(m["preset"], int(meta["in_channels"]), int(meta["out_channels"]),
                           m["sigma_data"], m["base_channels"], m["dropout"])
    precond.load_state_dict(model.weights)
    precond = precond.to(device).eval()

    index = layout.split_index(obs_store, split)
    index = index[shard_times(len(index), *shard)]
    stats = Standardiser.from_dict(meta["normalisation"], variables)
    y = stats.forward(torch.from_numpy(layout.stack(obs_store, variables, index)))
    if not torch.isfinite(y).all():
        raise ValueError(f"{obs_path}: the observations of the {split} times are not all finite")
    cond = conditioning(obs, y, meta["static"])
    log.info("sample %s: %d times × %d members, %d steps, churn %s, on %s",
             meta["spec"], len(index), cfg.members, cfg.steps, cfg.churn, device)

    z = draw_members(precond, cond, index, cfg, device, progress)  # [T, M, C, H, W]
    if meta.get("residual_scale") is not None:
        target = ResidualTarget(obs, torch.tensor(meta["residual_scale"]))
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
            "time": obs_store.time.values[index],
            "member": np.arange(cfg.members),
            "lat": ("lat", lat, dict(meta["lat_attrs"])),
            "lon": ("lon", lon, dict(meta["lon_attrs"])),
            "obs_index": ("time", index),
        },
    )
    attrs = {
        layout.SPEC: meta["spec"],
        layout.MODEL_HASH: model.digest,
        layout.MODEL_STEP: int(meta["step"]),
        layout.SAMPLER: json.dumps({"name": "edm_heun", **cfg.model_dump()}, sort_keys=True),
        layout.SAMPLE_SEED: cfg.seed,
        layout.SHARD: json.dumps(list(shard)),
        layout.SPLIT: split,
        layout.VERSION: __version__,
        layout.OBSERVATION: obs_store.attrs[layout.OBSERVATION],
    }
    return write_store(ds, out, attrs=attrs)
