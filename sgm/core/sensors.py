"""Observation operators beyond linear ones: a saturating sensor, gaps in the data, and
operators the user writes in Python.

Zero-shot inversion (``sgm.core.zero_shot``) needs only A(x) and its derivatives, which
autograd provides, so any differentiable operator can be inverted with a prior model:

    saturating  y = c + s · tanh((A₀(x) − c) / s): a sensor whose readings saturate beyond
                ±s around c (nonlinear; A₀ any linear operator of ``sgm.core.operators``).
    gaps        every grid value except those inside lat/lon boxes (infilling missing data;
                linear).
    python      a function the user writes, ``f(x, lat, lon) -> y`` on Tensor[..., H, W],
                loaded from a file next to the spec. This runs the user's own code: a spec
                must opt in with ``trust_code: true`` (see data_specs/README.md).

Nonlinear operators have no adjoint or matrix; their baseline inverts what it can (the
saturation, then the inner operator's baseline) or back-projects through the linearisation at
zero (``python``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from sgm.core.operators import ObservationOperator, _PointOperator


class Saturating(ObservationOperator):
    """y = c + s · tanh((A₀(x) − c) / s), A₀ a linear operator (``inner``).

    Near c the sensor is linear (slope 1); readings approach c ± s but never pass them, so
    values far beyond are observed only weakly. baseline: A₀'s baseline of the inverted
    reading c + s · atanh((y − c)/s), with (y − c)/s clipped to ±(1 − 1e-6).
    """

    kind = "saturating"
    baseline_name = "inverted saturation, then the inner baseline"
    linear = False

    def __init__(self, inner: ObservationOperator, center: float, scale: float) -> None:
        super().__init__(inner.grid)
        if not scale > 0:
            raise ValueError(f"saturating: scale must be positive, got {scale}")
        self.inner, self.center, self.scale = inner, float(center), float(scale)
        self.cond_channels = inner.cond_channels  # type: ignore[misc]
        self.obs_dims = inner.obs_dims  # type: ignore[misc]

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return self.inner.obs_shape

    @property
    def grid_multiple(self) -> int:
        return self.inner.grid_multiple

    def apply(self, x: Tensor) -> Tensor:
        c, s = self.center, self.scale
        return c + s * torch.tanh((self.inner.apply(x) - c) / s)

    def adjoint(self, y: Tensor) -> Tensor:
        raise ValueError("a saturating sensor is nonlinear: it has no adjoint")

    def matrix(self) -> np.ndarray:
        raise ValueError("a saturating sensor is nonlinear: it has no matrix")

    def unsaturate(self, y: Tensor) -> Tensor:
        """The inner operator's value that gives reading y (clipped inside the range)."""
        c, s = self.center, self.scale
        return c + s * torch.atanh(((y - c) / s).clamp(-1 + 1e-6, 1 - 1e-6))

    def to_grid(self, y: Tensor) -> Tensor:
        return self.inner.to_grid(y)

    def baseline(self, y: Tensor) -> Tensor:
        return self.inner.baseline(self.unsaturate(y))

    def coords(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.coords(lat, lon)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "saturating", "of": self.inner.to_dict(), "center": self.center,
                "scale": self.scale}


