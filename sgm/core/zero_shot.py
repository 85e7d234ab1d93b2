"""Zero-shot Bayesian inversion: one learned prior p(x), any observation model at sampling time.

A :class:`PriorModel` is a trained unconditional denoiser D(u; σ) of the standardised fields
z = (x − mean)/std or of their anomalies u = (z − μ)/s (``sgm.core.anomaly``; static channels
may still condition it). For observations y = A(x) + η ⊙ ε of any
:class:`~sgm.core.observation.ObservationModel`, the forward map in the network's units is
A_u(u) = A(std·(μ + s u) + mean), and a guided denoiser (``sgm.core.guidance``: MMPS by
default, DPS, TMPD) turns D into an approximation of the posterior denoiser E[u | u_σ, y], which
any solver of ``sgm.core.solvers`` integrates. Members are seeded and batch-independent as in
``sgm.core.posterior``; the work (network evaluations and Jacobian products per member) is
counted for the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sgm.core.anomaly import AnomalyTarget
from sgm.core.conditioning import Standardiser
from sgm.core.guidance import MMPS, GuidanceCost, GuidedDenoiser
from sgm.core.guidance_dps import DPS
from sgm.core.guidance_tmpd import TMPD
from sgm.core.observation import ObservationModel
from sgm.core.posterior import draw_members
from sgm.core.precond import EDMPrecond, new_denoiser
from sgm.core.sampler import Denoiser, fixed_batch
from sgm.core.solvers import Solver
from sgm.core.tiling import Tiling

METHODS = ("mmps", "dps", "tmpd")


def guided(method: str, denoise: Denoiser, forward: Any, y: Tensor, noise_std: Tensor,
           cg_iterations: int = 8, dps_step: float = 0.3,
           covariance_sigma: float | None = None) -> GuidedDenoiser:
    """The guided denoiser of ``method`` (mmps, dps or tmpd) for a batch."""
    if method == "mmps":
        return MMPS(denoise, forward, y, noise_std, cg_iterations=cg_iterations,
                    covariance_sigma=covariance_sigma)
    if method == "dps":
        return DPS(denoise, forward, y, noise_std, zeta=dps_step)
    if method == "tmpd":
        return TMPD(denoise, forward, y, noise_std)
    raise ValueError(f"method {method!r} is not a zero-shot method; use one of "
                     f"{', '.join(METHODS)}")


class PriorModel:
    """A trained prior p(x) and what sampling needs (from ``model.pt``'s metadata)."""

    def __init__(self, precond: EDMPrecond, meta: Mapping[str, Any]) -> None:
        self.precond = precond
        self.meta = meta
        self.variables = list(meta["variables"])
        self.stats = Standardiser.from_dict(meta["normalisation"], self.variables)
        self.static = meta["static"]
        self.anomaly = AnomalyTarget.from_meta(meta.get("anomaly"))
        self.grid = (len(meta["grid"]["lat"]), len(meta["grid"]["lon"]))
        self.cost = GuidanceCost()

    @classmethod
    def from_state(cls, weights: Mapping[str, Tensor], meta: Mapping[str, Any],
                   device: torch.device) -> PriorModel:
        m = meta["model"]
        precond = new_denoiser(m["preset"], int(meta["in_channels"]), int(meta["out_channels"]),
                               m["sigma_data"], m["base_channels"], m["dropout"])
        precond.load_state_dict(dict(weights))
        return cls(precond.to(device).eval(), meta)

    def to_physical(self, u: Tensor, dim: int = 1) -> Tensor:
        """Physical fields of the network's units: x = std·z + mean, z = u (target: field) or
        z = μ + s·u (target: anomaly, ``sgm.core.anomaly``)."""
        z = u if self.anomaly is None else self.anomaly.inverse(u, dim=dim)
        return self.stats.inverse(z, dim=dim)

    def forward_map(self, obs: ObservationModel) -> Any:
        """A_u(u) = A(to_physical(u)): Tensor[B, C, H, W] (network units) -> Tensor[B, C, *obs]."""
        if obs.variables != tuple(self.variables) or obs.grid != self.grid:
            raise ValueError(f"the observation model observes {list(obs.variables)} on "
                             f"{obs.grid}, but the prior models {self.variables} on {self.grid}")
        return lambda u: obs.apply(self.to_physical(u))

    def sample(
        self,
        obs: ObservationModel,
        y: Tensor,
        time_index: np.ndarray,
        members: int,
        solver: Solver,
        method: str = "mmps",
        seed: int = 0,
        batch_size: int = 64,
        cg_iterations: int = 8,
        dps_step: float = 0.3,
        progress: bool = False,
        tiling: Tiling | None = None,
        covariance_sigma: float | None = None,
    ) -> Tensor:
        """Posterior members Tensor[T, M, C, H, W] (physical units, float32, CPU) of the
        observations y[T, C, *obs] (physical units) made by ``obs``; with ``tiling`` the
        prior denoiser runs on overlapping tiles and the guidance on the whole field.

        ``covariance_sigma`` (MMPS) is in units of one pixel's year-to-year spread in the
        training years: times ``AnomalyTarget.pattern_unit`` in the network's units (1 without
        a level shift or with the field target)."""
        device = next(self.precond.parameters()).device
        y = y.to(torch.float64)
        if not torch.isfinite(y).all():
            raise ValueError("the observations are not all finite")
        forward = self.forward_map(obs)
        eta = obs.noise_std().reshape(-1, *([1] * len(obs.obs_shape))).to(device)
        network = fixed_batch(self.precond)
        if tiling is not None:  # tiles that do not fit fail before any work
            tiling.layout(self.grid)
        static = self.static if self.static is not None and self.static.numel() else None

        def prior(x: Tensor, sigma: Tensor) -> Tensor:
            if tiling is not None:
                cond = None if static is None else static.to(x)[None]
                return tiling.denoiser(network, self.grid, cond)(x, sigma)
            if static is None:
                return network(x, sigma)
            return network(x, sigma, static.to(x).expand(x.shape[0], -1, -1, -1))

        if covariance_sigma is not None and self.anomaly is not None:
            covariance_sigma = covariance_sigma * self.anomaly.pattern_unit

        def denoiser_for(rows: Tensor) -> Denoiser:
            g = guided(method, prior, forward, y[rows].to(device), eta, cg_iterations,
                       dps_step, covariance_sigma)
            g.cost = self.cost  # one tally for the whole ensemble
            return g

        shape = (len(self.variables), *self.grid)
        z = draw_members(denoiser_for, shape, time_index, members, solver, seed, batch_size,
                         device, progress)
        return self.to_physical(z, dim=2).to(torch.float32)
