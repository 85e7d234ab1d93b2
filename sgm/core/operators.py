"""Noise-free linear observation operators y = A(x) on a fixed (H, W) grid.

Every operator maps fields x[..., H, W] to observations y[..., *obs_shape] and offers what
inversion and conditioning need: the adjoint Aᵀ (so that <A x, y> = <x, Aᵀ y>), its dense
``matrix`` (for the exact Gaussian posterior of ``sgm.core.gaussian``), the observation mapped
back onto the grid (``to_grid``, a conditional network's input channels), a deterministic
``baseline`` interpolation with its ``baseline_name``, and the coordinates of every observation.
Noise is not the operator's business: :class:`sgm.core.observation.ObservationModel` adds it.

A new operator is one subclass here or in ``sgm.core.sensors`` (registered in
``sgm.core.observation.OPERATORS``) plus its spec model in ``sgm.config.spec``; nothing else in
the package branches on the kind.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

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

    kind: ClassVar[str]
    baseline_name: ClassVar[str]
    cond_channels: ClassVar[int]
    obs_dims: ClassVar[tuple[str, ...]]
    linear: ClassVar[bool] = True

    @property
    def grid_multiple(self) -> int:
        """Tiles and patches start at multiples of this (whole coarse cells)."""
        return 1

    @property
    def shift_period(self) -> int | None:
        """p such that shifting the field by p pixels along either axis (periodically) shifts
        the observations alike, or None: with a stationary periodic prior the exact posterior
        marginals then repeat with period p."""
        return None

    def __init__(self, grid: tuple[int, int]) -> None:
        self.grid = _check_grid(grid)

    @classmethod
    def on_grid(cls, lat: np.ndarray, lon: np.ndarray, **params: Any) -> ObservationOperator:
        """Build on the grid with coordinates lat[H], lon[W] (most operators need only its size)."""
        return cls((len(lat), len(lon)), **params)

    def _check_field(self, x: Tensor) -> None:
        if tuple(x.shape[-2:]) != self.grid:
            raise ValueError(
                f"{self.kind} operator was built for grid {self.grid}, "
                f"got a field of shape {tuple(x.shape)}."
            )

    @property
    @abstractmethod
    def obs_shape(self) -> tuple[int, ...]:
        """Shape of one observation."""

    @abstractmethod
    def apply(self, x: Tensor) -> Tensor:
        """A(x): Tensor[..., H, W] -> Tensor[..., *obs_shape]."""

    @abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        """Aᵀ(y): Tensor[..., *obs_shape] -> Tensor[..., H, W]."""

    @abstractmethod
    def to_grid(self, y: Tensor) -> Tensor:
        """Observation on the target grid: Tensor[..., *obs_shape] -> [..., cond_channels, H, W]."""

    @abstractmethod
    def baseline(self, y: Tensor) -> Tensor:
        """Deterministic interpolation of y to the grid: Tensor[..., *obs_shape] -> [..., H, W]."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Parameters such that ``observation.build_operator(op.to_dict(), lat, lon)`` rebuilds
        ``op``."""

    def coords(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(latitude, longitude)[*obs_shape] of every observation: A applied to the coordinate
        grids (block centres for block means, the pixels themselves for point values)."""
        lat2d, lon2d = np.meshgrid(np.asarray(lat, float), np.asarray(lon, float), indexing="ij")
        return tuple(self.apply(torch.as_tensor(g, dtype=torch.float64)).numpy() for g in
                     (lat2d, lon2d))

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

    Aᵀ y replicates every coarse value over its block, divided by f².
    to_grid: block-replicated (nearest) upsampling, 1 channel.
    baseline: bicubic interpolation (align_corners=False, i.e. block-centre geometry).
    """

    kind = "coarsen"
    baseline_name = "bicubic"
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

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return (self.grid[0] // self.factor, self.grid[1] // self.factor)

    @property
    def grid_multiple(self) -> int:
        return self.factor

    @property
    def shift_period(self) -> int | None:
        return self.factor

    def apply(self, x: Tensor) -> Tensor:
        self._check_field(x)
        f = self.factor
        h, w = self.grid
        blocks = x.reshape(*x.shape[:-2], h // f, f, w // f, f)
        return blocks.mean(dim=(-3, -1))

    def _replicate(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._replicate(y) / self.factor**2

    def to_grid(self, y: Tensor) -> Tensor:
        return self._replicate(y).unsqueeze(-3)

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


class _PointOperator(ObservationOperator):
    """Values at n points, each a fixed weighted sum of grid pixels: y_i = Σ_k w_ik x[p_ik].

    ``index``[n, K] holds row-major pixel indices and ``weights``[n, K] their weights (K = 1 for
    pixel values, 4 for bilinear interpolation). Aᵀ scatters weighted values back; to_grid gives
    2 channels, (Aᵀ y, Aᵀ 1): the values spread onto their pixels and the observation mask.
    baseline: every pixel takes the value of its nearest observation.
    """

    cond_channels = 2

    def __init__(self, grid: tuple[int, int], index: np.ndarray, weights: np.ndarray,
                 nearest: np.ndarray) -> None:
        super().__init__(grid)
        self.index = torch.as_tensor(np.asarray(index, dtype=np.int64))
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        self.nearest = torch.as_tensor(np.asarray(nearest, dtype=np.int64))

    @property
    def n_points(self) -> int:
        return int(self.index.shape[0])

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return (self.n_points,)

    def apply(self, x: Tensor) -> Tensor:
        self._check_field(x)
        flat = x.flatten(-2)
        values = flat[..., self.index.to(x.device).reshape(-1)].reshape(*flat.shape[:-1],
                                                                         *self.index.shape)
        return (values * self.weights.to(x)).sum(dim=-1)

    def adjoint(self, y: Tensor) -> Tensor:
        h, w = self.grid
        contrib = (y[..., None] * self.weights.to(y)).reshape(*y.shape[:-1], -1)
        out = torch.zeros(*y.shape[:-1], h * w, dtype=y.dtype, device=y.device)
        index = self.index.to(y.device).reshape(-1).expand_as(contrib)
        return out.scatter_add(-1, index, contrib).reshape(*y.shape[:-1], h, w)

    def to_grid(self, y: Tensor) -> Tensor:
        mask = self.adjoint(torch.ones(self.n_points, dtype=y.dtype, device=y.device))
        values = self.adjoint(y)
        return torch.stack([values, mask.expand_as(values)], dim=-3)

    def baseline(self, y: Tensor) -> Tensor:
        return y[..., self.nearest.to(y.device)].reshape(*y.shape[:-1], *self.grid)

    def matrix(self) -> np.ndarray:
        a = np.zeros((self.n_points, self.grid[0] * self.grid[1]))
        rows = np.repeat(np.arange(self.n_points), self.index.shape[1])
        np.add.at(a, (rows, self.index.numpy().ravel()), self.weights.numpy().ravel())
        return a


class SparseMask(_PointOperator):
    """Point values at a fixed set of pixels: y[..., n_points].

    The points are either given explicitly or are a random ``fraction`` of the pixels,
    drawn once with ``numpy.random.default_rng(seed)``; they are stored as sorted row-major
    flat indices. ``to_dict`` lists them (with the fraction and seed they came from), and given
    points take precedence over a fraction, so a rebuilt operator never re-draws them.
    baseline: nearest-neighbour fill from the points (Euclidean distance in pixels).
    """

    kind = "sparse"
    baseline_name = "nearest"
    obs_dims = ("point",)

    def __init__(
        self,
        grid: tuple[int, int],
        fraction: float | None = None,
        seed: int = 0,
        points: list[tuple[int, int]] | None = None,
    ) -> None:
        h, w = _check_grid(grid)
        self.fraction = None if fraction is None else float(fraction)
        self.seed = int(seed)
        if points is not None:
            pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
            if len(pts) == 0:
                raise ValueError("SparseMask 'points' is empty.")
            if (pts < 0).any() or (pts[:, 0] >= h).any() or (pts[:, 1] >= w).any():
                outside = next(p for p in pts.tolist()
                               if p[0] < 0 or p[1] < 0 or p[0] >= h or p[1] >= w)
                raise ValueError(f"sparse point {outside} lies outside the {h}x{w} grid")
            flat = np.unique(pts[:, 0] * w + pts[:, 1])
        elif self.fraction is not None:
            if not 0.0 < self.fraction <= 1.0:
                raise ValueError(f"sparse fraction must be in (0, 1], got {self.fraction}.")
            n = max(1, round(self.fraction * h * w))
            flat = np.sort(np.random.default_rng(self.seed).choice(h * w, size=n, replace=False))
        else:
            raise ValueError("SparseMask needs 'fraction' or 'points'.")
        self.points = [(int(i) // w, int(i) % w) for i in flat]
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        tree = cKDTree(np.stack([flat // w, flat % w], axis=1).astype(np.float64))
        _, nearest = tree.query(np.stack([ii.ravel(), jj.ravel()], axis=1).astype(np.float64))
        super().__init__((h, w), flat[:, None], np.ones((flat.size, 1)), nearest)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "sparse", "points": [list(p) for p in self.points]}
        if self.fraction is not None:
            out.update(fraction=self.fraction, seed=self.seed)
        return out


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Points on the unit sphere [..., 3] at latitudes/longitudes in degrees."""
    phi, lam = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1)


