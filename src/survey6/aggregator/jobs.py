"""The ingest queue's job and the worker that runs it (the contract: ``docs/ingest-queue.md``).

The server enqueues ``ingest_capture`` by name on the RQ queue ``survey6-ingest``, one job per landed
file. The job refuses a ``landing_path`` that could leave the landing zone, ingests the file
(``pipeline.ingest_file``: SHA-256 checked against the server's, quarantined on a bad file), builds
the derived datasets of dirty partitions, and reports the outcome to the server as a JSON message
on the Redis list ``survey6-ingest-results``. Results wait in the ledger until Redis takes them, so
none is lost to an outage.

``survey6-aggregate worker`` builds a :class:`WorkerContext` from its settings and sets it here
before working: jobs find their settings, ledger and engine in it, never at import. The worker is
an RQ ``SimpleWorker`` (jobs run in the worker's process, one at a time), so the engine — a Spark
session takes seconds to start — is opened once and reused; SIGTERM or SIGINT stops it after the
current job, a second one at once.
"""

from __future__ import annotations

import json
import logging
import random
import re
import signal
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

import redis
from redis.client import Pipeline
from rq import Queue, SimpleWorker
from rq.job import Job

from survey6.aggregator.discovery import PROBE_ID, Capture
from survey6.aggregator.engines import Engine, open_engine
from survey6.aggregator.enrich import read_sidecar
from survey6.aggregator.errors import AggregatorError
from survey6.aggregator.ledger import Ledger, PartitionKey
from survey6.aggregator.pipeline import FileOutcome, aggregate_dirty, cleanup, ingest_file
from survey6.aggregator.quarantine import Quarantine
from survey6.aggregator.settings import AggregatorSettings
from survey6.common.errors import ConfigError, MetadataError

log = logging.getLogger(__name__)

# Shared with the server by name only (docs/ingest-queue.md); each side defines them itself.
QUEUE_NAME = "survey6-ingest"
RESULTS_LIST = "survey6-ingest-results"
INGESTED = "ingested"
FAILED = "failed"

REDIS_CONNECT_TIMEOUT_S = 2.0
# Waiting for a lost Redis: the first retry after about this long, doubling up to the maximum.
REDIS_RETRY_FIRST_S = 0.5
REDIS_RETRY_MAX_S = 30.0
RESULT_FLUSH_BATCH = 100
# While more jobs wait, building is deferred to the last of them (a burst of one day's files then costs
# one build of the day, not one per file); a partition left dirty this long is built anyway.
AGGREGATE_MAX_DELAY_S = 300.0
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_LANDED_PATH = re.compile(r"^([^/]+)/[0-9]{4}/[0-9]{2}/[0-9]{2}/([0-9]{12})\.pcap$")


class JobRefused(AggregatorError):
    """A job whose arguments the worker will not act on (a path leaving the landing zone, bad types)."""


@dataclass
class WorkerContext:
    """What jobs use, built once by the worker command."""

    settings: AggregatorSettings
    connection: redis.Redis
    ledger: Ledger
    quarantine: Quarantine
    _engine: Engine | None = field(default=None, repr=False)

    @classmethod
    def open(cls, settings: AggregatorSettings, connection: redis.Redis) -> WorkerContext:
        return cls(
            settings,
            connection,
            Ledger.in_state_dir(settings.state_dir),
            Quarantine.in_state_dir(settings.state_dir),
        )

    def engine(self) -> Engine:
        """The dataset engine, opened on first use and kept for later jobs."""
        if self._engine is None:
            self._engine = open_engine(self.settings)
        return self._engine

    def close(self) -> None:
        try:
            flush_results(self)
            if self._engine is not None:
                self._engine.close()
        finally:
            self._engine = None
            self.ledger.close()


_context: WorkerContext | None = None


def set_worker_context(context: WorkerContext | None) -> None:
    """Makes ``context`` the one jobs of this process use (the worker command calls this)."""
    global _context
    _context = context


def worker_context() -> WorkerContext:
    if _context is None:
        raise AggregatorError(
            "ingest_capture runs inside `survey6-aggregate worker`: no worker context is set"
        )
    return _context


