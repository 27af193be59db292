"""What the pages and the JSON API show: the fleet's live state joined with the registry.

Liveness (state, capture health, last heartbeat) comes from the in-memory fleet, so the list is as
fresh as the last heartbeat; labels and the last reported health come from the registry, written
behind every few seconds. Every function takes an open session; none writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from survey6.server import audit, catalog
from survey6.server.fleet import Fleet
from survey6.server.liveness import STATES
from survey6.server.registry.models import CapturedFile, Command, Event, HeartbeatSample, Probe
from survey6.server.web import formatting as fmt

# Sort keys of the probe list, and the attribute each sorts by.
SORT_KEYS = {
    "probe": "probe_id",
    "hostname": "hostname",
    "state": "state",
    "health": "capture_health",
    "heartbeat": "last_heartbeat_at",
    "packets": "packets_captured",
    "rate": "packets_per_s",
    "drops": "drop_ratio",
    "backlog": "backlog_bytes",
    "upload": "last_upload_at",
}
DEFAULT_SORT = "probe"
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class ProbeView:
    """One probe as the list and the detail page show it."""

    probe_id: str
    hostname: str
    labels: dict[str, str]
    state: str
    capture_health: str
    last_heartbeat_at: dt.datetime | None
    enrolled_at: dt.datetime
    software_version: str
    capture_error: str
    # Since the probe process started (kernel and spool counters of its last heartbeat).
    packets_captured: int
    packets_per_s: float
    dropped_packets: int
    # Of the packets the kernel handed to the capture, the share it dropped; 0 when none seen.
    drop_ratio: float
    backlog_files: int
    backlog_bytes: int
    last_upload_at: dt.datetime | None

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        """The API form: raw values, and under ``display`` the strings the pages show."""
        return {
            "probe_id": self.probe_id,
            "hostname": self.hostname,
            "labels": self.labels,
            "state": self.state,
            "capture_health": self.capture_health,
            "capture_error": self.capture_error,
            "last_heartbeat_at": _iso(self.last_heartbeat_at),
            "heartbeat_age_s": None
            if self.last_heartbeat_at is None
            else round((now - self.last_heartbeat_at).total_seconds(), 1),
            "enrolled_at": _iso(self.enrolled_at),
            "software_version": self.software_version,
            "packets_captured": self.packets_captured,
            "packets_per_s": self.packets_per_s,
            "dropped_packets": self.dropped_packets,
            "drop_ratio": self.drop_ratio,
            "backlog_files": self.backlog_files,
            "backlog_bytes": self.backlog_bytes,
            "last_upload_at": _iso(self.last_upload_at),
            "display": self.display(now),
        }

    def display(self, now: dt.datetime) -> dict[str, str]:
        return {
            "last_heartbeat": fmt.age(self.last_heartbeat_at, now),
            "packets_captured": fmt.human_count(self.packets_captured),
            "packets_per_s": f"{fmt.human_count(self.packets_per_s)}/s",
            "drop_ratio": fmt.percent(self.drop_ratio),
            "backlog": f"{self.backlog_files} files, {fmt.human_bytes(self.backlog_bytes)}",
            "last_upload": fmt.age(self.last_upload_at, now),
            "labels": fmt.labels_text(self.labels),
        }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _int(value: Any) -> int:
    """protobuf's JSON writes 64-bit integers as strings."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _view(probe: Probe, live: dict[str, Any] | None) -> ProbeView:
    health = probe.last_health or {}
    interfaces = health.get("interfaces") or []
    spool = health.get("spool") or {}
    upload = health.get("upload") or {}
    captured = sum(_int(i.get("captured_packets_total")) for i in interfaces)
    received = sum(_int(i.get("received_packets_total")) for i in interfaces)
    dropped = sum(
        _int(i.get("dropped_packets_total")) + _int(i.get("interface_dropped_packets_total"))
        for i in interfaces
    )
    seen = max(received, captured) + sum(_int(i.get("interface_dropped_packets_total")) for i in interfaces)
    last_upload_ns = _int(upload.get("last_upload_ns"))
    reported = str(health.get("capture_state", "")).removeprefix("CAPTURE_STATE_").lower()
    last_heartbeat = probe.last_heartbeat_at
    state, capture_health = probe.state, reported or "unknown"
    if live is not None:
        state = live["state"]
        if live["capture_health"] != "unknown":
            capture_health = live["capture_health"]
        if live["last_heartbeat_at"]:
            last_heartbeat = dt.datetime.fromisoformat(live["last_heartbeat_at"])
    if state == "left":
        capture_health = "-"
    return ProbeView(
        probe_id=probe.id,
        hostname=probe.hostname,
        labels={str(k): str(v) for k, v in (probe.labels or {}).items()},
        state=state,
        capture_health=capture_health,
        last_heartbeat_at=last_heartbeat,
        enrolled_at=probe.enrolled_at,
        software_version=str(health.get("software_version", "")),
        capture_error=str(health.get("capture_error", "")),
        packets_captured=captured,
        packets_per_s=round(sum(_float(i.get("captured_packets_per_s")) for i in interfaces), 1),
        dropped_packets=dropped,
        drop_ratio=dropped / seen if seen else 0.0,
        backlog_files=_int(spool.get("backlog_files")),
        backlog_bytes=_int(spool.get("backlog_bytes")),
        last_upload_at=None
        if last_upload_ns <= 0
        else dt.datetime.fromtimestamp(last_upload_ns / _NS_PER_S, dt.UTC),
    )


