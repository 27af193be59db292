"""Resumable, verified uploads: receiving/ → landing/ → catalog → ingest queue.

A file is named by (probe id, sequence, sha256). Its bytes accumulate in
``receiving/<probe_id>/<sequence:012d>.part`` next to a small ``.expect.json`` with the sha256 and
size the upload announced, so a later stream (even after a server crash) resumes where the last
one ended. Each chunk's CRC-32 is checked before it is written, and each written chunk goes
into the file's sha256 at once (a resumed stream first hashes the prefix the server holds), so
the file is never read again; its writeback to disk starts every ``writeback_bytes`` while it
arrives. When the file is complete the sha256 is compared, the file is fsynced and renamed into
``landing/<probe_id>/<yyyy>/<mm>/<dd>/<sequence:012d>.pcap`` with its metadata in ``.json``, the
directories are fsynced, and the catalog records it ``stored`` (the ingest queue's outbox). Only
then does the receipt say DURABLE. Partial uploads nobody resumed within ``part_retention_s`` are
deleted by ``remove_abandoned_parts`` (the server runs it periodically).

Paths are built only from the server-assigned probe id and the integer sequence, never from a
string the client sent. The caller's probe id comes from its certificate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sqlalchemy.orm import Session, sessionmaker

from survey6.common.capture_metadata import to_json, validate
from survey6.common.errors import MetadataError
from survey6.common.files import fsync_directory, fsync_file, write_atomically
from survey6.server import catalog
from survey6.server.errors import (
    NotInitialisedError,
    OffsetMismatch,
    QuotaExceeded,
    UploadBusy,
    UploadConflict,
    UploadCorrupt,
    UploadForbidden,
    UploadRejected,
)
from survey6.server.registry.models import CapturedFile
from survey6.server.settings import UploadSettings
from survey6.wire.v1 import capture_pb2, upload_pb2

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 1 << 20  # 1 MiB of data per message
MAX_SEQUENCE = (1 << 63) - 1  # the registry stores it as a signed 64-bit integer
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Probe ids are assigned by the server ("p-" and hex); checked again before they name a directory.
_SAFE_PROBE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
# Sequences are zero-padded to 12 digits; larger ones (up to MAX_SEQUENCE) are longer.
_PART_NAME = re.compile(r"^(\d{12,19})\.part$")
HASH_READ_BYTES = 1 << 20  # 1 MiB reads when hashing the prefix a resumed upload already holds
# The abandoned-part sweep runs this often, or four times per retention period if that is shorter.
PART_CLEANUP_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class Layout:
    """Where partial and landed files live; both on one filesystem (landing is a rename)."""

    receiving: Path
    landing: Path

    @classmethod
    def from_settings(cls, data_dir: Path, settings: UploadSettings) -> Layout:
        return cls(
            receiving=settings.receiving_dir or data_dir / "receiving",
            landing=settings.landing_dir or data_dir / "landing",
        )

    def create(self) -> None:
        """Creates both directories.

        Raises:
            NotInitialisedError: they are on different filesystems.
        """
        for path in (self.receiving, self.landing):
            path.mkdir(parents=True, exist_ok=True, mode=0o750)
        if self.receiving.stat().st_dev != self.landing.stat().st_dev:
            raise NotInitialisedError(
                f"{self.receiving} and {self.landing} must be on one filesystem (files land by rename)"
            )

    def part(self, probe_id: str, sequence: int) -> Path:
        return self.receiving / _safe(probe_id) / f"{sequence:012d}.part"

    def expect(self, probe_id: str, sequence: int) -> Path:
        return self.receiving / _safe(probe_id) / f"{sequence:012d}.expect.json"

    @staticmethod
    def landing_relative(probe_id: str, sequence: int, day: dt.date) -> str:
        return f"{_safe(probe_id)}/{day:%Y/%m/%d}/{sequence:012d}.pcap"


class UploadStore:
    """The upload protocol over plain values; the gRPC servicer is a thin layer over it."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        layout: Layout,
        settings: UploadSettings,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.layout = layout
        self.settings = settings
        self.on_stored = on_stored or (lambda: None)
        self._busy: set[tuple[str, int]] = set()
        self._busy_lock = threading.Lock()

    # -- GetOffset ------------------------------------------------------------------------------

    def get_offset(self, probe_id: str, request: upload_pb2.OffsetRequest) -> upload_pb2.OffsetResponse:
        """How much of the file the server holds, or its receipt when it is already durable.

        Raises:
            UploadRejected: a malformed request.
            UploadConflict: the sequence is stored with another sha256.
        """
        self._check_identity(request.sequence, request.sha256_hex, request.file_size_bytes)
        receipt = self._already_durable(probe_id, request.sequence, request.sha256_hex, resolve=False)
        if receipt is not None:
            return upload_pb2.OffsetResponse(offset_bytes=receipt.size_bytes, receipt=receipt)
        held = self._held(probe_id, request.sequence, request.sha256_hex, request.file_size_bytes)
        return upload_pb2.OffsetResponse(offset_bytes=held)

    # -- Put ------------------------------------------------------------------------------------

    def put(self, probe_id: str, chunks: Iterable[upload_pb2.UploadChunk]) -> upload_pb2.UploadReceipt:
        """Receives one stream: a header, then data continuing at the held offset.

        Returns a receipt: DURABLE when the file landed now, ALREADY_DURABLE when it had, and
        DURABILITY_UNSPECIFIED with the bytes held when the stream ended before the file did.

        Raises:
            UploadRejected, UploadForbidden, UploadConflict, OffsetMismatch, UploadCorrupt,
            QuotaExceeded, UploadBusy: see ``survey6.server.errors``; bytes received before the
            error are kept (fsynced) unless the whole file failed its sha256.
        """
        stream = iter(chunks)
        first = next(stream, None)
        if first is None or not first.HasField("header"):
            raise UploadRejected("the first message of a Put must carry the header")
        metadata = self._checked_metadata(probe_id, first.header.metadata)
        sequence, size = metadata.sequence, metadata.file_size_bytes
        with self._exclusive(probe_id, sequence):
            receipt = self._already_durable(probe_id, sequence, metadata.sha256_hex, resolve=True)
            if receipt is not None:
                return receipt
            self._check_quota(probe_id, sequence, size)
            start = first.header.start_offset_bytes
            self._begin(probe_id, metadata, start)
            part = self.layout.part(probe_id, sequence)
            with PartWriter(part, start, self.settings.writeback_bytes) as writer:
                _receive(writer, size, first, stream)
                received_at = time.monotonic()
            if writer.held < size:
                log.info("upload of %s #%d paused at %d of %d bytes", probe_id, sequence, writer.held, size)
                return upload_pb2.UploadReceipt(sequence=sequence, size_bytes=writer.held)
            return self._land(probe_id, metadata, writer.sha256_hex(), received_at)

    def _checked_metadata(
        self, probe_id: str, metadata: capture_pb2.CaptureMetadata
    ) -> capture_pb2.CaptureMetadata:
        if metadata.probe_id and metadata.probe_id != probe_id:
            raise UploadForbidden(
                f"the metadata names probe {metadata.probe_id[:64]!r} but this certificate belongs to"
                f" {probe_id}: a probe uploads only its own files"
            )
        try:
            validate(metadata, f"file {metadata.sequence}")
        except MetadataError as exc:
            raise UploadRejected(str(exc)) from exc
        self._check_identity(metadata.sequence, metadata.sha256_hex, metadata.file_size_bytes)
        landing_day(metadata)  # rejects times that name no date
        stored = capture_pb2.CaptureMetadata()
        stored.CopyFrom(metadata)
        stored.probe_id = probe_id  # the certificate's id, never the client's
        return stored

    def _check_identity(self, sequence: int, sha256_hex: str, size: int) -> None:
        if not 1 <= sequence <= MAX_SEQUENCE:
            raise UploadRejected(f"sequence {sequence} is out of range: it must be 1 to {MAX_SEQUENCE}")
        if not _SHA256_HEX.match(sha256_hex):
            raise UploadRejected("sha256_hex must be 64 lower-case hex digits")
        if size > self.settings.max_file_bytes:
            raise UploadRejected(
                f"file {sequence} has {size} bytes; this server accepts at most"
                f" {self.settings.max_file_bytes} bytes per file"
            )

    def _check_quota(self, probe_id: str, sequence: int, size: int) -> None:
        quota = self.settings.probe_quota_bytes
        if not quota:
            return
        with self.sessions() as session:
            landed = catalog.landed_bytes(session, probe_id)
        if landed + size > quota:
            raise QuotaExceeded(
                f"probe {probe_id} holds {landed} bytes on the server; file {sequence} ({size} bytes)"
                f" would pass its quota of {quota} bytes"
            )

    @contextmanager
    def _exclusive(self, probe_id: str, sequence: int) -> Iterator[None]:
        """One stream per (probe, sequence) at a time; a second one is refused, not queued."""
        if not self._claim(probe_id, sequence):
            raise UploadBusy(f"file {sequence} is being uploaded on another stream; retry when it ends")
        try:
            yield
        finally:
            self._release(probe_id, sequence)

    def _claim(self, probe_id: str, sequence: int) -> bool:
        with self._busy_lock:
            if (probe_id, sequence) in self._busy:
                return False
            self._busy.add((probe_id, sequence))
            return True

    def _release(self, probe_id: str, sequence: int) -> None:
        with self._busy_lock:
            self._busy.discard((probe_id, sequence))

    def _already_durable(
        self, probe_id: str, sequence: int, sha256_hex: str, *, resolve: bool
    ) -> upload_pb2.UploadReceipt | None:
        with self.sessions() as session:
            row = catalog.find(session, probe_id, sequence)
        if row is not None and row.state == catalog.RECEIVED:
            # Left by a crash while landing (under the lock), or landing right now (without it).
            row = self._resolve_received(row) if resolve else None
        if row is None:
            return None
        if row.sha256_hex != sha256_hex:
            raise UploadConflict(
                f"file {sequence} of probe {probe_id} is already stored with sha256 {row.sha256_hex};"
                " a different file cannot reuse its sequence"
            )
        return receipt_of(row, upload_pb2.DURABILITY_ALREADY_DURABLE)

    def _held(self, probe_id: str, sequence: int, sha256_hex: str, size: int) -> int:
        """Bytes in the part file when it was started for this sha256 and size, else 0."""
        try:
            expected = json.loads(self.layout.expect(probe_id, sequence).read_text())
            held = self.layout.part(probe_id, sequence).stat().st_size
        except (OSError, ValueError):
            return 0
        if expected != {"sha256_hex": sha256_hex, "file_size_bytes": size}:
            return 0
        return held if held <= size else 0

    def _begin(self, probe_id: str, metadata: capture_pb2.CaptureMetadata, start: int) -> None:
        """Checks the stream's start offset; a stream from 0 starts a fresh part file."""
        sequence, sha256_hex, size = metadata.sequence, metadata.sha256_hex, metadata.file_size_bytes
        held = self._held(probe_id, sequence, sha256_hex, size)
        if start != held:
            raise OffsetMismatch(
                f"this stream starts at byte {start} but the server holds {held} bytes of file"
                f" {sequence}: resume from offset {held}",
                held,
            )
        if held:
            return
        part = self.layout.part(probe_id, sequence)
        makedirs_durable(part.parent)
        expect = {"sha256_hex": sha256_hex, "file_size_bytes": size}
        write_atomically(self.layout.expect(probe_id, sequence), json.dumps(expect).encode(), 0o640)
        with open(part, "wb"):
            pass  # truncated: whatever an earlier, different upload left is gone

    # -- landing --------------------------------------------------------------------------------

    def _land(
        self, probe_id: str, metadata: capture_pb2.CaptureMetadata, sha256_hex: str, received_at: float
    ) -> upload_pb2.UploadReceipt:
        """Lands a complete part file whose bytes hash to `sha256_hex` (computed as they arrived)
        and whose last byte arrived at `received_at` (monotonic: the log says how long the fsyncs,
        the move and the registry took after it)."""
        sequence = metadata.sequence
        part = self.layout.part(probe_id, sequence)
        if sha256_hex != metadata.sha256_hex:
            part.unlink()
            self.layout.expect(probe_id, sequence).unlink(missing_ok=True)
            raise UploadCorrupt(
                f"sha256 mismatch for file {sequence}: the server computed {sha256_hex}, the header says"
                f" {metadata.sha256_hex}; resend from offset 0"
            )
        relative = Layout.landing_relative(probe_id, sequence, landing_day(metadata))
        with self.sessions.begin() as session:
            row_id = catalog.add_received(
                session,
                probe_id,
                metadata,
                sha256_hex=sha256_hex,
                size_bytes=metadata.file_size_bytes,
                landing_path=relative,
            ).id
        try:
            move_into_landing(part, self.layout.landing / relative, to_json(metadata).encode())
        except OSError:
            with self.sessions.begin() as session:
                catalog.delete(session, row_id)  # the part is still in receiving/: a retry lands it
            raise
        with self.sessions.begin() as session:
            row = catalog.mark_stored(session, row_id)
        self.layout.expect(probe_id, sequence).unlink(missing_ok=True)
        log.info(
            "file landed",
            extra={
                "probe_id": probe_id,
                "sequence": sequence,
                "bytes": row.size_bytes,
                "path": relative,
                "durable_after_s": round(time.monotonic() - received_at, 4),
            },
        )
        self.on_stored()
        return receipt_of(row, upload_pb2.DURABILITY_DURABLE)

    # -- abandoned partial uploads ----------------------------------------------------------------

    @property
    def cleanup_interval_s(self) -> float:
        return min(PART_CLEANUP_INTERVAL_S, self.settings.part_retention_s / 4)

    def remove_abandoned_parts(self, now: float | None = None) -> int:
        """Deletes partial uploads (and their ``.expect.json``) untouched for ``part_retention_s``;
        returns how many. A part being received right now is left alone whatever its age."""
        cutoff = (time.time() if now is None else now) - self.settings.part_retention_s
        removed, freed = 0, 0
        for probe_dir in sorted(p for p in self.layout.receiving.iterdir() if p.is_dir()):
            if not _SAFE_PROBE_ID.match(probe_dir.name):
                continue  # not a directory this server made
            sizes = [self._remove_part_if_older(part, cutoff) for part in sorted(probe_dir.glob("*.part"))]
            for expect in probe_dir.glob("*.expect.json"):  # left by a crash before its part existed
                if not expect.with_name(expect.name.replace(".expect.json", ".part")).exists():
                    _remove_if_older(expect, cutoff)
            gone = [size for size in sizes if size is not None]
            if gone:
                fsync_directory(probe_dir)
            removed, freed = removed + len(gone), freed + sum(gone)
        level = logging.INFO if removed else logging.DEBUG
        log.log(level, "removed %d abandoned partial uploads (%d bytes) older than %g s", removed, freed,
                self.settings.part_retention_s)  # fmt: skip
        return removed

    def _remove_part_if_older(self, part: Path, cutoff: float) -> int | None:
        """Under the file's stream lock, so a probe resuming right now keeps it; its size if removed."""
        match = _PART_NAME.match(part.name)
        if match is None or not self._claim(part.parent.name, int(match.group(1))):
            return None
        try:
            size = _remove_if_older(part, cutoff)
            if size is not None:
                part.with_name(part.name.replace(".part", ".expect.json")).unlink(missing_ok=True)
            return size
        finally:
            self._release(part.parent.name, int(match.group(1)))

    # -- recovery -------------------------------------------------------------------------------

    def recover(self) -> int:
        """Resolves rows a crash left ``received``; returns how many. Call before serving."""
        with self.sessions() as session:
            rows = catalog.in_state(session, catalog.RECEIVED)
        for row in rows:
            self._resolve_received(row)
        return len(rows)

    def _resolve_received(self, row: CapturedFile) -> CapturedFile | None:
        """A row whose file reached the landing zone intact becomes stored; otherwise it goes
        (its part file, if still in receiving/, lets the probe finish the upload)."""
        target = self.layout.landing / row.landing_path
        intact = (
            target.is_file()
            and target.with_suffix(".json").is_file()
            and target.stat().st_size == row.size_bytes
            and sha256_of(target) == row.sha256_hex
        )
        with self.sessions.begin() as session:
            if not intact:
                catalog.delete(session, row.id)
                log.warning("file %s #%d never landed; the probe resends it", row.probe_id, row.sequence)
                return None
            stored = catalog.mark_stored(session, row.id)
        log.info("file %s #%d found landed after a crash", row.probe_id, row.sequence)
        self.layout.expect(row.probe_id, row.sequence).unlink(missing_ok=True)
        self.on_stored()
        return stored


