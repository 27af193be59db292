"""Parsing of the sizes and durations users write in flags and config files."""

from __future__ import annotations

import re

from survey6.common.errors import UnitError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_DURATION_UNITS_S = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int) -> int:
    """Returns a byte count from ``"64MiB"``, ``"1.5GB"``, ``"4096"`` or an int.

    Raises:
        UnitError: not a non-negative size with a known unit.
    """
    if isinstance(value, bool):
        raise UnitError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"size must not be negative: {value}")
        return value
    match = _NUMBER_UNIT.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise UnitError(f"not a size: {value!r} (use e.g. 4096, 64MiB, 2GB)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: str | float) -> float:
    """Returns seconds from ``"60s"``, ``"24h"``, ``"250ms"``, ``"90"`` or a number.

    Raises:
        UnitError: not a non-negative duration with a known unit.
    """
    if isinstance(value, bool):
        raise UnitError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise UnitError(f"duration must not be negative: {value}")
        return float(value)
    match = _NUMBER_UNIT.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _DURATION_UNITS_S:
        raise UnitError(f"not a duration: {value!r} (use e.g. 250ms, 60s, 5m, 24h)")
    return float(match.group(1)) * _DURATION_UNITS_S[unit]
