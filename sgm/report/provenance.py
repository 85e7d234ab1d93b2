"""Provenance in words for the reports' headers: what the observations are.

:func:`operator_text` turns an observation operator as stored (``to_dict`` of
:mod:`sgm.core.operators` and :mod:`sgm.core.sensors`, as in ``metrics.json`` and ``obs.zarr``)
and its noise into one phrase, e.g. "4 × 4 block means, noise std 0.1 K". The texts are plain
(the page escapes them); the raw values go into the page's folded raw-provenance block.
"""

from __future__ import annotations

from typing import Any

from sgm.report.page import unit_suffix

SHOWN_STATIONS = 5
SHOWN_BOXES = 3


def _num(value: Any) -> str:
    """A number with 4 significant digits (anything else as it is)."""
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _one_unit(units: str | dict[str, str] | None) -> str:
    """The units when all variables share one (else '': numbers without units)."""
    if isinstance(units, dict):
        found = set(units.values())
        return found.pop() if len(found) == 1 else ""
    return units or ""


def noise_text(noise_std: float | dict[str, float] | None,
               units: str | dict[str, str] | None) -> str:
    """'noise std 0.1 K'; per variable ('noise std tas 0.1 K, pr 0.5 mm') when they differ;
    'no noise' when every std is 0."""
    if noise_std is None:
        return "noise unknown"
    if not isinstance(noise_std, dict):
        noise_std = {"": noise_std}
    if all(isinstance(v, int | float) and v == 0 for v in noise_std.values()):
        return "no noise"
    per_unit = units if isinstance(units, dict) else {}
    values = {(_num(v), per_unit.get(k, _one_unit(units))) for k, v in noise_std.items()}
    if len(values) == 1:
        value, unit = values.pop()
        return f"noise std {value}{unit_suffix(unit)}"
    parts = [f"{k} {_num(v)}{unit_suffix(per_unit.get(k, _one_unit(units)))}"
             for k, v in noise_std.items()]
    return "noise std " + ", ".join(parts)


def operator_words(operator: Any, units: str | dict[str, str] | None = None) -> str:
    """What the operator observes of the field, in words (see :func:`operator_text`)."""
    if not isinstance(operator, dict):
        return "unknown observations" if operator is None else str(operator)
    kind = operator.get("kind")
    unit = unit_suffix(_one_unit(units))
    if kind == "coarsen":
        f = _num(operator.get("factor", "?"))
        return f"{f} × {f} block means"
    if kind == "sparse":
        n = len(operator.get("points") or [])
        if operator.get("fraction") is not None:
            return (f"values at {_plural(n, 'grid cell')} ({_num(100 * operator['fraction'])} % "
                    f"of the grid, drawn with seed {operator.get('seed', 0)})")
        return f"values at {_plural(n, 'given grid cell')}"
    if kind == "stations":
        ids = [str(s.get("id", "?")) if isinstance(s, dict) else str(s)
               for s in operator.get("stations") or []]
        shown = ", ".join(ids[:SHOWN_STATIONS])
        if len(ids) > SHOWN_STATIONS:
            shown += f" and {len(ids) - SHOWN_STATIONS} more"
        return f"{_plural(len(ids), 'station')}, interpolated bilinearly ({shown})"
    if kind == "blur":
        return (f"Gaussian blur of σ = {_num(operator.get('sigma_pixels', '?'))} grid cells "
                f"({operator.get('boundary', 'periodic')} edges)")
    if kind == "gaps":
        boxes = [b for b in operator.get("boxes") or [] if len(b) == 4]
        shown = "; ".join(f"lat {_num(s)} to {_num(n)}, lon {_num(w)} to {_num(e)}"
                          for s, n, w, e in boxes[:SHOWN_BOXES])
        if len(boxes) > SHOWN_BOXES:
            shown += f"; {len(boxes) - SHOWN_BOXES} more"
        return f"every grid value except in {_plural(len(boxes), 'box')} of missing data ({shown})"
    if kind == "saturating":
        c, s = _num(operator.get("center", "?")), _num(operator.get("scale", "?"))
        return (f"{operator_words(operator.get('of'), units)} through a saturating sensor "
                f"(c + s·tanh((value − c)/s), c = {c}{unit}, s = {s}{unit})")
    if kind == "python":
        sha = str(operator.get("sha256") or "")
        digest = f" (file SHA-256 {sha[:12]}…)" if sha else ""
        return f"the Python function {operator.get('function', '?')}{digest}"
    return f"operator {kind!s}"


def operator_text(operator: Any, noise_std: float | dict[str, float] | None,
                  units: str | dict[str, str] | None) -> str:
    """The observations in words: '4 × 4 block means, noise std 0.1 K'.

    ``operator`` is the stored operator (coarsen, sparse, stations, blur, gaps, saturating,
    python; anything else is named), ``noise_std`` one std or one per variable, ``units`` the
    variables' units (one string, or variable → units).
    """
    return f"{operator_words(operator, units)}, {noise_text(noise_std, units)}"