# -- plain helpers -------------------------------------------------------------------------------


class PartWriter:
    """Appends to a part file that holds `held` bytes, hashing each chunk as it is written.

    The prefix a resumed upload already holds is hashed from the file once, before the first new
    chunk. Every `writeback_bytes` the kernel is asked to start writing the new bytes out
    (``posix_fadvise(DONTNEED)`` starts writeback of the range without waiting for it, and lets the
    page cache drop those pages once clean: the server does not read them again), so that the fsync
    on close, which the receipt waits for, finds at most that much left. Closing fsyncs whatever was
    written, even after an error, so that GetOffset can report it.
    """

    def __init__(self, path: Path, held: int, writeback_bytes: int) -> None:
        self.path = path
        self.held = held
        self.writeback_bytes = writeback_bytes
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._sha256: hashlib._Hash | None = None
        self._written_back = held  # the start of the bytes whose writeback has not been started

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def append(self, data: bytes) -> None:
        sha256 = self._hash()
        write_all(self._fd, data)
        sha256.update(data)
        self.held += len(data)
        if self.writeback_bytes and self.held - self._written_back >= self.writeback_bytes:
            os.posix_fadvise(self._fd, self._written_back, self.held - self._written_back,
                             os.POSIX_FADV_DONTNEED)  # fmt: skip
            self._written_back = self.held

    def sha256_hex(self) -> str:
        return self._hash().hexdigest()

    def _hash(self) -> hashlib._Hash:
        if self._sha256 is None:
            self._sha256 = hashlib.sha256()
            with open(self.path, "rb") as stream:
                remaining = self.held
                while remaining > 0:
                    block = stream.read(min(HASH_READ_BYTES, remaining))
                    if not block:
                        break  # shorter than announced: the sha256 cannot match, and says so
                    self._sha256.update(block)
                    remaining -= len(block)
        return self._sha256


