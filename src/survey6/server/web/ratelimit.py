"""Failed-login limits per client address: a few failures a minute, then refusal for a while."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

WINDOW_S = 60.0
# Addresses tracked at once; past this the oldest are forgotten, so a flood of spoofed-looking
# sources cannot grow memory without bound.
MAX_TRACKED_ADDRESSES = 10_000


class LoginLimiter:
    """Counts failed logins per address in a sliding window of one minute."""

    def __init__(self, failures_per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures_per_minute = failures_per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def retry_after_s(self, address: str) -> float:
        """0 when the address may try to log in; else the seconds until it may."""
        now = self.clock()
        with self._lock:
            failures = self._recent(address, now)
            if len(failures) < self.failures_per_minute:
                return 0.0
            return max(failures[0] + WINDOW_S - now, 0.0)

    def failed(self, address: str, username: str) -> None:
        now = self.clock()
        with self._lock:
            failures = self._recent(address, now)
            failures.append(now)
            self._failures[address] = failures
            count = len(failures)
            while len(self._failures) > MAX_TRACKED_ADDRESSES:
                del self._failures[next(iter(self._failures))]
        log.warning(
            "failed login for %r from %s", username, address, extra={"client": address, "failures": count}
        )
        if count == self.failures_per_minute:
            log.warning(
                "logins from %s refused for a minute after %d failures",
                address,
                count,
                extra={"client": address},
            )

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def _recent(self, address: str, now: float) -> deque[float]:
        failures = self._failures.pop(address, deque())
        while failures and failures[0] <= now - WINDOW_S:
            failures.popleft()
        if failures:
            self._failures[address] = failures  # re-inserted: the dict's order is least recent first
        return failures
