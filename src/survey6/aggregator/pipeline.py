"""The aggregator's stages as plain functions: discover → ingest → aggregate → clean up.

``survey6-aggregate run``, the queue worker (``jobs``) and the Airflow DAGs call the same functions,
each stage on its own or all of them through :func:`run`. Every stage is idempotent:

- **discover** lists captures: the landing zone's ``<probe_id>/<yyyy>/<mm>/<dd>/<sequence>.pcap``, or a
  user's files and folders (``discovery``: by magic, or by a capture-like name so that a damaged
  one is reported instead of passed over).
- **ingest** hashes a file, skips it when the ledger knows its SHA-256, checks it (the SHA-256 the
  server or the sidecar recorded, the sidecar, the container), then parses, enriches and writes its
  packets and records it in the ledger with its partitions marked dirty. A file that fails a check
  is quarantined with the reason and recorded too, so it is not tried again; the run goes on.
- **aggregate** rebuilds the derived datasets of every dirty partition with the engine.
- **cleanup** removes staging left-overs and quarantined files past their retention.

What is quarantined (reason codes): ``unreadable`` (empty, not pcap/pcapng, header cut short),
``damaged`` (bytes after the last whole record: a cut-short or corrupt file; nothing of it is written,
so no dataset holds part of a file), ``snaplen-cut`` (no record holds a whole IPv6 header),
``sha256-mismatch``, ``bad-metadata`` (an invalid or missing sidecar, or one naming another probe or
sequence) and ``metadata-mismatch`` (the sidecar's size or packet count disagrees with the file).
Single bad packets in a readable file are not a reason: they are counted, by reason, in the ledger.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import shutil
import stat
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from survey6.aggregator import datasets
from survey6.aggregator.discovery import PROBE_ID, Capture, Discovery, discover, missing_probe_ids
from survey6.aggregator.engines import Engine, open_engine
from survey6.aggregator.enrich import enrich, read_sidecar, sidecar_path
from survey6.aggregator.errors import AggregatorError, ParseError
from survey6.aggregator.ledger import INGESTED, QUARANTINED, FileRecord, Ledger, PartitionKey
from survey6.aggregator.parse import ParseResult, ParseStats, parse_bytes
from survey6.aggregator.quarantine import Quarantine
from survey6.aggregator.settings import AggregatorSettings, DatasetSettings
from survey6.common.errors import MetadataError
from survey6.wire.v1 import capture_pb2

__all__ = [  # the stages and their values; discovery is re-exported so one module has every stage
    "AggregateReport",
    "Capture",
    "CleanupReport",
    "Discovery",
    "FileOutcome",
    "RunProgress",
    "RunSummary",
    "aggregate_dirty",
    "cleanup",
    "discover",
    "ingest_file",
    "run",
    "skipped_by_reason",
]

log = logging.getLogger(__name__)

STAGING_DIRNAME = "staging"
# The skip reasons of ParseStats: records that did not become rows.
SKIP_REASONS = ("not_ipv6_packets", "unsupported_link_packets", "truncated_packets", "malformed_packets")

OutcomeState = Literal["ingested", "quarantined", "already-ingested", "already-quarantined", "unreadable"]


@dataclass(frozen=True)
class FileOutcome:
    """What ingesting one file did; for an ``already-*`` file, what the ledger says was done."""

    capture: Capture
    state: OutcomeState
    sha256_hex: str = ""
    probe_id: str = ""
    sequence: int = 0
    reason: str = ""
    detail: str = ""
    packets: int = 0
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    partitions: tuple[PartitionKey, ...] = ()


class _Refused(Exception):
    """A file check failed: the file goes to quarantine with this reason."""

    def __init__(self, reason: str, detail: str, stats: ParseStats | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.stats = reason, detail, stats


# -- ingest ---------------------------------------------------------------------------------------


def ingest_file(
    capture: Capture, *, ledger: Ledger, quarantine: Quarantine, output_root: Path
) -> FileOutcome:
    """Ingests one capture: checked, parsed, enriched and written to ``packets``, or quarantined.

    A file the ledger knows is not read beyond its hash. A file that cannot be opened at all (a
    permission, a disk error) is reported ``unreadable`` and not recorded, so a later run tries again.

    Raises:
        AggregatorError: the ledger, the quarantine or the datasets cannot be written.
    """
    try:
        data = _map(capture.path)
    except OSError as exc:
        return FileOutcome(
            capture, "unreadable", detail=f"{capture.path}: cannot read: {exc.strerror or exc}"
        )
    sha256_hex = hashlib.sha256(data).hexdigest()
    known = ledger.get(sha256_hex)
    if known is not None:
        return _already(capture, known)
    probe_id, sequence = capture.probe_id or "", capture.sequence
    try:
        metadata = _checked_metadata(capture, sha256_hex, len(data))
        probe_id, sequence = metadata.probe_id, metadata.sequence
        result = _parsed(capture, data, metadata)
    except _Refused as refused:
        return _quarantine(capture, sha256_hex, len(data), probe_id, sequence, refused, ledger, quarantine)
    if not metadata.probe_id:
        # A mistake in the call, not in the file: refused without recording, so a corrected call works.
        raise AggregatorError(f"{capture.path} has no sidecar naming its probe: give it a probe id")
    table = enrich(result, metadata)
    written: list[datasets.Partition] = []
    if table.num_rows:
        written = datasets.write_packets(table, output_root, sha256_hex=sha256_hex, sequence=sequence)
    partitions = tuple(sorted((p.date, p.probe_id) for p in written))
    entry = FileRecord(
        sha256_hex=sha256_hex,
        path=str(capture.path),
        probe_id=probe_id,
        sequence=sequence,
        state=INGESTED,
        size_bytes=len(data),
        packets=result.stats.packets,
        rows_written=table.num_rows,
        skipped=skipped_by_reason(result.stats),
        parse_stats=asdict(result.stats),
        partitions=partitions,
    )
    ledger.record(entry)
    log.info(
        "ingested %s",
        capture.path,
        extra={"sha256_hex": sha256_hex, "rows": table.num_rows, "packets": result.stats.packets},
    )
    return _outcome(capture, "ingested", entry)


def _map(path: Path) -> bytes | mmap.mmap:
    # One mapping is hashed and parsed, so the bytes recorded under a SHA-256 are the bytes parsed.
    # Non-blocking: a FIFO where a capture should be must not hang the run.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if status.st_size == 0:
            return b""
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


def _checked_metadata(capture: Capture, sha256_hex: str, size: int) -> capture_pb2.CaptureMetadata:
    """The sidecar (or metadata made from the capture's place), checked against the file."""
    where = str(capture.path)
    if capture.expected_sha256 is not None and capture.expected_sha256 != sha256_hex:
        raise _Refused(
            "sha256-mismatch",
            f"{where}: SHA-256 is {sha256_hex}, the server recorded {capture.expected_sha256}",
        )
    try:
        sidecar = read_sidecar(capture.path)
    except MetadataError as exc:
        raise _Refused("bad-metadata", str(exc)) from exc
    if sidecar is None:
        if capture.source == "landing":
            raise _Refused("bad-metadata", f"{where}: no metadata sidecar {sidecar_path(where).name}")
        return capture_pb2.CaptureMetadata(probe_id=capture.probe_id or "")
    if sidecar.sha256_hex != sha256_hex:
        raise _Refused(
            "sha256-mismatch", f"{where}: SHA-256 is {sha256_hex}, its sidecar says {sidecar.sha256_hex}"
        )
    if sidecar.file_size_bytes != size:
        raise _Refused(
            "metadata-mismatch", f"{where}: {size} bytes, its sidecar says {sidecar.file_size_bytes}"
        )
    if capture.source == "landing" and (sidecar.probe_id, sidecar.sequence) != (
        capture.probe_id,
        capture.sequence,
    ):
        raise _Refused(
            "bad-metadata",
            f"{where}: the sidecar names probe {sidecar.probe_id!r} file {sidecar.sequence},"
            f" the landing zone {capture.probe_id!r} file {capture.sequence}",
        )
    if not sidecar.probe_id:
        sidecar.probe_id = capture.probe_id or ""
    if not PROBE_ID.match(sidecar.probe_id):
        raise _Refused("bad-metadata", f"{where}: probe id {sidecar.probe_id!r} is not valid")
    return sidecar


def _parsed(capture: Capture, data: bytes | mmap.mmap, metadata: capture_pb2.CaptureMetadata) -> ParseResult:
    where = str(capture.path)
    try:
        result = parse_bytes(data, source=where)
    except ParseError as exc:
        raise _Refused("unreadable", str(exc)) from exc
    stats = result.stats
    if stats.unparsed_bytes:
        raise _Refused(
            "damaged",
            f"{where}: {stats.unparsed_bytes} bytes after the last whole record ({stats.file_format}"
            " cut short or corrupt); none of its packets were written",
            stats,
        )
    if metadata.sha256_hex and metadata.packets != stats.packets:
        raise _Refused(
            "metadata-mismatch",
            f"{where}: {stats.packets} records, its sidecar says {metadata.packets}",
            stats,
        )
    if stats.packets and stats.truncated_packets == stats.packets:
        snaplens = sorted({i.snaplen_bytes for i in result.interfaces})
        raise _Refused(
            "snaplen-cut",
            f"{where}: every one of its {stats.packets} records was captured too short for an IPv6 header"
            f" (snaplen {', '.join(map(str, snaplens))} bytes)",
            stats,
        )
    return result


def skipped_by_reason(stats: ParseStats) -> dict[str, int]:
    """Records that did not become rows, by ``ParseStats`` reason (only reasons that occurred)."""
    counts = {reason.removesuffix("_packets"): getattr(stats, reason) for reason in SKIP_REASONS}
    return {reason: n for reason, n in counts.items() if n}


def _quarantine(
    capture: Capture,
    sha256_hex: str,
    size: int,
    probe_id: str,
    sequence: int,
    refused: _Refused,
    ledger: Ledger,
    quarantine: Quarantine,
) -> FileOutcome:
    sidecar = sidecar_path(capture.path)
    quarantine.put(
        capture.path,
        sha256_hex=sha256_hex,
        reason=refused.reason,
        detail=refused.detail,
        probe_id=probe_id,
        sequence=sequence,
        sidecar=sidecar if sidecar != capture.path else None,
    )
    stats = refused.stats
    entry = FileRecord(
        sha256_hex=sha256_hex,
        path=str(capture.path),
        probe_id=probe_id,
        sequence=sequence,
        state=QUARANTINED,
        reason=refused.reason,
        detail=refused.detail,
        size_bytes=size,
        packets=stats.packets if stats else 0,
        skipped=skipped_by_reason(stats) if stats else {},
        parse_stats=asdict(stats) if stats else {},
    )
    ledger.record(entry)
    return _outcome(capture, "quarantined", entry)


def _already(capture: Capture, known: FileRecord) -> FileOutcome:
    state: OutcomeState = "already-ingested" if known.state == INGESTED else "already-quarantined"
    return _outcome(capture, state, known)


def _outcome(capture: Capture, state: OutcomeState, entry: FileRecord) -> FileOutcome:
    return FileOutcome(
        capture,
        state,
        sha256_hex=entry.sha256_hex,
        probe_id=entry.probe_id,
        sequence=entry.sequence,
        reason=entry.reason,
        detail=entry.detail,
        packets=entry.packets,
        rows=entry.rows_written,
        skipped=dict(entry.skipped),
        partitions=entry.partitions,
    )


# -- aggregate ------------------------------------------------------------------------------------


@dataclass
class AggregateReport:
    partitions: list[PartitionKey] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # per derived dataset, over the built partitions


def aggregate_dirty(
    *,
    ledger: Ledger,
    engine: Engine,
    output_root: Path,
    settings: DatasetSettings,
    only: Collection[PartitionKey] | None = None,
    on_partition: Callable[[PartitionKey], None] | None = None,
) -> AggregateReport:
    """Rebuilds the derived datasets of the dirty partitions (of those in ``only``, when given).

    A partition stays dirty until its build returns, so a build that fails or is interrupted is
    repeated by the next call; one marked dirty again during its build is built again next time.
    """
    report = AggregateReport()
    for dirty in ledger.dirty():
        if only is not None and dirty.key not in only:
            continue
        date, probe_id = dirty.key
        rows = engine.build(output_root, datasets.Partition(date=date, probe_id=probe_id), settings)
        ledger.clear_dirty(dirty)
        report.partitions.append(dirty.key)
        for dataset, n in rows.items():
            report.rows[dataset] = report.rows.get(dataset, 0) + n
        log.info("built partition %s/%s", date, probe_id, extra={"rows": rows})
        if on_partition is not None:
            on_partition(dirty.key)
    return report


# -- cleanup --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanupReport:
    staging_removed: int
    quarantine_removed: int


def cleanup(
    *,
    state_dir: Path,
    output_root: Path,
    quarantine: Quarantine,
    staging_retention_s: float,
    quarantine_retention_s: float,
    now: float | None = None,
) -> CleanupReport:
    """Removes staging left-overs older than their retention and quarantined files past theirs.

    Staging is ``<state_dir>/staging/``, the dataset writers' ``<output_root>/_staging/`` and the
    hidden ``.*.tmp`` files a writer killed mid-write leaves next to a dataset file. Only entries
    older than the retention go, so a writer at work right now is never disturbed.

    Raises:
        AggregatorError: something to remove could not be removed.
    """
    at = time.time() if now is None else now
    cutoff = at - staging_retention_s
    left_overs = [
        *_entries(state_dir / STAGING_DIRNAME),
        *_entries(output_root / datasets.STAGING_DIR),
        *(output_root.glob("*/date=*/probe_id=*/.*.tmp") if output_root.is_dir() else ()),
    ]
    removed = 0
    for entry in left_overs:
        try:
            if entry.lstat().st_mtime >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue  # its writer finished (or cleaned up) meanwhile
        except OSError as exc:
            raise AggregatorError(f"cannot remove staging left-over {entry}: {exc}") from exc
        log.info("removed staging left-over %s", entry)
        removed += 1
    return CleanupReport(removed, quarantine.expire(quarantine_retention_s, now=at))


def _entries(directory: Path) -> list[Path]:
    return list(directory.iterdir()) if directory.is_dir() else []


# -- run ------------------------------------------------------------------------------------------


class RunProgress(Protocol):
    """What ``run`` tells a progress display: a stage with its size, then one step per item."""

    def stage(self, name: str, total: int) -> None: ...

    def advance(self, label: str) -> None: ...


@dataclass
class RunSummary:
    files_seen: int = 0
    files_ingested: int = 0
    files_already_done: int = 0  # in the ledger already: ingested or quarantined by an earlier run
    files_already_quarantined: int = 0  # ... of which quarantined
    files_quarantined: int = 0  # quarantined by this run
    files_unreadable: int = 0
    files_ignored: int = 0  # not captures (by magic and name), in a user's folders
    packets: int = 0  # records in the files ingested by this run
    rows_written: int = 0  # rows they added to the packets dataset
    skipped_packets: dict[str, int] = field(default_factory=dict)  # records that are not rows, by reason
    partitions_built: int = 0
    dataset_rows: dict[str, int] = field(default_factory=dict)  # packets: this run's; others: rebuilt
    quarantined: list[dict[str, str]] = field(default_factory=list)  # path, reason, detail
    unreadable: list[dict[str, str]] = field(default_factory=list)  # path, detail
    staging_removed: int = 0
    quarantine_expired: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every capture of this run is ingested (now or before)."""
        return not (self.files_quarantined or self.files_unreadable)

    def add(self, outcome: FileOutcome) -> None:
        self.files_seen += 1
        if outcome.state == "ingested":
            self.files_ingested += 1
            self.packets += outcome.packets
            self.rows_written += outcome.rows
            for reason, n in outcome.skipped.items():
                self.skipped_packets[reason] = self.skipped_packets.get(reason, 0) + n
        elif outcome.state.startswith("already-"):
            self.files_already_done += 1
            self.files_already_quarantined += outcome.state == "already-quarantined"
        elif outcome.state == "quarantined":
            self.files_quarantined += 1
            self.quarantined.append(
                {"path": str(outcome.capture.path), "reason": outcome.reason, "detail": outcome.detail}
            )
        else:
            self.files_unreadable += 1
            self.unreadable.append({"path": str(outcome.capture.path), "detail": outcome.detail})

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


def run(
    settings: AggregatorSettings,
    *,
    landing: Path | None = None,
    paths: Sequence[Path] = (),
    probe_id: str | None = None,
    aggregate: bool = True,
    progress: RunProgress | None = None,
) -> RunSummary:
    """All stages without Airflow: discover, ingest each file, aggregate dirty partitions, clean up.

    Args:
        settings: output, state directory, engine, retention and dataset parameters.
        landing: the landing zone to ingest (None: none).
        paths: a user's captures and folders; ``probe_id`` names their probe when no sidecar does.
        aggregate: also build the derived datasets (otherwise partitions stay dirty for a later run).

    Raises:
        AggregatorError: nothing to run on, a user capture with no probe id, or the ledger, the
            quarantine, the datasets or the engine failed (bad input files never raise).
    """
    started = time.monotonic()
    found = discover(landing=landing, paths=paths, probe_id=probe_id)
    missing = missing_probe_ids(found.captures)
    if missing:
        raise AggregatorError(f"{missing[0]} has no sidecar naming its probe: give --probe-id")
    summary = RunSummary(files_ignored=len(found.ignored))
    quarantine = Quarantine.in_state_dir(settings.state_dir)
    with Ledger.in_state_dir(settings.state_dir) as ledger:
        if progress:
            progress.stage("ingest", len(found.captures))
        for capture in found.captures:
            summary.add(
                ingest_file(capture, ledger=ledger, quarantine=quarantine, output_root=settings.output_dir)
            )
            if progress:
                progress.advance(capture.path.name)
        summary.dataset_rows["packets"] = summary.rows_written
        if aggregate and ledger.dirty():
            _aggregate(settings, ledger, summary, progress)
    cleaned = cleanup(
        state_dir=settings.state_dir,
        output_root=settings.output_dir,
        quarantine=quarantine,
        staging_retention_s=settings.staging_retention_s,
        quarantine_retention_s=settings.quarantine_retention_s,
    )
    summary.staging_removed, summary.quarantine_expired = cleaned.staging_removed, cleaned.quarantine_removed
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _aggregate(
    settings: AggregatorSettings, ledger: Ledger, summary: RunSummary, progress: RunProgress | None
) -> None:
    if progress:
        progress.stage("aggregate", len(ledger.dirty()))
    engine = open_engine(settings)
    try:
        report = aggregate_dirty(
            ledger=ledger,
            engine=engine,
            output_root=settings.output_dir,
            settings=settings.datasets,
            on_partition=(lambda key: progress.advance("/".join(key))) if progress else None,
        )
    finally:
        engine.close()
    summary.partitions_built = len(report.partitions)
    summary.dataset_rows.update(report.rows)
