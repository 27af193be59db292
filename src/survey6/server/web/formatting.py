"""How numbers, sizes and times are shown; one place for the pages and the refreshing script."""

from __future__ import annotations

import datetime as dt

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_COUNT_UNITS = ("", "k", "M", "G", "T")


def human_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in _BYTE_UNITS:
        if abs(size) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_count(value: float | None) -> str:
    if value is None:
        return "-"
    number = float(value)
    for unit in _COUNT_UNITS:
        if abs(number) < 1000 or unit == _COUNT_UNITS[-1]:
            if not unit:
                return f"{number:.0f}" if number == int(number) else f"{number:.1f}"
            return f"{number:.1f}{unit}"
        number /= 1000
    raise AssertionError("unreachable")


def percent(ratio: float | None) -> str:
    if ratio is None or ratio < 0:
        return "-"
    return f"{ratio * 100:.2f} %" if ratio < 0.1 else f"{ratio * 100:.1f} %"


def timestamp(value: dt.datetime | None) -> str:
    """UTC, to the second: ``2025-01-31 14:05:09Z``."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(value: dt.datetime | None, now: dt.datetime) -> str:
    """How long ago, coarsely: ``4s ago``, ``12m ago``, ``3h ago``, ``5d ago``."""
    if value is None:
        return "never"
    seconds = max((now - value).total_seconds(), 0.0)
    for limit_s, unit_s, suffix in ((120, 1, "s"), (7200, 60, "m"), (172_800, 3600, "h")):
        if seconds < limit_s:
            return f"{int(seconds // unit_s)}{suffix} ago"
    return f"{int(seconds // 86_400)}d ago"


def labels_text(labels: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))


def ns_timestamp(ns: int) -> str:
    """A Unix time in nanoseconds (capture metadata), as :func:`timestamp`; ``-`` for 0."""
    if ns <= 0:
        return "-"
    return timestamp(dt.datetime.fromtimestamp(ns / 1e9, dt.UTC))
