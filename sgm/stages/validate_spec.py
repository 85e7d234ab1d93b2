"""Stage ``validate-spec``: check data spec files and print every error (nothing is written)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sgm.config import load_spec


def validate_specs(paths: Sequence[str | Path]) -> list[str]:
    """Validate every spec (and any station file it names); the names of the valid ones.

    The first invalid file raises :class:`sgm.config.SpecError` listing each of its errors.
    """
    names = []
    for path in paths:
        spec = load_spec(path)
        print(f"{path}: ok ({spec.name})")
        names.append(spec.name)
    return names