# -- the job --------------------------------------------------------------------------------------


def ingest_capture(
    *, probe_id: str, sequence: int, sha256_hex: str, landing_path: str, landing_root: str
) -> dict[str, Any]:
    """The RQ job of one landed file; returns the result message it reported to the server.

    Raises:
        JobRefused: the arguments are malformed or ``landing_path`` leaves ``landing_root``
            (reported ``failed`` first).
        AggregatorError: the ledger, quarantine, datasets or Redis failed (reported ``failed``
            first when Redis allows); RQ records the job as failed.
    """
    context = worker_context()
    try:
        capture = landed_capture(
            probe_id=probe_id,
            sequence=sequence,
            sha256_hex=sha256_hex,
            landing_path=landing_path,
            landing_root=landing_root,
        )
    except JobRefused as exc:
        report(context, result_message(probe_id, sequence, sha256_hex, FAILED, str(exc)))
        build_due_partitions(context, ())  # this may be a burst's last job: earlier ones deferred to it
        raise
    try:
        outcome = ingest_file(
            capture,
            ledger=context.ledger,
            quarantine=context.quarantine,
            output_root=context.settings.output_dir,
        )
    except Exception as exc:
        report(context, result_message(probe_id, sequence, sha256_hex, FAILED, f"ingest failed: {exc}"))
        raise
    message = outcome_message(outcome, sha256_hex)
    pending = build_due_partitions(context, outcome.partitions)
    if pending:
        message["detail"] += f"; derived datasets not built yet: {pending}"
    report(context, message)
    return message


def landed_capture(
    *, probe_id: Any, sequence: Any, sha256_hex: Any, landing_path: Any, landing_root: Any
) -> Capture:
    """The capture a job names, after checking that every argument is what the contract says.

    Raises:
        JobRefused: naming the first argument that is wrong.
    """
    if not isinstance(probe_id, str) or not PROBE_ID.match(probe_id):
        raise JobRefused(f"probe_id {probe_id!r} is not a probe id")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise JobRefused(f"sequence {sequence!r} is not a file number")
    if not isinstance(sha256_hex, str) or not _SHA256_HEX.match(sha256_hex):
        raise JobRefused(f"sha256_hex {sha256_hex!r} is not 64 lower-case hex digits")
    if not isinstance(landing_root, str) or not PurePosixPath(landing_root).is_absolute():
        raise JobRefused(f"landing_root {landing_root!r} is not an absolute path")
    if not isinstance(landing_path, str):
        raise JobRefused(f"landing_path {landing_path!r} is not a path")
    relative = PurePosixPath(landing_path)
    if relative.is_absolute() or ".." in relative.parts or "\x00" in landing_path:
        raise JobRefused(f"landing_path {landing_path!r} escapes the landing zone")
    named = _LANDED_PATH.match(landing_path)
    if named is None or named.group(1) != probe_id or int(named.group(2)) != sequence:
        raise JobRefused(
            f"landing_path {landing_path!r} is not <probe_id>/<yyyy>/<mm>/<dd>/<sequence:012d>.pcap"
            f" of probe {probe_id} file {sequence}"
        )
    root = Path(landing_root)
    path = root / relative
    # A symlink inside the landing zone must not lead out of it either.
    if not path.resolve().is_relative_to(root.resolve()):
        raise JobRefused(f"landing_path {landing_path!r} escapes the landing zone through a link")
    return Capture(path, "landing", probe_id, sequence, sha256_hex)


# -- results --------------------------------------------------------------------------------------


def result_message(
    probe_id: Any,
    sequence: Any,
    sha256_hex: Any,
    state: str,
    detail: str,
    packets: int = 0,
    *,
    rows: int = 0,
    skipped: int = 0,
    quarantined: bool = False,
    claimed_packets: int = -1,
) -> dict[str, Any]:
    """The message of docs/ingest-queue.md; values from a refused job are passed through as JSON.

    ``rows`` are the rows written to the ``packets`` dataset and ``skipped`` the records that did not
    become rows (an ingested file); ``claimed_packets`` is what a quarantined file's sidecar says it
    holds (-1: unknown). The audit (docs/audit.md) balances the catalog's packets against them.
    """
    return {
        "probe_id": probe_id if isinstance(probe_id, str) else repr(probe_id),
        "sequence": sequence if isinstance(sequence, int) else repr(sequence),
        "sha256_hex": sha256_hex if isinstance(sha256_hex, str) else repr(sha256_hex),
        "state": state,
        "detail": detail,
        "packets": packets,
        "rows": rows,
        "skipped": skipped,
        "quarantined": quarantined,
        "claimed_packets": claimed_packets,
    }