def probe_views(session: Session, fleet: Fleet) -> list[ProbeView]:
    live = {entry["probe_id"]: entry for entry in fleet.snapshot()}
    return [_view(p, live.get(p.id)) for p in session.scalars(select(Probe))]


def probe_view(session: Session, fleet: Fleet, probe_id: str) -> ProbeView | None:
    probe = session.get(Probe, probe_id)
    if probe is None:
        return None
    live = next((e for e in fleet.snapshot() if e["probe_id"] == probe_id), None)
    return _view(probe, live)


def filter_probes(views: Iterable[ProbeView], *, state: str = "", text: str = "") -> list[ProbeView]:
    """Keeps probes in `state` (any when empty) whose id, hostname or a label contains `text`."""
    needle = text.strip().lower()
    return [
        v
        for v in views
        if (not state or v.state == state)
        and (
            not needle
            or needle in v.probe_id.lower()
            or needle in v.hostname.lower()
            or any(needle in f"{k}={value}".lower() for k, value in v.labels.items())
        )
    ]


def sort_probes(views: Iterable[ProbeView], key: str, *, descending: bool = False) -> list[ProbeView]:
    """Sorts by one of SORT_KEYS (unknown keys sort by id); empty values last either way."""
    attribute = SORT_KEYS.get(key, SORT_KEYS[DEFAULT_SORT])
    present = [v for v in views if getattr(v, attribute) is not None]
    missing = [v for v in views if getattr(v, attribute) is None]

    def sort_key(view: ProbeView) -> tuple[Any, str]:
        value = getattr(view, attribute)
        if attribute == "state":
            value = STATES.index(value) if value in STATES else len(STATES)
        elif isinstance(value, str):
            value = value.lower()
        return value, view.probe_id

    return sorted(present, key=sort_key, reverse=descending) + sorted(missing, key=lambda v: v.probe_id)


