"""Unit conversion at the edges: parsing CLI sizes and formatting for humans."""

from __future__ import annotations

import math
import re

from .errors import MoesimError

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15,
            "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}


def parse_bytes(text: str) -> float:
    """'512GB' -> 512e9, '1.5TiB' -> 1.5*2**40, '64B' -> 64. Decimal units are SI (GB = 1e9 bytes),
    binary ones IEC (GiB = 2**30 bytes). A bare number is refused: is 64 bytes or 64 GB meant?"""
    match = _SIZE.match(str(text))
    if not match:
        raise MoesimError(f"cannot read {text!r} as a size; write e.g. 512GB, 1.5TB or 768GiB")
    if not match.group(2):
        raise MoesimError(f"a size needs a unit: {text!r} could be {text} bytes or {text} GB; write e.g. "
                          f"{text}GB or {text}GiB (or {text}B for bytes)")
    value, unit = float(match.group(1)), (match.group(2) or "").lower()
    unit = unit[:-1] if unit.endswith("b") and len(unit) > 1 else unit
    unit = "" if unit == "b" else unit
    return value * _FACTORS[unit]


def fmt_bytes(n: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n:.0f} B"


def _sig3(x: float) -> float:
    """``x`` rounded to 3 significant figures (so that 999.7 ms is shown as 1 s, not 1e+03 ms)."""
    return float(f"{x:.3g}")


def _num3(x: float) -> str:
    """3 significant figures, without an exponent below a million: 8650, 12.3, 0.5."""
    return f"{x:,.0f}" if 1e3 <= abs(x) < 1e6 else f"{x:.3g}"


def fmt_rate(n: float, unit: str) -> str:
    """A rate with an SI prefix, 3 significant figures: 1.23 ktok/s."""
    if not math.isfinite(n):
        return f"{n} {unit}"
    n = _sig3(n)
    for prefix, f in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}"


#: seconds in a day and in a (Julian) year
DAY_S = 86_400.0
YEAR_S = 365.25 * DAY_S


def fmt_seconds(s: float) -> str:
    """A duration for people, 3 significant figures: 12.3 us, 2.42 s, 3.5 min, 1.5 h, 12 days, 8,650 years."""
    if not math.isfinite(s):
        return f"{s} s"
    if s < 0:
        return "-" + fmt_seconds(-s)
    s = _sig3(s)
    if s >= YEAR_S:
        years = _sig3(s / YEAR_S)
        return f"{_num3(years)} year{'' if years == 1 else 's'}"
    if s >= DAY_S:
        days = _sig3(s / DAY_S)
        return f"{days:.3g} day{'' if days == 1 else 's'}"
    if s >= 3600:
        return f"{_sig3(s / 3600):.3g} h"
    if s >= 60:
        return f"{_sig3(s / 60):.3g} min"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    if s == 0:
        return "0 s"
    return f"{s * 1e6:.3g} us"


def fmt_value(key: str, value: object) -> str:
    """A configuration value for people: sizes and times with units (the unit is in the key's name),
    other numbers to 3 significant figures, nested settings as key=value."""
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}={fmt_value(k, v)}" for k, v in value.items()) + ")"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return str(value)
    if isinstance(value, (int, float)):
        if "bytes" in key:
            return fmt_bytes(value).replace(" ", "")
        if key.endswith("_s"):
            return fmt_seconds(value).replace(" ", "")
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.3g}" if isinstance(value, float) else str(value)
    return str(value)


def fmt_config(config: dict) -> str:
    return ", ".join(f"{k}={fmt_value(k, v)}" for k, v in config.items())
