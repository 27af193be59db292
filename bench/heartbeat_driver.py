"""One load process of bench/heartbeat_load.py: its share of the simulated probes, each with its own
key, certificate and mTLS connection, heartbeating on its own schedule in one asyncio loop.

The parent talks to it through a pipe: the worker connects every channel and says ``ready``; the
parent answers ``go`` with wall-clock start and window times shared by all workers; the worker
heartbeats until the window ends, waits for its last calls and sends back what it measured.

Each probe paces itself as survey6-probe does: its next heartbeat is due one interval (+-10 %) after
the last one completed, and after a failed one a backoff with full jitter, so an overloaded server
sees the fleet back off as a real one would.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc

from survey6.wire.v1 import control_pb2

METHOD = "/survey6.v1.ProbeControl/Heartbeat"
HEARTBEAT_DEADLINE_S = 10.0  # what survey6-probe gives each heartbeat
CONNECT_CONCURRENCY = 64  # TLS handshakes in flight per worker during ramp-up
CONNECT_TIMEOUT_S = 120.0
JITTER_RATIO = 0.1  # each interval is drawn from interval * (1 +- this)
MAX_BACKOFF_S = 60.0  # survey6-probe's ceiling on the delay after failed heartbeats
# One TCP connection and TLS session per channel: without a local pool, gRPC may share a
# subchannel between channels to the same address.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(frozen=True)
class ProbeIdentity:
    probe_id: str
    key_pem: bytes
    cert_pem: bytes


@dataclass(frozen=True)
class Plan:
    target: str
    ca_pem: bytes
    interval_s: float


@dataclass
class ProbeTally:
    """What one simulated probe did over the whole run (warm-up, window and tail)."""

    probe_id: str
    last_sent_seq: int = 0
    last_ok_seq: int = 0
    # Wall-clock time (Unix seconds) the last acknowledged heartbeat was sent: the server recorded
    # it at that time or later, on the same clock.
    last_ok_sent_wall_s: float = 0.0
    ok: int = 0
    failed: int = 0


@dataclass
class WorkerReport:
    connected: int = 0
    connect_failed: int = 0
    connect_s: float = 0.0
    # One entry per successful call: completion time (s after the start), RPC latency and latency
    # counted from the scheduled send time (ms); the second includes any lateness of this loop.
    done_at_s: array[float] = field(default_factory=lambda: array("d"))
    latency_ms: array[float] = field(default_factory=lambda: array("d"))
    from_schedule_ms: array[float] = field(default_factory=lambda: array("d"))
    # One entry per failed call: (completion time, status code name).
    failures: list[tuple[float, str]] = field(default_factory=list)
    probes: list[ProbeTally] = field(default_factory=list)


def raise_open_files_limit(needed: int) -> int:
    """Raises RLIMIT_NOFILE to at least ``needed`` when allowed (root may raise the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            needed = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def heartbeat_request(probe_id: str, seq: int, started_ns: int) -> control_pb2.HeartbeatRequest:
    """A heartbeat shaped like survey6-probe's. The interface name carries the probe's id and
    ``captured_packets_total`` its sequence number, so the registry shows afterwards whose heartbeat
    it recorded and which one."""
    now_ns = time.time_ns()
    return control_pb2.HeartbeatRequest(
        sent_ns=now_ns,
        uptime_s=(now_ns - started_ns) // 1_000_000_000,
        software_version="bench",
        capture_state=control_pb2.CAPTURE_STATE_CAPTURING,
        interfaces=[
            control_pb2.InterfaceHealth(
                name=f"bench-{probe_id}",
                received_packets_total=seq * 1000,
                captured_packets_total=seq,
                captured_packets_per_s=333.0,
                link_utilisation_ratio=0.05,
                link_idle=True,
            )
        ],
        spool=control_pb2.SpoolHealth(free_bytes=10 << 30, quota_bytes=1 << 30),
    )


class Worker:
    def __init__(self, plan: Plan, identities: list[ProbeIdentity], conn: Connection) -> None:
        self.plan = plan
        self.identities = identities
        self.conn = conn
        self.report = WorkerReport(probes=[ProbeTally(i.probe_id) for i in identities])
        self.channels: list[grpc.aio.Channel] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._connect()
            self.conn.send(("ready", self.report.connected, self.report.connect_failed))
            _, start_wall, end_wall = await loop.run_in_executor(None, self.conn.recv)
            # Loop time of the shared wall-clock start and end of the heartbeats.
            start = loop.time() + (start_wall - time.time())
            end = start + (end_wall - start_wall)
            await asyncio.gather(*(self._probe(i, start, end) for i in range(len(self.identities))))
        finally:
            await asyncio.gather(*(c.close() for c in self.channels), return_exceptions=True)
        self.conn.send(("done", self.report))

    async def _connect(self) -> None:
        started = time.monotonic()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self.channels = [self._channel(identity) for identity in self.identities]

        async def connect(channel: grpc.aio.Channel) -> bool:
            async with gate:
                try:
                    await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
                except TimeoutError:
                    return False
            return True

        results = await asyncio.gather(*(connect(c) for c in self.channels))
        self.report.connected = sum(results)
        self.report.connect_failed = len(results) - self.report.connected
        self.report.connect_s = time.monotonic() - started

    def _channel(self, identity: ProbeIdentity) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.plan.ca_pem,
            private_key=identity.key_pem,
            certificate_chain=identity.cert_pem,
        )
        return grpc.aio.secure_channel(self.plan.target, credentials, options=CHANNEL_OPTIONS)

    async def _probe(self, index: int, start: float, end: float) -> None:
        loop = asyncio.get_running_loop()
        identity, tally = self.identities[index], self.report.probes[index]
        call = self.channels[index].unary_unary(
            METHOD,
            request_serializer=control_pb2.HeartbeatRequest.SerializeToString,
            response_deserializer=control_pb2.HeartbeatResponse.FromString,
        )
        rng = random.Random(identity.probe_id)
        interval = self.plan.interval_s
        started_ns = time.time_ns()
        failures = 0
        scheduled = start + rng.uniform(0.0, interval)  # probes start spread over one interval
        while scheduled < end:
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tally.last_sent_seq += 1
            request = heartbeat_request(identity.probe_id, tally.last_sent_seq, started_ns)
            sent, sent_wall = loop.time(), time.time()
            try:
                await call(request, timeout=HEARTBEAT_DEADLINE_S)
            except grpc.aio.AioRpcError as exc:
                tally.failed += 1
                failures += 1
                self.report.failures.append((loop.time() - start, exc.code().name))
                scheduled = loop.time() + backoff_s(rng, interval, failures)
                continue
            done = loop.time()
            failures = 0
            tally.ok += 1
            tally.last_ok_seq = tally.last_sent_seq
            tally.last_ok_sent_wall_s = sent_wall
            self.report.done_at_s.append(done - start)
            self.report.latency_ms.append((done - sent) * 1000.0)
            self.report.from_schedule_ms.append((done - scheduled) * 1000.0)
            scheduled = done + interval * (1.0 + rng.uniform(-JITTER_RATIO, JITTER_RATIO))


def backoff_s(rng: random.Random, interval_s: float, failures: int) -> float:
    """survey6-probe's delay after failed heartbeats: full jitter between the interval and a ceiling
    that doubles with each failure, up to MAX_BACKOFF_S."""
    ceiling = min(MAX_BACKOFF_S, interval_s * 2 ** min(failures, 16))
    return rng.uniform(interval_s, max(ceiling, interval_s))


def run_worker(plan: Plan, identities: list[ProbeIdentity], conn: Connection, open_files: int) -> None:
    """Entry point of a load process (started with the ``spawn`` method)."""
    raise_open_files_limit(open_files)
    try:
        asyncio.run(Worker(plan, identities, conn).run())
    except Exception as exc:  # the parent reports it; a worker never hangs the run
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def summarise_failures(failures: list[tuple[float, str]], since_s: float, until_s: float) -> dict[str, Any]:
    return dict(Counter(code for at, code in failures if since_s <= at < until_s))