def outcome_message(outcome: FileOutcome, sha256_hex: str) -> dict[str, Any]:
    probe_id, sequence = outcome.capture.probe_id, outcome.capture.sequence
    if outcome.state in ("ingested", "already-ingested"):
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(outcome.skipped.items())) or "none"
        detail = f"{outcome.rows} rows of {outcome.packets} packets; skipped: {skipped}"
        if outcome.state == "already-ingested":
            detail = f"already ingested: {detail}"
        return result_message(
            probe_id,
            sequence,
            sha256_hex,
            INGESTED,
            detail,
            outcome.packets,
            rows=outcome.rows,  # what write_packets wrote (the ledger's rows_written), not what parsed
            skipped=sum(outcome.skipped.values()),
        )
    if outcome.state == "unreadable":
        return result_message(probe_id, sequence, sha256_hex, FAILED, outcome.detail)
    return result_message(
        probe_id,
        sequence,
        sha256_hex,
        FAILED,
        f"quarantined ({outcome.reason}): {outcome.detail}",
        outcome.packets,
        quarantined=True,
        claimed_packets=claimed_packets(outcome.capture.path),
    )


def claimed_packets(path: Path) -> int:
    """The packet count a capture's sidecar claims; -1 when it has none or it is not valid metadata."""
    try:
        metadata = read_sidecar(path)
    except (MetadataError, OSError):
        return -1
    return -1 if metadata is None else int(metadata.packets)


def report(context: WorkerContext, message: dict[str, Any]) -> None:
    """Queues a result in the ledger's outbox, then sends every waiting result to the server."""
    context.ledger.add_result(json.dumps(message, sort_keys=True))
    flush_results(context)


def flush_results(context: WorkerContext) -> int:
    """Pushes waiting results onto ``survey6-ingest-results``; returns how many were sent.

    While Redis cannot take them they stay in the ledger (a warning is logged); a crash between the
    push and the ledger update sends a result twice, which the server records twice, harmlessly.
    """
    sent = 0
    while batch := context.ledger.pending_results(RESULT_FLUSH_BATCH):
        try:
            context.connection.rpush(RESULTS_LIST, *(payload for _, payload in batch))
        except redis.RedisError as exc:
            log.warning("cannot send %d ingest results to the server yet: %s", len(batch), exc)
            return sent
        context.ledger.drop_results(row_id for row_id, _ in batch)
        sent += len(batch)
    return sent


# -- building derived datasets --------------------------------------------------------------------


def build_due_partitions(
    context: WorkerContext, touched: Collection[PartitionKey], *, now: float | None = None
) -> str:
    """Builds the dirty partitions that are due; returns "" or why building failed (it is retried).

    All dirty partitions are due when no other job waits; while some do, only those dirty for
    longer than ``AGGREGATE_MAX_DELAY_S``. ``touched`` (this job's partitions) are only logged.
    """
    dirty = context.ledger.dirty()
    if not dirty:
        return ""
    at = time.time() if now is None else now
    try:
        waiting = Queue(QUEUE_NAME, connection=context.connection).count
    except redis.RedisError:
        waiting = 0  # cannot tell: build now rather than risk never building
    due = {d.key for d in dirty if not waiting or at - d.dirty_since >= AGGREGATE_MAX_DELAY_S}
    if not due:
        log.info("building deferred: %d jobs wait", waiting, extra={"touched": sorted(touched)})
        return ""
    try:
        aggregate_dirty(
            ledger=context.ledger,
            engine=context.engine(),
            output_root=context.settings.output_dir,
            settings=context.settings.datasets,
            only=due,
        )
    except Exception as exc:  # the packets are in; the partitions stay dirty and are built later
        log.exception("building derived datasets failed; the partitions stay dirty")
        return str(exc)
    return ""


