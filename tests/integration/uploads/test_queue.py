"""The drainer against a real Redis: idempotent enqueueing by job id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from sqlalchemy.orm import Session, sessionmaker

from survey6.server import catalog
from survey6.server.errors import QueueUnavailable
from survey6.server.queue import INGEST_FUNCTION, QUEUE_NAME, Drainer, IngestJob, IngestQueue, job_id_for
from survey6.server.registry import db
from survey6.server.registry.models import CapturedFile, Probe, utcnow
from survey6.wire.v1 import capture_pb2


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(db.sqlite_url(tmp_path))
    db.upgrade(engine)
    factory = db.session_factory(engine)
    with factory.begin() as session:
        session.add(Probe(id="p-1", hostname="h", cert_serial="1", cert_not_after=utcnow()))
    yield factory
    engine.dispose()


@pytest.fixture
def ingest_queue(redis_url: str) -> Iterator[IngestQueue]:
    queue = IngestQueue(redis_url)
    yield queue
    queue.close()


def store_row(sessions: sessionmaker[Session], sequence: int) -> int:
    with sessions.begin() as session:
        row = catalog.add_received(
            session,
            "p-1",
            capture_pb2.CaptureMetadata(sequence=sequence),
            sha256_hex="c" * 64,
            size_bytes=10,
            landing_path=f"p-1/2024/01/02/{sequence:012d}.pcap",
        )
        catalog.mark_stored(session, row.id)
        return row.id


def test_enqueueing_the_same_file_twice_makes_one_job(ingest_queue: IngestQueue, redis_url: str) -> None:
    job = IngestJob("p-1", 5, "c" * 64, "p-1/2024/01/02/000000000005.pcap", "/srv/landing")
    assert ingest_queue.enqueue(job) is True
    assert ingest_queue.enqueue(job) is False
    queue = Queue(QUEUE_NAME, connection=redis.Redis.from_url(redis_url))
    assert queue.job_ids == ["ingest-p-1-5"]
    assert queue.jobs[0].func_name == INGEST_FUNCTION
    assert queue.jobs[0].kwargs == job.kwargs()
    assert queue.jobs[0].timeout == 3600


def test_a_row_left_stored_after_its_job_was_enqueued_is_not_queued_twice(
    sessions: sessionmaker[Session], ingest_queue: IngestQueue, redis_url: str, tmp_path: Path
) -> None:
    drainer = Drainer(sessions, ingest_queue, tmp_path / "landing")
    row_id = store_row(sessions, 1)
    assert drainer.drain() == 1
    with sessions.begin() as session:  # as if the process died between enqueue and commit
        row = session.get(CapturedFile, row_id)
        assert row is not None
        row.state = "stored"
    assert drainer.drain() == 1
    assert Queue(QUEUE_NAME, connection=redis.Redis.from_url(redis_url)).job_ids == [job_id_for("p-1", 1)]
    assert drainer.drain() == 0


def test_an_unreachable_redis_is_a_queue_error(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    from support.ports import free_tcp_port

    queue = IngestQueue(f"redis://127.0.0.1:{free_tcp_port()}/0")
    try:
        with pytest.raises(QueueUnavailable) as raised:
            queue.enqueue(IngestJob("p-1", 1, "c" * 64, "x", "/y"))
        assert isinstance(raised.value.__cause__, redis.ConnectionError)
        store_row(sessions, 1)
        assert Drainer(sessions, queue, tmp_path).drain() == 0
        with sessions() as session:
            assert [r.sequence for r in catalog.outbox(session, 10)] == [1]
    finally:
        queue.close()
