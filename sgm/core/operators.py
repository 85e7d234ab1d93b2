"""Noise-free linear observation operators y = A(x) on a fixed (H, W) grid.

Observation noise is added by callers: y = A(x) + noise_std * eps. Every operator also
maps an observation back onto the target grid (``to_grid``, the network's conditioning
channels), gives a deterministic interpolation ``baseline`` and its dense ``matrix`` (for
the exact Gaussian posterior of ``sgm.core.gaussian``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(g) for g in grid)
    if h < 1 or w < 1:
        raise ValueError(f"grid must be two positive sizes (H, W), got {grid}.")
    return h, w


class ObservationOperator(ABC):
    """A linear map from fields x[..., H, W] to observations y[..., *obs_shape]."""

    name: str
    cond_channels: int
    obs_dims: tuple[str, ...]

    def __init__(self, grid: tuple[int, int]) -> None:
        self.grid = _check_grid(grid)

    def _check_field(self, x: Tensor) -> None:
        if tuple(x.shape[-2:]) != self.grid:
            raise ValueError(
                f"{self.name} operator was built for grid {self.grid}, "
                f"got a field of shape {tuple(x.shape)}."
            )

    @abstractmethod
    def obs_shape(self, grid: tuple[int, int]) -> tuple[int, ...]:
        """Shape of one observation for a field on ``grid``."""

    @abstractmethod
    def apply(self, x: Tensor) -> Tensor:
        """A(x): Tensor[..., H, W] -> Tensor[..., *obs_shape]."""

    @abstractmethod
    def to_grid(self, y: Tensor) -> Tensor:
        """Observation on the target grid: Tensor[..., *obs_shape] -> [..., cond_channels, H, W]."""

    @abstractmethod
    def baseline(self, y: Tensor) -> Tensor:
        """Deterministic interpolation of y to the grid: Tensor[..., *obs_shape] -> [..., H, W]."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Configuration such that ``build_operator(op.to_dict(), grid)`` rebuilds ``op``."""

    def matrix(self) -> np.ndarray:
        """Dense A: np.ndarray[n_obs, H*W] (float64), columns in row-major (H, W) order.

        Generic version: apply the operator to every unit field.
        """
        h, w = self.grid
        eye = torch.eye(h * w, dtype=torch.float64).reshape(h * w, h, w)
        return self.apply(eye).reshape(h * w, -1).T.numpy().copy()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "kind")
        return f"{type(self).__name__}(grid={self.grid}, {args})"


