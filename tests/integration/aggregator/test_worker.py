"""The queue worker end to end: the server's drainer enqueues, a real worker process ingests, the
results come back through Redis into the server's catalog. Real redis-server, real registry."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from sqlalchemy.orm import Session, sessionmaker

from support.aggregator_inputs import Landed, land, settings_for, tree_snapshot
from support.fleet_processes import wait_for
from support.ports import free_tcp_port
from survey6.aggregator import datasets, jobs
from survey6.aggregator.ledger import Ledger
from survey6.aggregator.settings import AggregatorSettings
from survey6.server import catalog
from survey6.server.queue import RESULTS_LIST, Drainer, IngestJob, IngestQueue, job_id_for
from survey6.server.registry import db
from survey6.server.registry.models import CapturedFile, Probe, utcnow
from survey6.wire.v1 import capture_pb2

WORKER_TIMEOUT_S = 240.0
PROBES = ("p-1", "p-2")


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    (tmp_path / "registry").mkdir()
    engine = db.make_engine(db.sqlite_url(tmp_path / "registry"))
    db.upgrade(engine)
    factory = db.session_factory(engine)
    with factory.begin() as session:
        for n, probe_id in enumerate(PROBES):
            session.add(Probe(id=probe_id, hostname=probe_id, cert_serial=str(n), cert_not_after=utcnow()))
    yield factory
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> AggregatorSettings:
    return settings_for(tmp_path, redis_url=redis_url)


@pytest.fixture
def drainer(
    sessions: sessionmaker[Session], redis_url: str, settings: AggregatorSettings
) -> Iterator[Drainer]:
    queue = IngestQueue(redis_url)
    yield Drainer(sessions, queue, settings.landing_dir)
    queue.close()


@pytest.fixture
def context(settings: AggregatorSettings) -> Iterator[jobs.WorkerContext]:
    """The worker context of an in-process worker, as ``survey6-aggregate worker`` sets it."""
    context = jobs.WorkerContext.open(settings, jobs.connect(settings.redis_url))
    jobs.set_worker_context(context)
    yield context
    jobs.set_worker_context(None)
    context.close()
    context.connection.close()


def store(sessions: sessionmaker[Session], landed: Landed, sha256_hex: str | None = None) -> None:
    """Records a landed file in the catalog as the server does (stored: in the outbox)."""
    with sessions.begin() as session:
        row = catalog.add_received(
            session,
            landed.probe_id,
            capture_pb2.CaptureMetadata(sequence=landed.sequence, packets=landed.packets),
            sha256_hex=sha256_hex or landed.sha256_hex,
            size_bytes=landed.path.stat().st_size,
            landing_path=landed.landing_path,
        )
        catalog.mark_stored(session, row.id)


def catalog_state(sessions: sessionmaker[Session], probe_id: str, sequence: int) -> tuple[str, str]:
    with sessions() as session:
        row = catalog.find(session, probe_id, sequence)
        assert row is not None
        return row.state, row.state_detail


def start_worker(settings: AggregatorSettings, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "survey6.aggregator", "worker",
            "--redis-url", settings.redis_url,
            "--output", str(settings.output_dir),
            "--state-dir", str(settings.state_dir),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def run_burst(settings: AggregatorSettings) -> str:
    worker = start_worker(settings, "--burst")
    try:
        out, err = worker.communicate(timeout=WORKER_TIMEOUT_S)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err
    return out


def test_jobs_from_the_server_are_ingested_and_their_results_reach_the_catalog(
    sessions: sessionmaker[Session], drainer: Drainer, settings: AggregatorSettings, redis_url: str
) -> None:
    good = [land(settings.landing_dir, "p-1", 1, count=30), land(settings.landing_dir, "p-2", 1, count=12)]
    changed = land(settings.landing_dir, "p-1", 2)
    for landed in good:
        store(sessions, landed)
    store(sessions, changed, sha256_hex="e" * 64)  # the landed bytes are not what the server verified
    assert drainer.drain() == 3

    run_burst(settings)

    assert drainer.collect_results() == 3
    assert catalog_state(sessions, "p-1", 1) == ("ingested", "30 rows of 30 packets; skipped: none")
    assert catalog_state(sessions, "p-2", 1) == ("ingested", "12 rows of 12 packets; skipped: none")
    state, detail = catalog_state(sessions, "p-1", 2)
    assert state == "failed" and detail.startswith("quarantined (sha256-mismatch)")
    assert redis.Redis.from_url(redis_url).llen(RESULTS_LIST) == 0
    with Ledger.in_state_dir(settings.state_dir) as ledger:
        assert ledger.dirty() == []  # the last job found the queue empty and built every partition
        assert sorted(f.state for f in ledger.files()) == ["ingested", "ingested", "quarantined"]
        partitions = {datasets.Partition(*key) for f in ledger.files("ingested") for key in f.partitions}
    assert {p.probe_id for p in partitions} == set(PROBES)
    for partition in partitions:
        for name in datasets.DERIVED_DATASETS:
            assert datasets.derived_path(settings.output_dir, name, partition).is_file()

    # The same jobs again (only possible after a crash of the server): nothing changes.
    datasets_before = tree_snapshot(settings.output_dir)
    with sessions.begin() as session:
        for row in session.query(CapturedFile):
            row.state = "stored"
    redis.Redis.from_url(redis_url).flushall()
    assert drainer.drain() == 3
    run_burst(settings)
    assert drainer.collect_results() == 3
    state, detail = catalog_state(sessions, "p-1", 1)
    assert (state, detail) == ("ingested", "already ingested: 30 rows of 30 packets; skipped: none")
    assert tree_snapshot(settings.output_dir) == datasets_before


def test_a_hostile_landing_path_is_refused_by_the_worker_process(
    sessions: sessionmaker[Session], drainer: Drainer, settings: AggregatorSettings, redis_url: str
) -> None:
    landed = land(settings.landing_dir, "p-1", 1)
    store(sessions, landed)
    hostile = IngestJob("p-1", 1, landed.sha256_hex, "../../../etc/passwd", str(settings.landing_dir))
    assert drainer.queue.enqueue(hostile)

    run_burst(settings)

    assert drainer.collect_results() == 1
    state, detail = catalog_state(sessions, "p-1", 1)
    assert state == "failed" and "escapes the landing zone" in detail
    connection = redis.Redis.from_url(redis_url)
    assert FailedJobRegistry(queue=Queue("survey6-ingest", connection=connection)).get_job_ids() == [
        hostile.job_id
    ]
    assert not (settings.output_dir / "packets").exists()


@pytest.mark.parametrize(
    ("landing_path", "message"),
    [
        ("/etc/passwd", "escapes the landing zone"),
        ("p-1/2024/05/06/../../../../../etc/000000000001.pcap", "escapes the landing zone"),
        ("p-2/2024/05/06/000000000001.pcap", "of probe p-1 file 1"),  # another probe's file
        ("p-1/2024/05/06/000000000002.pcap", "of probe p-1 file 1"),  # another file of the probe
        ("p-1/2024/05/06/000000000001.json", "is not <probe_id>/<yyyy>/<mm>/<dd>/<sequence:012d>.pcap"),
        ("p-1/2024/05/06/000000000001.pcap\x00.txt", "escapes the landing zone"),
    ],
)
def test_job_arguments_that_leave_the_landing_zone_are_refused(
    context: jobs.WorkerContext, settings: AggregatorSettings, landing_path: str, message: str
) -> None:
    with pytest.raises(jobs.JobRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        jobs.ingest_capture(
            probe_id="p-1",
            sequence=1,
            sha256_hex="a" * 64,
            landing_path=landing_path,
            landing_root=str(settings.landing_dir),
        )
    (sent,) = context.connection.lrange(RESULTS_LIST, 0, -1)
    assert json.loads(sent)["state"] == "failed" and message in json.loads(sent)["detail"]


def test_a_link_out_of_the_landing_zone_is_refused(
    context: jobs.WorkerContext, settings: AggregatorSettings, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.pcap"
    outside.write_bytes(b"not for the aggregator")
    day = settings.landing_dir / "p-1" / "2024" / "05" / "06"
    day.mkdir(parents=True)
    (day / "000000000001.pcap").symlink_to(outside)
    with pytest.raises(jobs.JobRefused, match="through a link"):
        jobs.ingest_capture(
            probe_id="p-1",
            sequence=1,
            sha256_hex="a" * 64,
            landing_path="p-1/2024/05/06/000000000001.pcap",
            landing_root=str(settings.landing_dir),
        )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"probe_id": "../p"}, "is not a probe id"),
        ({"sequence": "1"}, "is not a file number"),
        ({"sequence": 0}, "is not a file number"),
        ({"sha256_hex": "A" * 64}, "is not 64 lower-case hex digits"),
        ({"landing_root": "relative/landing"}, "is not an absolute path"),
    ],
)
def test_malformed_job_arguments_are_refused(
    context: jobs.WorkerContext, settings: AggregatorSettings, changes: dict[str, object], message: str
) -> None:
    kwargs: dict[str, object] = {
        "probe_id": "p-1",
        "sequence": 1,
        "sha256_hex": "a" * 64,
        "landing_path": "p-1/2024/05/06/000000000001.pcap",
        "landing_root": str(settings.landing_dir),
    }
    with pytest.raises(jobs.JobRefused, match=message):
        jobs.ingest_capture(**{**kwargs, **changes})  # type: ignore[arg-type]


def test_results_wait_in_the_ledger_while_redis_is_away(settings: AggregatorSettings, redis_url: str) -> None:
    away = redis.Redis.from_url(f"redis://127.0.0.1:{free_tcp_port()}/0", socket_connect_timeout=1)
    context = jobs.WorkerContext.open(settings, away)
    try:
        jobs.report(context, jobs.result_message("p-1", 1, "a" * 64, jobs.INGESTED, "fine", 3))
        assert len(context.ledger.pending_results(10)) == 1
        context.connection = redis.Redis.from_url(redis_url)
        assert jobs.flush_results(context) == 1
        assert context.ledger.pending_results(10) == []
        (sent,) = context.connection.lrange(RESULTS_LIST, 0, -1)
        assert json.loads(sent) == {
            "probe_id": "p-1",
            "sequence": 1,
            "sha256_hex": "a" * 64,
            "state": "ingested",
            "detail": "fine",
            "packets": 3,
            "rows": 0,
            "skipped": 0,
            "quarantined": False,
            "claimed_packets": -1,
        }
    finally:
        context.close()
        context.connection.close()
        away.close()


def test_the_drainer_refuses_results_that_do_not_fit_the_catalog(
    sessions: sessionmaker[Session],
    drainer: Drainer,
    settings: AggregatorSettings,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="survey6.server.queue")
    landed = land(settings.landing_dir, "p-1", 1)
    store(sessions, landed)
    good = jobs.result_message("p-1", 1, landed.sha256_hex, jobs.FAILED, "quarantined (damaged): cut", 4)
    messages = [
        b"not json",
        b"[1, 2]",
        json.dumps({**good, "sequence": "1"}).encode(),
        json.dumps({**good, "state": "queued"}).encode(),
        json.dumps({**good, "probe_id": "p-9"}).encode(),  # no such file
        json.dumps({**good, "sha256_hex": "f" * 64}).encode(),  # another file's hash
        json.dumps({**good, "extra": "ignored"}).encode(),
    ]
    connection = redis.Redis.from_url(redis_url)
    connection.rpush(RESULTS_LIST, *messages)

    assert drainer.collect_results() == 1

    assert catalog_state(sessions, "p-1", 1) == ("failed", "quarantined (damaged): cut")
    assert connection.llen(RESULTS_LIST) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("dropped a malformed ingest result" in w for w in warnings) == 4
    assert sum("for a file the catalog does not have" in w for w in warnings) == 1
    assert sum("does not match the catalog" in w for w in warnings) == 1


def test_collecting_results_while_redis_is_down_is_not_an_error(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    queue = IngestQueue(f"redis://127.0.0.1:{free_tcp_port()}/0")
    try:
        assert Drainer(sessions, queue, tmp_path).collect_results() == 0
    finally:
        queue.close()


def test_sigterm_stops_the_worker_after_its_current_job(
    sessions: sessionmaker[Session], drainer: Drainer, settings: AggregatorSettings, redis_url: str
) -> None:
    landed = land(settings.landing_dir, "p-1", 1)
    store(sessions, landed)
    connection = redis.Redis.from_url(redis_url)
    worker = start_worker(settings)
    try:
        wait_for(lambda: Worker.all(connection=connection), WORKER_TIMEOUT_S, "the worker to register")
        # Holding the ledger's write lock keeps the job from finishing (it waits for the lock in
        # SQLite), so the signal surely arrives mid-job. Python runs the worker's handler once SQLite
        # returns, so the lock is released right after the signal is sent, well within SQLite's
        # busy timeout.
        lock = sqlite3.connect(settings.state_dir / "ledger.sqlite3", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        assert drainer.drain() == 1
        job = Job.fetch(job_id_for("p-1", 1), connection=connection)
        wait_for(
            lambda: job.get_status(refresh=True) == JobStatus.STARTED, WORKER_TIMEOUT_S, "the job to start"
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.poll() is None  # it cannot have finished its job: the ledger is still locked
        lock.execute("COMMIT")
        lock.close()
        _, err = worker.communicate(timeout=WORKER_TIMEOUT_S)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err
    # The job was finished, not abandoned: its result is there and the catalog takes it.
    assert job.get_status(refresh=True) == JobStatus.FINISHED, err
    assert drainer.collect_results() == 1
    assert catalog_state(sessions, "p-1", 1)[0] == "ingested"
    assert Worker.all(connection=connection) == []


def test_a_worker_without_redis_is_a_one_line_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, redis_url=f"redis://127.0.0.1:{free_tcp_port()}/0")
    worker = start_worker(settings, "--burst")
    _, err = worker.communicate(timeout=WORKER_TIMEOUT_S)
    assert worker.returncode == 1
    assert (
        err.startswith("survey6-aggregate: error: cannot reach Redis at 127.0.0.1:") and err.count("\n") == 1
    )
