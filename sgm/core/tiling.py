"""Tiled denoising: a denoiser of h x w tiles turned into a denoiser of the whole field.

Grids larger than one network call (CorrDiff's 448 x 448, WassDiff's 1 km CONUS) are
generated on overlapping tiles by a network trained on random patches. Here the field
x[B, C, H, W] and its conditioning channels are cut into overlapping tiles, the tile denoiser
sees at most ``batch`` tiles per call (memory flat in the grid size, beside the field itself)
and the tile outputs are blended with a smooth partition of unity:

    D(x, sigma)[p] = sum_t w_t(p) D_tile(x|_t, sigma, cond|_t)[p - o_t],  sum_t w_t(p) = 1,

with w_t = a_t (x) b_t separable. Along an axis, tile k's un-normalised window rises as
sin^2(pi/2 (u + 1/2) / o) over its overlap o with tile k-1 and falls as cos^2 over its overlap
with tile k+1 (1 elsewhere, and at the edges of a non-periodic domain); two neighbours'
ramps over the same o pixels sum to 1 exactly, and dividing by the sum of all windows makes
it exact for any layout. The weight of a tile vanishes towards its edges, where a patch model
lacks the context beyond the tile, so members are seamless when the overlap spans several
correlation lengths of the posterior (quantified in ``tests/test_tiling_oracle.py``). A
shorter ``ramp`` cross-fades over the centre of each overlap only (0: each pixel from the tile
in which it is most central): better for a denoiser whose error grows towards its tile's edges
(the exact local oracle: 2.5 x less error at 16 px of overlap), riskier for networks whose
tiles disagree, which the wide cross-fade smooths over.

Layout (:func:`tile_starts`): along an axis of n pixels, with tiles of size h, nominal overlap
o and stride s = h - o rounded down to a multiple of ``align``, the tiles are spread evenly in
units of ``align``; on a non-periodic axis the first starts at 0 and the last is flush with the
edge (start n - h), on a periodic axis they wrap around (tile start + h may exceed n). Every
actual overlap is at least o. ``align`` keeps tiles on the observation's own grid, e.g. the
coarsening factor, so that every tile holds whole coarse cells.

Since the result is just a :data:`~sgm.core.sampler.Denoiser`, it works with every solver of
``sgm.core.sampler`` and ``sgm.core.multistep``. Position channels (:func:`grid_coordinates`,
:func:`sphere_coordinates`) are static conditioning channels like any other: concatenated to
``cond`` they tell a patch model where its tile lies; :func:`random_patches` cuts training
patches of fields and conditioning alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

TileDenoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``tile_denoise(x[b, C, h, w], sigma[b], cond[b, K, h, w]) -> D[b, C, h, w]`` (K may be 0),
e.g. an ``EDMPrecond`` trained on patches."""


