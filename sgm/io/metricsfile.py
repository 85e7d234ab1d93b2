"""``metrics.json``, the output of ``sgm evaluate``, read back by ``sgm report`` and
``sgm compare``: refused in one sentence when it is not such a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> dict[str, Any]:
    """``metrics.json`` as written by ``sgm evaluate``; one sentence if it is not."""
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(m, dict) or not isinstance(m.get("variables"), dict) or not m["variables"]:
        raise ValueError(f"{path}: not a metrics file written by sgm evaluate (no variables)")
    for var, e in m["variables"].items():
        if not isinstance(e, dict) or not {"units", "ensemble", "baselines"} <= set(e):
            raise ValueError(f"{path}: variable {var!r} lacks the scores sgm evaluate writes")
    return m
