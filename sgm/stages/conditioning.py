"""What the network sees besides x_σ, shared by training and sampling.

The model works on standardised fields z = (x − mean)/std per variable (statistics of the
training split). Its conditioning channels are, per variable, the observation mapped onto the
target grid (``operator.to_grid``), followed by optional static channels (e.g. the training
climatology). Both stages build them here so that they cannot drift apart.
"""

from __future__ import annotations

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


def climatology_channels(fields: xr.Dataset, standardiser: Standardiser) -> Tensor:
    """Training-split per-pixel mean of each variable, standardised: [C, H, W]."""
    train = fields.isel(time=np.flatnonzero((fields.split == "train").values))
    clim = stack_variables(train, standardiser.variables).mean(dim=0, keepdim=True)
    return standardiser.forward(clim)[0]


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


def observe(op: ObservationOperator, z: Tensor, noise_std: Tensor, generator: torch.Generator
            ) -> Tensor:
    """y = A(z) + η·ε with ε drawn from ``generator``; ``noise_std`` [C] in standardised units."""
    clean = op.apply(z)
    eps = torch.randn(clean.shape, generator=generator, device=z.device, dtype=z.dtype)
    return clean + noise_std.to(z).view(1, -1, *([1] * (clean.ndim - 2))) * eps


def residual_scale(op: ObservationOperator, z: Tensor, noise_std: Tensor, seed: int = 0
                   ) -> Tensor:
    """Per-variable std of z − b(y) over standardised training fields z [N, C, H, W]: [C]."""
    y = observe(op, z, noise_std, torch.Generator(device=z.device).manual_seed(seed))
    resid = z - op.baseline(y)
    return resid.transpose(0, 1).reshape(z.shape[1], -1).std(dim=1).clamp_min(1e-6)


def training_pairs(
    op: ObservationOperator,
    noise_std: Tensor,
    static: Tensor | None,
    target: ResidualTarget | None,
) -> Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]]:
    """``make_pair(z, generator)``: observe a clean standardised batch with fresh noise.

    Returns the denoiser's target (z itself, or its residual when ``target`` is given) and the
    conditioning channels of :func:`conditioning`.
    """

    def make_pair(z: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        y = observe(op, z, noise_std, generator)
        cond = conditioning(op, y, static)
        return (z if target is None else target.forward(z, y)), cond

    return make_pair
