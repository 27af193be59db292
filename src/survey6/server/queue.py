"""The ingest queue: every stored capture file becomes one RQ job for the aggregator.

The catalog is the outbox. A landed file is recorded as ``stored``; the :class:`Drainer` enqueues
every stored row and marks it ``queued``. While Redis is away rows stay ``stored`` and are all
enqueued when it returns, so nothing is lost. Jobs are enqueued by the dotted name of the
aggregator's function (the server never imports the aggregator) under a deterministic job id, so
enqueueing the same file again is a no-op. The contract is in ``docs/ingest-queue.md``.

The aggregator's worker reports each job's outcome as a JSON message on the Redis list
``survey6-ingest-results``; the drainer also collects those and records them in the catalog
(``ingested`` or ``failed``), refusing messages that are malformed or do not match a catalogued file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from sqlalchemy.orm import Session, sessionmaker

from survey6.common.errors import ConfigError
from survey6.server import catalog
from survey6.server.errors import QueueUnavailable

log = logging.getLogger(__name__)

QUEUE_NAME = "survey6-ingest"
# The worker's results (docs/ingest-queue.md); the aggregator defines the same name itself.
RESULTS_LIST = "survey6-ingest-results"
INGEST_FUNCTION = "survey6.aggregator.jobs.ingest_capture"
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 5.0
DRAIN_BATCH_ROWS = 100
DEFAULT_JOB_TIMEOUT_S = 3600.0
RESULT_BATCH_MESSAGES = 500  # results recorded per drain round at most; the rest wait for the next
RESULT_STATES = frozenset({catalog.INGESTED, catalog.FAILED})
COUNT_MAX = 2**63 - 1  # the largest count or sequence the catalog's BIGINT columns hold
# A result may move a file that is durable to ingested/failed; "received" has no job yet.
_RESULT_FROM_STATES = frozenset({catalog.STORED, catalog.QUEUED, catalog.INGESTED, catalog.FAILED})
RESULT_DETAIL_MAX_CHARS = 2000
RESULT_LOG_CHARS = 200  # of a malformed message, in the log line that drops it
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def job_id_for(probe_id: str, sequence: int) -> str:
    """The RQ job id of a file's ingest job: the same file always gets the same id."""
    return f"ingest-{probe_id}-{sequence}"


@dataclass(frozen=True)
class IngestJob:
    """The keyword arguments of ``survey6.aggregator.jobs.ingest_capture``."""

    probe_id: str
    sequence: int
    sha256_hex: str
    # Relative to landing_root, POSIX separators: <probe_id>/<yyyy>/<mm>/<dd>/<sequence:012d>.pcap
    landing_path: str
    landing_root: str

    @property
    def job_id(self) -> str:
        return job_id_for(self.probe_id, self.sequence)

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class IngestQueue:
    """The RQ queue ``survey6-ingest`` on the configured Redis."""

    def __init__(self, redis_url: str, *, job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S) -> None:
        try:
            self.connection = redis.Redis.from_url(
                redis_url,
                socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            )
        except ValueError as exc:
            raise ConfigError(f"redis_url is not a Redis URL: {exc}") from exc
        self.queue = Queue(QUEUE_NAME, connection=self.connection)
        self.job_timeout_s = job_timeout_s

    def enqueue(self, job: IngestJob) -> bool:
        """Enqueues the job unless one with its id exists; True when it was enqueued now.

        Only the drainer enqueues, one job at a time, so checking and enqueueing cannot race
        within the server.

        Raises:
            QueueUnavailable: Redis cannot be reached or answered with an error.
        """
        try:
            if Job.exists(job.job_id, connection=self.connection):
                return False
            self.queue.enqueue_call(
                INGEST_FUNCTION,
                kwargs=job.kwargs(),
                job_id=job.job_id,
                timeout=int(self.job_timeout_s),
                description=f"ingest {job.probe_id} #{job.sequence}",
            )
        except redis.RedisError as exc:
            raise QueueUnavailable(f"the ingest queue's Redis cannot be reached: {exc}") from exc
        return True

    def results(self, limit: int) -> list[bytes]:
        """The oldest ``limit`` result messages, left on the list until :meth:`drop_results`.

        Raises:
            QueueUnavailable: Redis cannot be reached or answered with an error.
        """
        try:
            messages = self.connection.lrange(RESULTS_LIST, 0, limit - 1)
        except redis.RedisError as exc:
            raise QueueUnavailable(f"the ingest queue's Redis cannot be reached: {exc}") from exc
        return [m if isinstance(m, bytes) else m.encode() for m in messages]

    def drop_results(self, count: int) -> None:
        """Removes the oldest ``count`` result messages (the ones :meth:`results` returned).

        Raises:
            QueueUnavailable: Redis cannot be reached or answered with an error.
        """
        try:
            self.connection.ltrim(RESULTS_LIST, count, -1)
        except redis.RedisError as exc:
            raise QueueUnavailable(f"the ingest queue's Redis cannot be reached: {exc}") from exc

    def close(self) -> None:
        self.connection.close()


