"""The catalog of uploaded capture files: one registry row per landed file.

The row's state is also the ingest queue's outbox (see ``docs/ingest-queue.md``)::

    received ──► stored ──► queued ──► ingested
       │  verified, being    │  an ingest job     └──► failed
       │  moved to landing   │  is in Redis
       └─ (crash) resolved by uploads.recover at start

Every function takes an open session; the caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from survey6.server.registry.models import CapturedFile, utcnow
from survey6.wire.v1 import capture_pb2

RECEIVED = "received"
STORED = "stored"
QUEUED = "queued"
INGESTED = "ingested"
FAILED = "failed"
STATES = (RECEIVED, STORED, QUEUED, INGESTED, FAILED)
# States in which the file is durable in the landing zone.
DURABLE_STATES = frozenset({STORED, QUEUED, INGESTED, FAILED})


def find(session: Session, probe_id: str, sequence: int) -> CapturedFile | None:
    """The row of (probe, sequence), if any."""
    return session.scalars(
        select(CapturedFile).where(CapturedFile.probe_id == probe_id, CapturedFile.sequence == sequence)
    ).one_or_none()


def add_received(
    session: Session,
    probe_id: str,
    metadata: capture_pb2.CaptureMetadata,
    *,
    sha256_hex: str,
    size_bytes: int,
    landing_path: str,
) -> CapturedFile:
    """Records a verified file about to be moved into the landing zone (state ``received``).

    The unique (probe_id, sequence) constraint makes the commit fail if the row already exists.
    `sha256_hex` and `size_bytes` are what the server computed, not what the client claimed.
    The kernel deltas of a repaired file are recorded as unknown (None): its capture died with them.
    """
    kernel = metadata.kernel_delta
    known = not metadata.repaired
    row = CapturedFile(
        probe_id=probe_id,
        sequence=metadata.sequence,
        sha256_hex=sha256_hex,
        size_bytes=size_bytes,
        packets=metadata.packets,
        landing_path=landing_path,
        first_packet_time_ns=metadata.first_packet_time_ns,
        last_packet_time_ns=metadata.last_packet_time_ns,
        state=RECEIVED,
        state_detail="",
        received_at=utcnow(),
        interface=metadata.interface.name[:64],
        kernel_received=kernel.received_packets if known else None,
        kernel_dropped=kernel.dropped_packets if known else None,
        kernel_interface_dropped=kernel.interface_dropped_packets if known else None,
        repaired=metadata.repaired,
        repaired_truncated_bytes=metadata.repaired_truncated_bytes,
    )
    session.add(row)
    session.flush()
    return row


def mark_stored(session: Session, row_id: int, at: dt.datetime | None = None) -> CapturedFile:
    """The file and its metadata are durable in the landing zone: it enters the outbox."""
    row = _get(session, row_id)
    row.state = STORED
    row.stored_at = at or utcnow()
    return row


def mark_queued(session: Session, row_id: int, at: dt.datetime | None = None) -> None:
    """An ingest job for the file is in Redis."""
    row = _get(session, row_id)
    row.state = QUEUED
    row.queued_at = at or utcnow()


def set_state(session: Session, probe_id: str, sequence: int, state: str, detail: str = "") -> None:
    """Sets any state (``ingested``/``failed`` come from the ingest side).

    Raises:
        ValueError: an unknown state, or no such file.
    """
    if state not in STATES:
        raise ValueError(f"unknown catalog state {state!r}; expected one of {', '.join(STATES)}")
    row = find(session, probe_id, sequence)
    if row is None:
        raise ValueError(f"probe {probe_id} has no file {sequence} in the catalog")
    row.state = state
    row.state_detail = detail


def record_ingest_counts(
    session: Session,
    probe_id: str,
    sequence: int,
    *,
    dataset_rows: int | None,
    skipped_packets: int | None,
    quarantined_packets: int | None,
) -> None:
    """Records what an ingest result says about the file's packets (docs/audit.md).

    Raises:
        ValueError: no such file.
    """
    row = find(session, probe_id, sequence)
    if row is None:
        raise ValueError(f"probe {probe_id} has no file {sequence} in the catalog")
    row.dataset_rows = dataset_rows
    row.skipped_packets = skipped_packets
    row.quarantined_packets = quarantined_packets


def delete(session: Session, row_id: int) -> None:
    session.delete(_get(session, row_id))


def outbox(session: Session, limit: int) -> list[CapturedFile]:
    """Stored files not yet enqueued, oldest first."""
    return list(
        session.scalars(
            select(CapturedFile).where(CapturedFile.state == STORED).order_by(CapturedFile.id).limit(limit)
        )
    )


def in_state(session: Session, state: str) -> list[CapturedFile]:
    return list(session.scalars(select(CapturedFile).where(CapturedFile.state == state)))


def landed_bytes(session: Session, probe_id: str) -> int:
    """Bytes of the probe's files in the landing zone (counted against its quota)."""
    total = session.scalar(
        select(func.coalesce(func.sum(CapturedFile.size_bytes), 0)).where(
            CapturedFile.probe_id == probe_id, CapturedFile.state.in_(DURABLE_STATES)
        )
    )
    return int(total or 0)


def _get(session: Session, row_id: int) -> CapturedFile:
    row = session.get(CapturedFile, row_id)
    if row is None:
        raise ValueError(f"no catalog row {row_id}")
    return row
