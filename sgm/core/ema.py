"""Exponential moving average of model parameters with warm-up.

    theta_ema <- d_n theta_ema + (1 - d_n) theta,     n = 0, 1, 2, ... (update count)
    d_n = min(beta, (1 + n) / (10 + n))               with warm-up (else d_n = beta)

The warm-up (Tarvainen & Valpola 2017; TensorFlow ``ExponentialMovingAverage`` with
``num_updates``) lets the average forget the random initialisation after ~10/(1 - beta)
fewer steps, which matters for short CPU runs. Buffers are copied, not averaged.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["EMA", "ema_decay"]


def ema_decay(n: int, beta: float, warmup: bool = True) -> float:
    """Decay d_n used at the update whose count of previous updates is n."""
    return min(beta, (1 + n) / (10 + n)) if warmup else beta


_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper, else model."""
    return model.module if isinstance(model, _WRAPPERS) else model


class EMA:
    """EMA of ``model``'s parameters; ``ema.module`` is an eval-mode copy holding them."""

    def __init__(self, model: nn.Module, beta: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = float(beta)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = copy.deepcopy(_unwrap(model)).eval()
        self.module.requires_grad_(False)

    @property
    def decay(self) -> float:
        """Decay the next :meth:`update` will use."""
        return ema_decay(self.num_updates, self.beta, self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_ema <- d theta_ema + (1 - d) theta, then n <- n + 1."""
        d = self.decay
        src = _unwrap(model)
        ema_params = list(self.module.parameters())
        params = [p.detach().to(q.dtype) for p, q in zip(src.parameters(), ema_params, strict=True)]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), src.buffers(), strict=True):
            b_ema.copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the EMA ones."""
        dst = _unwrap(model)
        for p, p_ema in zip(dst.parameters(), self.module.parameters(), strict=True):
            p.copy_(p_ema)
        for b, b_ema in zip(dst.buffers(), self.module.buffers(), strict=True):
            b.copy_(b_ema)

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: beta, warmup, num_updates and the module's state dict."""
        return {
            "beta": self.beta,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "module": self.module.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.beta = float(state["beta"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["module"])
