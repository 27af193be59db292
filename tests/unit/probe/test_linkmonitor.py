"""The link monitor's arithmetic, driven by a controlled clock and byte counter."""

from __future__ import annotations

import threading
from pathlib import Path

from survey6.probe.linkmonitor import HOURS_PER_WEEK, LinkMonitor
from survey6.probe.uploader import TokenBucket

CAPACITY_BPS = 1_000_000.0  # 1 Mbit/s: 125,000 bytes/s


class Link:
    """A clock and a byte counter the test moves forward."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_700_000_000.0  # a Tuesday, 22:13 UTC
        self.total = 0

    def run(self, monitor: LinkMonitor, seconds: int, bytes_per_s: int) -> None:
        for _ in range(seconds):
            self.now += 1
            self.wall += 1
            self.total += bytes_per_s
            monitor.sample()


def monitor_for(link: Link, tmp_path: Path | None = None, hold_s: float = 3.0) -> LinkMonitor:
    return LinkMonitor(
        "test0",
        capacity_bps=CAPACITY_BPS,
        idle_threshold_ratio=0.1,
        idle_hold_s=hold_s,
        smoothing_s=1.0,
        profile_path=tmp_path / "profile.json" if tmp_path else None,
        clock=lambda: link.now,
        wall_clock=lambda: link.wall,
        read_bytes=lambda _name: (link.total, 0),
    )


def test_busy_then_idle_after_the_hold_time() -> None:
    link = Link()
    monitor = monitor_for(link)
    link.run(monitor, 5, 100_000)  # 0.8 of capacity
    assert monitor.busy and not monitor.idle
    assert 0.7 < (monitor.utilisation or 0) <= 0.8
    link.run(monitor, 4, 0)  # utilisation decays below the threshold...
    assert not monitor.busy
    assert not monitor.idle  # ...but the hold time has not passed since it did
    link.run(monitor, 3, 0)
    assert monitor.idle


def test_own_uploads_do_not_make_the_link_busy() -> None:
    link = Link()
    monitor = monitor_for(link, hold_s=0)
    for _ in range(5):
        monitor.add_own_bytes(60_000)  # the uploader's bytes...
        link.run(monitor, 1, 64_000)  # ...and what the counters saw: the same, plus overhead
    assert monitor.idle
    assert monitor.headroom_bps() > 0.95 * CAPACITY_BPS


def test_profile_learns_busy_hours_for_next_week_and_survives_a_restart(tmp_path: Path) -> None:
    link = Link()
    monitor = monitor_for(link, tmp_path)
    assert monitor.quiet_hour_now()  # nothing known yet
    link.run(monitor, 60, 100_000)
    assert monitor.quiet_hour_now()  # the hour in progress does not predict itself
    busy_hour = monitor.hour_of_week()
    link.wall += 3600  # the next hour begins: the busy one is folded into its slot
    link.run(monitor, 1, 0)
    assert (monitor.profile[busy_hour] or 0) > 0.5
    link.wall += 7 * 24 * 3600 - 3600 - 1  # the same hour, a week later
    assert monitor.hour_of_week() == busy_hour
    assert not monitor.quiet_hour_now()
    monitor.save_profile()
    again = monitor_for(link, tmp_path)
    assert again.predicted_utilisation() == monitor.predicted_utilisation()
    assert sum(v is not None for v in again.profile) == 1 and len(again.profile) == HOURS_PER_WEEK


def test_unknown_capacity_never_reports_idle() -> None:
    link = Link()
    monitor = LinkMonitor("test0", capacity_bps=0, idle_threshold_ratio=0.1, idle_hold_s=0, smoothing_s=1,
                          clock=lambda: link.now, read_bytes=lambda _n: (link.total, 0))  # fmt: skip
    monitor.capacity_bps = 0  # a driver that reports no speed
    link.run(monitor, 3, 0)
    assert monitor.utilisation is None and not monitor.idle


def test_token_bucket_paces_bytes() -> None:
    now = [0.0]
    waits: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            now[0] += timeout or 0.0
            return False

    bucket = TokenBucket(1000.0, clock=lambda: now[0])
    stop = Stop()
    for _ in range(5):
        bucket.take(500, stop)
    assert abs(sum(waits) - 1.5) < 1e-6  # 2,500 bytes at 1,000/s with a one-second burst