@dataclass(frozen=True)
class IngestResult:
    """One message of ``survey6-ingest-results``: a job's outcome for one file."""

    probe_id: str
    sequence: int
    sha256_hex: str
    state: str  # ingested | failed
    detail: str
    packets: int
    # Added for the audit (docs/audit.md); None when an older worker left them out.
    rows: int | None = None
    skipped: int | None = None
    quarantined: bool = False
    claimed_packets: int | None = None

    @classmethod
    def from_message(cls, message: bytes) -> IngestResult:
        """Parses a message; extra keys are ignored (a newer worker may add some).

        Raises:
            ValueError: not JSON, a key missing or of the wrong type, an unknown state.
        """
        data = json.loads(message)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        fields = {
            "probe_id": str,
            "sequence": int,
            "sha256_hex": str,
            "state": str,
            "detail": str,
            "packets": int,
        }
        for name, kind in fields.items():
            if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool):
                raise ValueError(f"{name} is missing or not a {kind.__name__}")
        if data["state"] not in RESULT_STATES:
            raise ValueError(f"state {data['state']!r} is not one of {', '.join(sorted(RESULT_STATES))}")
        if not _SHA256_HEX.match(data["sha256_hex"]):
            raise ValueError("sha256_hex is not 64 lower-case hex digits")
        counts: dict[str, int | None] = {}
        for name in ("rows", "skipped", "claimed_packets"):
            value = data.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} is not an int")
            counts[name] = value
        # The catalog's columns are signed 64-bit: a value outside would fail the write, every time,
        # and hold every later result back behind it.
        for name, value in [("sequence", data["sequence"]), ("packets", data["packets"]), *counts.items()]:
            low = -1 if name == "claimed_packets" else 0  # -1: unknown (docs/ingest-queue.md)
            if value is not None and not low <= value <= COUNT_MAX:
                raise ValueError(f"{name} {value} is out of range ({low} to 2^63-1)")
        if not isinstance(data.get("quarantined", False), bool):
            raise ValueError("quarantined is not a bool")
        return cls(
            **{name: data[name] for name in fields},
            rows=counts["rows"],
            skipped=counts["skipped"],
            quarantined=bool(data.get("quarantined", False)),
            claimed_packets=counts["claimed_packets"],
        )

    def ingest_counts(self, catalog_packets: int) -> dict[str, int | None]:
        """The catalog's audit columns for this result (``catalog.record_ingest_counts``).

        A quarantined file whose sidecar could not be read claims what the catalog recorded at
        upload (the same metadata the landing zone's sidecar was written from).
        """
        if self.state == catalog.INGESTED:
            return {"dataset_rows": self.rows, "skipped_packets": self.skipped, "quarantined_packets": None}
        quarantined = None
        if self.quarantined:
            claimed = self.claimed_packets
            quarantined = claimed if claimed is not None and claimed >= 0 else catalog_packets
        return {"dataset_rows": None, "skipped_packets": None, "quarantined_packets": quarantined}


