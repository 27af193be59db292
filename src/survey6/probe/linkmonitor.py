"""Is the link idle? Utilisation from the interface's byte counters, without our own uploads.

Every second the monitor reads ``/sys/class/net/IF/statistics`` (rx + tx bytes), takes away the
bytes the uploader reports having sent (plus protocol overhead, so an upload does not make the link
look busy and stop itself), and smooths the rest into a utilisation ratio of the link's capacity.
The link is idle once that ratio has stayed under the threshold for the hold time. It also learns a
profile of utilisation by hour of the week (168 slots; each finished hour's mean is folded into its
slot, kept across restarts) so the uploader can prefer the hours that were quiet in past weeks. The
hour in progress does not predict itself.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from survey6.common.files import write_atomically
from survey6.probe import hostinfo

log = logging.getLogger(__name__)

HOURS_PER_WEEK = 168
# Weight of a finished hour's mean in its slot: a slot follows its hour over the last few weeks.
PROFILE_SMOOTHING = 0.3
UPLOAD_OVERHEAD_RATIO = 1.08  # TLS, HTTP/2, TCP and IP headers on top of what the uploader sends
PROFILE_SAVE_INTERVAL_S = 300.0


class LinkMonitor:
    def __init__(
        self,
        interface: str,
        *,
        capacity_bps: float,
        idle_threshold_ratio: float,
        idle_hold_s: float,
        smoothing_s: float,
        profile_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        read_bytes: Callable[[str], tuple[int, int]] = hostinfo.interface_counters,
    ) -> None:
        self.interface = interface
        self.capacity_bps = capacity_bps or hostinfo.link_speed_mbps(interface) * 1e6
        self.idle_threshold_ratio = idle_threshold_ratio
        self.idle_hold_s = idle_hold_s
        self.smoothing_s = smoothing_s
        self.profile_path = profile_path
        self.clock = clock
        self.wall_clock = wall_clock
        self.read_bytes = read_bytes
        self.utilisation: float | None = None
        self.busy_until_at: float = clock()  # last time the link was seen busy
        self._last: tuple[float, int] | None = None
        self._own_bytes = 0
        self.profile: list[float | None] = self._load_profile()
        self._hour: tuple[int, float, int] | None = None  # slot, sum and count of the hour in progress
        self._profile_saved_at = clock()
        if not self.capacity_bps:
            log.warning(
                "%s reports no link speed; set delivery.link_capacity_bps to measure idleness", interface
            )

    def add_own_bytes(self, count: int) -> None:
        """The uploader's bytes, which must not count as the link's own traffic."""
        self._own_bytes += count

    def sample(self) -> None:
        now = self.clock()
        rx, tx = self.read_bytes(self.interface)
        total = rx + tx
        if self._last is None:
            self._last = (now, total)
            return
        then, before = self._last
        elapsed = now - then
        if elapsed <= 0:
            return
        own = int(self._own_bytes * UPLOAD_OVERHEAD_RATIO)
        self._own_bytes = 0
        self._last = (now, total)
        if not self.capacity_bps:
            return
        other_bytes = max(total - before - own, 0)
        instant = min(other_bytes * 8 / elapsed / self.capacity_bps, 1.0)
        weight = 1 - math.exp(-elapsed / self.smoothing_s)
        previous = self.utilisation
        self.utilisation = instant if previous is None else previous + weight * (instant - previous)
        if self.utilisation >= self.idle_threshold_ratio:
            self.busy_until_at = now
        self._learn(self.utilisation)

    @property
    def idle(self) -> bool:
        if self.utilisation is None:
            return False
        return (
            self.utilisation < self.idle_threshold_ratio
            and self.clock() - self.busy_until_at >= self.idle_hold_s
        )

    @property
    def busy(self) -> bool:
        return self.utilisation is not None and self.utilisation >= self.idle_threshold_ratio

    def headroom_bps(self) -> float:
        """Capacity not used by other traffic."""
        return self.capacity_bps * (1 - (self.utilisation or 0.0))

    # -- hour-of-week profile -------------------------------------------------------------------

    def hour_of_week(self, at: float | None = None) -> int:
        moment = time.gmtime(self.wall_clock() if at is None else at)
        return moment.tm_wday * 24 + moment.tm_hour

    def predicted_utilisation(self, at: float | None = None) -> float | None:
        return self.profile[self.hour_of_week(at)]

    def quiet_hour_now(self) -> bool:
        """True unless the profile expects this hour to be busy (an unknown hour counts as quiet)."""
        predicted = self.predicted_utilisation()
        return predicted is None or predicted < self.idle_threshold_ratio

    def _learn(self, utilisation: float) -> None:
        slot = self.hour_of_week()
        if self._hour is not None and self._hour[0] != slot:
            self._fold_hour()
        _, total, count = self._hour if self._hour is not None else (slot, 0.0, 0)
        self._hour = (slot, total + utilisation, count + 1)
        if self.clock() - self._profile_saved_at >= PROFILE_SAVE_INTERVAL_S:
            self.save_profile()

    def _fold_hour(self) -> None:
        assert self._hour is not None
        slot, total, count = self._hour
        mean = total / count
        old = self.profile[slot]
        self.profile[slot] = mean if old is None else old + PROFILE_SMOOTHING * (mean - old)
        self._hour = None

    def _load_profile(self) -> list[float | None]:
        if self.profile_path is not None and self.profile_path.exists():
            try:
                raw = json.loads(self.profile_path.read_text())
                if isinstance(raw, list) and len(raw) == HOURS_PER_WEEK:
                    return [None if v is None else float(v) for v in raw]
            except (OSError, ValueError, TypeError) as exc:
                log.warning("link profile %s unreadable, learning afresh: %s", self.profile_path, exc)
        return [None] * HOURS_PER_WEEK

    def save_profile(self) -> None:
        self._profile_saved_at = self.clock()
        if self.profile_path is not None:
            write_atomically(self.profile_path, json.dumps(self.profile).encode())
