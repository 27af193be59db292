"""Health history charts as inline SVG geometry, computed on the server (no script, no CDN).

A chart is a few polylines in a fixed box; a gap in the heartbeats (the probe offline) breaks the
line instead of drawing a straight bridge across it.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from survey6.server.web import formatting as fmt
from survey6.server.web.queries import Sample

WIDTH_PX = 640
HEIGHT_PX = 150
LEFT_PX, RIGHT_PX, TOP_PX, BOTTOM_PX = 64, 8, 8, 20  # margins around the plot
# Samples are averaged into at most this many points: more than a chart this wide can show.
MAX_POINTS = 320
# A pause longer than this many typical sample intervals is drawn as a gap.
GAP_INTERVALS = 3.0

Point = tuple[dt.datetime, float | None]


@dataclass(frozen=True)
class Chart:
    title: str
    segments: list[str]  # SVG polyline "x,y x,y ..." strings
    y_ticks: list[tuple[float, str]]  # (y px, label)
    x_ticks: list[tuple[float, str, str]]  # (x px, label, text-anchor)
    latest: str
    width: int = WIDTH_PX
    height: int = HEIGHT_PX
    left: int = LEFT_PX
    right: int = WIDTH_PX - RIGHT_PX
    top: int = TOP_PX
    bottom: int = HEIGHT_PX - BOTTOM_PX

    @property
    def empty(self) -> bool:
        return not self.segments


def health_charts(samples: Sequence[Sample], start: dt.datetime, end: dt.datetime) -> list[Chart]:
    """The four charts of the probe page: packets/s, drops/s, backlog, link utilisation."""
    captured: list[Point] = [(s.at, s.packets_per_s) for s in samples[:1]]
    dropped: list[Point] = []
    for previous, sample in zip(samples, samples[1:], strict=False):
        # The counters make the average between two samples exact however far apart they are.
        elapsed_s = (sample.at - previous.at).total_seconds()
        rate = _per_s(sample.captured_total - previous.captured_total, elapsed_s)
        captured.append((sample.at, sample.packets_per_s if rate is None else rate))
        dropped.append((sample.at, _per_s(sample.dropped_total - previous.dropped_total, elapsed_s)))
    return [
        line_chart("captured packets/s", captured, start, end, fmt.human_count),
        line_chart("dropped packets/s", dropped, start, end, fmt.human_count),
        line_chart("backlog", [(s.at, float(s.backlog_bytes)) for s in samples], start, end, fmt.human_bytes),
        line_chart(
            "link utilisation",
            [(s.at, s.link_utilisation_ratio if s.link_utilisation_ratio >= 0 else None) for s in samples],
            start,
            end,
            fmt.percent,
            ceiling=1.0,
        ),
    ]


def _per_s(delta: int, elapsed_s: float) -> float | None:
    """None for a counter that went down (the probe restarted) or for no time between samples."""
    return delta / elapsed_s if elapsed_s > 0 and delta >= 0 else None


def line_chart(
    title: str,
    points: Sequence[Point],
    start: dt.datetime,
    end: dt.datetime,
    label: Callable[[float], str],
    ceiling: float | None = None,
) -> Chart:
    """A chart of `points` over [start, end]; None values and long pauses are gaps.

    Args:
        ceiling: a fixed top of the y axis (1.0 for ratios); else a round number above the data.
    """
    span_s = max((end - start).total_seconds(), 1.0)
    averaged = _average(points, start, span_s)
    known = [v for _, v in averaged if v is not None]
    top = ceiling if ceiling is not None else _round_up(max(known, default=0.0))
    chart_right, chart_bottom = WIDTH_PX - RIGHT_PX, HEIGHT_PX - BOTTOM_PX

    def x_of(at: dt.datetime) -> float:
        return LEFT_PX + (chart_right - LEFT_PX) * (at - start).total_seconds() / span_s

    def y_of(value: float) -> float:
        return chart_bottom - (chart_bottom - TOP_PX) * min(max(value / top, 0.0), 1.0)

    segments: list[str] = []
    current: list[str] = []
    gap_s = _gap_s(points, span_s)
    previous: dt.datetime | None = None
    for at, value in averaged:
        if value is None or (previous is not None and (at - previous).total_seconds() > gap_s):
            if current:
                segments.append(" ".join(current))
            current = []
        if value is not None:
            current.append(f"{x_of(at):.1f},{y_of(value):.1f}")
            previous = at
    if current:
        segments.append(" ".join(current))
    y_ticks = [(y_of(top * f), label(top * f)) for f in (0.0, 0.5, 1.0)]
    x_ticks = [
        (x_of(at), at.strftime("%H:%M"), anchor)
        for at, anchor in ((start, "start"), (start + (end - start) / 2, "middle"), (end, "end"))
    ]
    return Chart(title, segments, y_ticks, x_ticks, latest=label(known[-1]) if known else "no data")


def _average(points: Sequence[Point], start: dt.datetime, span_s: float) -> list[Point]:
    """Averages the points into at most MAX_POINTS time buckets (a bucket of only gaps stays a gap)."""
    if len(points) <= MAX_POINTS:
        return list(points)
    bucket_s = span_s / MAX_POINTS
    buckets: dict[int, list[tuple[dt.datetime, float | None]]] = {}
    for at, value in points:
        buckets.setdefault(int((at - start).total_seconds() // bucket_s), []).append((at, value))
    averaged: list[Point] = []
    for members in buckets.values():
        values = [v for _, v in members if v is not None]
        averaged.append((members[-1][0], statistics.fmean(values) if values else None))
    return averaged


def _gap_s(points: Sequence[Point], span_s: float) -> float:
    steps = [(b[0] - a[0]).total_seconds() for a, b in zip(points, points[1:], strict=False)]
    typical_s = statistics.median(steps) if steps else span_s
    return max(GAP_INTERVALS * typical_s, GAP_INTERVALS * span_s / MAX_POINTS)


def _round_up(value: float) -> float:
    """The next of 1, 2, 5 × 10^k at or above `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    raise AssertionError("unreachable")
