"""The fleet as the running server sees it: every probe's latest heartbeat in memory.

Heartbeats cost no database write each: they update memory and are written behind in one
transaction per interval (``flush``), with one history sample per probe. ``refresh`` reads what
other processes changed (commands queued from the command line or the web UI, probes revoked),
and ``sweep`` turns heartbeat ages into states, recording every transition as an event.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from survey6.server import liveness
from survey6.server.commands import OUTCOMES, to_proto
from survey6.server.errors import CommandError, UnknownProbeError
from survey6.server.registry.models import Command, Event, HeartbeatSample, Probe, utcnow
from survey6.server.settings import LivenessSettings
from survey6.wire.v1 import control_pb2

log = logging.getLogger(__name__)

CAPTURE_STATE_NAMES = {
    value: name.removeprefix("CAPTURE_STATE_").lower() for name, value in control_pb2.CaptureState.items()
}


@dataclass
class ProbeEntry:
    probe_id: str
    cert_serial: str
    hostname: str
    left: bool
    state: str
    last_heartbeat_at: dt.datetime | None = None
    last_request: control_pb2.HeartbeatRequest | None = None
    capture_health: str = "unknown"
    heartbeats: int = 0
    dirty: bool = False
    # Commands not yet acknowledged, oldest first; re-sent on every response until acknowledged.
    pending: dict[str, control_pb2.Command] = field(default_factory=dict)
    newly_delivered: set[str] = field(default_factory=set)


class Fleet:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: LivenessSettings,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._by_id: dict[str, ProbeEntry] = {}
        self._by_serial: dict[str, ProbeEntry] = {}

    # -- loading and refreshing ----------------------------------------------------------------

    def load(self) -> None:
        with self.sessions() as session:
            for probe in session.scalars(select(Probe)):
                self._add(
                    ProbeEntry(
                        probe_id=probe.id,
                        cert_serial=probe.cert_serial,
                        hostname=probe.hostname,
                        left=probe.left_at is not None,
                        state=probe.state,
                        last_heartbeat_at=probe.last_heartbeat_at,
                    )
                )
        self.refresh()

    def _add(self, entry: ProbeEntry) -> None:
        with self._lock:
            self._by_id[entry.probe_id] = entry
            self._by_serial[entry.cert_serial] = entry

    def add_enrolled(self, probe: Probe) -> None:
        self._add(ProbeEntry(probe.id, probe.cert_serial, probe.hostname, left=False, state=probe.state))

    def refresh(self) -> None:
        """Picks up commands queued and probes revoked by other processes."""
        with self.sessions() as session:
            left = set(session.scalars(select(Probe.id).where(Probe.left_at.is_not(None))))
            open_commands = session.scalars(
                select(Command)
                .where(Command.outcome.in_(("pending", "delivered")))
                .order_by(Command.issued_at)
            ).all()
        with self._lock:
            for probe_id in left:
                if probe_id in self._by_id:
                    self._by_id[probe_id].left = True
            for command in open_commands:
                entry = self._by_id.get(command.probe_id)
                if entry is None or command.id in entry.pending:
                    continue
                try:
                    entry.pending[command.id] = to_proto(
                        {
                            "id": command.id,
                            "action": command.action,
                            "payload": command.payload,
                            "issued_ns": int(command.issued_at.timestamp() * 1e9),
                        }
                    )
                except CommandError:
                    log.exception("command %s cannot be sent; it stays pending", command.id)

    # -- the RPC side --------------------------------------------------------------------------

    def by_serial(self, serial: str) -> ProbeEntry | None:
        with self._lock:
            return self._by_serial.get(serial)

    def heartbeat(self, probe_id: str, request: control_pb2.HeartbeatRequest) -> list[control_pb2.Command]:
        """Records a heartbeat in memory; returns the commands to send back."""
        now = self.clock()
        with self._lock:
            entry = self._by_id[probe_id]
            entry.capture_health = liveness.capture_health(request, entry.last_request)
            entry.last_request = request
            entry.last_heartbeat_at = now
            entry.heartbeats += 1
            entry.dirty = True
            for command_id in entry.pending:
                entry.newly_delivered.add(command_id)
            commands = list(entry.pending.values())
        self._update_state(entry, now)
        return commands

    def acknowledge(self, probe_id: str, ack: control_pb2.CommandAck) -> None:
        """Records a command's outcome at once (acknowledgements are rare)."""
        outcome = OUTCOMES.get(ack.outcome, "failed")
        with self.sessions.begin() as session:
            command = session.get(Command, ack.command_id)
            if command is None or command.probe_id != probe_id:
                raise UnknownProbeError(f"probe {probe_id} has no command {ack.command_id!r}")
            if command.acked_at is None:
                command.acked_at = self.clock()
                command.delivered_at = command.delivered_at or command.acked_at
                command.outcome = outcome
                command.detail = ack.detail[:1000]
                session.add(
                    Event(
                        probe_id=probe_id,
                        kind="command",
                        detail=f"{command.action} {outcome}: {ack.detail}"[:1000],
                    )
                )
        with self._lock:
            entry = self._by_id.get(probe_id)
            if entry is not None:
                entry.pending.pop(ack.command_id, None)
                entry.newly_delivered.discard(ack.command_id)

    def leave(self, probe_id: str, reason: str) -> None:
        now = self.clock()
        with self.sessions.begin() as session:
            probe = session.get(Probe, probe_id)
            if probe is None:
                raise UnknownProbeError(f"no probe with id {probe_id!r}")
            if probe.left_at is None:
                probe.left_at = now
                old, probe.state = probe.state, liveness.LEFT
                session.add(
                    Event(
                        probe_id=probe_id,
                        kind="state",
                        old_state=old,
                        new_state=liveness.LEFT,
                        detail=reason[:500],
                    )
                )
        with self._lock:
            entry = self._by_id[probe_id]
            entry.left = True
            entry.state = liveness.LEFT

    # -- background work -----------------------------------------------------------------------

    def flush(self) -> int:
        """Writes the heartbeats received since the last flush; returns how many probes."""
        with self._lock:
            dirty = [e for e in self._by_id.values() if e.dirty]
            batch = [(e.probe_id, e.last_heartbeat_at, e.last_request, set(e.newly_delivered)) for e in dirty]
            for entry in dirty:
                entry.dirty = False
                entry.newly_delivered.clear()
        if not batch:
            return 0
        with self.sessions.begin() as session:
            for probe_id, at, request, delivered in batch:
                assert at is not None and request is not None
                session.execute(
                    update(Probe)
                    .where(Probe.id == probe_id)
                    .values(last_heartbeat_at=at, last_health=_health_json(request))
                )
                session.add(_sample(probe_id, at, request))
                if delivered:
                    session.execute(
                        update(Command)
                        .where(Command.id.in_(delivered), Command.outcome == "pending")
                        .values(outcome="delivered", delivered_at=at)
                    )
        return len(batch)

    def sweep(self) -> None:
        now = self.clock()
        with self._lock:
            entries = list(self._by_id.values())
        for entry in entries:
            self._update_state(entry, now)

    def _update_state(self, entry: ProbeEntry, now: dt.datetime) -> None:
        with self._lock:
            capture_state = entry.last_request.capture_state if entry.last_request else 0
            new = liveness.liveness_state(
                now,
                entry.last_heartbeat_at,
                capture_state,
                left=entry.left,
                stale_after_s=self.settings.stale_after_s,
                offline_after_s=self.settings.offline_after_s,
            )
            old = entry.state
            if new == old:
                return
            entry.state = new
        with self.sessions.begin() as session:
            session.execute(update(Probe).where(Probe.id == entry.probe_id).values(state=new))
            session.add(Event(probe_id=entry.probe_id, kind="state", at=now, old_state=old, new_state=new))
        log.info("probe %s: %s -> %s", entry.probe_id, old, new, extra={"probe_id": entry.probe_id})

    def snapshot(self) -> list[dict[str, Any]]:
        """Live view of every probe, for the CLI, the web UI and metrics."""
        with self._lock:
            return [
                {
                    "probe_id": e.probe_id,
                    "hostname": e.hostname,
                    "state": e.state,
                    "capture_health": e.capture_health,
                    "last_heartbeat_at": e.last_heartbeat_at.isoformat() if e.last_heartbeat_at else None,
                    "heartbeats": e.heartbeats,
                }
                for e in self._by_id.values()
            ]


def _health_json(request: control_pb2.HeartbeatRequest) -> dict[str, Any]:
    return json_format.MessageToDict(request, preserving_proto_field_name=True)


def _sample(probe_id: str, at: dt.datetime, request: control_pb2.HeartbeatRequest) -> HeartbeatSample:
    interfaces = request.interfaces
    return HeartbeatSample(
        probe_id=probe_id,
        at=at,
        capture_state=CAPTURE_STATE_NAMES.get(request.capture_state, "unspecified"),
        captured_packets_per_s=sum(i.captured_packets_per_s for i in interfaces),
        captured_packets_total=sum(i.captured_packets_total for i in interfaces),
        dropped_packets_total=sum(
            i.dropped_packets_total + i.interface_dropped_packets_total for i in interfaces
        ),
        backlog_bytes=request.spool.backlog_bytes,
        link_utilisation_ratio=max((i.link_utilisation_ratio for i in interfaces), default=-1.0),
    )
