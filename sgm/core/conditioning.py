"""What the network sees besides x_σ, shared by training and sampling.

The model works on standardised fields z = (x − mean)/std per variable (statistics of the
training split). Its conditioning channels are, per variable, the standardised observation
mapped onto the target grid (``ObservationModel.to_grid``), followed by optional static channels
(the training climatology, static covariates such as orography). Training and sampling both
build them here, so that they cannot drift apart. Observations are always simulated by the
:class:`~sgm.core.observation.ObservationModel` in physical units and standardised afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sgm.core.heavy_tailed import CensoredPowerTransform
from sgm.core.observation import ObservationModel


@dataclass(frozen=True)
class Standardiser:
    """Per-variable map between physical units and the model's standardised units:

        z = (T(x) − mean) / std,        x = T⁻¹(std · z + mean),

    with T the identity, or for variables with a transform (precipitation) the monotone map of
    ``sgm.core.heavy_tailed.CensoredPowerTransform`` fitted on the training split; mean and std
    are T(x)'s over the training split.
    """

    variables: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transforms: tuple[CensoredPowerTransform | None, ...] = ()

    @classmethod
    def from_dict(
        cls, stats: Mapping[str, Mapping[str, Any]], variables: Sequence[str]
    ) -> Standardiser:
        transforms = tuple(
            CensoredPowerTransform.from_dict(stats[v]["transform"]) if stats[v].get("transform")
            else None for v in variables
        )
        return cls(
            tuple(variables),
            tuple(float(stats[v]["mean"]) for v in variables),
            tuple(float(stats[v]["std"]) for v in variables),
            transforms if any(t is not None for t in transforms) else (),
        )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i, (v, m, s) in enumerate(zip(self.variables, self.mean, self.std, strict=True)):
            out[v] = {"mean": m, "std": s}
            if self.transforms and self.transforms[i] is not None:
                out[v]["transform"] = self.transforms[i].to_dict()
        return out

    def _shape(self, x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        shape = [1] * x.ndim
        shape[dim] = len(self.variables)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def _each(self, x: Tensor, dim: int, inverse: bool) -> Tensor:
        if not self.transforms:
            return x
        parts = [t if transform is None else
                 (transform.inverse(t) if inverse else transform.forward(t))
                 for t, transform in zip(x.unbind(dim), self.transforms, strict=True)]
        return torch.stack(parts, dim)

    def forward(self, x: Tensor, dim: int = 1) -> Tensor:
        """Physical → standardised; ``x`` has the variables along ``dim``."""
        mean, std = self._shape(x, dim)
        return (self._each(x, dim, inverse=False) - mean) / std

    def inverse(self, z: Tensor, dim: int = 1) -> Tensor:
        """Standardised → physical."""
        mean, std = self._shape(z, dim)
        return self._each(z * std + mean, dim, inverse=True)


def static_channels(
    standardiser: Standardiser,
    grid: tuple[int, int],
    climatology: Tensor | None = None,
    covariates: Tensor | None = None,
    covariate_standardiser: Standardiser | None = None,
) -> Tensor:
    """Static conditioning channels Tensor[S, H, W], standardised (S = 0 without any).

    Args:
        grid: (H, W).
        climatology: the training split's per-pixel mean of each variable, Tensor[C, H, W]
            in physical units (standardised with the variables' statistics), or None.
        covariates: static covariates Tensor[S_c, H, W] in physical units, standardised with
            ``covariate_standardiser`` (their own statistics), or None.
    """
    channels = []
    if climatology is not None:
        channels.append(standardiser.forward(climatology[None])[0])
    if covariates is not None and covariates.shape[0]:
        if covariate_standardiser is None:
            raise ValueError("covariates need their own standardiser")
        channels.append(covariate_standardiser.forward(covariates[None])[0])
    if not channels:
        return torch.zeros(0, *grid)
    return torch.cat(channels, dim=0)


def conditioning(obs: ObservationModel, y: Tensor, static: Tensor | None) -> Tensor:
    """Network conditioning from standardised observations.

    Args:
        obs: the observation model.
        y: standardised observations Tensor[B, C, *obs_shape].
        static: static channels Tensor[S, H, W] or None.

    Returns:
        Tensor[B, C·K + S, H, W] with K = ``obs.cond_channels``.
    """
    cond = obs.to_grid(y)
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

    def __init__(self, obs: ObservationModel, scale: Tensor) -> None:
        self.obs, self.scale = obs, scale

    def _scale(self, z: Tensor) -> Tensor:
        return self.scale.to(z).view(1, -1, 1, 1)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        """Standardised field z [B, C, H, W] and observation y [B, C, *obs] → target."""
        return (z - self.obs.baseline(y)) / self._scale(z)

    def inverse(self, r: Tensor, y: Tensor) -> Tensor:
        return self.obs.baseline(y) + r * self._scale(r)


def residual_scale(obs: ObservationModel, z: Tensor, y: Tensor) -> Tensor:
    """Per-variable std of z − b(y) over standardised training pairs: [C].

    Args:
        z: fields [N, C, H, W]; y: their standardised observations [N, C, *obs].
    """
    resid = z - obs.baseline(y)
    return resid.transpose(0, 1).reshape(z.shape[1], -1).std(dim=1).clamp_min(1e-6)


Observer = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]]
"""``observer(batch, generator) -> (z, y)``: a training batch's standardised fields and
standardised observations."""


def simulate_observations(
    obs: ObservationModel, standardiser: Standardiser, z: Tensor, generator: torch.Generator
) -> Tensor:
    """Standardised noisy observations of standardised fields z[B, C, H, W]: the observation
    model's draw A(x) + η ⊙ ε of x = standardiser⁻¹(z), standardised again."""
    return standardiser.forward(obs.sample(standardiser.inverse(z), generator))


def simulated_observations(obs: ObservationModel, standardiser: Standardiser) -> Observer:
    """The batch holds fields z; y is drawn afresh from the observation model every call."""
    return lambda z, generator: (z, simulate_observations(obs, standardiser, z, generator))


def paired_observations(obs: ObservationModel, channels: int) -> Observer:
    """The batch holds [z, ŷ] along channels, ŷ the paired coarse fields on the target grid
    (``to_grid``, block-replicated); y = A(ŷ) recovers the coarse values exactly."""
    return lambda batch, generator: (batch[:, :channels], obs.apply(batch[:, channels:]))


def pack_paired(obs: ObservationModel, z: Tensor, y: Tensor) -> Tensor:
    """Training data for :func:`paired_observations`: [N, 2C, H, W] from z and paired y."""
    return torch.cat([z, obs.to_grid(y)], dim=1)


def training_pairs(
    obs: ObservationModel,
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
        cond = conditioning(obs, y, static)
        return (z if target is None else target.forward(z, y)), cond

    return make_pair


def prior_pairs(static: Tensor | None) -> Callable[[Tensor, torch.Generator], tuple[Tensor,
                                                                                  Tensor | None]]:
    """``make_pair`` of a prior model p(x): the target is the field itself and the only
    conditioning is the static channels (none when there are none)."""

    def make_pair(batch: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        if static is None or not static.numel():
            return batch, None
        return batch, static.to(batch).expand(batch.shape[0], -1, -1, -1)

    return make_pair
