"""The few unit conversions gridded climate fields need, as affine maps to a reference unit.

A full units library (UDUNITS via cf-units, pint) either needs a C library or does not know that a
precipitation flux of 1 kg m-2 s-1 is 1 mm of water per second (86 400 mm/day). The table below
covers temperature, precipitation flux, pressure, speed, length and dimensionless fractions; a
unit outside it, or a conversion between different quantities, is an error that says so.

Spellings are normalised first: ``kg m**-2 s**-1``, ``kg m^-2 s^-1`` and ``kg.m-2.s-1`` are all
``kg m-2 s-1``.
"""

from __future__ import annotations

import re

# unit → (quantity, scale, offset): value_in_reference = value * scale + offset
_UNITS: dict[str, tuple[str, float, float]] = {}


def _define(quantity: str, scale: float, offset: float, *names: str) -> None:
    for name in names:
        _UNITS[name] = (quantity, scale, offset)


_define("temperature", 1.0, 0.0, "K", "kelvin", "Kelvin", "degK", "deg_K")
_define("temperature", 1.0, 273.15, "degC", "deg_C", "celsius", "Celsius", "degrees_Celsius",
        "degree_Celsius", "°C")
_define("temperature", 5 / 9, 273.15 - 32 * 5 / 9, "degF", "deg_F", "fahrenheit",
        "degrees_Fahrenheit", "°F")
# precipitation flux, reference: mm of liquid water per second (= kg m-2 s-1)
_define("precipitation flux", 1.0, 0.0, "kg m-2 s-1", "kg/m2/s", "kg/m^2/s", "mm s-1", "mm/s")
_define("precipitation flux", 1 / 3600, 0.0, "mm h-1", "mm/h", "mm hr-1", "mm/hr")
_define("precipitation flux", 1 / 86400, 0.0, "mm day-1", "mm d-1", "mm/day", "mm/d")
_define("pressure", 1.0, 0.0, "Pa", "pascal")
_define("pressure", 100.0, 0.0, "hPa", "mbar", "millibar", "mb")
_define("pressure", 1000.0, 0.0, "kPa")
_define("speed", 1.0, 0.0, "m s-1", "m/s")
_define("speed", 1 / 3.6, 0.0, "km h-1", "km/h")
_define("speed", 1852 / 3600, 0.0, "knot", "knots", "kt")
_define("length", 1.0, 0.0, "m", "metre", "meter", "metres", "meters")
_define("length", 1e-3, 0.0, "mm")
_define("length", 1e-2, 0.0, "cm")
_define("length", 1e3, 0.0, "km")
_define("dimensionless", 1.0, 0.0, "1", "", "fraction")
_define("dimensionless", 1e-2, 0.0, "%", "percent")


class UnitsError(ValueError):
    """Units that sgm does not know or cannot convert between."""


def normalise(units: str) -> str:
    """One spelling per unit: drop ``**``/``^`` in powers, ``.`` or spaces between factors."""
    text = units.strip().replace("**", "").replace("^", "")
    text = re.sub(r"(?<=[A-Za-z0-9])\.(?=[A-Za-z])", " ", text)
    return re.sub(r"\s+", " ", text)


def lookup(units: str) -> tuple[str, float, float]:
    """(quantity, scale, offset) of ``units``; raises UnitsError if unknown."""
    key = normalise(units)
    if key not in _UNITS:
        raise UnitsError(f"units {units!r} are not known to sgm")
    return _UNITS[key]


def same(a: str, b: str) -> bool:
    """Whether two unit strings mean the same unit (known spellings, else equal text)."""
    if normalise(a) == normalise(b):
        return True
    try:
        return lookup(a) == lookup(b)
    except UnitsError:
        return False


def factors(source: str, target: str) -> tuple[float, float]:
    """(scale, offset) such that ``value_target = value_source * scale + offset``."""
    try:
        q_src, s_src, o_src = lookup(source)
        q_tgt, s_tgt, o_tgt = lookup(target)
    except UnitsError as exc:
        raise UnitsError(f"cannot convert units {source!r} to {target!r} ({exc})") from None
    if q_src != q_tgt:
        raise UnitsError(
            f"cannot convert units {source!r} ({q_src}) to {target!r} ({q_tgt})"
        )
    return s_src / s_tgt, (o_src - o_tgt) / s_tgt
