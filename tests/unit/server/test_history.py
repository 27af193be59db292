"""Retention of the health history: old samples go in batches, each probe's newest one stays."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from survey6.server.history import history_rows, prune_history
from survey6.server.registry.models import HeartbeatSample, Probe, utcnow

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def add_samples(sessions: sessionmaker[Session], probe_id: str, ages_h: list[float]) -> None:
    with sessions.begin() as session:
        if session.get(Probe, probe_id) is None:
            session.add(Probe(id=probe_id, hostname=probe_id, cert_serial=probe_id, cert_not_after=utcnow()))
            session.flush()
        for age in ages_h:
            session.add(
                HeartbeatSample(
                    probe_id=probe_id,
                    at=NOW - dt.timedelta(hours=age),
                    capture_state="CAPTURE_STATE_CAPTURING",
                )
            )


def sample_ages_h(sessions: sessionmaker[Session], probe_id: str) -> list[float]:
    with sessions() as session:
        times = session.scalars(
            select(HeartbeatSample.at)
            .where(HeartbeatSample.probe_id == probe_id)
            .order_by(HeartbeatSample.at)
        )
        return [round((NOW - at).total_seconds() / 3600, 3) for at in times]


def test_samples_older_than_the_cutoff_go_and_newer_ones_stay(sessions: sessionmaker[Session]) -> None:
    add_samples(sessions, "p-000000000001", [300, 200, 170, 100, 1, 0.5])

    deleted = prune_history(sessions, NOW - dt.timedelta(hours=168))

    assert deleted == 3
    assert sample_ages_h(sessions, "p-000000000001") == [100, 1, 0.5]


def test_the_newest_sample_of_a_silent_probe_is_kept(sessions: sessionmaker[Session]) -> None:
    # The audit reads each probe's newest sample as the time of its last known health.
    add_samples(sessions, "p-000000000001", [900, 800, 700])
    add_samples(sessions, "p-000000000002", [900, 2])

    assert prune_history(sessions, NOW - dt.timedelta(hours=168)) == 3

    assert sample_ages_h(sessions, "p-000000000001") == [700]
    assert sample_ages_h(sessions, "p-000000000002") == [2]


def test_large_purges_run_in_batches_until_nothing_old_is_left(sessions: sessionmaker[Session]) -> None:
    add_samples(sessions, "p-000000000001", [200 + i / 100 for i in range(1_000)] + [0])

    deleted = prune_history(sessions, NOW - dt.timedelta(hours=168), batch_rows=64)

    assert deleted == 1_000
    assert history_rows(sessions) == 1
    assert prune_history(sessions, NOW - dt.timedelta(hours=168), batch_rows=64) == 0