class Coarsen(ObservationOperator):
    """Block average over ``factor`` x ``factor`` pixels: y[..., H/f, W/f].

    to_grid: block-replicated (nearest) upsampling, 1 channel.
    baseline: bicubic interpolation (align_corners=False, i.e. block-centre geometry).
    """

    name = "coarsen"
    cond_channels = 1
    obs_dims = ("lat_c", "lon_c")

    def __init__(self, grid: tuple[int, int], factor: int) -> None:
        super().__init__(grid)
        if int(factor) != factor or factor < 1:
            raise ValueError(f"coarsen factor must be a positive integer, got {factor!r}.")
        self.factor = int(factor)
        h, w = self.grid
        if h % self.factor or w % self.factor:
            raise ValueError(
                f"Grid {self.grid} is not divisible by the coarsening factor {self.factor}: "
                "both H and W must be multiples of it."
            )

    def obs_shape(self, grid: tuple[int, int]) -> tuple[int, ...]:
        return (grid[0] // self.factor, grid[1] // self.factor)

    def apply(self, x: Tensor) -> Tensor:
        self._check_field(x)
        f = self.factor
        h, w = self.grid
        blocks = x.reshape(*x.shape[:-2], h // f, f, w // f, f)
        return blocks.mean(dim=(-3, -1))

    def to_grid(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1).unsqueeze(-3)

    def baseline(self, y: Tensor) -> Tensor:
        lead = y.shape[:-2]
        flat = y.reshape(-1, 1, *y.shape[-2:])
        dtype = flat.dtype if flat.is_floating_point() else torch.float32
        up = F.interpolate(
            flat.to(dtype), scale_factor=self.factor, mode="bicubic", align_corners=False
        )
        return up.reshape(*lead, *self.grid)

    def matrix(self) -> np.ndarray:
        h, w = self.grid
        f = self.factor
        rows = (np.arange(h)[:, None] // f) * (w // f) + np.arange(w)[None, :] // f
        a = np.zeros(((h // f) * (w // f), h * w))
        a[rows.ravel(), np.arange(h * w)] = 1.0 / f**2
        return a

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "coarsen", "factor": self.factor}


class SparseMask(ObservationOperator):
    """Point values at a fixed set of pixels: y[..., n_points].

    The points are either given explicitly or are a random ``fraction`` of the pixels,
    drawn once with ``numpy.random.default_rng(seed)``; they are stored as sorted
    row-major flat indices.

    to_grid: 2 channels, (values scattered onto the grid with zeros elsewhere, 0/1 mask).
    baseline: nearest-neighbour fill from the points (Euclidean distance in pixels).
    """

    name = "sparse"
    cond_channels = 2
    obs_dims = ("point",)

    def __init__(
        self,
        grid: tuple[int, int],
        fraction: float | None = None,
        seed: int = 0,
        points: list[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(grid)
        h, w = self.grid
        if (fraction is None) == (points is None):
            raise ValueError("SparseMask needs exactly one of 'fraction' or 'points'.")
        self.fraction = None if fraction is None else float(fraction)
        self.seed = int(seed)
        self.explicit = points is not None
        if points is not None:
            pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
            if len(pts) == 0:
                raise ValueError("SparseMask 'points' is empty.")
            if (pts < 0).any() or (pts[:, 0] >= h).any() or (pts[:, 1] >= w).any():
                raise ValueError(f"SparseMask 'points' must lie inside the grid {self.grid}.")
            flat = np.unique(pts[:, 0] * w + pts[:, 1])
        else:
            assert self.fraction is not None
            if not 0.0 < self.fraction <= 1.0:
                raise ValueError(f"sparse fraction must be in (0, 1], got {self.fraction}.")
            n = max(1, round(self.fraction * h * w))
            rng = np.random.default_rng(self.seed)
            flat = np.sort(rng.choice(h * w, size=n, replace=False))
        self.index = torch.as_tensor(flat, dtype=torch.long)
        self.points = [(int(i) // w, int(i) % w) for i in flat]
        # Nearest observed point of every pixel, for the baseline.
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        tree = cKDTree(np.stack([flat // w, flat % w], axis=1).astype(np.float64))
        _, nearest = tree.query(np.stack([ii.ravel(), jj.ravel()], axis=1).astype(np.float64))
        self.nearest = torch.as_tensor(nearest, dtype=torch.long)

    @property
    def n_points(self) -> int:
        return int(self.index.numel())

    def obs_shape(self, grid: tuple[int, int]) -> tuple[int, ...]:
        return (self.n_points,)

    def apply(self, x: Tensor) -> Tensor:
        self._check_field(x)
        return x.flatten(-2)[..., self.index.to(x.device)]

    def to_grid(self, y: Tensor) -> Tensor:
        h, w = self.grid
        index = self.index.to(y.device)
        values = torch.zeros(*y.shape[:-1], h * w, dtype=y.dtype, device=y.device)
        values[..., index] = y
        mask = torch.zeros(h * w, dtype=y.dtype, device=y.device)
        mask[index] = 1.0
        mask = mask.expand_as(values)
        return torch.stack([values, mask], dim=-2).reshape(*y.shape[:-1], 2, h, w)

    def baseline(self, y: Tensor) -> Tensor:
        return y[..., self.nearest.to(y.device)].reshape(*y.shape[:-1], *self.grid)

    def matrix(self) -> np.ndarray:
        a = np.zeros((self.n_points, self.grid[0] * self.grid[1]))
        a[np.arange(self.n_points), self.index.numpy()] = 1.0
        return a

    def to_dict(self) -> dict[str, Any]:
        if self.explicit:
            return {"kind": "sparse", "points": [list(p) for p in self.points]}
        return {"kind": "sparse", "fraction": self.fraction, "seed": self.seed}


def _gaussian_matrix_1d(n: int, sigma: float, boundary: str) -> np.ndarray:
    """Row-normalised 1-D Gaussian smoothing matrix K[n, n], truncated at 4 sigma.

    periodic: offsets wrap modulo n; reflect: offsets mirror at the edges without
    repeating the edge pixel (numpy/torch "reflect"), folded as often as needed.
    """
    radius = max(1, math.ceil(4.0 * sigma))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    k = np.zeros((n, n))
    for i in range(n):
        j = i + offsets
        if boundary == "periodic":
            j = np.mod(j, n)
        elif n == 1:
            j = np.zeros_like(j)
        else:
            j = np.mod(j, 2 * (n - 1))
            j = np.where(j >= n, 2 * (n - 1) - j, j)
        np.add.at(k[i], j, weights)
    return k


class Blur(ObservationOperator):
    """Gaussian blur with standard deviation ``sigma_pixels``: y[..., H, W].

    Separable: A = K_H (x) K_W, with 1-D Gaussian kernels truncated at 4 sigma and a
    periodic or reflecting boundary. to_grid: the blurred field, 1 channel.
    baseline: the blurred field itself (no deconvolution).
    """

    name = "blur"
    cond_channels = 1
    obs_dims = ("lat", "lon")

    def __init__(
        self, grid: tuple[int, int], sigma_pixels: float, boundary: str = "periodic"
    ) -> None:
        super().__init__(grid)
        if not sigma_pixels > 0:
            raise ValueError(f"blur sigma_pixels must be positive, got {sigma_pixels}.")
        if boundary not in ("periodic", "reflect"):
            raise ValueError(f"blur boundary must be 'periodic' or 'reflect', got {boundary!r}.")
        self.sigma_pixels = float(sigma_pixels)
        self.boundary = boundary
        h, w = self.grid
        self._kh = torch.as_tensor(_gaussian_matrix_1d(h, self.sigma_pixels, boundary))
        self._kw = torch.as_tensor(_gaussian_matrix_1d(w, self.sigma_pixels, boundary))

    def obs_shape(self, grid: tuple[int, int]) -> tuple[int, ...]:
        return tuple(grid)

    def apply(self, x: Tensor) -> Tensor:
        self._check_field(x)
        kh = self._kh.to(device=x.device, dtype=x.dtype)
        kw = self._kw.to(device=x.device, dtype=x.dtype)
        return kh @ x @ kw.T

    def to_grid(self, y: Tensor) -> Tensor:
        return y.unsqueeze(-3)

    def baseline(self, y: Tensor) -> Tensor:
        return y.clone()

    def matrix(self) -> np.ndarray:
        return np.kron(self._kh.numpy(), self._kw.numpy())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "blur", "sigma_pixels": self.sigma_pixels, "boundary": self.boundary}


_KINDS: dict[str, tuple[type[ObservationOperator], frozenset[str]]] = {
    "coarsen": (Coarsen, frozenset({"factor"})),
    "sparse": (SparseMask, frozenset({"fraction", "seed", "points"})),
    "blur": (Blur, frozenset({"sigma_pixels", "boundary"})),
}


def build_operator(cfg: dict[str, Any], grid: tuple[int, int]) -> ObservationOperator:
    """Build an operator from a config such as {"kind": "coarsen", "factor": 4}.

    Kinds and keys: coarsen (factor), sparse (fraction, seed | points),
    blur (sigma_pixels, boundary). Unknown kinds or keys raise ValueError.
    """
    if "kind" not in cfg:
        raise ValueError(f"Operator config needs a 'kind' key (one of {sorted(_KINDS)}).")
    kind = cfg["kind"]
    if kind not in _KINDS:
        raise ValueError(f"Unknown operator kind {kind!r}; expected one of {sorted(_KINDS)}.")
    cls, allowed = _KINDS[kind]
    kwargs = {k: v for k, v in cfg.items() if k != "kind"}
    for key in kwargs:
        if key not in allowed:
            raise ValueError(
                f"Unknown key {key!r} for operator kind {kind!r}; allowed keys: {sorted(allowed)}."
            )
    try:
        return cls(grid, **kwargs)
    except TypeError as err:
        raise ValueError(f"Invalid config for operator kind {kind!r}: {err}") from err