def tile_starts(n: int, size: int, overlap: int, periodic: bool = False, align: int = 1
                ) -> list[int]:
    """Start indices of the tiles along one axis of ``n`` pixels (see the module docstring).

    In units of ``align``, with stride s = (size - overlap) // align:

        non-periodic: k * span // g,  k = 0..g,  span = (n - size) / align, g = ceil(span / s)
                      (one tile when size = n): the first starts at 0, the last ends at n;
        periodic:     k * (n / align) // g,  k = 0..g-1,  g = ceil(n / align / s).

    Consecutive starts are at most s apart, so every actual overlap is >= ``overlap``.
    """
    if not 0 < size <= n:
        raise ValueError(f"tile size {size} must be in [1, {n}] (the grid's size)")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap {overlap} must be in [0, tile size {size})")
    if align < 1 or n % align or size % align:
        raise ValueError(f"grid {n} and tile {size} must be multiples of align = {align}")
    stride = (size - overlap) // align
    if stride < 1:
        raise ValueError(f"tile {size} - overlap {overlap} is below align = {align}")
    if periodic:
        count = math.ceil(n // align / stride)
        return [k * (n // align) // count * align for k in range(count)]
    span = (n - size) // align
    gaps = math.ceil(span / stride)
    return [k * span // gaps * align for k in range(gaps + 1)] if gaps else [0]


def _fade_in(o: int, ramp: int | None) -> Tensor:
    """Weight Tensor[o] of the later of two tiles across their o-pixel overlap: 0 -> 1 as
    sin^2(pi/2 t), t rising linearly over the central min(ramp, o) pixels (all of them for
    ramp None; a step at the centre for ramp 0). 1 - it is the earlier tile's weight."""
    v = torch.arange(o, dtype=torch.float64) + 0.5
    r = o if ramp is None else min(ramp, o)
    if r == 0:
        t = torch.heaviside(v - o / 2, torch.tensor(0.5, dtype=torch.float64))
    else:
        t = ((v - (o - r) / 2) / r).clamp(0.0, 1.0)
    return torch.sin(0.5 * math.pi * t) ** 2


def blend_windows(starts: Sequence[int], size: int, n: int, periodic: bool = False,
                  ramp: int | None = None) -> Tensor:
    """Normalised 1-D blending weights Tensor[len(starts), size] (float64): tile k's weight
    at its pixel u, pixel (starts[k] + u) mod n; over all tiles they sum to 1 at every pixel.

    Across each overlap the two tiles cross-fade (:func:`_fade_in`; ``ramp`` None: over the
    whole overlap); a tile keeps weight 1 where it has no neighbour."""
    count = len(starts)
    ramps = torch.ones(count, size, dtype=torch.float64)
    for k, start in enumerate(starts if count > 1 else []):
        prev = starts[k - 1] - (n if k == 0 else 0)
        nxt = starts[(k + 1) % count] + (n if k == count - 1 else 0)
        o_prev = prev + size - start if (k > 0 or periodic) else 0
        o_next = start + size - nxt if (k < count - 1 or periodic) else 0
        if o_prev > 0:
            ramps[k, :o_prev] *= _fade_in(o_prev, ramp)
        if o_next > 0:
            ramps[k, size - o_next :] *= 1.0 - _fade_in(o_next, ramp)
    index = (torch.tensor(starts)[:, None] + torch.arange(size)[None, :]) % n
    total = torch.zeros(n, dtype=torch.float64).index_add_(0, index.reshape(-1),
                                                           ramps.reshape(-1))
    return ramps / total[index]


@dataclass(frozen=True)
class TileLayout:
    """Overlapping tiles of size ``tile`` on ``grid`` (both (H, W); see the module docstring),
    cross-fading over the central ``ramp`` pixels of every overlap (None: all of it).

    ``rows``/``cols``: the start indices along each axis (:func:`tile_starts`); the tiles are
    their product, in row-major order. Raises ValueError for tiles that do not fit.
    """

    grid: tuple[int, int]
    tile: tuple[int, int]
    overlap: tuple[int, int]
    periodic: bool = False
    align: int = 1
    ramp: int | None = None

    rows: tuple[int, ...] = field(init=False)
    cols: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        for axis, name in enumerate(("rows", "cols")):
            starts = tile_starts(self.grid[axis], self.tile[axis], self.overlap[axis],
                                 self.periodic, self.align)
            object.__setattr__(self, name, tuple(starts))

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def indices(self) -> list[tuple[Tensor, Tensor]]:
        """Per tile (row indices Tensor[h], column indices Tensor[w]), wrapped modulo the grid."""
        (h, w), (nh, nw) = self.tile, self.grid
        return [((torch.arange(h) + r) % nh, (torch.arange(w) + c) % nw)
                for r in self.rows for c in self.cols]

    def shared_pixels(self) -> Tensor:
        """Bool Tensor[H, W]: the pixels in more than one tile (where tiles are blended, and
        where a seam would show)."""
        count = torch.zeros(self.grid, dtype=torch.int64)
        for rows, cols in self.indices():
            count[rows[:, None], cols[None, :]] += 1
        return count > 1

    def weights(self) -> Tensor:
        """Blending weights a_t (x) b_t of every tile, Tensor[T, h, w] (float64), summing to 1
        at every pixel of the grid (:func:`blend_windows` along each axis)."""
        a = blend_windows(self.rows, self.tile[0], self.grid[0], self.periodic, self.ramp)
        b = blend_windows(self.cols, self.tile[1], self.grid[1], self.periodic, self.ramp)
        return (a[:, None, :, None] * b[None, :, None, :]).reshape(-1, *self.tile)


class TiledDenoiser:
    """``denoise(x[B, C, H, W], sigma[B]) -> D[B, C, H, W]`` from a tile denoiser.

    The B x T (member, tile) pairs are taken tile-major in chunks of at most ``batch``; each
    chunk is one call of ``tile_denoise``, whose outputs are weighted and added into the field
    tile after tile. Every pixel thus sums its tiles in the same order whatever ``batch``, B or
    the grid: the result depends on ``batch`` only through the tile denoiser itself (bitwise
    not at all for one that treats samples independently; wrap a network in
    ``sgm.core.sampler.fixed_batch(net, batch)`` to make it so, as convolution libraries
    choose their algorithm from the batch size). Memory: the field, its output and ``batch``
    tiles of state and conditioning.

    Args:
        tile_denoise: :data:`TileDenoiser`.
        layout: the tiles (grid, tile size, overlap, periodic or not, alignment).
        cond: conditioning channels Tensor[1 or B, K, H, W] on the full grid (observations on
            the grid, static and position channels), cut like x; None for K = 0.
        batch: the most tiles per call of ``tile_denoise``.
    """

    def __init__(
        self,
        tile_denoise: TileDenoiser,
        layout: TileLayout,
        cond: Tensor | None = None,
        batch: int = 16,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if cond is not None and (cond.ndim != 4 or tuple(cond.shape[-2:]) != layout.grid):
            raise ValueError(f"cond must be [1 or B, K, {layout.grid[0]}, {layout.grid[1]}], "
                             f"got {tuple(cond.shape)}")
        self.tile_denoise = tile_denoise
        self.layout = layout
        self.cond = cond
        self.batch = int(batch)
        self._index = layout.indices()
        self._weights = layout.weights()

    def _cut(self, field: Tensor, members: slice, tile: int) -> Tensor:
        rows, cols = self._index[tile]
        return field[members][:, :, rows[:, None], cols[None, :]]

    def _cond(self, like: Tensor, members: slice, tile: int) -> Tensor:
        if self.cond is None:
            return like.new_zeros(like.shape[0], 0, *self.layout.tile)
        if self.cond.shape[0] == 1:
            return self._cut(self.cond, slice(0, 1), tile).expand(like.shape[0], -1, -1, -1)
        return self._cut(self.cond, members, tile)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.layout.grid:
            raise ValueError(f"expected x [B, C, {self.layout.grid[0]}, {self.layout.grid[1]}],"
                             f" got {tuple(x.shape)}")
        members = x.shape[0]
        if self.cond is not None and self.cond.shape[0] not in (1, members):
            raise ValueError(f"cond has batch {self.cond.shape[0]}, x has {members}")
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(members)
        out = torch.zeros_like(x)
        total = len(self._index) * members  # pair q = (tile q // B, member q % B)
        for start in range(0, total, self.batch):
            stop = min(start + self.batch, total)
            segments = [  # (tile, its members in this chunk)
                (t, slice(max(start - t * members, 0), min(stop - t * members, members)))
                for t in range(start // members, (stop - 1) // members + 1)
            ]
            xs = [self._cut(x, m, t) for t, m in segments]
            d = self.tile_denoise(
                torch.cat(xs),
                torch.cat([sigma[m] for _, m in segments]),
                torch.cat([self._cond(xt, m, t) for (t, m), xt in zip(segments, xs, strict=True)]),
            )
            offset = 0
            for t, m in segments:
                n = m.stop - m.start
                rows, cols = self._index[t]
                weight = self._weights[t].to(out)
                out[m, :, rows[:, None], cols[None, :]] += weight * d[offset : offset + n].to(out)
                offset += n
        return out


def grid_coordinates(grid: tuple[int, int]) -> Tensor:
    """Normalised grid coordinates Tensor[2, H, W] (float32): row and column, each linear from
    -1 at the first to +1 at the last pixel (0 for a single pixel), as position channels."""
    axes = [torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1) for n in grid]
    rows, cols = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([rows, cols])


def sphere_coordinates(lat: np.ndarray | Sequence[float], lon: np.ndarray | Sequence[float]
                       ) -> Tensor:
    """Position channels Tensor[3, H, W] (float32) from latitudes[H] and longitudes[W] in
    degrees: the unit vector (cos phi cos lambda, cos phi sin lambda, sin phi), continuous
    across the date line and the poles, the same for a pixel in every tile and patch."""
    phi = torch.as_tensor(np.radians(np.asarray(lat, dtype=np.float64)))[:, None]
    lam = torch.as_tensor(np.radians(np.asarray(lon, dtype=np.float64)))[None, :]
    xyz = [phi.cos() * lam.cos(), phi.cos() * lam.sin(), phi.sin().expand(-1, lam.shape[1])]
    return torch.stack(torch.broadcast_tensors(*xyz)).to(torch.float32)


def random_patches(
    fields: Tensor,
    cond: Tensor | None,
    size: tuple[int, int],
    generator: torch.Generator,
    align: int = 1,
    periodic: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One random patch per sample of fields[B, C, H, W] and of its conditioning (observation,
    static and position channels) cond[1 or B, K, H, W], at the same place in both.

    The top-left corner of sample b is (align * i_b, align * j_b) with i_b, j_b uniform
    integers drawn from ``generator`` (rows first, then columns, B each): in [0, (H - h) /
    align] when not periodic (patches inside the grid), in [0, H / align) when periodic
    (patches wrap around). ``align`` keeps patches on the observation's grid, as
    :class:`TileLayout` does for tiles.

    Returns:
        (patches Tensor[B, C, h, w], cond patches Tensor[B, K, h, w] (K = 0 for None),
        corners Tensor[B, 2] (int64, row and column)).
    """
    batch, (nh, nw), (h, w) = fields.shape[0], fields.shape[-2:], size
    if not (0 < h <= nh and 0 < w <= nw):
        raise ValueError(f"patch size {size} does not fit the grid {(nh, nw)}")
    if align < 1 or any(v % align for v in (nh, nw, h, w)):
        raise ValueError(f"grid {(nh, nw)} and patch {size} must be multiples of align={align}")
    highs = [n // align if periodic else (n - s) // align + 1 for n, s in ((nh, h), (nw, w))]
    corners = torch.stack([torch.randint(hi, (batch,), generator=generator) for hi in highs],
                          dim=1) * align
    rows = (corners[:, :1] + torch.arange(h)) % nh  # [B, h]
    cols = (corners[:, 1:] + torch.arange(w)) % nw  # [B, w]
    b = torch.arange(batch)[:, None, None]

    def cut(t: Tensor) -> Tensor:
        t = t.expand(batch, *t.shape[1:])
        return t[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    cond_patch = fields.new_zeros(batch, 0, h, w) if cond is None else cut(cond)
    return cut(fields), cond_patch, corners


def patch_pairs(make_pair: Any, size: tuple[int, int], align: int = 1,
                periodic: bool = False) -> Any:
    """Patch training: ``make_pair(batch, generator) -> (target, cond)`` made on full fields
    (conditioning that includes the position channels, see :func:`grid_coordinates`), then one
    random patch per sample of both (:func:`random_patches`, corners from the same
    generator, drawn after the pair's own draws)."""

    def pair(batch: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        target, cond = make_pair(batch, generator)
        patch, cond_patch, _ = random_patches(target, cond, size, generator, align, periodic)
        return patch, cond_patch

    return pair


@dataclass(frozen=True)
class Tiling:
    """How to denoise a field on tiles: tile size (h, w), overlap (pixels), periodic or not,
    and the most tiles per network call (``batch``)."""

    tile: tuple[int, int]
    overlap: int = 16
    periodic: bool = False
    batch: int = 16

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Tiling | None:
        """From the sampler settings ``tile`` ([h, w]; empty: None), ``tile_overlap`` and
        ``tile_periodic``."""
        tile = list(settings.get("tile") or [])
        if not tile:
            return None
        if len(tile) != 2 or min(tile) < 1:
            raise ValueError(f"--settings: tile must be [h, w] of positive sizes, got {tile}")
        return cls((int(tile[0]), int(tile[1])), int(settings.get("tile_overlap", 16)),
                   bool(settings.get("tile_periodic", False)))

    def denoiser(self, network: TileDenoiser, grid: tuple[int, int], cond: Tensor | None,
                 align: int = 1) -> Callable[[Tensor, Tensor], Tensor]:
        """The whole-field denoiser of ``network`` on this tiling of ``grid``."""
        return TiledDenoiser(network, self.layout(grid, align), cond, self.batch)

    def layout(self, grid: tuple[int, int], align: int = 1) -> TileLayout:
        """The tiles of ``grid`` (starts at multiples of ``align``); a ValueError names the
        tile settings when they do not fit."""
        try:
            return TileLayout(grid, tuple(self.tile), (self.overlap, self.overlap),
                              self.periodic, align)
        except ValueError as err:
            raise ValueError(f"--settings: tile {list(self.tile)}, tile_overlap {self.overlap} "
                             f"on the grid {list(grid)}: {err}") from None
