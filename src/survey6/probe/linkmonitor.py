"""Is the link idle? Utilisation from the interface's byte counters, without our own uploads.

The uploader samples the monitor (every second, and four times a second while it uploads). Each
sample reads ``/sys/class/net/IF/statistics`` (rx + tx bytes), takes away the bytes the uploader
reports having sent (see ``_own_on_the_wire`` for how: an upload must not make the link look
busy, and above all no other traffic may hide behind it), and turns the rest into utilisation
ratios of the link's capacity: ``utilisation``, smoothed with a time constant of ``smoothing_s``;
``recent_utilisation``, the plain mean of the last ``FAST_WINDOW_S``; and ``last_utilisation``,
the latest sample alone. Quick to back off, slow to take the link again: the link is busy as soon
as the recent mean (or the smoothed value) reaches the threshold, the headroom shrinks with the
highest of the three at once, and it grows back only as the smoothed value falls.

The link is idle once the smoothed and recent ratios have stayed under the threshold for the hold
time. The monitor
also learns a profile of utilisation by hour of the week (168 slots; each finished hour's
time-weighted mean is folded into its slot, kept across restarts) so the uploader can prefer the
hours that were quiet in past weeks. The hour in progress does not predict itself.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from survey6.common.files import write_atomically
from survey6.probe import hostinfo

log = logging.getLogger(__name__)

HOURS_PER_WEEK = 168
# Weight of a finished hour's mean in its slot: a slot follows its hour over the last few weeks.
PROFILE_SMOOTHING = 0.3
PROFILE_SAVE_INTERVAL_S = 300.0
# The unsmoothed utilisation the uploader backs off on is the mean over this much of the latest
# samples: short enough to notice a busy period within about a second, long enough that one burst
# of a few packets between two quarter-second samples does not stop an upload.
FAST_WINDOW_S = 1.0


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
        self.utilisation: float | None = None  # smoothed over smoothing_s
        self.recent_utilisation: float | None = None  # the mean of the last FAST_WINDOW_S
        self.last_utilisation: float | None = None  # the latest sample alone
        self.busy_until_at: float = clock()  # last time the link was seen busy
        self._last: tuple[float, int, int] | None = None  # time, rx and tx bytes of the last sample
        self._recent: deque[tuple[float, float, float]] = deque()  # end, seconds, utilisation x seconds
        self._own_bytes = 0  # reported by the uploader since the last sample
        self._own_unmatched = 0  # reported before, not seen leaving yet
        self.profile: list[float | None] = self._load_profile()
        self._hour: tuple[int, float, float] | None = None  # slot, utilisation x seconds, seconds
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
        if self._last is None:
            self._last = (now, rx, tx)
            self._own_bytes = 0  # sent before there was anything to compare with
            return
        then, rx_before, tx_before = self._last
        elapsed = now - then
        if elapsed <= 0:
            return
        self._last = (now, rx, tx)
        # A counter that went back (the interface was re-created) counts as no traffic, not as negative.
        received, sent = max(rx - rx_before, 0), max(tx - tx_before, 0)
        other_bytes = received + sent - self._own_on_the_wire(sent)
        if not self.capacity_bps:
            return
        instant = min(other_bytes * 8 / elapsed / self.capacity_bps, 1.0)
        weight = 1 - math.exp(-elapsed / self.smoothing_s)
        previous = self.utilisation
        self.utilisation = instant if previous is None else previous + weight * (instant - previous)
        self.recent_utilisation = self._recent_mean(now, elapsed, instant)
        self.last_utilisation = instant
        if self.limiting_utilisation >= self.idle_threshold_ratio:
            self.busy_until_at = now
        self._learn(self.utilisation, elapsed)

    def _own_on_the_wire(self, sent: int) -> int:
        """How much of what the interface sent is taken to be the uploader's.

        The uploader's file bytes at a ratio of exactly 1, and never more than the interface sent.
        Every file byte leaves as at least one byte on tx, so this takes away no more than the
        upload itself sent: received traffic is never hidden (the old 1.08 x estimate, taken from
        rx + tx, turned an upload's bytes into "idle" headroom where the real overhead was 0.3 %,
        and at high rates ate 24 Mbit/s of received traffic), nor other sent traffic beyond the
        upload's bytes still in flight at the end of a sample (which count next time). What is
        left over, the upload's headers and framing (~0.3 % as a veth counts them, ~5 % on a
        1500-byte MTU) and the server's ACKs on rx (~2-4 %), counts as other traffic: the error is
        on the busy side, 5-10 % of the upload's own rate. The price: an upload at half an idle
        link's capacity adds up to ~0.05 of it to the utilisation, so while it runs the link turns
        busy from ~0.05 of other traffic instead of the threshold's 0.1 (the upload pauses early;
        it never runs on over traffic it cannot see).

        Bytes released at the end of one sample may leave in the next, so what has not been seen
        is carried over one sample. If it still has not left by then, the upload does not (all) go
        out through this interface (a separate management interface, say), and nothing of this
        sample is taken as the upload's: its bytes on tx cannot be told from others there.
        """
        reported, carried = self._own_bytes, self._own_unmatched
        self._own_bytes = 0
        if sent < carried:
            self._own_unmatched = reported
            return 0
        own = min(carried + reported, sent)
        self._own_unmatched = carried + reported - own  # at most what was reported just now
        return own

    def _recent_mean(self, now: float, elapsed: float, instant: float) -> float:
        self._recent.append((now, elapsed, instant * elapsed))
        while len(self._recent) > 1 and self._recent[0][0] <= now - FAST_WINDOW_S:
            self._recent.popleft()
        return sum(r[2] for r in self._recent) / sum(r[1] for r in self._recent)

    @property
    def limiting_utilisation(self) -> float:
        """What decides business: the higher of the smoothed and the recent utilisation. A rise
        counts within a second; a fall only as the smoothed value follows it."""
        return max(self.utilisation or 0.0, self.recent_utilisation or 0.0)

    @property
    def idle(self) -> bool:
        if self.utilisation is None:
            return False
        return (
            self.limiting_utilisation < self.idle_threshold_ratio
            and self.clock() - self.busy_until_at >= self.idle_hold_s
        )

    @property
    def busy(self) -> bool:
        return self.utilisation is not None and self.limiting_utilisation >= self.idle_threshold_ratio

    def headroom_bps(self) -> float:
        """Capacity not used by other traffic. The latest sample counts too: a lower rate for a
        quarter second is cheap, unlike a pause (which waits out the hold time), so the rate backs
        off on a single sample while business needs a second of it."""
        return self.capacity_bps * (1 - max(self.limiting_utilisation, self.last_utilisation or 0.0))

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

    def _learn(self, utilisation: float, seconds: float) -> None:
        """Weighted by time: the quarter-second samples taken while uploading count for what they last."""
        slot = self.hour_of_week()
        if self._hour is not None and self._hour[0] != slot:
            self._fold_hour()
        _, total, duration = self._hour if self._hour is not None else (slot, 0.0, 0.0)
        self._hour = (slot, total + utilisation * seconds, duration + seconds)
        if self.clock() - self._profile_saved_at >= PROFILE_SAVE_INTERVAL_S:
            self.save_profile()

    def _fold_hour(self) -> None:
        assert self._hour is not None
        slot, total, duration = self._hour
        mean = total / duration
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
