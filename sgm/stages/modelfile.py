"""The trained-model file ``model.pt``: EMA weights plus everything sampling needs.

Layout (plain data and tensors only; loaded with ``weights_only=True``)::

    {"format": "sgm-model-1", "ema": state_dict, "meta": {
        "spec", "variables", "normalisation", "operator", "noise_std", "grid": {"lat", "lon"},
        "static": Tensor[S, H, W], "model": ModelSettings dict, "in_channels", "out_channels",
        "train": TrainSettings dict, "step", "final_loss"}}

With it, the sample stage needs neither the training data nor the spec.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from sgm.config import ModelSettings
from sgm.core.network import build_unet
from sgm.core.precond import EDMPrecond
from sgm.io.checkpoint import load_model_file, save_model

FORMAT = "sgm-model-1"


def new_precond(settings: ModelSettings, in_channels: int, out_channels: int) -> EDMPrecond:
    """An untrained EDM-preconditioned U-Net of the configured size."""
    overrides: dict = {"dropout": settings.dropout}
    if settings.base_channels is not None:
        overrides["base_channels"] = settings.base_channels
    net = build_unet(settings.preset, in_channels, out_channels, **overrides)
    return EDMPrecond(net, sigma_data=settings.sigma_data)


def write_model(path: str | Path, ema: EDMPrecond, meta: dict[str, Any]) -> None:
    state = {k: v.detach().cpu() for k, v in ema.state_dict().items()}
    save_model(Path(path), {"format": FORMAT, "ema": state, "meta": meta})


def read_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[EDMPrecond, dict]:
    """Rebuild the EMA denoiser from ``model.pt``, in eval mode on ``device``."""
    state = load_model_file(Path(path))
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an sgm model file (format {state.get('format')!r})")
    meta = state["meta"]
    precond = new_precond(
        ModelSettings(**meta["model"]), int(meta["in_channels"]), int(meta["out_channels"])
    )
    precond.load_state_dict(state["ema"])
    return precond.to(device).eval(), meta


def file_hash(path: str | Path) -> str:
    """Short content hash of a file (provenance of posterior ensembles)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
