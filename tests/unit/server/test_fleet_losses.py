"""Loss records on heartbeats: a probe's bad record cannot stop the registry, nor another probe's."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from survey6.server.fleet import Fleet
from survey6.server.registry import db
from survey6.server.registry.models import Event, HeartbeatSample, Probe, SpoolLoss, utcnow
from survey6.server.settings import LivenessSettings
from survey6.wire.v1 import control_pb2

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Fleet, sessionmaker[Session]]]:
    engine = db.make_engine(db.sqlite_url(tmp_path))
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    with sessions.begin() as s:
        for name in ("p-1", "p-2"):
            s.add(Probe(id=name, hostname=name, cert_serial=name, cert_not_after=utcnow(), state="offline"))
    fleet = Fleet(sessions, LivenessSettings(stale_after_s=10.0, offline_after_s=60.0), lambda: T0)
    fleet.load()
    yield fleet, sessions
    engine.dispose()


def beat(*losses: control_pb2.SpoolLoss, recorded: int | None = None) -> control_pb2.HeartbeatRequest:
    request = control_pb2.HeartbeatRequest(capture_state=control_pb2.CAPTURE_STATE_CAPTURING)
    request.spool.losses_recorded_total = (
        max((loss.id for loss in losses), default=0) if recorded is None else recorded
    )
    request.losses.extend(losses)
    return request


def loss(loss_id: int, packets: int = 1, **fields: Any) -> control_pb2.SpoolLoss:
    return control_pb2.SpoolLoss(id=loss_id, kind="not-written", reason="full", packets=packets, **fields)


def stored(sessions: sessionmaker[Session]) -> list[tuple[str, int, str, int]]:
    with sessions() as s:
        rows = s.execute(select(SpoolLoss.probe_id, SpoolLoss.loss_id, SpoolLoss.kind, SpoolLoss.packets))
        return sorted((p, i, k, n) for p, i, k, n in rows)


def test_a_record_too_large_for_its_columns_is_stored_as_invalid_and_blocks_nothing(
    fleet: tuple[Fleet, sessionmaker[Session]],
) -> None:
    registry, sessions = fleet
    registry.heartbeat("p-1", beat(loss(1, packets=2**64 - 1), loss(2, 5)))
    registry.heartbeat("p-2", beat(loss(1, 3, after_sequence=2**63)))
    registry.flush()  # raised, and kept raising, before the fix
    assert registry.failed_flushes == 0 and registry.pending_events() == 0
    assert stored(sessions) == [
        ("p-1", 1, "invalid", 0),
        ("p-1", 2, "not-written", 5),
        ("p-2", 1, "invalid", 0),
    ]
    assert registry.losses_acknowledged("p-1") == 2 and registry.losses_acknowledged("p-2") == 1
    with sessions() as s:
        reason = s.scalars(select(SpoolLoss.reason).where(SpoolLoss.probe_id == "p-2")).one()
    assert "after_sequence" in reason


def test_an_id_out_of_range_and_records_past_the_cap_wait(fleet: tuple[Fleet, sessionmaker[Session]]) -> None:
    registry, sessions = fleet
    registry.heartbeat("p-1", beat(*(loss(i) for i in range(1, 251)), loss(2**63)))
    registry.flush()
    assert len(stored(sessions)) == 200 and registry.losses_acknowledged("p-1") == 200
    registry.heartbeat("p-1", beat(*(loss(i) for i in range(201, 251)), loss(2**63)))
    registry.flush()
    assert len(stored(sessions)) == 250 and registry.losses_acknowledged("p-1") == 250


def test_a_probe_that_counts_fewer_records_than_stored_is_logged_once(
    fleet: tuple[Fleet, sessionmaker[Session]], caplog: pytest.LogCaptureFixture
) -> None:
    registry, _ = fleet
    registry.heartbeat("p-1", beat(loss(1), loss(2), loss(3)))
    registry.flush()
    with caplog.at_level(logging.WARNING, logger="survey6.server.fleet"):
        registry.heartbeat("p-1", beat(recorded=0))
        registry.heartbeat("p-1", beat(recorded=0))
    assert [r.getMessage() for r in caplog.records] == [
        "probe p-1 reports 0 loss records, but the registry holds 3: its spool was reset"
    ]


def test_records_the_database_refuses_wait_without_holding_back_another_probes(
    fleet: tuple[Fleet, sessionmaker[Session]],
) -> None:
    registry, sessions = fleet
    for probe_id in ("p-1", "p-2"):
        registry.heartbeat(probe_id, beat())
    registry.flush()
    # p-2's row goes from the registry behind the fleet's back: its records now break a foreign key.
    with sessions.begin() as s:
        s.execute(delete(HeartbeatSample).where(HeartbeatSample.probe_id == "p-2"))
        s.execute(delete(Event).where(Event.probe_id == "p-2"))
        s.execute(delete(Probe).where(Probe.id == "p-2"))
    registry.heartbeat("p-1", beat(loss(1), loss(2)))
    registry.heartbeat("p-2", beat(loss(1)))
    registry.flush()
    assert stored(sessions) == [("p-1", 1, "not-written", 1), ("p-1", 2, "not-written", 1)]
    assert registry.losses_acknowledged("p-1") == 2 and registry.losses_acknowledged("p-2") == 0
    assert registry.failed_flushes == 0