def _receive(
    writer: PartWriter, size: int, first: upload_pb2.UploadChunk, rest: Iterator[upload_pb2.UploadChunk]
) -> None:
    """Appends each verified chunk of the stream."""
    for index, chunk in enumerate(itertools.chain([first], rest)):
        if index and chunk.HasField("header"):
            raise UploadRejected("only the first message of a Put may carry a header")
        data = chunk.data
        _check_chunk(data, chunk.data_crc32, writer.held, size)
        if data:
            writer.append(data)


def _remove_if_older(path: Path, cutoff: float) -> int | None:
    """Removes `path` if it was last modified before `cutoff`; returns its size then, else None."""
    try:
        stat = path.stat()
        if stat.st_mtime >= cutoff:
            return None
        path.unlink()
    except FileNotFoundError:
        return None
    return stat.st_size


def _check_chunk(data: bytes, crc32: int, offset: int, size: int) -> None:
    if len(data) > MAX_CHUNK_BYTES:
        raise UploadRejected(f"a chunk of {len(data)} bytes; at most {MAX_CHUNK_BYTES} per message")
    if len(data) > size - offset:
        raise UploadRejected(f"a chunk of {len(data)} bytes at offset {offset} runs past the file's {size}")
    if zlib.crc32(data) != crc32:
        raise UploadCorrupt(
            f"the chunk at offset {offset} fails its CRC-32; nothing of it was written: resend from there"
        )


