"""Spool losses the probes report on their heartbeats (docs/audit.md), stored once each.

A probe sends every loss record above the mark the server last acknowledged; the server queues
the ones above what it already holds, writes them behind with the heartbeats, and acknowledges, on
a later heartbeat, the highest id it has stored durably. Inserts ignore a record already stored
(unique on probe and loss id), so a write retried after a failure that did commit changes nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from survey6.server.registry.models import Base, SpoolLoss
from survey6.wire.v1 import control_pb2

REASON_MAX_CHARS = 500
# The most records one heartbeat may queue (a probe sends up to 100): the rest wait for the next one.
MAX_LOSSES_PER_HEARTBEAT = 200
# The columns are signed 64-bit; the message's fields unsigned.
COLUMN_MAX = 2**63 - 1
INVALID = "invalid"
_TABLE = Base.metadata.tables[SpoolLoss.__tablename__]


def row(probe_id: str, loss: control_pb2.SpoolLoss, at: dt.datetime) -> dict[str, Any]:
    """The parameters of one ``spool_losses`` insert. An unknown kind is kept as sent: the audit
    reports it rather than the server dropping what a newer probe recorded.

    A record with a number too large for its column is stored as kind ``invalid``, its numbers
    zeroed and named in the reason: the audit reports it, and the probe's later records are still
    acknowledged (the caller drops a record whose id itself is out of range).
    """
    too_large = out_of_range(loss)
    if too_large:
        reason = f"{loss.kind[:32]} record with out-of-range {', '.join(too_large)}: {loss.reason}"
        return {
            "probe_id": probe_id,
            "loss_id": loss.id,
            "time_ns": loss.time_ns,
            "kind": INVALID,
            "reason": reason[:REASON_MAX_CHARS],
            "sequence": None,
            "packets": 0,
            "interface": loss.interface[:64],
            "after_sequence": None,
            "kernel_received": None,
            "kernel_dropped": None,
            "kernel_interface_dropped": None,
            "repaired": loss.repaired,
            "stored_at": at,
        }
    kernel = loss.kernel_delta if loss.HasField("kernel_delta") else None
    dropped_file = loss.kind == "dropped-file"
    return {
        "probe_id": probe_id,
        "loss_id": loss.id,
        "time_ns": loss.time_ns,
        "kind": loss.kind[:32],
        "reason": loss.reason[:REASON_MAX_CHARS],
        "sequence": loss.sequence or None,
        "packets": loss.packets,
        "interface": loss.interface[:64],
        "after_sequence": None if dropped_file else loss.after_sequence,
        "kernel_received": kernel.received_packets if kernel is not None else None,
        "kernel_dropped": kernel.dropped_packets if kernel is not None else None,
        "kernel_interface_dropped": kernel.interface_dropped_packets if kernel is not None else None,
        "repaired": loss.repaired,
        "stored_at": at,
    }


def out_of_range(loss: control_pb2.SpoolLoss) -> list[str]:
    """The names of the record's numbers that its 64-bit signed columns cannot hold."""
    values = {
        "id": loss.id,
        "sequence": loss.sequence,
        "packets": loss.packets,
        "after_sequence": loss.after_sequence,
        "kernel_delta.received_packets": loss.kernel_delta.received_packets,
        "kernel_delta.dropped_packets": loss.kernel_delta.dropped_packets,
        "kernel_delta.interface_dropped_packets": loss.kernel_delta.interface_dropped_packets,
    }
    return [name for name, value in values.items() if value > COLUMN_MAX]


def insert_ignoring_stored(session: Session, rows: list[dict[str, Any]]) -> None:
    """Inserts the rows, skipping any (probe, loss id) already stored."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        statement: Any = sqlite.insert(_TABLE).on_conflict_do_nothing()
    elif dialect == "postgresql":
        statement = postgresql.insert(_TABLE).on_conflict_do_nothing()
    else:
        statement = _TABLE.insert()
    session.execute(statement, rows)


def stored_through(session: Session) -> dict[str, int]:
    """The highest loss id stored, per probe."""
    query = select(SpoolLoss.probe_id, func.max(SpoolLoss.loss_id)).group_by(SpoolLoss.probe_id)
    return {probe_id: int(highest) for probe_id, highest in session.execute(query)}
