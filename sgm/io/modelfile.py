"""The trained-model file ``model.pt``: EMA weights plus everything sampling needs.

Layout (plain data and tensors only; loaded with ``weights_only=True``)::

    {"format": "sgm-model-3", "sha256": content hash, "ema": state_dict, "meta": {
        "spec", "variables", "normalisation", "observation" (the ObservationModel's
        description), "grid": {"lat", "lon"}, "lat_attrs", "lon_attrs", "var_attrs",
        "static": Tensor[S, H, W], "residual_scale", "model" (ModelSettings), "in_channels",
        "out_channels", "train" (TrainSettings), "step", "final_loss"}}

With it, the sample stage needs neither the training data nor the spec. This module knows the
file, not the network: ``sgm.core.precond.new_denoiser`` rebuilds that from ``meta``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from sgm.io.checkpoint import DIGEST_KEY, CorruptFileError, load_model_file, save_model

FORMAT = "sgm-model-3"
ONESTEP_FORMAT = "sgm-onestep-1"  # onestep.pt of sgm distill: a generator, not a denoiser


def write_model(path: str | Path, weights: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write ``model.pt`` atomically: the (EMA) weights and the metadata."""
    state = {k: v.detach().cpu() for k, v in weights.items()}
    save_model(Path(path), {"format": FORMAT, "ema": state, "meta": meta})


@dataclass(frozen=True)
class ModelFile:
    """The content of ``model.pt``: weights, metadata and the content hash (provenance)."""

    weights: dict[str, Tensor]
    meta: dict[str, Any]
    digest: str


def read_model(path: str | Path) -> ModelFile:
    """Read and verify ``model.pt`` (see :func:`sgm.io.checkpoint.load_model_file`)."""
    state = load_model_file(Path(path))
    if state.get("format") == ONESTEP_FORMAT:
        raise CorruptFileError(f"{path}: a one-step model (sgm distill), not a denoiser; sample "
                               "it with method: onestep")
    if state.get("format") != FORMAT:
        what = "a training checkpoint" if "optimizer" in state else (
            f"format {state.get('format')!r}")
        raise CorruptFileError(f"{path}: not an sgm model file ({what}; expected {FORMAT!r})")
    return ModelFile(state["ema"], state["meta"], state[DIGEST_KEY][:16])


def write_onestep(path: str | Path, weights: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write ``onestep.pt`` atomically: the generator's (EMA) weights and the metadata."""
    state = {k: v.detach().cpu() for k, v in weights.items()}
    save_model(Path(path), {"format": ONESTEP_FORMAT, "generator": state, "meta": meta})


def read_onestep(path: str | Path) -> ModelFile:
    """Read and verify ``onestep.pt``; a ``model.pt`` or anything else is refused by name."""
    state = load_model_file(Path(path))
    if state.get("format") != ONESTEP_FORMAT:
        raise CorruptFileError(f"{path}: not a one-step model file (format "
                               f"{state.get('format')!r}; expected {ONESTEP_FORMAT!r}, written "
                               "by sgm distill)")
    return ModelFile(state["generator"], state["meta"], state[DIGEST_KEY][:16])