class Gaps(_PointOperator):
    """Every grid value except those inside lat/lon boxes [south, north, west, east]: the
    observation of a field with missing data, to be infilled. baseline: nearest observed
    pixel (Euclidean distance in grid cells)."""

    kind = "gaps"
    baseline_name = "nearest observed"
    obs_dims = ("point",)

    def __init__(self, grid: tuple[int, int], boxes: list[list[float]],
                 lat: np.ndarray | None = None, lon: np.ndarray | None = None) -> None:
        h, w = grid
        lat = np.arange(h, dtype=float) if lat is None else np.asarray(lat, dtype=float)
        lon = np.arange(w, dtype=float) if lon is None else np.asarray(lon, dtype=float)
        self.boxes = [[float(v) for v in b] for b in boxes]
        missing = np.zeros((h, w), dtype=bool)
        for box in self.boxes:
            if len(box) != 4 or box[0] > box[1] or box[2] > box[3]:
                raise ValueError(f"gaps: box {box} is not [south, north, west, east]")
            missing |= ((lat[:, None] >= box[0]) & (lat[:, None] <= box[1])
                        & (lon[None, :] >= box[2]) & (lon[None, :] <= box[3]))
        if not missing.any():
            raise ValueError("gaps: the boxes contain no grid point")
        if missing.all():
            raise ValueError("gaps: the boxes cover the whole grid; nothing is observed")
        self.missing = int(missing.sum())
        flat = np.flatnonzero(~missing.ravel())
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        tree = cKDTree(np.stack([flat // w, flat % w], axis=1).astype(np.float64))
        _, nearest = tree.query(np.stack([ii.ravel(), jj.ravel()], axis=1).astype(np.float64))
        super().__init__((h, w), flat[:, None], np.ones((flat.size, 1)), nearest)

    @classmethod
    def on_grid(cls, lat: np.ndarray, lon: np.ndarray, **params: Any) -> Gaps:
        return cls((len(lat), len(lon)), lat=lat, lon=lon, **params)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "gaps", "boxes": [list(b) for b in self.boxes]}


def load_function(reference: str, folder: str | Path) -> tuple[Callable[..., Tensor], str]:
    """The function ``file:name`` (``file`` a Python file in ``folder``, without .py) and the
    SHA-256 of the file. This executes the user's file."""
    module_name, _, name = reference.partition(":")
    if not module_name or not name:
        raise ValueError(f"python operator: {reference!r} is not 'module:function'")
    path = Path(folder) / f"{module_name}.py"
    if not path.is_file():
        raise ValueError(f"python operator: {path} does not exist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = importlib.util.spec_from_file_location(f"sgm_user_operator_{digest[:12]}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"python operator: {path} has no function {name!r}")
    return function, digest


class PythonOperator(ObservationOperator):
    """A user-written operator ``y = f(x, lat, lon)``, x: Tensor[..., H, W] -> y: Tensor[...,
    *obs_shape], differentiable by autograd (see the module docstring: runs user code).

    The observation shape is found by applying f to zeros. baseline and to_grid back-project
    through the linearisation at x = 0: b(y) = Aᵀy / Aᵀ1 where Aᵀ1 > 0 (vector–Jacobian
    products), which for a linear f is the normalised adjoint; to_grid gives (Aᵀy, Aᵀ1).
    """

    kind = "python"
    baseline_name = "back-projection"
    cond_channels = 2
    linear = False

    def __init__(self, grid: tuple[int, int], function: str, folder: str, trust_code: bool,
                 lat: np.ndarray | None = None, lon: np.ndarray | None = None,
                 sha256: str | None = None) -> None:
        super().__init__(grid)
        if not trust_code:
            raise ValueError("python operator: runs your own code; opt in with trust_code: true")
        self.function, self.folder = function, str(folder)
        self.lat = np.arange(grid[0], dtype=float) if lat is None else np.asarray(lat, float)
        self.lon = np.arange(grid[1], dtype=float) if lon is None else np.asarray(lon, float)
        self.f, self.sha256 = load_function(function, folder)
        if sha256 is not None and sha256 != self.sha256:
            raise ValueError(f"python operator: {function} in {folder} changed since these "
                             "observations were made (its file hash differs)")
        if len(inspect.signature(self.f).parameters) != 3:
            raise ValueError(f"python operator: {function} must take (x, lat, lon)")
        probe = self.apply(torch.zeros(*grid, dtype=torch.float64))
        self._obs_shape = tuple(probe.shape)
        self.obs_dims = tuple(f"obs_{i}" for i in range(probe.ndim))  # type: ignore[misc]

    @classmethod
    def on_grid(cls, lat: np.ndarray, lon: np.ndarray, **params: Any) -> PythonOperator:
        return cls((len(lat), len(lon)), lat=lat, lon=lon, **params)

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return self._obs_shape

    def apply(self, x: Tensor) -> Tensor:
        self._check_field(x)
        return self.f(x, self.lat, self.lon)

    def adjoint(self, y: Tensor) -> Tensor:
        """Aᵀy of the linearisation at x = 0 (exact for a linear f)."""
        lead = y.shape[: y.ndim - len(self.obs_shape)]
        x0 = torch.zeros(*lead, *self.grid, dtype=y.dtype, device=y.device, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.apply(x0), x0, y)
        return grad

    def matrix(self) -> np.ndarray:
        raise ValueError("a python operator has no matrix")

    def to_grid(self, y: Tensor) -> Tensor:
        weight = self.adjoint(torch.ones_like(y))
        return torch.stack([self.adjoint(y), weight], dim=-3)

    def baseline(self, y: Tensor) -> Tensor:
        back, weight = self.to_grid(y).unbind(-3)
        filled = back / weight.clamp_min(1e-12)
        return torch.where(weight > 1e-12, filled, filled[weight > 1e-12].mean())

    def coords(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A applied to the coordinate grids, normalised by A(1): for point values and local
        means the observations' own coordinates (nonlinear operators: indicative only)."""
        lat2d, lon2d = np.meshgrid(np.asarray(lat, float), np.asarray(lon, float), indexing="ij")
        norm = self.apply(torch.ones(self.grid, dtype=torch.float64)).clamp_min(1e-12)
        return tuple((self.apply(torch.as_tensor(g)) / norm).detach().numpy()
                     for g in (lat2d, lon2d))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "python", "function": self.function, "folder": self.folder,
                "trust_code": True, "sha256": self.sha256}
