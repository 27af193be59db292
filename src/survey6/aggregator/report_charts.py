"""The geometry of the report's charts: plain numbers and labels that a template draws as inline SVG.

Nothing here writes markup, so every label (an address, a protocol, a DNS type) reaches the page
only through the template's autoescaping. Two kinds of chart:

- ``bar_chart``: horizontal bars, one per labelled value, longest first as given;
- ``step_area``: a stacked area of per-bucket counts drawn as steps, so each bucket is a flat
  segment as wide as the time it covers (no interpolation between buckets that did not happen).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

FONT_PX = 12
MONO_CHAR_PX = 7.6  # a 12 px monospace character (7.2 px) and some room for a wider fallback font
LABEL_PAD_PX = 10
VALUE_TEXT_PX = 96  # room right of the longest bar for its value text
BAR_PX = 16
BAR_GAP_PX = 6
Y_TICKS_TARGET = 5
X_TICKS_MAX = 8
# Time-axis steps: minutes, hours, days, weeks.
_X_STEPS_S = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800, 1209600)
_SI_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f")
OTHER_COLOR = "#bab0ac"
_FIXED_COLORS = {"TCP": PALETTE[0], "UDP": PALETTE[1], "ICMPv6": PALETTE[2], "other": OTHER_COLOR}


@dataclass(frozen=True)
class Bar:
    label: str
    text: str  # the value as written right of the bar
    y: float
    length: float


@dataclass(frozen=True)
class BarChart:
    width: float
    height: float
    label_width: float
    bar_height: float
    bars: tuple[Bar, ...]
    color: str


@dataclass(frozen=True)
class Tick:
    position: float
    text: str
    subtext: str = ""  # a second line: the date under a time of day where the day changes


@dataclass(frozen=True)
class Area:
    label: str
    color: str
    points: str  # SVG polygon points


@dataclass(frozen=True)
class AreaChart:
    width: float
    height: float
    left: float
    top: float
    plot_width: float
    plot_height: float
    areas: tuple[Area, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]


def bar_chart(
    items: Sequence[tuple[str, float, str]], *, width: float = 560, color: str = PALETTE[0]
) -> BarChart:
    """Bars for (label, value, value text) items, in the order given; lengths scale to the largest."""
    longest = max((len(label) for label, _, _ in items), default=0)
    label_width = min(width / 2, longest * MONO_CHAR_PX + LABEL_PAD_PX)
    room = max(width - label_width - VALUE_TEXT_PX, 1.0)
    top = max((value for _, value, _ in items), default=0.0)
    bars = tuple(
        Bar(label, text, i * (BAR_PX + BAR_GAP_PX), room * value / top if top > 0 else 0.0)
        for i, (label, value, text) in enumerate(items)
    )
    height = len(items) * (BAR_PX + BAR_GAP_PX)
    return BarChart(width, height, label_width, BAR_PX, bars, color)


def color_of(name: str, index: int) -> str:
    """The protocols everyone looks for keep their colour from page to page; others take the palette."""
    return _FIXED_COLORS.get(name, PALETTE[3 + index % (len(PALETTE) - 3)])


def step_area(
    starts: Sequence[dt.datetime],
    bucket_s: int,
    series: Sequence[tuple[str, Sequence[int]]],
    *,
    width: float = 1000,
    height: float = 300,
) -> AreaChart:
    """A stacked step area: series[0] at the bottom; ``starts`` are the buckets' starts, in order."""
    left, right, top, bottom = 64.0, 16.0, 12.0, 40.0
    plot_width, plot_height = width - left - right, height - top - bottom
    count = len(starts)
    totals = [sum(values[i] for _, values in series) for i in range(count)]
    y_step = nice_step(max(totals, default=0) / Y_TICKS_TARGET)
    y_max = y_step * max(1, math.ceil(max(totals, default=0) / y_step))

    def x(i: int) -> float:
        return left + plot_width * i / count

    def y(value: float) -> float:
        return top + plot_height * (1 - value / y_max)

    areas = []
    below = [0] * count
    for index, (name, values) in enumerate(series):
        above = [b + v for b, v in zip(below, values, strict=True)]
        upper = [(x(i + k), y(above[i])) for i in range(count) for k in (0, 1)]
        lower = [(x(i + k), y(below[i])) for i in reversed(range(count)) for k in (1, 0)]
        areas.append(Area(name, color_of(name, index), _points(upper + lower)))
        below = above
    y_ticks = tuple(Tick(y(v), si(v)) for v in _range(0, y_max, y_step))
    span_s = count * bucket_s
    x_ticks = tuple(
        Tick(left + plot_width * (t - starts[0]).total_seconds() / span_s, text, subtext)
        for t, text, subtext in time_ticks(starts[0], starts[0] + dt.timedelta(seconds=span_s))
    )
    return AreaChart(width, height, left, top, plot_width, plot_height, tuple(areas), x_ticks, y_ticks)


def time_ticks(first: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, str, str]]:
    """Ticks on whole UTC minutes, hours or days in [first, end]: (time, text, date line or "")."""
    span_s = (end - first).total_seconds()
    step = next((s for s in _X_STEPS_S if span_s / s <= X_TICKS_MAX), _X_STEPS_S[-1])
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    offset = (first - epoch).total_seconds()
    tick = epoch + dt.timedelta(seconds=math.ceil(offset / step) * step)
    ticks = []
    previous_date = None
    while tick <= end:
        if step >= 86400:
            ticks.append((tick, tick.strftime("%Y-%m-%d"), ""))
        else:
            date = tick.strftime("%Y-%m-%d")
            ticks.append((tick, tick.strftime("%H:%M"), date if date != previous_date else ""))
            previous_date = date
        tick += dt.timedelta(seconds=step)
    return ticks


def nice_step(rough: float) -> float:
    """The smallest of 1, 2, 5 × 10^k that is at least ``rough`` (and at least 1: counts are whole)."""
    if rough <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(rough))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= rough)


def si(value: float) -> str:
    """A count in a few characters: 950, 1.2k, 34M."""
    for scale, prefix in _SI_PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def _range(start: float, stop: float, step: float) -> list[float]:
    return [start + i * step for i in range(int(round((stop - start) / step)) + 1)]


def _points(points: list[tuple[float, float]]) -> str:
    kept: list[tuple[float, float]] = []
    for point in points:
        # A flat run of buckets repeats its corner points; one of each is enough.
        if not kept or (round(point[0], 1), round(point[1], 1)) != (
            round(kept[-1][0], 1),
            round(kept[-1][1], 1),
        ):
            kept.append(point)
    return " ".join(f"{px:.1f},{py:.1f}" for px, py in kept)
