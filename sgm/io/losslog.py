"""The loss log ``loss.csv``: one row per ``log_every`` training steps.

The file store of ``sgm.core.training.LossLog``. A resumed run first drops the rows after the
step it resumes from (an atomic rewrite), then appends; a row is one complete line, so a killed
writer leaves at most one partial last line, which the next restart drops.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from sgm.io.atomic import atomic_write_text
from sgm.io.checkpoint import CheckpointFolder

LOSS_HEADER = "step,loss,sigma_median,lr,wall_s"


def _cell(name: str, value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}" if name == "wall_s" else f"{value:.9g}"


class LossCSV:
    """Rows of a dataclass (``LossRow``: ``step,loss,sigma_median,lr,wall_s``) in a CSV file
    whose first line is ``header``, the dataclass's field names."""

    def __init__(self, path: str | Path, header: str = LOSS_HEADER) -> None:
        self.path = Path(path)
        self.header = header
        self.columns = header.split(",")

    def restart(self, step: int) -> None:
        """Keep the header and the complete rows with step ≤ ``step`` (atomic rewrite)."""
        rows = []
        if self.path.exists():
            for line in self.path.read_text().splitlines(keepends=True)[1:]:
                fields = line.rstrip("\n").split(",")
                if line.endswith("\n") and len(fields) == len(self.columns) and \
                        fields[0].isdigit() and int(fields[0]) <= step:
                    rows.append(line)
        atomic_write_text(self.path, self.header + "\n" + "".join(rows))

    def append(self, row: Any) -> None:
        values = dataclasses.asdict(row)
        if list(values) != self.columns:
            raise ValueError(f"{self.path}: a row of {list(values)} in a log of {self.columns}")
        with self.path.open("a") as f:
            f.write(",".join(_cell(k, v) for k, v in values.items()) + "\n")


def run_files(workdir: str | Path) -> tuple[CheckpointFolder, LossCSV]:
    """The checkpoint folder and the loss log of a training run kept in ``workdir``
    (``checkpoints/`` and ``loss.csv``)."""
    workdir = Path(workdir)
    return CheckpointFolder(workdir / "checkpoints"), LossCSV(workdir / "loss.csv")


def read_loss_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The (step[N], loss[N]) rows of a loss log; ValueError naming the file and the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (expected a training loss log)") from None
    if not lines or lines[0].strip() != LOSS_HEADER:
        raise ValueError(f"{path}: line 1: not a training loss log (expected the header "
                         f"{LOSS_HEADER})")
    steps, losses = [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        try:
            steps.append(int(fields[0]))
            losses.append(float(fields[1]))
        except (ValueError, IndexError):
            raise ValueError(f"{path}: line {number}: not a row of numbers ({line[:40]!r})"
                             ) from None
    if not steps:
        raise ValueError(f"{path}: has no training steps")
    return np.asarray(steps, dtype=float), np.asarray(losses)
