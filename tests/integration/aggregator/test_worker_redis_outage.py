"""The worker process across a Redis outage: a real redis-server is stopped while a job runs and
started again; the worker waits it out and goes on taking jobs (docs/RELIABILITY.md, soak item 5)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Worker
from rq.job import Job, JobStatus
from sqlalchemy.orm import Session, sessionmaker

from support.aggregator_inputs import Landed, land, settings_for
from support.fleet_processes import wait_for
from support.redis_server import RedisServer
from survey6.aggregator.ledger import Ledger
from survey6.aggregator.settings import AggregatorSettings
from survey6.server import catalog
from survey6.server.queue import Drainer, IngestQueue, job_id_for
from survey6.server.registry import db
from survey6.server.registry.models import Probe, utcnow
from survey6.wire.v1 import capture_pb2

WORKER_TIMEOUT_S = 240.0


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    (tmp_path / "registry").mkdir()
    engine = db.make_engine(db.sqlite_url(tmp_path / "registry"))
    db.upgrade(engine)
    factory = db.session_factory(engine)
    with factory.begin() as session:
        session.add(Probe(id="p-1", hostname="p-1", cert_serial="1", cert_not_after=utcnow()))
    yield factory
    engine.dispose()


def store(sessions: sessionmaker[Session], landed: Landed) -> None:
    with sessions.begin() as session:
        row = catalog.add_received(
            session,
            landed.probe_id,
            capture_pb2.CaptureMetadata(sequence=landed.sequence, packets=landed.packets),
            sha256_hex=landed.sha256_hex,
            size_bytes=landed.path.stat().st_size,
            landing_path=landed.landing_path,
        )
        catalog.mark_stored(session, row.id)


def catalog_state(sessions: sessionmaker[Session], sequence: int) -> str:
    with sessions() as session:
        row = catalog.find(session, "p-1", sequence)
        assert row is not None
        return row.state


def start_worker(settings: AggregatorSettings, output: Path) -> subprocess.Popen[str]:
    with output.open("w") as err:
        return subprocess.Popen(
            [
                sys.executable, "-m", "survey6.aggregator", "worker",
                "--redis-url", settings.redis_url,
                "--output", str(settings.output_dir),
                "--state-dir", str(settings.state_dir),
            ],
            stdout=err,  # the log goes to stdout
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip


def test_the_worker_survives_a_redis_outage_at_the_end_of_a_job(
    sessions: sessionmaker[Session], redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, redis_url=redis_url)
    queue = IngestQueue(redis_url)
    drainer = Drainer(sessions, queue, settings.landing_dir)
    first, second = land(settings.landing_dir, "p-1", 1), land(settings.landing_dir, "p-1", 2, count=7)
    store(sessions, first)
    stderr = tmp_path / "worker.output"
    connection = redis.Redis.from_url(redis_url)
    worker = start_worker(settings, stderr)
    try:
        wait_for(lambda: Worker.all(connection=connection), WORKER_TIMEOUT_S, "the worker to register")
        # The ledger's write lock holds the job mid-way (as in test_worker.py's SIGTERM test) while
        # Redis goes away, so that the job's result and RQ's bookkeeping after it both meet the outage.
        lock = sqlite3.connect(settings.state_dir / "ledger.sqlite3", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        assert drainer.drain() == 1
        job = Job.fetch(job_id_for("p-1", 1), connection=connection)
        wait_for(
            lambda: job.get_status(refresh=True) == JobStatus.STARTED, WORKER_TIMEOUT_S, "the job to start"
        )
        redis_server.stop()
        lock.execute("COMMIT")
        lock.close()
        wait_for(lambda: "lost Redis at" in stderr.read_text(), WORKER_TIMEOUT_S, "the worker to lose Redis")
        assert worker.poll() is None, stderr.read_text()
        with Ledger.in_state_dir(settings.state_dir) as ledger:
            assert [f.state for f in ledger.files()] == ["ingested"]
            assert len(ledger.pending_results(10)) == 1  # the result waits for Redis

        redis_server.start()  # empty: this Redis keeps no data, so the first job is gone from it
        connection = redis.Redis.from_url(redis_url)
        store(sessions, second)
        assert drainer.drain() == 1
        results = 0

        def both_results() -> bool:
            nonlocal results
            results += drainer.collect_results()
            return results == 2

        wait_for(both_results, WORKER_TIMEOUT_S, "the results of both files")
        assert worker.poll() is None, stderr.read_text()
        assert catalog_state(sessions, 1) == catalog_state(sessions, 2) == "ingested"
        assert stderr.read_text().count("lost Redis at") == 1

        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=WORKER_TIMEOUT_S)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        queue.close()
        connection.close()
    assert worker.returncode == 0, stderr.read_text()
    with Ledger.in_state_dir(settings.state_dir) as ledger:
        ingested = {f.sequence: f for f in ledger.files("ingested")}
        assert sorted(ingested) == [1, 2]  # each once: nothing lost, nothing counted twice
        assert ledger.pending_results(10) == []


def test_sigterm_stops_a_worker_waiting_for_redis(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, redis_url=redis_url)
    stderr = tmp_path / "worker.output"
    connection = redis.Redis.from_url(redis_url)
    worker = start_worker(settings, stderr)
    try:
        wait_for(lambda: Worker.all(connection=connection), WORKER_TIMEOUT_S, "the worker to register")
        redis_server.stop()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=WORKER_TIMEOUT_S)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        connection.close()
    assert worker.returncode == 0, stderr.read_text()
    assert "Traceback" not in stderr.read_text()
