"""The fleet as the running server sees it: every probe's latest heartbeat in memory.

A heartbeat costs no database write: the RPC thread updates the probe's entry under a lock, and
any state change it causes is queued in memory as an event. ``flush`` writes all of it behind, in
one transaction per interval with a few bulk statements: the probes' last heartbeat time and
state, their history samples with the whole health report (at most one per probe per
``history_interval_s``, plus one whenever the capture health changes) and the queued events in
the order and at the times they happened. A flush that fails keeps everything for the next one.
Loss records on a heartbeat are queued the same way (``survey6.server.losses``), and each response
acknowledges the highest one already written. ``refresh`` reads what other processes changed
(commands queued from the command line or the web UI, probes revoked), and ``sweep`` turns
heartbeat ages into states.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from survey6.server import liveness, losses
from survey6.server.commands import OUTCOMES, to_proto
from survey6.server.errors import CommandError, ServerError, UnknownProbeError
from survey6.server.registry.models import Base, Command, Event, HeartbeatSample, Probe, utcnow
from survey6.server.settings import LivenessSettings
from survey6.wire.v1 import control_pb2

log = logging.getLogger(__name__)

CAPTURE_STATE_NAMES = {
    value: name.removeprefix("CAPTURE_STATE_").lower() for name, value in control_pb2.CaptureState.items()
}
# Health history for the charts, and the whole last health report with it: a probe's cumulative
# counters (captured, dropped) make every interval between two samples exact however far apart
# they are, so one sample per probe this often is enough for a chart; it keeps the table at 1/10
# of the heartbeats (3 s apart), and the report's conversion to JSON (most of a write's CPU) off
# the other nine. A change of capture health is sampled at once, whenever it comes.
HISTORY_INTERVAL_S = 30.0
# States that only a heartbeat or a leave can end: the sweep need not look at them.
_SETTLED = frozenset((liveness.OFFLINE, liveness.LEFT))

_TABLES = Base.metadata.tables
_PROBES, _COMMANDS = _TABLES[Probe.__tablename__], _TABLES[Command.__tablename__]
# Core statements run with a list of parameter sets (DB-API executemany): no ORM object, no
# identity map, no autoflush, one prepared statement for the whole batch.
_WRITE_HEARTBEAT = (
    update(_PROBES)
    .where(_PROBES.c.id == bindparam("b_id"))
    .values(last_heartbeat_at=bindparam("b_at"), state=bindparam("b_state"))
)
_WRITE_HEARTBEAT_AND_HEALTH = _WRITE_HEARTBEAT.values(last_health=bindparam("b_health"))
_WRITE_STATE = update(_PROBES).where(_PROBES.c.id == bindparam("b_id")).values(state=bindparam("b_state"))
_MARK_DELIVERED = (
    update(_COMMANDS)
    .where(_COMMANDS.c.id == bindparam("b_id"), _COMMANDS.c.outcome == "pending")
    .values(outcome="delivered", delivered_at=bindparam("b_at"))
)
_INSERT_SAMPLES = insert(_TABLES[HeartbeatSample.__tablename__])
_INSERT_EVENTS = insert(_TABLES[Event.__tablename__])


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
    # A heartbeat not yet written; a state change not yet written (without a heartbeat: the sweep).
    dirty: bool = False
    state_dirty: bool = False
    # The last history sample written: its time and the capture health it showed.
    sampled_at: dt.datetime | None = None
    sampled_health: str = ""
    # Commands not yet acknowledged, oldest first; re-sent on every response until acknowledged.
    pending: dict[str, control_pb2.Command] = field(default_factory=dict)
    newly_delivered: set[str] = field(default_factory=set)
    # Highest loss id written to the registry (acknowledged to the probe), and queued for writing.
    losses_stored: int = 0
    losses_queued: int = 0
    # The probe's last heartbeat counted fewer loss records than the registry holds (logged once).
    losses_behind: bool = False


@dataclass
class _Heartbeat:
    entry: ProbeEntry
    at: dt.datetime
    request: control_pb2.HeartbeatRequest
    state: str
    # The capture health to sample, or None when this heartbeat is not sampled.
    sample_health: str | None


@dataclass
class _Batch:
    """What one flush takes out of memory (under the lock: references only, no conversion), and
    gives back if it cannot be written."""

    heartbeats: list[_Heartbeat] = field(default_factory=list)
    states: list[tuple[ProbeEntry, str]] = field(default_factory=list)
    delivered: list[tuple[ProbeEntry, dt.datetime, set[str]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    losses: list[tuple[ProbeEntry, dict[str, Any]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.heartbeats or self.states or self.delivered or self.events or self.losses)


class Fleet:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: LivenessSettings,
        clock: Callable[[], dt.datetime] = utcnow,
        *,
        history_interval_s: float = HISTORY_INTERVAL_S,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.history_interval = dt.timedelta(seconds=history_interval_s)
        # Guards the entries and the event queue; held only for memory work, never for a write.
        self._lock = threading.Lock()
        # One writer at a time (flush, leave), so that events reach the registry in order.
        self._write_lock = threading.Lock()
        self._by_id: dict[str, ProbeEntry] = {}
        self._by_serial: dict[str, ProbeEntry] = {}
        # Probes whose heartbeat age can still change their state (online, suspended, stale), in
        # the order they were last heard from, oldest first: the sweep stops at the first one
        # heard from recently, so its work is the probes that fell silent, not the whole fleet.
        self._watched: OrderedDict[str, ProbeEntry] = OrderedDict()
        # Probes with a heartbeat or a state change not yet written: a flush looks at these only.
        self._dirty: dict[str, ProbeEntry] = {}
        self._events: list[dict[str, Any]] = []
        self._losses: list[tuple[ProbeEntry, dict[str, Any]]] = []
        self.failed_flushes = 0  # in a row; 0 once a flush succeeds
        self.failed_flushes_total = 0

    # -- loading and refreshing ----------------------------------------------------------------

    def load(self) -> None:
        with self.sessions() as session:
            stored = losses.stored_through(session)
            # Oldest heartbeat first, so that the probes to watch are in the sweep's order.
            for probe in session.scalars(
                select(Probe).order_by(Probe.last_heartbeat_at.is_not(None), Probe.last_heartbeat_at)
            ):
                self._add(
                    ProbeEntry(
                        probe_id=probe.id,
                        cert_serial=probe.cert_serial,
                        hostname=probe.hostname,
                        left=probe.left_at is not None,
                        state=probe.state,
                        last_heartbeat_at=probe.last_heartbeat_at,
                        losses_stored=stored.get(probe.id, 0),
                        losses_queued=stored.get(probe.id, 0),
                    )
                )
        self.refresh()

    def _add(self, entry: ProbeEntry) -> None:
        with self._lock:
            self._by_id[entry.probe_id] = entry
            if entry.state not in _SETTLED:  # online before a restart: the sweep ages it
                self._watched[entry.probe_id] = entry
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
        now = self.clock()
        changes = []
        with self._lock:
            for probe_id in left:
                entry = self._by_id.get(probe_id)
                if entry is not None and not entry.left:
                    entry.left = True
                    changes.append(self._transition(entry, now))  # the sweep may not look at it
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
        for change in changes:
            if change is not None:
                _log_change(*change)

    # -- the RPC side --------------------------------------------------------------------------

    def by_serial(self, serial: str) -> ProbeEntry | None:
        with self._lock:
            return self._by_serial.get(serial)

    def heartbeat(self, probe_id: str, request: control_pb2.HeartbeatRequest) -> list[control_pb2.Command]:
        """Records a heartbeat in memory; returns the commands to send back."""
        now = self.clock()
        with self._lock:
            entry = self._by_id[probe_id]
            self._watched[probe_id] = entry
            self._watched.move_to_end(probe_id)
            self._dirty[probe_id] = entry
            entry.capture_health = liveness.capture_health(request, entry.last_request)
            entry.last_request = request
            entry.last_heartbeat_at = now
            entry.heartbeats += 1
            entry.dirty = True
            entry.newly_delivered.update(entry.pending)
            commands = list(entry.pending.values())
            self._queue_losses(entry, request, now)
            change = self._transition(entry, now)
        if change is not None:
            _log_change(*change)
        return commands

    def _queue_losses(
        self, entry: ProbeEntry, request: control_pb2.HeartbeatRequest, now: dt.datetime
    ) -> None:
        """Queues the heartbeat's loss records not queued before (the caller holds the lock)."""
        recorded = request.spool.losses_recorded_total
        if request.HasField("spool") and recorded < entry.losses_stored and not entry.losses_behind:
            # Its loss log and spool state were lost or replaced: records it makes now reuse ids the
            # registry holds, and are taken as already stored until the probe passes them.
            log.warning(
                "probe %s reports %d loss records, but the registry holds %d: its spool was reset",
                entry.probe_id,
                recorded,
                entry.losses_stored,
            )
        entry.losses_behind = request.HasField("spool") and recorded < entry.losses_stored
        queued = 0
        for loss in sorted(request.losses, key=lambda item: item.id):
            if loss.id <= entry.losses_queued:  # re-sent until acknowledged: queue each once
                continue
            if loss.id > losses.COLUMN_MAX or queued >= losses.MAX_LOSSES_PER_HEARTBEAT:
                if loss.id > losses.COLUMN_MAX:
                    log.warning(
                        "probe %s sent loss record id %d, out of range: ignored", entry.probe_id, loss.id
                    )
                break  # ids are ascending: the rest waits for the next heartbeat, or never fits
            self._losses.append((entry, losses.row(entry.probe_id, loss, now)))
            entry.losses_queued = loss.id
            queued += 1

    def losses_acknowledged(self, probe_id: str) -> int:
        """The highest loss id of the probe the registry holds: the heartbeat response's ack."""
        with self._lock:
            entry = self._by_id.get(probe_id)
            return entry.losses_stored if entry is not None else 0

    def acknowledge(self, probe_id: str, ack: control_pb2.CommandAck) -> None:
        """Records a command's outcome before answering: once answered, the probe forgets the
        acknowledgement, so it must be durable by then (acknowledgements are rare)."""
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
        """Records a leave before answering: the probe forgets its identity once answered.

        Transitions still queued are written first, so the registry's events stay in order; while
        the leave is being written the probe counts as left (its calls are refused), and is put
        back as it was if the write fails.

        Raises:
            UnknownProbeError: no such probe.
            ServerError: the registry cannot be written (the probe is told to try again).
        """
        now = self.clock()
        with self._write_lock:
            self._flush_locked()
            if self.failed_flushes:  # the leave must not be written ahead of changes before it
                raise ServerError("the registry cannot be written now; the leave is not recorded: retry")
            with self._lock:
                entry = self._by_id.get(probe_id)
                if entry is None:
                    raise UnknownProbeError(f"no probe with id {probe_id!r}")
                was_left, was_state = entry.left, entry.state
                entry.left, entry.state = True, liveness.LEFT
            try:
                self._write_leave(probe_id, now, reason)
            except BaseException:
                with self._lock:
                    entry.left, entry.state = was_left, was_state
                raise

    def _write_leave(self, probe_id: str, now: dt.datetime, reason: str) -> None:
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
                        at=now,
                        old_state=old,
                        new_state=liveness.LEFT,
                        detail=reason[:500],
                    )
                )

    # -- background work -----------------------------------------------------------------------

    def flush(self) -> int:
        """Writes what changed since the last flush; returns how many heartbeats it wrote.

        A failed write is logged and counted, and everything it held is kept for the next flush.
        """
        with self._write_lock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        with self._lock:
            batch = self._take_batch()
        if not batch:
            return 0
        try:
            self._write(batch)
        except SQLAlchemyError as exc:
            self._give_back(batch)
            self.failed_flushes += 1
            self.failed_flushes_total += 1
            log.warning(
                "registry write failed (%d in a row): %d heartbeats, %d state changes and %d events kept "
                "for the next flush: %s",
                self.failed_flushes,
                len(batch.heartbeats),
                len(batch.states),
                len(batch.events),
                exc,
            )
            return 0
        except BaseException:
            self._give_back(batch)  # not a database error (a bug?): still lose nothing
            raise
        self.failed_flushes = 0
        with self._lock:
            for entry, loss in batch.losses:
                entry.losses_stored = max(entry.losses_stored, loss["loss_id"])
            for beat in batch.heartbeats:
                if beat.sample_health is None:
                    continue
                if beat.entry.sampled_at is None:
                    # Probes that came online together would all be sampled in the same flush
                    # every interval after: each gets a phase of its own instead.
                    beat.entry.sampled_at = beat.at - self._phase(beat.entry.probe_id)
                else:
                    beat.entry.sampled_at = beat.at
                beat.entry.sampled_health = beat.sample_health
        return len(batch.heartbeats)

    def _phase(self, probe_id: str) -> dt.timedelta:
        """A fixed fraction of the history interval, spread evenly over the probes."""
        return self.history_interval * (zlib.crc32(probe_id.encode()) % 1024 / 1024)

    def _take_batch(self) -> _Batch:
        """Moves what is to be written out of memory (the caller holds the lock)."""
        batch = _Batch(events=self._events, losses=self._losses)
        self._events, self._losses = [], []
        dirty, self._dirty = self._dirty, {}
        for entry in dirty.values():
            if entry.dirty:
                entry.dirty = entry.state_dirty = False  # the heartbeat's row carries the state
                assert entry.last_heartbeat_at is not None and entry.last_request is not None
                at = entry.last_heartbeat_at
                sampled = (
                    entry.sampled_at is None
                    or at - entry.sampled_at >= self.history_interval
                    or entry.capture_health != entry.sampled_health
                )
                batch.heartbeats.append(
                    _Heartbeat(
                        entry, at, entry.last_request, entry.state, entry.capture_health if sampled else None
                    )
                )
                if entry.newly_delivered:
                    batch.delivered.append((entry, at, entry.newly_delivered))
                    entry.newly_delivered = set()
            elif entry.state_dirty:
                entry.state_dirty = False
                batch.states.append((entry, entry.state))
        return batch

    def _write(self, batch: _Batch) -> None:
        heartbeats = [
            {"b_id": b.entry.probe_id, "b_at": b.at, "b_state": b.state}
            for b in batch.heartbeats
            if b.sample_health is None
        ]
        # The health as JSON costs more than the rest of a probe's write: it goes with the samples.
        sampled = [
            {"b_id": b.entry.probe_id, "b_at": b.at, "b_state": b.state, "b_health": _health_json(b.request)}
            for b in batch.heartbeats
            if b.sample_health is not None
        ]
        states = [{"b_id": entry.probe_id, "b_state": state} for entry, state in batch.states]
        samples = [
            _sample(b.entry.probe_id, b.at, b.request)
            for b in batch.heartbeats
            if b.sample_health is not None
        ]
        delivered = [
            {"b_id": command_id, "b_at": at}
            for _, at, command_ids in batch.delivered
            for command_id in command_ids
        ]
        with self.sessions.begin() as session:
            for statement, rows in (
                (_WRITE_HEARTBEAT, heartbeats),
                (_WRITE_HEARTBEAT_AND_HEALTH, sampled),
                (_WRITE_STATE, states),
                (_INSERT_SAMPLES, samples),
                (_MARK_DELIVERED, delivered),
                (_INSERT_EVENTS, batch.events),
            ):
                if rows:
                    session.execute(statement, rows)
        if batch.losses:
            self._write_losses(batch)

    def _write_losses(self, batch: _Batch) -> None:
        """Writes the loss records in a transaction of their own, after the heartbeats: a record the
        database refuses must not hold back the registry. If all together fail, each probe's go
        separately, and only the failing probes' records are kept for the next flush (logged)."""
        try:
            with self.sessions.begin() as session:
                losses.insert_ignoring_stored(session, [loss for _, loss in batch.losses])
            return
        except (SQLAlchemyError, ArithmeticError, ValueError):
            log.debug("loss records not written together; writing each probe's on its own")
        by_probe: dict[str, list[tuple[ProbeEntry, dict[str, Any]]]] = {}
        for item in batch.losses:
            by_probe.setdefault(item[0].probe_id, []).append(item)
        kept: list[tuple[ProbeEntry, dict[str, Any]]] = []
        for probe_id, items in by_probe.items():
            try:
                with self.sessions.begin() as session:
                    losses.insert_ignoring_stored(session, [loss for _, loss in items])
            except (SQLAlchemyError, ArithmeticError, ValueError) as exc:
                log.warning(
                    "loss records of probe %s not written; kept for the next flush: %s", probe_id, exc
                )
                kept.extend(items)
        if kept:
            with self._lock:
                self._losses[:0] = kept
        unwritten = {id(row) for _, row in kept}
        batch.losses = [item for item in batch.losses if id(item[1]) not in unwritten]

    def _give_back(self, batch: _Batch) -> None:
        with self._lock:
            # Entries hold their newest heartbeat and state already: marking them dirty again is
            # enough. Queued events go back in front of any that came meanwhile, in order.
            for beat in batch.heartbeats:
                beat.entry.dirty = True
                self._dirty[beat.entry.probe_id] = beat.entry
            for entry, _ in batch.states:
                entry.state_dirty = True
                self._dirty[entry.probe_id] = entry
            for entry, _, command_ids in batch.delivered:
                entry.newly_delivered |= command_ids
            self._events[:0] = batch.events
            self._losses[:0] = batch.losses

    def sweep(self) -> None:
        """Turns heartbeat ages into states; each change is queued as an event.

        Only the watched probes heard from longest ago are looked at, up to the first one heard
        from within the stale threshold: every later one is fresher still, and its own heartbeat
        worked out its state.
        """
        now = self.clock()
        fresh_after = now - dt.timedelta(seconds=self.settings.stale_after_s)
        silent_after = now - dt.timedelta(seconds=self.settings.offline_after_s)
        changes = []
        with self._lock:
            due = []
            for entry in self._watched.values():
                heard_at = entry.last_heartbeat_at
                if heard_at is not None and heard_at >= fresh_after:
                    break
                if entry.state == liveness.STALE and heard_at is not None and heard_at >= silent_after:
                    continue  # stale already, not yet offline
                due.append(entry)
            for entry in due:  # not while iterating: a probe going offline is no longer watched
                change = self._transition(entry, now)
                if change is not None:
                    changes.append(change)
        for change in changes:
            _log_change(*change)

    def _transition(self, entry: ProbeEntry, now: dt.datetime) -> tuple[str, str, str] | None:
        """The probe's state now; a change is queued as an event (the caller holds the lock)."""
        capture_state = entry.last_request.capture_state if entry.last_request else 0
        new = liveness.liveness_state(
            now,
            entry.last_heartbeat_at,
            capture_state,
            left=entry.left,
            stale_after_s=self.settings.stale_after_s,
            offline_after_s=self.settings.offline_after_s,
        )
        if new in _SETTLED:
            self._watched.pop(entry.probe_id, None)
        old = entry.state
        if new == old:
            return None
        entry.state = new
        entry.state_dirty = True
        self._dirty[entry.probe_id] = entry
        self._events.append(
            {
                "probe_id": entry.probe_id,
                "kind": "state",
                "at": now,
                "old_state": old,
                "new_state": new,
                "detail": "",
            }
        )
        return entry.probe_id, old, new

    def pending_events(self) -> int:
        """Events recorded in memory and not yet written."""
        with self._lock:
            return len(self._events)

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


