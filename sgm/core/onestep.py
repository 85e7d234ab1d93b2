"""Posterior ensembles from a distilled one-step generator: one network call per member.

The generator of ``onestep.pt`` (``sgm.core.distillation``) has the teacher's architecture and
conditioning, evaluated once at its fixed noise level σ_g: x = D(σ_g z; σ_g, cond), z ~ N(0, I).
:class:`OneStep` is that "solver" (the interface of ``sgm.core.solvers.Solver``: one draw of z
per member from the member's own generator), so :class:`OneStepModel` reuses
``ConditionalModel.sample`` unchanged: the same per-member seeds ``member_seed(seed, t, m)``,
the same fixed network batches (a member is bitwise independent of the batch size), the same
residual-target inverse and standardisation, physical units out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sgm.core.posterior import ConditionalModel
from sgm.core.sampler import Denoiser, per_sample_normal

__all__ = ["OneStep", "OneStepModel"]


@dataclass(frozen=True)
class OneStep:
    """x = D(σ_g z; σ_g), z ~ N(0, I) drawn from each member's generator: NFE = 1."""

    sigma_g: float = 80.0
    name: str = "onestep"
    steps: int = 1
    order: int = 1

    @property
    def nfe(self) -> int:
        return 1

    def choice(self) -> dict[str, Any]:
        return {"solver": self.name, "order": 1, "steps": 1, "nfe": 1, "sigma_g": self.sigma_g}

    def label(self) -> str:
        return f"one-step generator at sigma_g = {self.sigma_g:g} (1 NFE)"

    @torch.no_grad()
    def sample(self, denoise: Denoiser, shape: tuple[int, int, int], seeds: Sequence[int],
               device: torch.device | str | None = None) -> Tensor:
        """``len(seeds)`` samples Tensor[B, C, H, W] (float32), sample b from its own seed."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        z = per_sample_normal(gens, shape, device, torch.float32)
        sigma = torch.full((len(seeds),), self.sigma_g, device=device)
        return denoise(self.sigma_g * z, sigma).to(torch.float32)


class OneStepModel:
    """A distilled posterior sampler: ``onestep.pt``'s generator weights and metadata (the
    teacher's metadata plus ``meta["onestep"]["sigma_g"]``)."""

    def __init__(self, model: ConditionalModel, sigma_g: float) -> None:
        self.model = model
        self.meta = model.meta
        self.solver = OneStep(float(sigma_g))

    @classmethod
    def from_state(cls, weights: Mapping[str, Tensor], meta: Mapping[str, Any],
                   device: torch.device) -> OneStepModel:
        """Rebuild the generator (the teacher's architecture) on ``device``."""
        if "onestep" not in meta:
            raise ValueError("not a one-step model: its metadata has no 'onestep' section")
        return cls(ConditionalModel.from_state(weights, meta, device),
                   float(meta["onestep"]["sigma_g"]))

    def sample(self, y: Tensor, time_index: np.ndarray, members: int, seed: int = 0,
               batch_size: int = 64, progress: bool = False) -> Tensor:
        """Members Tensor[T, M, C, H, W] (float32, CPU, physical units) for observations
        y: Tensor[T, C, *obs_shape] in physical units; see ``ConditionalModel.sample``."""
        return self.model.sample(y, time_index, members, self.solver, seed,  # type: ignore[arg-type]
                                 batch_size, progress)
