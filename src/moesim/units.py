"""Unit conversion at the edges: parsing CLI sizes and formatting for humans."""

from __future__ import annotations

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


def fmt_rate(n: float, unit: str) -> str:
    for prefix, f in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}"


def fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.2f} min"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
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
