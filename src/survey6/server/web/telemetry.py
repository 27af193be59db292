"""Prometheus metrics of the server, read from the process's own state at scrape time.

Each application has its own registry (not the library's global one), so a test can build many.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from survey6.server import catalog
from survey6.server.fleet import Fleet
from survey6.server.liveness import STATES
from survey6.server.web.queries import file_totals

CAPTURE_HEALTHS = ("capturing", "dropping", "spool full", "failed", "stopped", "suspended", "unknown")


class FleetCollector(Collector):
    """Probes by state, heartbeats, landed uploads and the ingest outbox."""

    def __init__(self, sessions: sessionmaker[Session], fleet: Fleet) -> None:
        self.sessions = sessions
        self.fleet = fleet

    def collect(self) -> Iterable[Metric]:
        snapshot = self.fleet.snapshot()
        probes = GaugeMetricFamily("survey6_probes", "Enrolled probes by liveness state.", labels=["state"])
        for state in STATES:
            probes.add_metric([state], sum(1 for p in snapshot if p["state"] == state))
        yield probes
        health = GaugeMetricFamily(
            "survey6_probes_capture_health",
            "Probes that have not left, by the capture health of their last heartbeat.",
            labels=["health"],
        )
        present = [p for p in snapshot if p["state"] != "left"]
        for name in sorted({*CAPTURE_HEALTHS, *(p["capture_health"] for p in present)}):
            health.add_metric([name], sum(1 for p in present if p["capture_health"] == name))
        yield health
        yield CounterMetricFamily(
            "survey6_heartbeats_received",
            "Heartbeats received since the server started.",
            value=sum(int(p["heartbeats"]) for p in snapshot),
        )
        with self.sessions() as session:
            totals = file_totals(session)
        durable = [totals[state] for state in catalog.DURABLE_STATES]
        yield CounterMetricFamily(
            "survey6_uploads_landed",
            "Capture files landed durably (in the catalog).",
            value=sum(t.files for t in durable),
        )
        yield CounterMetricFamily(
            "survey6_uploads_landed_bytes",
            "Bytes of the capture files landed durably (in the catalog).",
            value=sum(t.size_bytes for t in durable),
        )
        files = GaugeMetricFamily(
            "survey6_catalog_files", "Capture files by catalog state.", labels=["state"]
        )
        size = GaugeMetricFamily("survey6_catalog_bytes", "Capture bytes by catalog state.", labels=["state"])
        for state, total in sorted(totals.items()):
            files.add_metric([state], total.files)
            size.add_metric([state], total.size_bytes)
        yield files
        yield size
        yield GaugeMetricFamily(
            "survey6_ingest_outbox_files",
            "Stored files waiting to be put on the ingest queue (the registry outbox).",
            value=totals[catalog.STORED].files,
        )


class WebMetrics:
    """The registry /metrics serves, and the web UI's own counters."""

    def __init__(self, sessions: sessionmaker[Session], fleet: Fleet) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(sessions, fleet))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.logins = Counter(
            "survey6_web_logins",
            "Web UI login attempts by outcome (success, failure, limited).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("success", "failure", "limited"):
            self.logins.labels(outcome)
