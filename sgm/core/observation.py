"""The observation model of an inverse problem: y = A(x) + η ⊙ ε, ε ~ N(0, I).

One object holds the operator A (``sgm.core.operators``), the noise standard deviation η of
every observed variable (in that variable's physical units) and the grid it acts on. It is
built once from the data spec, described completely by :meth:`ObservationModel.to_dict` (the
description that ``obs.zarr`` and ``model.pt`` carry), and every stage that simulates,
conditions on, inverts or checks observations rebuilds it from that description with
:meth:`ObservationModel.from_dict`: there is no second implementation of the noise or of the
observation geometry anywhere in the package.

Fields have the variables along a channel axis: x[..., C, H, W] → y[..., C, *obs_shape].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sgm.core.operators import Blur, Coarsen, ObservationOperator, SparseMask, Stations
from sgm.core.sensors import Gaps, PythonOperator, Saturating

OPERATORS: dict[str, tuple[type[ObservationOperator], frozenset[str]]] = {
    "coarsen": (Coarsen, frozenset({"factor"})),
    "sparse": (SparseMask, frozenset({"fraction", "seed", "points"})),
    "stations": (Stations, frozenset({"stations"})),
    "blur": (Blur, frozenset({"sigma_pixels", "boundary"})),
    "gaps": (Gaps, frozenset({"boxes"})),
    "saturating": (Saturating, frozenset({"of", "center", "scale"})),
    "python": (PythonOperator, frozenset({"function", "folder", "trust_code", "sha256"})),
}


def build_operator(cfg: Mapping[str, Any], lat: np.ndarray, lon: np.ndarray
                   ) -> ObservationOperator:
    """Build an operator from its parameters, e.g. {"kind": "coarsen", "factor": 4}, on the grid
    with coordinates lat[H], lon[W].

    Kinds and keys: coarsen (factor), sparse (fraction, seed | points), stations (stations: a
    list of {id, lat, lon}), blur (sigma_pixels, boundary), gaps (boxes), saturating (of: an
    operator, center, scale), python (function, folder, trust_code). Unknown kinds or keys raise
    ValueError.
    """
    if "kind" not in cfg:
        raise ValueError(f"Operator config needs a 'kind' key (one of {sorted(OPERATORS)}).")
    kind = cfg["kind"]
    if kind not in OPERATORS:
        raise ValueError(f"Unknown operator kind {kind!r}; expected one of {sorted(OPERATORS)}.")
    cls, allowed = OPERATORS[kind]
    kwargs = {k: v for k, v in cfg.items() if k != "kind"}
    for key in kwargs:
        if key not in allowed:
            raise ValueError(
                f"Unknown key {key!r} for operator kind {kind!r}; allowed keys: {sorted(allowed)}."
            )
    if kind == "saturating":
        inner = build_operator(kwargs.pop("of"), lat, lon)
        if not inner.linear:
            raise ValueError("saturating: the inner operator ('of') must be linear")
        return Saturating(inner, **kwargs)
    try:
        return cls.on_grid(np.asarray(lat), np.asarray(lon), **kwargs)
    except TypeError as err:
        raise ValueError(f"Invalid config for operator kind {kind!r}: {err}") from err


class ObservationModel:
    """y = A(x) + η ⊙ ε on the grid lat[H] × lon[W], one η per observed variable.

    Args:
        operator: the noise-free operator A, applied to every variable alike.
        variables: the names of the C variables (the channel order of x and y).
        noise_std: η per variable, in its physical units (≥ 0).
        lat, lon: the grid's coordinates (1-D, ascending latitudes).
    """

    def __init__(
        self,
        operator: ObservationOperator,
        variables: Sequence[str],
        noise_std: Mapping[str, float],
        lat: Sequence[float] | np.ndarray,
        lon: Sequence[float] | np.ndarray,
    ) -> None:
        self.operator = operator
        self.variables = tuple(str(v) for v in variables)
        missing = [v for v in self.variables if v not in noise_std]
        if missing:
            raise ValueError(f"noise_std: no value for variable(s) {', '.join(missing)}")
        self.noise = {v: float(noise_std[v]) for v in self.variables}
        negative = [v for v, s in self.noise.items() if not s >= 0]
        if negative:
            raise ValueError(f"noise_std: must be ≥ 0 (variable {negative[0]})")
        self.lat = np.asarray(lat, dtype=np.float64)
        self.lon = np.asarray(lon, dtype=np.float64)
        if operator.grid != (self.lat.size, self.lon.size):
            raise ValueError(f"operator grid {operator.grid} differs from the coordinates' "
                             f"{(self.lat.size, self.lon.size)}")

    # ------------------------------------------------------------------ description

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ObservationModel:
        """Rebuild from :meth:`to_dict` (or a spec's description plus a ``grid``)."""
        lat, lon = d["grid"]["lat"], d["grid"]["lon"]
        return cls(build_operator(dict(d["operator"]), lat, lon), d["variables"],
                   d["noise_std"], lat, lon)

    def to_dict(self) -> dict[str, Any]:
        """The complete description: operator, variables, noise per variable, grid."""
        return {
            "operator": self.operator.to_dict(),
            "variables": list(self.variables),
            "noise_std": dict(self.noise),
            "grid": {"lat": self.lat.tolist(), "lon": self.lon.tolist()},
        }

    def __repr__(self) -> str:
        return f"ObservationModel({self.operator!r}, noise_std={self.noise})"

    # ------------------------------------------------------------------ shapes and names

    @property
    def kind(self) -> str:
        return self.operator.kind

    @property
    def grid(self) -> tuple[int, int]:
        return self.operator.grid

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """Shape of one variable's observation."""
        return self.operator.obs_shape

    @property
    def obs_dims(self) -> tuple[str, ...]:
        """Dimension names of one variable's observation in ``obs.zarr``."""
        return self.operator.obs_dims

    @property
    def cond_channels(self) -> int:
        """Conditioning channels per variable (see :meth:`to_grid`)."""
        return self.operator.cond_channels

    @property
    def baseline_name(self) -> str:
        return self.operator.baseline_name

    @property
    def linear(self) -> bool:
        """Whether A is linear (the Gaussian baseline and exact oracle need it)."""
        return self.operator.linear

    def noise_std(self, like: Tensor | None = None) -> Tensor:
        """η as Tensor[C] (float64, or the dtype and device of ``like``)."""
        eta = torch.tensor([self.noise[v] for v in self.variables], dtype=torch.float64)
        return eta if like is None else eta.to(like)

    # ------------------------------------------------------------------ the model

    def apply(self, x: Tensor) -> Tensor:
        """A(x): Tensor[..., C, H, W] -> Tensor[..., C, *obs_shape] (noise-free)."""
        self._check_channels(x, -3)
        return self.operator.apply(x)

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A noisy observation A(x) + η ⊙ ε, ε ~ N(0, I) drawn from ``generator``.

        x: Tensor[..., C, H, W] -> Tensor[..., C, *obs_shape], in x's dtype and device.
        """
        clean = self.apply(x)
        eps = torch.randn(clean.shape, generator=generator, device=x.device, dtype=x.dtype)
        eta = self.noise_std(clean).reshape(-1, *([1] * len(self.obs_shape)))
        return clean + eta * eps

    def adjoint(self, y: Tensor) -> Tensor:
        """Aᵀ(y): Tensor[..., C, *obs_shape] -> Tensor[..., C, H, W]."""
        self._check_channels(y, -1 - len(self.obs_shape))
        return self.operator.adjoint(y)

    def baseline(self, y: Tensor) -> Tensor:
        """The operator's deterministic interpolation: [..., C, *obs] -> [..., C, H, W]."""
        return self.operator.baseline(y)

    def to_grid(self, y: Tensor) -> Tensor:
        """Observations as conditioning channels: [B, C, *obs] -> [B, C·K, H, W]."""
        grid = self.operator.to_grid(y)  # [B, C, K, H, W]
        return grid.reshape(grid.shape[0], -1, *grid.shape[-2:])

    def matrix(self) -> np.ndarray:
        """Dense A of one variable: np.ndarray[n_obs, H*W] (the same for every variable)."""
        return self.operator.matrix()

    def coords(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        """Coordinates of y for ``obs.zarr``: ``obs_lat``/``obs_lon`` on ``obs_dims`` (and 1-D
        ``lat_c``/``lon_c`` when the observations lie on a coarse grid of their own)."""
        lat, lon = self.operator.coords(self.lat, self.lon)
        coords = {"obs_lat": (self.obs_dims, lat), "obs_lon": (self.obs_dims, lon)}
        if self.obs_dims == ("lat_c", "lon_c"):
            coords["lat_c"] = (("lat_c",), lat[:, 0])
            coords["lon_c"] = (("lon_c",), lon[0, :])
        return coords

    def _check_channels(self, t: Tensor, axis: int) -> None:
        if t.ndim < -axis or t.shape[axis] != len(self.variables):
            raise ValueError(f"expected {len(self.variables)} variable channel(s) at axis {axis} "
                             f"({', '.join(self.variables)}), got shape {tuple(t.shape)}")