class Drainer:
    """Moves stored files from the catalog's outbox into the queue; one per server."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        queue: IngestQueue,
        landing_root: Path,
        interval_s: float = 2.0,
    ) -> None:
        self.sessions = sessions
        self.queue = queue
        self.landing_root = landing_root
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outage = False

    def wake(self) -> None:
        """Asks for a drain now (after a file landed) instead of at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Drains and collects results at once, then after every wake-up or interval, until stopped."""
        while not self._stop.is_set():
            try:
                self.drain()
            except Exception:  # a failed round is logged and retried next round; never fatal
                log.exception("draining the ingest outbox failed")
            try:
                self.collect_results()
            except Exception:  # the messages stay in Redis and are read again next round
                log.exception("recording ingest results failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def drain(self) -> int:
        """Enqueues every stored file and marks it queued; returns how many were marked.

        While Redis is unreachable this returns early, leaving the rest stored, and warns once
        per outage.
        """
        marked = 0
        with self._lock:
            while True:
                with self.sessions() as session:
                    rows = [
                        (r.id, IngestJob(r.probe_id, r.sequence, r.sha256_hex, r.landing_path, ""))
                        for r in catalog.outbox(session, DRAIN_BATCH_ROWS)
                    ]
                for row_id, partial in rows:
                    job = dataclasses.replace(partial, landing_root=str(self.landing_root))
                    try:
                        self.queue.enqueue(job)
                    except QueueUnavailable as exc:
                        self._outage_began(exc)
                        return marked
                    with self.sessions.begin() as session:
                        catalog.mark_queued(session, row_id)
                    marked += 1
                if len(rows) < DRAIN_BATCH_ROWS:
                    break
            if self._outage:
                self._outage = False
                log.info("the ingest queue is reachable again", extra={"enqueued": marked})
        return marked

    def collect_results(self) -> int:
        """Records up to ``RESULT_BATCH_MESSAGES`` worker results in the catalog; returns how many.

        Messages are removed from Redis only after they are recorded (or refused), so a crash in
        between records them again, which changes nothing. Malformed messages are logged and dropped;
        a result for a file the catalog does not have, or with another SHA-256, is refused with a log
        line. While Redis is unreachable this returns 0 (the outage is warned about once).
        """
        with self._lock:
            try:
                messages = self.queue.results(RESULT_BATCH_MESSAGES)
            except QueueUnavailable as exc:
                self._outage_began(exc)
                return 0
            recorded = 0
            for message in messages:
                recorded += self._record_result(message)
            if messages:
                try:
                    self.queue.drop_results(len(messages))
                except QueueUnavailable as exc:
                    self._outage_began(exc)
        return recorded

    def _record_result(self, message: bytes) -> int:
        try:
            result = IngestResult.from_message(message)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning(
                "dropped a malformed ingest result: %s",
                exc,
                extra={"raw": message[:RESULT_LOG_CHARS].decode("utf-8", "replace")},
            )
            return 0
        with self.sessions.begin() as session:
            row = catalog.find(session, result.probe_id, result.sequence)
            if row is None:
                log.warning(
                    "refused an ingest result for a file the catalog does not have",
                    extra={"probe_id": result.probe_id, "sequence": result.sequence},
                )
                return 0
            if row.sha256_hex != result.sha256_hex or row.state not in _RESULT_FROM_STATES:
                log.warning(
                    "refused an ingest result that does not match the catalog",
                    extra={
                        "probe_id": result.probe_id,
                        "sequence": result.sequence,
                        "sha256_hex": result.sha256_hex,
                        "catalog_state": row.state,
                    },
                )
                return 0
            catalog.set_state(
                session,
                result.probe_id,
                result.sequence,
                result.state,
                result.detail[:RESULT_DETAIL_MAX_CHARS],
            )
            catalog.record_ingest_counts(
                session, result.probe_id, result.sequence, **result.ingest_counts(row.packets)
            )
        log.info(
            "file %s #%d %s",
            result.probe_id,
            result.sequence,
            result.state,
            extra={"detail": result.detail, "packets": result.packets},
        )
        return 1

    def _outage_began(self, exc: QueueUnavailable) -> None:
        if self._outage:
            return
        self._outage = True
        log.warning("%s; stored files wait in the outbox until it returns", exc)
