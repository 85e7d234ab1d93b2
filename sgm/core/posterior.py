"""Posterior ensembles from a trained conditional model: observations in, members out.

A :class:`ConditionalModel` is everything ``model.pt`` holds, rebuilt as objects: the EMA
denoiser D(x; σ, cond), the observation model whose observations it conditions on, the
per-variable standardisation, the static channels and the residual target. Its
:meth:`~ConditionalModel.sample` draws, for every observation time t and member m, one solution
of the solver started from the seed ``member_seed(seed, time_index[t], m)``: a member is the
same whatever the batch size or the shard it is drawn in (the network always runs on chunks of
``sampler.NETWORK_BATCH``). Physical units in and out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sgm.core.conditioning import ResidualTarget, Standardiser, conditioning
from sgm.core.observation import ObservationModel
from sgm.core.precond import EDMPrecond, new_denoiser
from sgm.core.sampler import Denoiser, fixed_batch, member_seed
from sgm.core.solvers import Solver
from sgm.core.tiling import Tiling

DenoiserFor = Callable[[Tensor], Denoiser]
"""``denoiser_for(rows)``: the denoiser of a batch whose members belong to the times ``rows``
(Tensor[B] of indices into the selected times)."""


def draw_members(
    denoiser_for: DenoiserFor,
    shape: tuple[int, int, int],
    time_index: np.ndarray,
    members: int,
    solver: Solver,
    seed: int,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
) -> Tensor:
    """Members Tensor[T, M, C, H, W] (CPU) of the T times whose indices are ``time_index``.

    The (time, member) pairs are integrated ``batch_size`` at a time; each member's random
    draws come from its own generator seeded with ``member_seed(seed, time_index[t], m)``.
    """
    n_times = len(time_index)
    pairs = [(t, m) for t in range(n_times) for m in range(members)]
    out = torch.empty(n_times, members, *shape)
    batches = range(0, len(pairs), batch_size)
    for start in tqdm(batches, desc="sample", unit="batch", disable=not progress):
        chunk = pairs[start : start + batch_size]
        rows = torch.tensor([t for t, _ in chunk])
        seeds = [member_seed(seed, int(time_index[t]), m) for t, m in chunk]
        x = solver.sample(denoiser_for(rows), shape, seeds, device=device).cpu()
        for (t, m), member in zip(chunk, x, strict=True):
            out[t, m] = member
    return out


class ConditionalModel:
    """A trained conditional model p(x | y) for one observation system (see module docstring).

    Args:
        precond: the (EMA) denoiser, in eval mode.
        meta: the metadata of ``model.pt`` (``sgm.io.modelfile``).
    """

    def __init__(self, precond: EDMPrecond, meta: Mapping[str, Any]) -> None:
        self.precond = precond
        self.meta = meta
        self.variables = list(meta["variables"])
        self.obs = ObservationModel.from_dict(meta["observation"])
        self.stats = Standardiser.from_dict(meta["normalisation"], self.variables)
        self.static = meta["static"]
        scale = meta.get("residual_scale")
        self.target = None if scale is None else ResidualTarget(self.obs, torch.tensor(scale))
        self.grid = (len(meta["grid"]["lat"]), len(meta["grid"]["lon"]))

    @classmethod
    def from_state(cls, weights: Mapping[str, Tensor], meta: Mapping[str, Any],
                   device: torch.device) -> ConditionalModel:
        """Rebuild the denoiser of ``model.pt`` (its weights and metadata) on ``device``."""
        m = meta["model"]
        precond = new_denoiser(m["preset"], int(meta["in_channels"]), int(meta["out_channels"]),
                               m["sigma_data"], m["base_channels"], m["dropout"])
        precond.load_state_dict(dict(weights))
        return cls(precond.to(device).eval(), meta)

    @torch.no_grad()
    def sample(
        self,
        y: Tensor,
        time_index: np.ndarray,
        members: int,
        solver: Solver,
        seed: int = 0,
        batch_size: int = 128,
        progress: bool = False,
        tiling: Tiling | None = None,
    ) -> Tensor:
        """Posterior members in physical units.

        Args:
            y: observations Tensor[T, C, *obs_shape] in physical units.
            time_index: [T] each time's index in its obs store (part of every member's seed).
            tiling: denoise on overlapping tiles (``sgm.core.tiling``), aligned to the
                observation's coarse cells; None: the whole field in one call.

        Returns:
            Tensor[T, M, C, H, W] (float32, CPU).
        """
        device = next(self.precond.parameters()).device
        y_std = self.stats.forward(y.to(torch.float32))
        if not torch.isfinite(y_std).all():
            raise ValueError("the observations are not all finite")
        cond = conditioning(self.obs, y_std, self.static)
        network = fixed_batch(self.precond)
        if tiling is not None:  # tiles that do not fit fail before any work
            tiling.layout(self.grid, self.obs.operator.grid_multiple)

        def denoiser_for(rows: Tensor) -> Denoiser:
            cond_b = cond[rows].to(device)
            if tiling is not None:
                return tiling.denoiser(network, self.grid, cond_b,
                                       self.obs.operator.grid_multiple)
            return lambda x, sigma: network(x, sigma, cond_b)

        shape = (len(self.variables), *self.grid)
        z = draw_members(denoiser_for, shape, time_index, members, solver, seed, batch_size,
                         device, progress)
        if self.target is not None:
            y_rep = y_std.repeat_interleave(members, dim=0)
            z = self.target.inverse(z.flatten(0, 1), y_rep).view(z.shape)
        return self.stats.inverse(z, dim=2).to(torch.float32)
