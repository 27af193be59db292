"""Limits on guessing bootstrap tokens: failed Join attempts counted per client and for everyone.

A guess is a Join whose token is malformed, names no token, or has the wrong secret. A token that
is expired, revoked or used up with its *right* secret is not counted: whoever sends it already
knows the secret, and a fleet joining in parallel with one token would otherwise lock itself out.

Failures are counted over a sliding window (``failure_window_s``):

- per client: an IPv4 address, or the IPv6 prefix of ``client_ipv6_prefix_bits`` (a host that
  holds a /64 can pick any address in it, so counting per /128 would count nothing);
- for all clients together: a guesser spread over many prefixes still gets at most
  ``failures_total`` guesses a window.

While a client is over its limit, its Joins are refused before the token is looked at, with the
time to wait; while the total is over, every Join is. The check and the count are not one step, so
Joins in flight together (at most the enrolment server's worker threads) may go a few over.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from survey6.server.settings import EnrolmentSettings

log = logging.getLogger(__name__)

UNKNOWN_CLIENT = "unknown"
OUTCOMES = ("enrolled", "refused", "guess", "limited")


@dataclass(frozen=True)
class Refusal:
    """A Join not even tried: who is limited (a client, or everyone) and for how long."""

    scope: str  # "client" or "global"
    retry_after_s: float


def client_key(peer: str, ipv6_prefix_bits: int) -> str:
    """The client a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``) counts as.

    IPv4 addresses count one each; an IPv4-mapped IPv6 address (a dual-stack listener) counts as
    its IPv4 address; other IPv6 addresses count by their prefix.
    """
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("[") and "]" in rest:
        host = rest[1 : rest.index("]")]
    elif kind == "ipv4":
        host = rest.rsplit(":", 1)[0]
    else:
        return peer or UNKNOWN_CLIENT  # a unix socket or an unexpected form: counted as given
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # without a zone (fe80::1%25eth0)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    network = ipaddress.IPv6Network((address, ipv6_prefix_bits), strict=False)
    return str(network)


class JoinAttempts(Collector):
    """Failed Join attempts in a sliding window, per client and in total; a Prometheus collector.

    Thread-safe; `clock` (monotonic seconds) is injectable so that tests move time themselves.
    """

    def __init__(self, settings: EnrolmentSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = settings.failure_window_s
        self.per_client = settings.failures_per_client
        self.total = settings.failures_total
        self.ipv6_prefix_bits = settings.client_ipv6_prefix_bits
        self.clock = clock
        self._lock = threading.Lock()
        # Per client, the times of its failures in the window; least recently failed first. Within
        # a window there are at most `total` failures, so this never holds many more clients.
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()
        self.counts = dict.fromkeys(OUTCOMES, 0)

    def client_of(self, peer: str) -> str:
        return client_key(peer, self.ipv6_prefix_bits)

    def check(self, client: str) -> Refusal | None:
        """None when `client` may try a token now; else why not and for how long."""
        now = self.clock()
        with self._lock:
            self._expire(self._all, now)
            failures = self._recent(client, now)
            if len(failures) >= self.per_client:
                scope, oldest = "client", failures[0]
            elif len(self._all) >= self.total:
                scope, oldest = "global", self._all[0]
            else:
                return None
            self.counts["limited"] += 1
        return Refusal(scope, max(oldest + self.window_s - now, 0.0))

    def failed(self, client: str) -> int:
        """Counts a guess of `client`; returns its failures in the window, this one included."""
        now = self.clock()
        with self._lock:
            failures = self._recent(client, now)
            failures.append(now)
            self._clients[client] = failures
            self._clients.move_to_end(client)
            self._all.append(now)
            self._expire(self._all, now)
            while len(self._clients) > max(self.total, 1) * 2:  # only on a burst over the total
                self._clients.popitem(last=False)
            self.counts["guess"] += 1
            return len(failures)

    def note(self, outcome: str) -> None:
        """Counts a Join that got as far as the token: ``enrolled`` or ``refused`` (not a guess)."""
        with self._lock:
            self.counts[outcome] += 1

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._clients.get(client)
        if failures is None:
            return deque()
        self._expire(failures, now)
        if not failures:
            del self._clients[client]
        return failures

    def _expire(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window_s:
            times.popleft()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            counts = dict(self.counts)
        family = CounterMetricFamily(
            "survey6_enrolment_joins",
            "Join attempts by outcome: enrolled; refused (a known token that is expired, revoked or used"
            " up, or a bad request); guess (malformed token, unknown id or wrong secret); limited"
            " (refused unseen: too many guesses from the client or from everyone).",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            family.add_metric([outcome], counts[outcome])
        yield family
