"""The link monitor's arithmetic, driven by a controlled clock and byte counter."""

from __future__ import annotations

from pathlib import Path

import pytest

from survey6.probe.linkmonitor import FAST_WINDOW_S, HOURS_PER_WEEK, LinkMonitor

CAPACITY_BPS = 1_000_000.0  # 1 Mbit/s: 125,000 bytes/s


class Link:
    """A clock and the interface's byte counters, which the test moves forward."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_700_000_000.0  # a Tuesday, 22:13 UTC
        self.rx = 0
        self.tx = 0

    def run(self, monitor: LinkMonitor, seconds: float, bytes_per_s: int, tx_per_s: int = 0,
            step_s: float = 1.0) -> None:  # fmt: skip
        """Other traffic received at `bytes_per_s` and sent at `tx_per_s`, sampled every `step_s`."""
        for _ in range(round(seconds / step_s)):
            self.step(monitor, step_s, rx=int(bytes_per_s * step_s), tx=int(tx_per_s * step_s))

    def step(self, monitor: LinkMonitor, seconds: float, rx: int = 0, tx: int = 0) -> None:
        self.now += seconds
        self.wall += seconds
        self.rx += rx
        self.tx += tx
        monitor.sample()


def monitor_for(
    link: Link, tmp_path: Path | None = None, hold_s: float = 3.0, smoothing_s: float = 1.0
) -> LinkMonitor:
    return LinkMonitor(
        "test0",
        capacity_bps=CAPACITY_BPS,
        idle_threshold_ratio=0.1,
        idle_hold_s=hold_s,
        smoothing_s=smoothing_s,
        profile_path=tmp_path / "profile.json" if tmp_path else None,
        clock=lambda: link.now,
        wall_clock=lambda: link.wall,
        read_bytes=lambda _name: (link.rx, link.tx),
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
    link.run(monitor, 1, 0)
    for _ in range(5):
        monitor.add_own_bytes(60_000)  # the uploader's bytes (half the capacity)...
        link.step(monitor, 1, rx=1_500, tx=63_600)  # ...as the counters see them: headers, ACKs
    assert monitor.idle
    # Only the upload's overhead counts as other traffic: 5,100 bytes/s of 125,000.
    assert monitor.utilisation == pytest.approx(0.0408, abs=0.001)
    assert monitor.headroom_bps() > 0.95 * CAPACITY_BPS


@pytest.mark.parametrize("overhead", [1.003, 1.06, 1.12])
def test_received_traffic_is_never_hidden_by_an_upload(overhead: float) -> None:
    """The old 1.08 x estimate turned an upload's bytes into headroom when its real overhead was
    smaller (0.3 % on a veth), down to "idle" with 24 Mbit/s received. Whatever the overhead, what
    is received stays counted in full."""
    link = Link()
    monitor = monitor_for(link, smoothing_s=5.0)
    background = 37_500  # 0.3 of the capacity, received
    link.run(monitor, 1, background)
    for _ in range(40):
        own = 80_000  # 0.64 of the capacity
        monitor.add_own_bytes(own)
        link.step(monitor, 0.25 * 4, rx=background, tx=int(own * overhead))
        assert (monitor.utilisation or 0) >= 0.3 - 1e-9
    assert monitor.busy and not monitor.idle


def test_an_upload_through_another_interface_hides_no_traffic() -> None:
    link = Link()
    monitor = monitor_for(link)
    link.run(monitor, 1, 0)
    for _ in range(5):
        monitor.add_own_bytes(100_000)  # reported, but never seen on this interface's tx
        link.step(monitor, 1, rx=20_000, tx=20_000)
    # The first second's 20,000 sent bytes are taken for the upload, as nothing tells them apart
    # yet; once the reported bytes have not left here for a whole sample, everything counts again.
    assert monitor.recent_utilisation == pytest.approx(0.32)


def test_bytes_released_at_the_end_of_a_sample_are_matched_in_the_next() -> None:
    link = Link()
    monitor = monitor_for(link, hold_s=0)
    link.run(monitor, 1, 0)
    for _ in range(8):
        monitor.add_own_bytes(30_000)
        link.step(monitor, 0.25, tx=10_000)  # two thirds of it leaves only in the next quarter-second
        link.step(monitor, 0.25, tx=20_000)
        assert (monitor.recent_utilisation or 0) < 0.01
    assert monitor.idle


def test_a_busy_period_counts_within_a_second_and_its_end_only_slowly() -> None:
    """Quick to back off (the recent mean), slow to take the link again (the smoothed value)."""
    link = Link()
    monitor = monitor_for(link, hold_s=30, smoothing_s=5.0)
    link.run(monitor, 10, 0, step_s=0.25)
    assert monitor.headroom_bps() == CAPACITY_BPS
    link.step(monitor, 0.25, rx=12_500)  # 0.4 of the capacity from now on
    assert monitor.headroom_bps() == pytest.approx(0.6 * CAPACITY_BPS)  # the rate follows at once
    samples = 1
    while not monitor.busy:
        link.step(monitor, 0.25, rx=12_500)
        samples += 1
    assert samples * 0.25 <= FAST_WINDOW_S  # the smoothed value alone would take 1.4 s
    link.run(monitor, FAST_WINDOW_S - samples * 0.25, 50_000, step_s=0.25)
    assert monitor.headroom_bps() == pytest.approx(0.6 * CAPACITY_BPS)
    link.run(monitor, 10, 50_000, step_s=0.25)
    link.run(monitor, FAST_WINDOW_S, 0, step_s=0.25)  # quiet again
    assert monitor.recent_utilisation == 0
    assert 0.25 < (monitor.utilisation or 0) < 0.4  # still remembered: the headroom grows back slowly
    assert monitor.headroom_bps() < 0.75 * CAPACITY_BPS
    assert not monitor.idle


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
                          clock=lambda: link.now, read_bytes=lambda _n: (link.rx, link.tx))  # fmt: skip
    monitor.capacity_bps = 0  # a driver that reports no speed
    link.run(monitor, 3, 0)
    assert monitor.utilisation is None and not monitor.idle
