"""The catalog against a real (temporary) SQLite registry, and its migration against the models."""

from __future__ import annotations

import pytest
import sqlalchemy
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from survey6.server import catalog
from survey6.server.registry import db
from survey6.server.registry.models import Base, Probe, utcnow
from survey6.wire.v1 import capture_pb2


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    factory = db.session_factory(engine)
    with factory.begin() as session:
        for probe_id in ("p-1", "p-2"):
            session.add(Probe(id=probe_id, hostname="h", cert_serial=probe_id, cert_not_after=utcnow()))
    return factory


def metadata(sequence: int, packets: int = 3) -> capture_pb2.CaptureMetadata:
    return capture_pb2.CaptureMetadata(
        sequence=sequence, packets=packets, first_packet_time_ns=10, last_packet_time_ns=20
    )


def add(session: Session, probe_id: str, sequence: int, size: int = 100) -> int:
    row = catalog.add_received(
        session, probe_id, metadata(sequence), sha256_hex="a" * 64, size_bytes=size, landing_path="x"
    )
    return row.id


def test_the_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_the_catalog_migration_downgrades_and_upgrades(engine: Engine) -> None:
    config = db._alembic_config(engine)
    command.downgrade(config, "0001")
    assert not inspect(engine).has_table("captured_files")
    command.upgrade(config, "head")
    assert inspect(engine).has_table("captured_files")


def test_one_row_per_probe_and_sequence(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add(session, "p-1", 1)
        add(session, "p-2", 1)  # another probe's sequence 1 is another file
    with pytest.raises(sqlalchemy.exc.IntegrityError), sessions.begin() as session:
        add(session, "p-1", 1)


def test_a_row_goes_through_the_outbox(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        first, second = add(session, "p-1", 1), add(session, "p-1", 2)
        row = catalog.find(session, "p-1", 1)
        assert row is not None and row.state == "received" and row.packets == 3
        assert row.first_packet_time_ns == 10 and row.stored_at is None
    with sessions() as session:
        assert catalog.outbox(session, 10) == []  # received is not yet durable
    with sessions.begin() as session:
        catalog.mark_stored(session, second)
        catalog.mark_stored(session, first)
    with sessions() as session:
        assert [r.sequence for r in catalog.outbox(session, 10)] == [1, 2]  # oldest first
        assert [r.sequence for r in catalog.outbox(session, 1)] == [1]
    with sessions.begin() as session:
        catalog.mark_queued(session, first)
    with sessions() as session:
        assert [r.sequence for r in catalog.outbox(session, 10)] == [2]
        row = catalog.find(session, "p-1", 1)
        assert row is not None and row.state == "queued" and row.queued_at is not None


def test_landed_bytes_count_durable_files_of_one_probe(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        stored = add(session, "p-1", 1, size=100)
        add(session, "p-1", 2, size=1000)  # still received: not counted
        other = add(session, "p-2", 1, size=10)
        catalog.mark_stored(session, stored)
        catalog.mark_stored(session, other)
    with sessions() as session:
        assert catalog.landed_bytes(session, "p-1") == 100
        assert catalog.landed_bytes(session, "p-2") == 10
        assert catalog.landed_bytes(session, "p-3") == 0


def test_states_are_checked(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add(session, "p-1", 1)
        catalog.set_state(session, "p-1", 1, "failed", "parse error at record 7")
    with sessions() as session:
        row = catalog.find(session, "p-1", 1)
        assert row is not None and (row.state, row.state_detail) == ("failed", "parse error at record 7")
    with sessions.begin() as session, pytest.raises(ValueError, match="unknown catalog state"):
        catalog.set_state(session, "p-1", 1, "lost")
    with sessions.begin() as session, pytest.raises(ValueError, match="no file 9"):
        catalog.set_state(session, "p-1", 9, "ingested")


def test_large_sequences_and_sizes_fit(sessions: sessionmaker[Session]) -> None:
    big = (1 << 63) - 1
    with sessions.begin() as session:
        catalog.add_received(
            session, "p-1", metadata(big), sha256_hex="b" * 64, size_bytes=5 << 30, landing_path="y"
        )
    with sessions() as session:
        row = catalog.find(session, "p-1", big)
        assert row is not None and row.size_bytes == 5 << 30