# -- the worker -----------------------------------------------------------------------------------


def connect(redis_url: str) -> redis.Redis:
    """A connection for the worker; no socket timeout, since RQ blocks on the queue for minutes.

    Raises:
        ConfigError: not a Redis URL.
        AggregatorError: Redis does not answer.
    """
    try:
        connection = redis.Redis.from_url(redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S)
    except ValueError as exc:
        raise ConfigError(f"redis_url is not a Redis URL: {exc}") from exc
    try:
        connection.ping()
    except redis.RedisError as exc:
        raise AggregatorError(f"cannot reach Redis at {_where(connection)}: {exc}") from exc
    return connection


def _where(connection: redis.Redis) -> str:
    # Never the URL itself: it may carry a password.
    kwargs = connection.connection_pool.connection_kwargs
    return str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}")


class _Worker(SimpleWorker):
    """RQ's worker, noting why its loop ended: RQ ends it quietly on a stop request and on any error
    alike (a lost Redis included), so the caller could not tell a clean stop from an outage."""

    stop_requested = False
    lost_redis: redis.RedisError | None = None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # RQ's bookkeeping around the job
            self.lost_redis = exc
            raise

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        try:
            super().heartbeat(timeout, pipeline)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.lost_redis = exc
            raise


def work(settings: AggregatorSettings, *, burst: bool = False) -> int:
    """Consumes ``survey6-ingest`` until stopped (or, with ``burst``, until it is empty).

    A lost Redis is waited out (:func:`wait_for_redis`) and the work goes on: a job whose bookkeeping
    failed has its result in the ledger's outbox (sent once Redis is back), and running it again is
    harmless, since the ledger makes ingest idempotent. Returns how many jobs ran.

    Raises:
        AggregatorError: Redis cannot be reached at the start, or RQ's loop ended on another error.
    """
    connection = connect(settings.redis_url)
    context = WorkerContext.open(settings, connection)
    set_worker_context(context)
    ran = 0
    try:
        flush_results(context)  # left by an earlier worker that lost Redis
        cleanup(
            state_dir=settings.state_dir,
            output_root=settings.output_dir,
            quarantine=context.quarantine,
            staging_retention_s=settings.staging_retention_s,
            quarantine_retention_s=settings.quarantine_retention_s,
        )
        while True:
            worker = _Worker([Queue(QUEUE_NAME, connection=connection)], connection=connection)
            try:
                worker.work(burst=burst, logging_level=None)
            except redis.RedisError as exc:  # RQ's teardown (registering the worker's death)
                worker.lost_redis = worker.lost_redis or exc
            ran += int(worker.successful_job_count + worker.failed_job_count)
            if worker.stop_requested:
                return ran
            if worker.lost_redis is None:
                try:
                    connection.ping()
                except redis.RedisError as exc:
                    worker.lost_redis = exc
            if worker.lost_redis is None:
                if burst:
                    return ran
                raise AggregatorError("the worker's loop ended on an error (logged above by rq)")
            log.warning("lost Redis at %s: %s; reconnecting", _where(connection), worker.lost_redis)
            if not wait_for_redis(connection):
                return ran
            log.warning("Redis at %s is back; taking jobs again", _where(connection))
            flush_results(context)
    finally:
        set_worker_context(None)
        context.close()
        connection.close()


def wait_for_redis(connection: redis.Redis) -> bool:
    """Waits until ``connection`` answers again, with a growing, jittered delay (at most
    ``REDIS_RETRY_MAX_S``); returns False when SIGTERM or SIGINT came first."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        delay = REDIS_RETRY_FIRST_S
        # Jitter keeps a fleet of workers from reconnecting in step after Redis restarts.
        while not stop.wait(random.uniform(delay / 2, delay)):
            try:
                connection.ping()
                return True
            except redis.RedisError:
                delay = min(delay * 2, REDIS_RETRY_MAX_S)
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
