"""Registry tables. Times are timezone-aware UTC datetimes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Stores UTC, returns aware datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry; use UTC-aware datetimes")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UtcDateTime, dict[str, Any]: JSON}


class Probe(Base):
    __tablename__ = "probes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    host_facts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Hex serial of the client certificate: every mTLS call is mapped to its probe through it.
    cert_serial: Mapped[str] = mapped_column(String(64), unique=True)
    cert_not_after: Mapped[dt.datetime]
    enrolled_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    left_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Written behind (every few seconds) by the running server, which holds the live values.
    last_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # The health report of the last history sample as JSON (protobuf field names), for the list
    # and detail views: at most the fleet's history interval old, and never behind a change of
    # capture health (see survey6.server.fleet).
    last_health: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Last computed liveness state; a change is recorded as an event.
    state: Mapped[str] = mapped_column(String(16), default="offline")


class BootstrapToken(Base):
    __tablename__ = "bootstrap_tokens"

    token_id: Mapped[str] = mapped_column(String(6), primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    # None: unlimited joins until expiry.
    usages_left: Mapped[int | None] = mapped_column(Integer, default=None)
    used_count: Mapped[int] = mapped_column(Integer, default=0)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_probe_at", "probe_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    probe_id: Mapped[str | None] = mapped_column(ForeignKey("probes.id"), default=None)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # enrolled | state | command | left | token
    kind: Mapped[str] = mapped_column(String(16))
    old_state: Mapped[str | None] = mapped_column(String(16), default=None)
    new_state: Mapped[str | None] = mapped_column(String(16), default=None)
    detail: Mapped[str] = mapped_column(Text, default="")


class Command(Base):
    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_probe_issued", "probe_id", "issued_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    probe_id: Mapped[str] = mapped_column(ForeignKey("probes.id"))
    # suspend | resume | upload-now | config-change | leave
    action: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    issued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    acked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # pending | delivered | succeeded | failed | rejected
    outcome: Mapped[str] = mapped_column(String(16), default="pending")
    detail: Mapped[str] = mapped_column(Text, default="")


class HeartbeatSample(Base):
    """Health history for the charts: one row per probe per history interval (30 s), and one at
    each change of its capture health."""

    __tablename__ = "heartbeat_samples"
    __table_args__ = (Index("ix_samples_probe_at", "probe_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    probe_id: Mapped[str] = mapped_column(ForeignKey("probes.id"))
    at: Mapped[dt.datetime]
    capture_state: Mapped[str] = mapped_column(String(16))
    captured_packets_per_s: Mapped[float] = mapped_column(default=0.0)
    captured_packets_total: Mapped[int] = mapped_column(Integer, default=0)
    dropped_packets_total: Mapped[int] = mapped_column(Integer, default=0)
    backlog_bytes: Mapped[int] = mapped_column(Integer, default=0)
    link_utilisation_ratio: Mapped[float] = mapped_column(default=-1.0)


class WebUser(Base):
    __tablename__ = "web_users"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    # admin | viewer
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CapturedFile(Base):
    """The catalog: one row per capture file a probe uploaded, and the outbox of the ingest queue.

    States: received (verified, being moved into the landing zone) -> stored (durable; waiting
    for the queue) -> queued (an ingest job is in Redis) -> ingested | failed.
    """

    __tablename__ = "captured_files"
    __table_args__ = (
        UniqueConstraint("probe_id", "sequence", name="uq_captured_files_probe_sequence"),
        Index("ix_captured_files_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    probe_id: Mapped[str] = mapped_column(ForeignKey("probes.id"))
    sequence: Mapped[int] = mapped_column(BigInteger)
    sha256_hex: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    packets: Mapped[int] = mapped_column(BigInteger, default=0)
    # Relative to the landing root: <probe_id>/<yyyy>/<mm>/<dd>/<sequence:012d>.pcap
    landing_path: Mapped[str] = mapped_column(String(255))
    # Unix epoch nanoseconds, as in the capture metadata; 0 when the file has no packet.
    first_packet_time_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    last_packet_time_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    # received | stored | queued | ingested | failed
    state: Mapped[str] = mapped_column(String(16), default="received")
    state_detail: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    stored_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    queued_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # From the upload's metadata, for the audit (docs/audit.md). Kernel deltas are None when
    # unknown: repaired files, and rows catalogued before these columns existed.
    interface: Mapped[str] = mapped_column(String(64), default="")
    kernel_received: Mapped[int | None] = mapped_column(BigInteger, default=None)
    kernel_dropped: Mapped[int | None] = mapped_column(BigInteger, default=None)
    kernel_interface_dropped: Mapped[int | None] = mapped_column(BigInteger, default=None)
    repaired: Mapped[bool] = mapped_column(Boolean, default=False)
    repaired_truncated_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # From the ingest result: rows written to the packets dataset and records the parser skipped
    # (ingested files), or the packets a quarantined file claimed; None until then.
    dataset_rows: Mapped[int | None] = mapped_column(BigInteger, default=None)
    skipped_packets: Mapped[int | None] = mapped_column(BigInteger, default=None)
    quarantined_packets: Mapped[int | None] = mapped_column(BigInteger, default=None)


class SpoolLoss(Base):
    """A loss a probe recorded in its spool (docs/audit.md), delivered once through the heartbeat."""

    __tablename__ = "spool_losses"
    __table_args__ = (UniqueConstraint("probe_id", "loss_id", name="uq_spool_losses_probe_loss"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    probe_id: Mapped[str] = mapped_column(ForeignKey("probes.id"))
    # The record's id in the probe's loss log (its line number, from 1).
    loss_id: Mapped[int] = mapped_column(BigInteger)
    # Probe clock, Unix epoch nanoseconds.
    time_ns: Mapped[int] = mapped_column(BigInteger)
    # dropped-file | not-written | left-in-ring | truncated-record
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    # The file concerned; None for not-written.
    sequence: Mapped[int | None] = mapped_column(BigInteger, default=None)
    packets: Mapped[int] = mapped_column(BigInteger, default=0)
    interface: Mapped[str] = mapped_column(String(64), default="")
    after_sequence: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # A dropped file's kernel deltas; None when unknown.
    kernel_received: Mapped[int | None] = mapped_column(BigInteger, default=None)
    kernel_dropped: Mapped[int | None] = mapped_column(BigInteger, default=None)
    kernel_interface_dropped: Mapped[int | None] = mapped_column(BigInteger, default=None)
    repaired: Mapped[bool] = mapped_column(Boolean, default=False)
    stored_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