def receipt_of(row: CapturedFile, durability: upload_pb2.Durability.ValueType) -> upload_pb2.UploadReceipt:
    stored_ns = (row.stored_at - EPOCH) // dt.timedelta(microseconds=1) * 1000 if row.stored_at else 0
    return upload_pb2.UploadReceipt(
        sequence=row.sequence,
        sha256_hex=row.sha256_hex,
        size_bytes=row.size_bytes,
        durability=durability,
        stored_ns=stored_ns,
    )


def landing_day(metadata: capture_pb2.CaptureMetadata) -> dt.date:
    """The UTC date of the first packet, or of the window start for a file without packets.

    Raises:
        UploadRejected: a time before 1970 or past year 9999.
    """
    ns = metadata.first_packet_time_ns or metadata.window_start_ns
    try:
        if ns < 0:
            raise OverflowError
        return (EPOCH + dt.timedelta(microseconds=ns // 1000)).date()
    except OverflowError as exc:
        raise UploadRejected(f"file {metadata.sequence}: packet time {ns} ns names no date") from exc


def sha256_of(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def makedirs_durable(path: Path) -> None:
    """Creates the missing directories of `path`, each made durable in its parent."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o750, exist_ok=True)
        fsync_directory(directory.parent)


def move_into_landing(part: Path, target: Path, metadata_json: bytes) -> None:
    """Lands a verified part file: the .json first, so a landed .pcap always has its metadata."""
    fsync_file(part)
    makedirs_durable(target.parent)
    write_atomically(target.with_suffix(".json"), metadata_json, 0o640)
    os.replace(part, target)
    fsync_directory(target.parent)
    fsync_directory(part.parent)


def _safe(probe_id: str) -> str:
    if not _SAFE_PROBE_ID.match(probe_id):
        raise ValueError(f"probe id {probe_id!r} cannot name a directory")
    return probe_id
