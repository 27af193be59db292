from __future__ import annotations

import pytest

from survey6.common.errors import UnitError
from survey6.common.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        ("64MiB", 64 << 20),
        ("2GB", 2_000_000_000),
        ("1.5KiB", 1536),
        (" 10 kb ", 10_000),
        (7, 7),
    ],
)
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60s", 60.0),
        ("250ms", 0.25),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("90", 90.0),
        (1.5, 1.5),
        ("1w", 604800.0),
    ],
)
def test_durations(text: str | float, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "12 parsecs", "-1", "1e3", True])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UnitError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["", "soon", "5 fortnights", True])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UnitError, match="not a duration"):
        parse_duration(text)


def test_negative_numbers_are_refused() -> None:
    with pytest.raises(UnitError):
        parse_size(-1)
    with pytest.raises(UnitError):
        parse_duration(-0.5)
