"""Atomic, pickle-free, checksummed checkpoint and model files.

A file is written as: temporary file in the destination folder -> ``torch.save`` ->
flush -> fsync -> ``os.replace`` onto the final name -> fsync of the folder. A reader
therefore sees either the previous complete file or the new complete file, never a
partial one, even if the writer is killed (SIGKILL, node failure). Loading uses
``torch.load(weights_only=True)``, so a file can hold only tensors and plain Python
data (numbers, strings, bools, None, lists, tuples, dicts) and never executes pickled
code; :func:`save_checkpoint` and :func:`save_model` refuse anything else up front.

Every file carries the SHA-256 of its content (every tensor's bytes, dtype and shape and every
plain value, in key order) under ``sha256``, verified by :func:`load_model_file`: a file damaged
on disk (a flipped bit, a truncated copy) is refused instead of loading wrong weights.

This module knows files, not models: the caller assembles the state dict.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sgm.io.atomic import atomic_write

__all__ = [
    "CheckpointFolder",
    "CorruptFileError",
    "content_digest",
    "list_checkpoints",
    "load_latest_checkpoint",
    "load_model_file",
    "save_checkpoint",
    "save_model",
]

logger = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^ckpt-(\d{8,})\.pt$")
_PLAIN = (int, float, bool, str, type(None), torch.Tensor)
DIGEST_KEY = "sha256"


class CorruptFileError(ValueError):
    """A checkpoint or model file that cannot be read, or whose content fails its hash."""


def _check_plain(obj: Any, where: str = "state") -> None:
    """Raise TypeError unless obj is made only of tensors and plain Python data."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, int | str):
                raise TypeError(f"{where}: key {key!r} is not a str or int")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__}; only tensors and plain Python data can be saved"
    )


def content_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a plain-data state: keys in sorted order, tensors by dtype, shape and
    bytes, other values by their JSON text (``sha256`` itself excluded)."""
    digest = hashlib.sha256()

    def walk(obj: Any, key: str) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, Mapping):
            keys = sorted((k for k in obj if not (key == "" and k == DIGEST_KEY)), key=str)
            digest.update(f"{key}:dict{len(keys)};".encode())
            for k in keys:
                walk(obj[k], f"{key}/{k}")
        elif isinstance(obj, list | tuple):
            digest.update(f"{key}:list{len(obj)};".encode())
            for i, value in enumerate(obj):
                walk(value, f"{key}[{i}]")
        else:
            digest.update(f"{key}={json.dumps(obj)};".encode())

    walk(state, "")
    return digest.hexdigest()


def _atomic_save(state: Mapping[str, Any], path: Path) -> None:
    """torch.save ``state`` (with its content digest) via temp file + fsync + os.replace."""
    _check_plain(state)
    stamped = {**state, DIGEST_KEY: content_digest(state)}

    def write(tmp: Path) -> None:
        # Through a file object: torch.save names the archive inside after a path's file name,
        # which would make the same state give different bytes under another (temporary) name.
        with open(tmp, "wb") as fh:
            torch.save(stamped, fh)

    atomic_write(path, write, durable=True)


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``ckpt-{step:08d}.pt`` in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(state: dict[str, Any], directory: Path, step: int, keep: int = 2) -> Path:
    """Atomically write ``directory/ckpt-{step:08d}.pt`` and keep only the newest ``keep``.

    Leftover temporary files of killed writers are removed too; one writer per folder
    is assumed (rank 0 in distributed training).

    Returns:
        The path written.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    for stale in directory.glob(".ckpt-*.tmp-*"):
        stale.unlink(missing_ok=True)
    path = directory / f"ckpt-{step:08d}.pt"
    _atomic_save(state, path)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(directory: Path) -> dict[str, Any] | None:
    """Load the newest readable checkpoint of ``directory`` (None if there is none).

    A newest file that does not load (truncated, corrupt) is skipped with a warning and
    the previous one is tried, and so on.
    """
    for step, path in reversed(list_checkpoints(directory)):
        try:
            return load_model_file(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file means "try older"
            logger.warning("checkpoint %s (step %d) does not load, skipping: %s", path, step, err)
    return None


def save_model(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a plain-data state dict (e.g. final EMA weights + config)."""
    _atomic_save(state, Path(path))


def load_model_file(path: Path) -> dict[str, Any]:
    """Load a file written by :func:`save_model`/:func:`save_checkpoint` onto the CPU.

    Raises:
        CorruptFileError: the file is empty, truncated, not a file sgm wrote, holds pickled
            objects (``weights_only=True`` never executes them), or fails its content hash.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:
        raise CorruptFileError(f"{path}: holds pickled Python objects or is damaged; sgm "
                               "loads only tensors and plain data") from None
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means a bad file
        raise CorruptFileError(f"{path}: not a readable sgm file ({exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})"
                               ) from None
    if not isinstance(state, dict):
        raise CorruptFileError(f"{path}: holds a {type(state).__name__}, not an sgm file")
    if DIGEST_KEY not in state:
        raise CorruptFileError(f"{path}: has no content hash (not written by this sgm)")
    if content_digest(state) != state[DIGEST_KEY]:
        raise CorruptFileError(f"{path}: fails its content hash; the file is damaged")
    return state


class CheckpointFolder:
    """A training run's checkpoints in one folder: the file store of
    ``sgm.core.training.CheckpointStore`` (newest ``keep`` files kept; one writer per folder)."""

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def latest(self) -> dict[str, Any] | None:
        return load_latest_checkpoint(self.directory)

    def save(self, state: dict[str, Any], step: int) -> None:
        save_checkpoint(state, self.directory, step, keep=self.keep)

    def __repr__(self) -> str:
        return str(self.directory)


class SnapshotFolder:
    """EMA snapshots of a training run (``snapshot-{step:08d}.pt``, content-hashed): the file
    store of ``sgm.core.training.SnapshotStore``, read back for model selection."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def save(self, weights: dict[str, Any], step: int) -> None:
        state = {"step": step, "ema": {k: v.detach().cpu() for k, v in weights.items()}}
        _atomic_save(state, self.directory / f"snapshot-{step:08d}.pt")

    def steps(self) -> list[int]:
        """The steps of the snapshots present, in order."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("snapshot-*.pt")
                      if p.stem.split("-")[1].isdigit())

    def load(self, step: int) -> dict[str, Any]:
        return load_model_file(self.directory / f"snapshot-{step:08d}.pt")["ema"]
