"""Conditional U-Net for 2-D fields on arbitrary grids.

The architecture follows the DDPM++/ADM family used by EDM (Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS, App. F.2;
Dhariwal & Nichol 2021; Song et al. 2021), slimmed down for small climate grids:

    emb  = MLP(sinusoid(c_noise))                                   noise-level embedding
    h    = conv_in(pad(x))
    encoder, level l = 0..L-1:  num_res_blocks x ResBlock(h, emb), then 2x downsample
    middle:                     2 x ResBlock
    decoder, level l = L-1..0:  (num_res_blocks + 1) x ResBlock(cat(h, skip), emb),
                                then 2x upsample
    F    = crop(conv_out(SiLU(GroupNorm(h))))                       conv_out zero-initialised

Each ResBlock injects the noise level by adaptive scale/shift of its second GroupNorm
(FiLM, Perez et al. 2018; "adaptive group norm" of Dhariwal & Nichol 2021):

    h = conv0(SiLU(GN(x)))
    h = conv1(dropout(SiLU(GN(h) * (1 + scale(emb)) + shift(emb))))
    y = (skip(x) + h) / sqrt(2)

Any H x W is accepted: the input is padded (reflect, or replicate where the grid is too
small to reflect) up to a multiple of 2**(L-1) and the output is cropped back.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PRESETS",
    "ResBlock",
    "SinusoidalEmbedding",
    "UNet",
    "build_unet",
    "count_parameters",
    "group_count",
]

PRESETS: dict[str, dict[str, Any]] = {
    # ~0.2 M parameters: CPU unit tests and demos.
    "tiny": {"base_channels": 16, "channel_mult": (1, 1, 2), "num_res_blocks": 1},
    # ~1 M parameters: CPU experiments on small grids.
    "small": {"base_channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1},
    # ~9 M parameters: GPU training.
    "base": {"base_channels": 64, "channel_mult": (1, 2, 2, 2), "num_res_blocks": 2},
}


def group_count(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """Largest number of GroupNorm groups g <= max_groups dividing ``channels``, with at
    least ``min_group_size`` channels per group when possible (else 1)."""
    for g in range(min(max_groups, channels // min_group_size), 0, -1):
        if channels % g == 0:
            return g
    return 1


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a scalar noise label (Vaswani et al. 2017, Sec. 3.5).

    With K = dim / 2 log-spaced angular frequencies w_k = max_freq**(k / (K - 1)):

        phi(c) = [cos(w_0 c), ..., cos(w_{K-1} c), sin(w_0 c), ..., sin(w_{K-1} c)]

    The EDM label c_noise = ln(sigma) / 4 lies in about [-1.6, 1.1] for sigma in
    [0.002, 80], so frequencies from 1 to ``max_freq`` rad per unit resolve both the
    coarse and the fine structure of the noise schedule.
    """

    def __init__(self, dim: int, max_freq: float = 100.0) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = max_freq ** (torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, c: Tensor) -> Tensor:
        """c: Tensor[B] -> Tensor[B, dim]."""
        angles = c.to(torch.float32)[:, None] * self.freqs[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """Residual block with noise-level scale/shift (see module docstring)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm0 = nn.GroupNorm(group_count(in_ch), in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * out_ch)
        self.norm1 = nn.GroupNorm(group_count(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)  # block starts as (a scaled) identity
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: Tensor[B, in_ch, H, W], emb: Tensor[B, emb_dim] -> Tensor[B, out_ch, H, W]."""
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        return (self.skip(x) + h) * math.sqrt(0.5)


class Downsample(nn.Module):
    """Strided 3x3 convolution: Tensor[B, C, H, W] -> Tensor[B, C, H/2, W/2]."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then 3x3 convolution: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Pad the last two dims of x: Tensor[B, C, H, W] up to multiples of ``multiple``.

    The padding is split evenly between both sides of each axis; ``reflect`` is used when
    the axis is long enough, ``replicate`` otherwise.

    Returns:
        (padded Tensor[B, C, H', W'], (left, right, top, bottom)) for :func:`crop_padding`.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    top, left = ph // 2, pw // 2
    pads = (left, pw - left, top, ph - top)
    if pw:
        mode = "reflect" if max(pads[0], pads[1]) < w else "replicate"
        x = F.pad(x, (pads[0], pads[1], 0, 0), mode=mode)
    if ph:
        mode = "reflect" if max(pads[2], pads[3]) < h else "replicate"
        x = F.pad(x, (0, 0, pads[2], pads[3]), mode=mode)
    return x, pads


def crop_padding(x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple`: Tensor[B, C, H', W'] -> Tensor[B, C, H, W]."""
    left, right, top, bottom = pads
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


class UNet(nn.Module):
    """Noise-conditional U-Net F(x, c_noise) for fields on any H x W grid.

    Args:
        in_channels: channels of the network input (noisy state + conditioning).
        out_channels: channels of the output (the state).
        base_channels: channels at the finest level.
        channel_mult: per-level channel multipliers; L = len(channel_mult) levels, so the
            grid is padded to a multiple of 2**(L - 1).
        num_res_blocks: residual blocks per encoder level (decoder has one more).
        emb_dim: noise embedding width (default 4 * base_channels).
        dropout: dropout probability inside residual blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        emb_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not channel_mult:
            raise ValueError("channel_mult must have at least one level")
        self.in_channels = in_channels
        self.out_channels = out_channels
        emb_dim = emb_dim or 4 * base_channels
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "base_channels": base_channels,
            "channel_mult": list(channel_mult),
            "num_res_blocks": num_res_blocks,
            "emb_dim": emb_dim,
            "dropout": dropout,
        }
        self.multiple = 2 ** (len(channel_mult) - 1)

        self.embed = nn.Sequential(
            SinusoidalEmbedding(base_channels),
            nn.Linear(base_channels, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
            nn.SiLU(),
        )
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Encoder: record the channels of every tensor pushed on the skip stack.
        self.down = nn.ModuleList()
        skip_ch = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, base_channels * mult, emb_dim, dropout))
                ch = base_channels * mult
                skip_ch.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(Downsample(ch))
                skip_ch.append(ch)

        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout), ResBlock(ch, ch, emb_dim, dropout)]
        )

        # Decoder: each ResBlock consumes one skip tensor.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + skip_ch.pop(), base_channels * mult, emb_dim, dropout))
                ch = base_channels * mult
            if level > 0:
                self.up.append(Upsample(ch))

        self.norm_out = nn.GroupNorm(group_count(ch), ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, noise_label: Tensor) -> Tensor:
        """x: Tensor[B, in_channels, H, W], noise_label: Tensor[B] (or scalar)
        -> Tensor[B, out_channels, H, W]."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        noise_label = torch.as_tensor(noise_label, device=x.device).reshape(-1)
        emb = self.embed(noise_label.expand(x.shape[0]))

        x, pads = pad_to_multiple(x, self.multiple)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            if isinstance(block, ResBlock):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = block(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return crop_padding(h, pads)


def build_unet(preset: str, in_channels: int, out_channels: int, **overrides: Any) -> UNet:
    """Build a :class:`UNet` from a named entry of :data:`PRESETS`, with overrides."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    kwargs = {**PRESETS[preset], **overrides}
    if "channel_mult" in kwargs:
        kwargs["channel_mult"] = tuple(kwargs["channel_mult"])
    return UNet(in_channels, out_channels, **kwargs)
