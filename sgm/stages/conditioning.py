"""What the network sees besides x_σ, shared by training and sampling.

The model works on standardised fields z = (x − mean)/std per variable (statistics of the
training split). Its conditioning channels are, per variable, the observation mapped onto the
target grid (``operator.to_grid``), followed by optional static channels (e.g. the training
climatology). Both stages build them here so that they cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from sgm.core.operators import ObservationOperator


@dataclass(frozen=True)
class Standardiser:
    """Per-variable affine map between physical units and the model's standardised units."""

    variables: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_dict(cls, stats: dict[str, dict[str, float]], variables: list[str]) -> Standardiser:
        return cls(
            tuple(variables),
            tuple(float(stats[v]["mean"]) for v in variables),
            tuple(float(stats[v]["std"]) for v in variables),
        )

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {v: {"mean": m, "std": s} for v, m, s in zip(self.variables, self.mean, self.std,
                                                            strict=True)}

    def _shape(self, x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        shape = [1] * x.ndim
        shape[dim] = len(self.variables)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def forward(self, x: Tensor, dim: int = 1) -> Tensor:
        """Physical → standardised; ``x`` has the variables along ``dim``."""
        mean, std = self._shape(x, dim)
        return (x - mean) / std

    def inverse(self, z: Tensor, dim: int = 1) -> Tensor:
        """Standardised → physical."""
        mean, std = self._shape(z, dim)
        return z * std + mean

    def noise(self, noise_std: dict[str, float]) -> Tensor:
        """Observation noise std per variable in standardised units, shape [C]."""
        return torch.tensor([noise_std[v] / s for v, s in zip(self.variables, self.std,
                                                              strict=True)])


def stack_variables(ds: xr.Dataset, variables: list[str] | tuple[str, ...]) -> Tensor:
    """Variables of ``ds`` (each (time, *dims)) stacked as a float32 tensor [time, C, *dims]."""
    return torch.from_numpy(np.stack([ds[v].values for v in variables], axis=1).astype(np.float32))


def static_channels(fields: xr.Dataset, standardiser: Standardiser, climatology: bool) -> Tensor:
    """Static conditioning channels [S, H, W], standardised.

    The training split's per-pixel mean of each target variable (when ``climatology``), then
    the spec's static covariates (``static_<name>`` in fields.zarr, e.g. orography), each
    standardised with its own statistics from ``sgm_normalisation``.
    """
    channels = []
    if climatology:
        train = fields.isel(time=np.flatnonzero((fields.split == "train").values))
        clim = stack_variables(train, standardiser.variables).mean(dim=0, keepdim=True)
        channels.append(standardiser.forward(clim)[0])
    names = json.loads(fields.attrs.get("sgm_static", "[]"))
    if names:
        stats = json.loads(fields.attrs["sgm_normalisation"])
        covariates = Standardiser.from_dict(stats, [f"static_{n}" for n in names])
        values = torch.from_numpy(
            np.stack([fields[v].values for v in covariates.variables]).astype(np.float32)
        )
        channels.append(covariates.forward(values[None])[0])
    if not channels:
        return torch.zeros(0, fields.sizes["lat"], fields.sizes["lon"])
    return torch.cat(channels, dim=0)


def conditioning(op: ObservationOperator, y: Tensor, static: Tensor | None) -> Tensor:
    """Network conditioning from standardised observations.

    Args:
        op: the observation operator of the target grid.
        y: standardised observations [B, C, *obs_shape].
        static: static channels [S, H, W] or None.

    Returns:
        [B, C·K + S, H, W] with K = ``op.cond_channels``.
    """
    grid = op.to_grid(y)  # [B, C, K, H, W]
    cond = grid.reshape(grid.shape[0], -1, *grid.shape[-2:])
    if static is not None and static.numel():
        cond = torch.cat([cond, static.to(cond).expand(cond.shape[0], -1, -1, -1)], dim=1)
    return cond


class ResidualTarget:
    """The denoiser's target: r = (z − b(y)) / s, with b the operator's baseline (e.g. bicubic).

    Learning the residual from a deterministic baseline (as in CorrDiff, Mardani et al. 2024)
    keeps the target stationary when the climate drifts away from the training years, and puts
    the posterior's spread at O(1) in the model's units, where EDM's noise-level distribution is
    tuned. ``scale`` [C] is the residual's std on the training split. The map z ↦ r is affine
    for fixed y, so the posterior p(z | y) follows exactly from p(r | y).
    """

    def __init__(self, op: ObservationOperator, scale: Tensor) -> None:
        self.op, self.scale = op, scale

    def _scale(self, z: Tensor) -> Tensor:
        return self.scale.to(z).view(1, -1, 1, 1)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        """Standardised field z [B, C, H, W] and observation y [B, C, *obs] → target."""
        return (z - self.op.baseline(y)) / self._scale(z)

    def inverse(self, r: Tensor, y: Tensor) -> Tensor:
        return self.op.baseline(y) + r * self._scale(r)


def noisy_observation(
    op: ObservationOperator, z: Tensor, noise_std: Tensor, generator: torch.Generator
) -> Tensor:
    """y = A(z) + η·ε with ε drawn from ``generator``; ``noise_std`` [C] in standardised units."""
    clean = op.apply(z)
    eps = torch.randn(clean.shape, generator=generator, device=z.device, dtype=z.dtype)
    return clean + noise_std.to(z).view(1, -1, *([1] * (clean.ndim - 2))) * eps


def residual_scale(op: ObservationOperator, z: Tensor, y: Tensor) -> Tensor:
    """Per-variable std of z − b(y) over standardised training pairs: [C].

    Args:
        z: fields [N, C, H, W]; y: their observations [N, C, *obs].
    """
    resid = z - op.baseline(y)
    return resid.transpose(0, 1).reshape(z.shape[1], -1).std(dim=1).clamp_min(1e-6)


Observer = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]]
"""``observer(batch, generator) -> (z, y)``: a training batch's fields and observations."""


def simulated_observations(op: ObservationOperator, noise_std: Tensor) -> Observer:
    """The batch holds fields z; y = A(z) + η·ε with fresh noise from the generator."""
    return lambda z, generator: (z, noisy_observation(op, z, noise_std, generator))


def paired_observations(op: ObservationOperator, channels: int) -> Observer:
    """The batch holds [z, ŷ] along channels, ŷ the paired coarse fields on the target grid
    (``op.to_grid``, block-replicated); y = A(ŷ) recovers the coarse values exactly."""
    return lambda batch, generator: (batch[:, :channels], op.apply(batch[:, channels:]))


def pack_paired(op: ObservationOperator, z: Tensor, y: Tensor) -> Tensor:
    """Training data for :func:`paired_observations`: [N, 2C, H, W] from z and paired y."""
    return torch.cat([z, op.to_grid(y)[:, :, 0]], dim=1)


def training_pairs(
    op: ObservationOperator,
    observer: Observer,
    static: Tensor | None,
    target: ResidualTarget | None,
) -> Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]]:
    """``make_pair(batch, generator)``: the denoiser's target and conditioning for a batch.

    The target is z itself, or its residual when ``target`` is given; the conditioning is
    that of :func:`conditioning`.
    """

    def make_pair(batch: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        z, y = observer(batch, generator)
        cond = conditioning(op, y, static)
        return (z if target is None else target.forward(z, y)), cond

    return make_pair
