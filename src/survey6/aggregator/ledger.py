"""The ledger: what the aggregator has done with every capture file, keyed by the file's SHA-256.

One SQLite database, ``<state_dir>/ledger.sqlite3`` (WAL, so a worker and a ``run`` can share it). It
makes every stage idempotent and every loss accountable:

- ``files``: one row per distinct capture content, ``ingested`` or ``quarantined`` (with the reason),
  with the records the parser saw, the rows written, the records skipped by reason and the partitions
  the file's packets went to. A file whose SHA-256 is here is never parsed again.
- ``dirty_partitions``: (date, probe id) partitions whose ``packets`` changed since their derived
  datasets were last built. A file is recorded and its partitions marked dirty in one transaction,
  after its packets are written; a crash before that re-ingests the file (writing packets is
  idempotent), a crash after it leaves the partitions dirty for the next run to build.
- ``results``: the worker's outbox of result messages for the server, so a result survives a Redis
  outage.

Every method runs one short transaction; none holds the database between calls.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from survey6.aggregator.errors import AggregatorError

log = logging.getLogger(__name__)

LEDGER_FILENAME = "ledger.sqlite3"
SCHEMA_VERSION = 1
# A second process holding the write lock (a worker next to a run) is waited for, not an error.
BUSY_TIMEOUT_MS = 30_000

FileState = Literal["ingested", "quarantined"]
INGESTED: Final = "ingested"
QUARANTINED: Final = "quarantined"

PartitionKey = tuple[str, str]  # (date "YYYY-MM-DD", probe id), as datasets.Partition orders them

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    sha256_hex     TEXT PRIMARY KEY,
    path           TEXT NOT NULL,
    probe_id       TEXT NOT NULL,
    sequence       INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('ingested', 'quarantined')),
    reason         TEXT NOT NULL,
    detail         TEXT NOT NULL,
    size_bytes     INTEGER NOT NULL,
    packets        INTEGER NOT NULL,
    rows_written   INTEGER NOT NULL,
    skipped        TEXT NOT NULL,
    parse_stats    TEXT NOT NULL,
    partitions     TEXT NOT NULL,
    recorded_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_probe ON files (probe_id, sequence);
CREATE TABLE IF NOT EXISTS dirty_partitions (
    date           TEXT NOT NULL,
    probe_id       TEXT NOT NULL,
    generation     INTEGER NOT NULL,
    dirty_since    REAL NOT NULL,
    PRIMARY KEY (date, probe_id)
);
CREATE TABLE IF NOT EXISTS results (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    payload        TEXT NOT NULL
);
"""


class LedgerError(AggregatorError):
    """The ledger cannot be opened or written (a corrupt or unwritable database, a newer schema)."""


@dataclass(frozen=True)
class FileRecord:
    """One capture file's entry; ``skipped`` counts records that did not become rows, by reason."""

    sha256_hex: str
    path: str
    probe_id: str
    sequence: int
    state: FileState
    reason: str = ""  # quarantine reason code (see quarantine.py); "" when ingested
    detail: str = ""  # the reason in one line for a human
    size_bytes: int = 0
    packets: int = 0  # records in the file
    rows_written: int = 0  # rows written to the packets dataset
    skipped: dict[str, int] = field(default_factory=dict)
    parse_stats: dict[str, Any] = field(default_factory=dict)
    partitions: tuple[PartitionKey, ...] = ()
    recorded_at: float = 0.0


@dataclass(frozen=True)
class DirtyPartition:
    """A partition to rebuild; ``generation`` tells whether it was marked again while being built."""

    key: PartitionKey
    generation: int
    dirty_since: float