def _fractional_index(axis: np.ndarray, value: float) -> float | None:
    """Position of ``value`` on an ascending coordinate axis, in grid steps (None outside)."""
    if not axis[0] <= value <= axis[-1]:
        return None
    return float(np.interp(value, axis, np.arange(axis.size, dtype=float)))


class Stations(_PointOperator):
    """Station values interpolated bilinearly from the four surrounding grid points.

    For a station at fractional grid position (i + a, j + b), 0 ≤ a, b < 1:

        y = (1−a)(1−b) x[i, j] + (1−a) b x[i, j+1] + a (1−b) x[i+1, j] + a b x[i+1, j+1]

    (on an irregular grid the fraction is linear in the coordinate within each cell). Station
    longitudes are matched to the grid's convention (λ, λ ± 360). A station outside the grid's
    latitude or longitude range is an error naming it. baseline: the value of the nearest
    station by great-circle distance.
    """

    kind = "stations"
    baseline_name = "nearest station"
    obs_dims = ("station",)

    def __init__(self, grid: tuple[int, int], stations: list[dict[str, Any]],
                 lat: np.ndarray | None = None, lon: np.ndarray | None = None) -> None:
        h, w = _check_grid(grid)
        lat = np.arange(h, dtype=float) if lat is None else np.asarray(lat, dtype=float)
        lon = np.arange(w, dtype=float) if lon is None else np.asarray(lon, dtype=float)
        if (lat.size, lon.size) != (h, w) or h < 2 or w < 2:
            raise ValueError(f"stations need a grid of at least 2x2 points with coordinates, "
                             f"got {h}x{w}")
        if not stations:
            raise ValueError("stations: the list is empty")
        self.stations = [{"id": str(s["id"]), "lat": float(s["lat"]), "lon": float(s["lon"])}
                         for s in stations]
        ids = [s["id"] for s in self.stations]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"stations: ids must be unique (repeated: {', '.join(twice)})")
        index, weights, positions = [], [], []
        for s in self.stations:
            fi = _fractional_index(lat, s["lat"])
            fj = next((f for f in (_fractional_index(lon, s["lon"] + k) for k in (0, -360, 360))
                       if f is not None), None)
            if fi is None or fj is None:
                raise ValueError(
                    f"station {s['id']!r} at lat {s['lat']:g}, lon {s['lon']:g} lies outside the "
                    f"grid (lat {lat[0]:g} to {lat[-1]:g}, lon {lon[0]:g} to {lon[-1]:g})"
                )
            i, j = min(int(fi), h - 2), min(int(fj), w - 2)
            a, b = fi - i, fj - j
            index.append([i * w + j, i * w + j + 1, (i + 1) * w + j, (i + 1) * w + j + 1])
            weights.append([(1 - a) * (1 - b), (1 - a) * b, a * (1 - b), a * b])
            positions.append((s["lat"], s["lon"]))
        pos = np.asarray(positions)
        lat2d, lon2d = np.meshgrid(lat, lon, indexing="ij")
        tree = cKDTree(_unit_vectors(pos[:, 0], pos[:, 1]))
        _, nearest = tree.query(_unit_vectors(lat2d.ravel(), lon2d.ravel()))
        super().__init__((h, w), np.asarray(index), np.asarray(weights), nearest)

    @classmethod
    def on_grid(cls, lat: np.ndarray, lon: np.ndarray, **params: Any) -> Stations:
        return cls((len(lat), len(lon)), lat=lat, lon=lon, **params)

    def coords(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([s["lat"] for s in self.stations]),
                np.array([s["lon"] for s in self.stations]))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "stations", "stations": [dict(s) for s in self.stations]}


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

    Separable: A = K_H ⊗ K_W, with 1-D Gaussian kernels truncated at 4 sigma and a periodic or
    reflecting boundary; Aᵀ y = K_Hᵀ y K_W. to_grid: the blurred field, 1 channel.
    baseline: the blurred field itself (no deconvolution).
    """

    kind = "blur"
    baseline_name = "blurred observation"
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

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return self.grid

    def _kernels(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (self._kh.to(device=x.device, dtype=x.dtype),
                self._kw.to(device=x.device, dtype=x.dtype))

    def apply(self, x: Tensor) -> Tensor:
        self._check_field(x)
        kh, kw = self._kernels(x)
        return kh @ x @ kw.T

    def adjoint(self, y: Tensor) -> Tensor:
        kh, kw = self._kernels(y)
        return kh.T @ y @ kw

    def coords(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tuple(np.meshgrid(np.asarray(lat, float), np.asarray(lon, float), indexing="ij"))

    def to_grid(self, y: Tensor) -> Tensor:
        return y.unsqueeze(-3)

    def baseline(self, y: Tensor) -> Tensor:
        return y.clone()

    def matrix(self) -> np.ndarray:
        return np.kron(self._kh.numpy(), self._kw.numpy())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "blur", "sigma_pixels": self.sigma_pixels, "boundary": self.boundary}
