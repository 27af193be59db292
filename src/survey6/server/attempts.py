"""Limits on guessing bootstrap tokens: failed Join attempts counted per client and for everyone.

A guess is a Join whose token is malformed, names no token, or has the wrong secret. A token that
is expired, revoked or used up with its *right* secret is not counted: whoever sends it already
knows the secret, and a fleet joining in parallel with one token would otherwise lock itself out.

Failures are counted over a sliding window (``failure_window_s``):

- per client: an IPv4 address, or the IPv6 prefix of ``client_ipv6_prefix_bits`` (a host that
  holds a /64 can pick any address in it, so counting per /128 would count nothing);
- for all clients together: ``failures_total``.

While a client is over its limit, its Joins are refused before the token is looked at, with the
time to wait. While the total is over, only clients that have failed at least once in the window
are refused: a client with no failure still gets its token looked at. Were every Join refused,
one bad Join every few seconds would keep the whole fleet from enrolling. Brute force is no reason
for the total: a secret has 16 characters of 36 (about 82 bits), out of reach at any rate the
network carries. The total bounds the work and log lines of a guesser spread over many addresses:
each of its addresses gets one guess a window, not ``failures_per_client``.

The check and the count are not one step, so Joins in flight together (at most the enrolment
server's worker threads) may go a few over.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import urllib.parse
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
    """A Join not even tried: which limit holds and for how long."""

    scope: str  # "client": its own limit; "global": the total, and this client has guessed
    retry_after_s: float


def client_key(peer: str, ipv6_prefix_bits: int) -> str:
    """The client a gRPC peer string counts as; never with the source port, which is new each connection.

    gRPC writes peers as URIs: ``ipv4:192.0.2.7:40000``, ``ipv6:%5B2001:db8::5%5D:40000`` (the
    brackets percent-encoded, as is the ``%`` of a zone: ``%5Bfe80::1%25eth0%5D``), ``unix:``.
    IPv4 addresses count one each; an IPv4-mapped IPv6 address (a dual-stack listener) counts as
    its IPv4 address; other IPv6 addresses count by their prefix. Anything else counts as its
    transport (``unix``), or as its host without the port when the host is no address.
    """
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return kind or UNKNOWN_CLIENT
    host = _host_of(rest)
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # without a zone (fe80::1%eth0)
    except ValueError:
        return f"{kind}:{host}"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    network = ipaddress.IPv6Network((address, ipv6_prefix_bits), strict=False)
    return str(network)


def _host_of(address_and_port: str) -> str:
    """``[2001:db8::5]:40000`` or ``192.0.2.7:40000`` without the port; a bare IPv6 address as it is."""
    if address_and_port.startswith("["):
        return address_and_port[1:].partition("]")[0]
    if address_and_port.count(":") > 1:  # IPv6 without brackets: no port can be told apart
        return address_and_port
    return address_and_port.rpartition(":")[0] or address_and_port


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
        # Per client, the times of its failures in the window; least recently failed first. Past
        # the total, clients that never failed still get a guess each, so the least recently
        # failed are forgotten beyond a bound: a forgotten client gets its guesses again, which
        # only matters to log volume (see the module docstring).
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()
        # The last `total` failures of everyone: enough to tell whether the total is reached and
        # when it will not be any more, and bounded however many clients guess.
        self._all: deque[float] = deque(maxlen=self.total)
        self.counts = dict.fromkeys(OUTCOMES, 0)

    def client_of(self, peer: str) -> str:
        return client_key(peer, self.ipv6_prefix_bits)

    def check(self, client: str) -> Refusal | None:
        """None when `client` may try a token now; else why not and for how long.

        A client is refused when it has used up its own guesses, or when it has failed at all while
        everyone together has used up the total; a client without a failure in the window always
        gets its token looked at.
        """
        now = self.clock()
        with self._lock:
            self._expire(self._all, now)
            failures = self._recent(client, now)
            if len(failures) >= self.per_client:
                # Free again when it is back under its limit.
                scope, until = "client", failures[len(failures) - self.per_client] + self.window_s
            elif failures and len(self._all) >= self.total:
                # Free again when everyone is back under the total, or its own failures have all left.
                scope, until = "global", min(self._all[0], failures[-1]) + self.window_s
            else:
                return None
            self.counts["limited"] += 1
        return Refusal(scope, max(until - now, 0.0))

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
            while len(self._clients) > max(self.total, 1) * 2:  # only with many guessing clients
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
            " (refused unseen: too many guesses from the client, or from everyone and the client guessed).",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            family.add_metric([outcome], counts[outcome])
        yield family
