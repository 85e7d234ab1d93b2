"""One entry point to the samplers: a solver's name, its steps and options → posterior samples.

    heun   EDM's stochastic/deterministic Heun sampler (``sampler.edm_sampler``, Karras et al.
           2022, Algorithm 2) on the Karras grid ending in 0: NFE = 2·steps − 1.
    dpm    the multistep exponential integrator in noise-prediction form
           (``multistep.dpm_solver``, order 1–3): NFE = steps.
    dpm++  the data-prediction form, DPM-Solver++(2M) and its third-order analogue
           (``multistep.dpm_solver_pp``): NFE = steps.
    sde    SDE-DPM-Solver++ (``multistep.sde_dpm_solver_pp``, order 1–2, stochasticity eta):
           NFE = steps.

The multistep solvers integrate ``steps`` intervals of the Karras grid from sigma_max down to
sigma_min and return the state there (noise of std sigma_min, negligible against any posterior
spread worth sampling), one denoiser evaluation per interval; ``start_sigma`` adds one first
interval from a larger noise level, which removes the start's mean bias (NFE + 1). On the
Gaussian oracle ``dpm`` of order 3 is calibrated (std within 2 %) at 8 NFE, where Heun is
more than twice too wide (``tests/test_multistep_oracle.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sgm.core.multistep import dpm_solver, dpm_solver_pp, sde_dpm_solver_pp
from sgm.core.sampler import Denoiser, edm_sampler
from sgm.core.schedule import karras_sigmas

SOLVERS = ("heun", "dpm", "dpm++", "sde")


@dataclass(frozen=True)
class Solver:
    """A sampler and its discretisation (the plain values of the ``sample:`` settings)."""

    name: str = "dpm"
    steps: int = 8
    order: int = 3
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    start_sigma: float | None = None
    churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    eta: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in SOLVERS:
            raise ValueError(f"solver {self.name!r} is not known; use one of {', '.join(SOLVERS)}")
        if self.steps < (1 if self.name == "heun" else 2):
            raise ValueError(f"solver {self.name}: steps must be at least "
                             f"{1 if self.name == 'heun' else 2}, got {self.steps}")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      choice: Mapping[str, Any] | None = None) -> Solver:
        """From the plain values of sampler settings (``solver``, ``steps``, ``order``, the
        grid and the solvers' options); ``choice`` ({solver, order, steps}) overrides them."""
        s = {**settings, **(choice or {})}
        if s["steps"] == "auto":
            raise ValueError("steps: auto needs the choice of sgm tune-sampler (--tuning)")
        return cls(name=s["solver"], steps=int(s["steps"]), order=int(s["order"]),
                   **{k: s[k] for k in ("sigma_min", "sigma_max", "rho", "start_sigma", "churn",
                                        "s_tmin", "s_tmax", "s_noise", "eta") if k in s})

    def choice(self) -> dict[str, Any]:
        """{solver, order, steps, nfe}: what a tuning run chooses."""
        return {"solver": self.name, "order": self.order, "steps": self.steps, "nfe": self.nfe}

    @property
    def nfe(self) -> int:
        """Denoiser evaluations per member."""
        if self.name == "heun":
            return 2 * self.steps - 1
        return self.steps + (self.start_sigma is not None)

    def sigmas(self) -> Tensor:
        """The noise levels: ``steps`` Heun steps ending in 0, or ``steps`` intervals ending
        at sigma_min for the multistep solvers."""
        if self.name == "heun":
            return karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)
        return karras_sigmas(self.steps + 1, self.sigma_min, self.sigma_max, self.rho,
                             final_zero=False)

    def label(self) -> str:
        """e.g. ``dpm order 3, 8 steps (8 NFE)``."""
        order = "" if self.name == "heun" else f" order {self.order}"
        return f"{self.name}{order}, {self.steps} steps ({self.nfe} NFE)"

    def sample(
        self,
        denoise: Denoiser,
        shape: tuple[int, int, int],
        seeds: Sequence[int],
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``len(seeds)`` samples Tensor[B, C, H, W], sample b drawn from its own generator."""
        sigmas = self.sigmas().to(device) if device is not None else self.sigmas()
        if self.name == "heun":
            if self.start_sigma is not None:
                raise ValueError("start_sigma is for the multistep solvers (dpm, dpm++, sde)")
            return edm_sampler(denoise, shape, seeds, sigmas, churn=self.churn,
                               s_tmin=self.s_tmin, s_tmax=self.s_tmax, s_noise=self.s_noise,
                               device=device)
        if self.name == "sde":
            return sde_dpm_solver_pp(denoise, shape, seeds, sigmas, order=self.order,
                                     eta=self.eta, device=device, start_sigma=self.start_sigma)
        solve = dpm_solver if self.name == "dpm" else dpm_solver_pp
        return solve(denoise, shape, seeds, sigmas, order=self.order, device=device,
                     start_sigma=self.start_sigma)
