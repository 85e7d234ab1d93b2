"""The trained-model file ``model.pt``: EMA weights plus everything sampling needs.

Layout (plain data and tensors only; loaded with ``weights_only=True``)::

    {"format": "sgm-model-2", "ema": state_dict, "meta": {
        "spec", "variables", "normalisation", "observation" (the ObservationModel's
        description), "grid": {"lat", "lon"}, "lat_attrs", "lon_attrs", "var_attrs",
        "static": Tensor[S, H, W], "residual_scale", "model" (ModelSettings), "in_channels",
        "out_channels", "train" (TrainSettings), "step", "final_loss"}}

With it, the sample stage needs neither the training data nor the spec. This module knows the
file, not the network: ``sgm.core.precond.new_denoiser`` rebuilds that from ``meta``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch import Tensor

from sgm.io.checkpoint import load_model_file, save_model

FORMAT = "sgm-model-2"


def write_model(path: str | Path, weights: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write ``model.pt`` atomically: the (EMA) weights and the metadata."""
    state = {k: v.detach().cpu() for k, v in weights.items()}
    save_model(Path(path), {"format": FORMAT, "ema": state, "meta": meta})


def read_model(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The (EMA) weights and the metadata of ``model.pt``."""
    state = load_model_file(Path(path))
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an sgm model file (format {state.get('format')!r}, "
                         f"expected {FORMAT!r})")
    return state["ema"], state["meta"]


def file_hash(path: str | Path) -> str:
    """Short content hash of a file (provenance of posterior ensembles)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