def _log_change(probe_id: str, old: str, new: str) -> None:
    log.info("probe %s: %s -> %s", probe_id, old, new, extra={"probe_id": probe_id})


def _health_json(request: control_pb2.HeartbeatRequest) -> dict[str, Any]:
    if request.losses:  # stored in their own table; the health report stays small
        request = control_pb2.HeartbeatRequest.FromString(request.SerializeToString())
        request.ClearField("losses")
    return json_format.MessageToDict(request, preserving_proto_field_name=True)


def _sample(probe_id: str, at: dt.datetime, request: control_pb2.HeartbeatRequest) -> dict[str, Any]:
    """One history row, as the parameters of the bulk insert."""
    interfaces = request.interfaces
    return {
        "probe_id": probe_id,
        "at": at,
        "capture_state": CAPTURE_STATE_NAMES.get(request.capture_state, "unspecified"),
        "captured_packets_per_s": sum(i.captured_packets_per_s for i in interfaces),
        "captured_packets_total": sum(i.captured_packets_total for i in interfaces),
        "dropped_packets_total": sum(
            i.dropped_packets_total + i.interface_dropped_packets_total for i in interfaces
        ),
        "backlog_bytes": request.spool.backlog_bytes,
        "link_utilisation_ratio": max((i.link_utilisation_ratio for i in interfaces), default=-1.0),
    }