class Ledger:
    """The SQLite ledger of one state directory. Not shared between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit; writes open their own BEGIN IMMEDIATE so two processes never deadlock on
            # upgrading a read lock.
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL never corrupts; a transaction lost to a power cut only repeats idempotent work.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> Ledger:
        return cls(state_dir / LEDGER_FILENAME)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger {self.path} has schema {version}; this survey6 knows {SCHEMA_VERSION}"
            )
        if version < SCHEMA_VERSION:
            self._db.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            )

    def _write(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> list[int]:
        """Runs statements in one immediate transaction; returns each one's changed-row count."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                counts = [self._db.execute(sql, args).rowcount for sql, args in statements]
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write the ledger {self.path}: {exc}") from exc
        return counts

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            cursor = self._db.execute(sql, args)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the ledger {self.path}: {exc}") from exc

    # -- files ----------------------------------------------------------------------------------

    def get(self, sha256_hex: str) -> FileRecord | None:
        rows = self._read("SELECT * FROM files WHERE sha256_hex = ?", (sha256_hex,))
        return _file_record(rows[0]) if rows else None

    def files(self, state: FileState | None = None) -> list[FileRecord]:
        if state is None:
            rows = self._read("SELECT * FROM files ORDER BY recorded_at, sha256_hex")
        else:
            rows = self._read(
                "SELECT * FROM files WHERE state = ? ORDER BY recorded_at, sha256_hex", (state,)
            )
        return [_file_record(row) for row in rows]

    def record(self, entry: FileRecord, *, now: float | None = None) -> bool:
        """Records a file and marks its partitions dirty, in one transaction.

        Returns False (and changes nothing) when the file is already recorded, by this process or by
        another that got there first.
        """
        at = time.time() if now is None else now
        insert = (
            "INSERT OR IGNORE INTO files (sha256_hex, path, probe_id, sequence, state, reason, detail,"
            " size_bytes, packets, rows_written, skipped, parse_stats, partitions, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.sha256_hex,
                entry.path,
                entry.probe_id,
                entry.sequence,
                entry.state,
                entry.reason,
                entry.detail,
                entry.size_bytes,
                entry.packets,
                entry.rows_written,
                json.dumps(entry.skipped, sort_keys=True),
                json.dumps(entry.parse_stats, sort_keys=True),
                json.dumps([list(p) for p in entry.partitions]),
                at,
            ),
        )
        inserted = self._write([insert, *_mark_dirty_statements(entry.partitions, at)])
        if not inserted[0]:
            # Another process recorded the same content first; its partition marks stand, and ours
            # (already committed with the insert that changed nothing) only cost one extra build.
            log.info("file %s was already in the ledger", entry.sha256_hex)
        return bool(inserted[0])

    # -- dirty partitions -----------------------------------------------------------------------

    def mark_dirty(self, partitions: Iterable[PartitionKey], *, now: float | None = None) -> None:
        self._write(_mark_dirty_statements(partitions, time.time() if now is None else now))

    def dirty(self) -> list[DirtyPartition]:
        rows = self._read("SELECT * FROM dirty_partitions ORDER BY date, probe_id")
        return [DirtyPartition((r["date"], r["probe_id"]), r["generation"], r["dirty_since"]) for r in rows]

    def clear_dirty(self, partition: DirtyPartition) -> bool:
        """Clears a built partition unless it was marked again since ``partition`` was read."""
        date, probe_id = partition.key
        (changed,) = self._write(
            [
                (
                    "DELETE FROM dirty_partitions WHERE date = ? AND probe_id = ? AND generation = ?",
                    (date, probe_id, partition.generation),
                )
            ]
        )
        return bool(changed)

    # -- result outbox --------------------------------------------------------------------------

    def add_result(self, payload: str) -> None:
        self._write([("INSERT INTO results (payload) VALUES (?)", (payload,))])

    def pending_results(self, limit: int) -> list[tuple[int, str]]:
        rows = self._read("SELECT id, payload FROM results ORDER BY id LIMIT ?", (limit,))
        return [(r["id"], r["payload"]) for r in rows]

    def drop_results(self, ids: Iterable[int]) -> None:
        self._write([("DELETE FROM results WHERE id = ?", (i,)) for i in ids])


def _mark_dirty_statements(partitions: Iterable[PartitionKey], at: float) -> list[tuple[str, Sequence[Any]]]:
    # A partition already dirty keeps its dirty_since (how long it has waited) and gets a new
    # generation, so a build that read the old generation does not clear it.
    sql = (
        "INSERT INTO dirty_partitions (date, probe_id, generation, dirty_since) VALUES (?, ?, 1, ?)"
        " ON CONFLICT (date, probe_id) DO UPDATE SET generation = generation + 1"
    )
    return [(sql, (date, probe_id, at)) for date, probe_id in sorted(set(partitions))]


def _file_record(row: sqlite3.Row) -> FileRecord:
    return FileRecord(
        sha256_hex=row["sha256_hex"],
        path=row["path"],
        probe_id=row["probe_id"],
        sequence=row["sequence"],
        state=row["state"],
        reason=row["reason"],
        detail=row["detail"],
        size_bytes=row["size_bytes"],
        packets=row["packets"],
        rows_written=row["rows_written"],
        skipped=json.loads(row["skipped"]),
        parse_stats=json.loads(row["parse_stats"]),
        partitions=tuple((str(d), str(p)) for d, p in json.loads(row["partitions"])),
        recorded_at=row["recorded_at"],
    )
