"""Which device a job runs on: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``,
``cuda:N`` or ``mps``; anything else, or a device this machine lacks, is an error that says so."""

from __future__ import annotations

import re

import torch

_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def pick_device(name: str) -> torch.device:
    """The torch device for a ``device`` setting; ValueError for unknown or absent devices."""
    if not _PATTERN.match(name):
        raise ValueError(f"device {name!r} is not known; use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine "
                             "(use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine")
    return device