def state_counts(views: Iterable[ProbeView]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for view in views:
        counts[view.state] = counts.get(view.state, 0) + 1
    return counts


# -- one probe's history and records ------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: dt.datetime
    # The probe's rate over its last heartbeat interval, and its counters since it started.
    packets_per_s: float
    captured_total: int
    dropped_total: int
    backlog_bytes: int
    link_utilisation_ratio: float


def history(session: Session, probe_id: str, since: dt.datetime) -> list[Sample]:
    """Health samples since a time, oldest first (the fleet writes one per probe every few tens of
    seconds, and one whenever the capture health changes)."""
    rows = session.execute(
        select(
            HeartbeatSample.at,
            HeartbeatSample.captured_packets_per_s,
            HeartbeatSample.captured_packets_total,
            HeartbeatSample.dropped_packets_total,
            HeartbeatSample.backlog_bytes,
            HeartbeatSample.link_utilisation_ratio,
        )
        .where(HeartbeatSample.probe_id == probe_id, HeartbeatSample.at >= since)
        .order_by(HeartbeatSample.at)
    )
    return [Sample(*row) for row in rows]


def recent_events(session: Session, probe_id: str, limit: int) -> list[Event]:
    return list(
        session.scalars(
            select(Event)
            .where(Event.probe_id == probe_id)
            .order_by(Event.at.desc(), Event.id.desc())
            .limit(limit)
        )
    )


def recent_commands(session: Session, probe_id: str, limit: int) -> list[Command]:
    return list(
        session.scalars(
            select(Command)
            .where(Command.probe_id == probe_id)
            .order_by(Command.issued_at.desc())
            .limit(limit)
        )
    )


def recent_files(session: Session, probe_id: str, limit: int) -> list[CapturedFile]:
    return list(
        session.scalars(
            select(CapturedFile)
            .where(CapturedFile.probe_id == probe_id)
            .order_by(CapturedFile.sequence.desc())
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class StateTotal:
    files: int
    size_bytes: int


def file_totals(session: Session, probe_id: str | None = None) -> dict[str, StateTotal]:
    """Files and bytes in each catalog state, of one probe or of all."""
    query = select(CapturedFile.state, func.count(), func.coalesce(func.sum(CapturedFile.size_bytes), 0))
    if probe_id is not None:
        query = query.where(CapturedFile.probe_id == probe_id)
    totals = {state: StateTotal(0, 0) for state in catalog.STATES}
    for state, files, size in session.execute(query.group_by(CapturedFile.state)):
        totals[str(state)] = StateTotal(int(files), int(size))
    return totals


# -- ingest -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayRow:
    day: str
    by_state: dict[str, int]
    size_bytes: int

    @property
    def files(self) -> int:
        return sum(self.by_state.values())

    @property
    def complete(self) -> bool:
        """Every file of the day is in the datasets."""
        return self.files > 0 and self.by_state.get(catalog.INGESTED, 0) == self.files


def ingest_by_day(session: Session, since: dt.datetime) -> list[DayRow]:
    """Files received per UTC day (newest first) and where each is on its way to the datasets."""
    day = func.date(CapturedFile.received_at)
    rows = session.execute(
        select(day, CapturedFile.state, func.count(), func.coalesce(func.sum(CapturedFile.size_bytes), 0))
        .where(CapturedFile.received_at >= since)
        .group_by(day, CapturedFile.state)
    )
    by_state: dict[str, dict[str, int]] = {}
    size_bytes: dict[str, int] = {}
    for when, state, files, size in rows:
        key = str(when)  # a date on PostgreSQL, text on SQLite
        by_state.setdefault(key, {})[str(state)] = int(files)
        size_bytes[key] = size_bytes.get(key, 0) + int(size)
    return [DayRow(key, by_state[key], size_bytes[key]) for key in sorted(by_state, reverse=True)]


@dataclass(frozen=True)
class ProbeIngest:
    probe_id: str
    files: int
    size_bytes: int
    ingested: int
    failed: int
    last_received_at: dt.datetime | None


def ingest_by_probe(session: Session) -> list[ProbeIngest]:
    ingested = func.sum(case((CapturedFile.state == catalog.INGESTED, 1), else_=0))
    failed = func.sum(case((CapturedFile.state == catalog.FAILED, 1), else_=0))
    rows = session.execute(
        select(
            CapturedFile.probe_id,
            func.count(),
            func.coalesce(func.sum(CapturedFile.size_bytes), 0),
            func.coalesce(ingested, 0),
            func.coalesce(failed, 0),
            func.max(CapturedFile.received_at),
        )
        .group_by(CapturedFile.probe_id)
        .order_by(CapturedFile.probe_id)
    )
    return [
        ProbeIngest(str(p), int(n), int(size), int(done), int(bad), _aware(last))
        for p, n, size, done, bad, last in rows
    ]


def recent_failures(session: Session, limit: int) -> list[CapturedFile]:
    return list(
        session.scalars(
            select(CapturedFile)
            .where(CapturedFile.state == catalog.FAILED)
            .order_by(CapturedFile.received_at.desc())
            .limit(limit)
        )
    )


def _aware(value: Any) -> dt.datetime | None:
    """func.max() bypasses the column type: SQLite hands back text, other databases naive UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# -- JSON forms of registry rows ---------------------------------------------------------------


def event_json(event: Event) -> dict[str, Any]:
    return {
        "at": _iso(event.at),
        "kind": event.kind,
        "old_state": event.old_state,
        "new_state": event.new_state,
        "detail": event.detail,
    }


def command_json(command: Command) -> dict[str, Any]:
    return {
        "id": command.id,
        "action": command.action,
        "payload": command.payload,
        "issued_at": _iso(command.issued_at),
        "delivered_at": _iso(command.delivered_at),
        "acked_at": _iso(command.acked_at),
        "outcome": command.outcome,
        "detail": command.detail,
    }


def file_json(row: CapturedFile) -> dict[str, Any]:
    return {
        "sequence": row.sequence,
        "sha256": row.sha256_hex,
        "size_bytes": row.size_bytes,
        "packets": row.packets,
        "first_packet_at": _ns_iso(row.first_packet_time_ns),
        "last_packet_at": _ns_iso(row.last_packet_time_ns),
        "state": row.state,
        "state_detail": row.state_detail,
        "received_at": _iso(row.received_at),
    }


def _ns_iso(ns: int) -> str | None:
    return None if ns <= 0 else dt.datetime.fromtimestamp(ns / _NS_PER_S, dt.UTC).isoformat()


def sample_json(sample: Sample) -> dict[str, Any]:
    return {
        "at": sample.at.isoformat(),
        "packets_per_s": sample.packets_per_s,
        "captured_packets_total": sample.captured_total,
        "dropped_packets_total": sample.dropped_total,
        "backlog_bytes": sample.backlog_bytes,
        "link_utilisation_ratio": sample.link_utilisation_ratio,
    }


def audit_document(session: Session, probe_id: str | None = None) -> dict[str, Any]:
    """The accounting audit (docs/audit.md) of every probe or of one: the CLI's numbers.

    Raises:
        UnknownProbeError: `probe_id` names no probe.
    """
    return audit.audit_fleet(session, probe_id)


def probe_audit(session: Session, probe_id: str) -> dict[str, Any]:
    """One probe's report from :func:`audit_document`."""
    report: dict[str, Any] = audit.audit_fleet(session, probe_id)["probes"][0]
    return report
