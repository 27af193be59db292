"""The upload stream handler driven in process: the real ``UploadStore`` over a real registry and
filesystem in a temporary data directory, called the way ``UploadService`` calls it.

A ``Case`` is a short program: a few files, then steps — a Put stream (a header built from valid
metadata with chosen fields made hostile, then chunks that continue, overlap, leave gaps, carry
foreign bytes, bad CRCs or a second header), a GetOffset, or a sweep of abandoned parts. Steps are
symbolic (a start offset "where the server is, plus one"), resolved against the server as they run.
``decode_case`` reads a case from any bytes (the fuzzer's), ``encode_case`` writes one back (the seeds).

After every step: the outcome is a receipt or an ``UploadError`` the servicer maps to a status; a
landed file hashes to its receipt; every file under the data directory's parent is one the server
may make (nothing outside the data directory, no temporary left-over, no symlink). After the case
the abandoned-part sweep must leave ``receiving/`` without a file. Then the state is reset, so a
case gives the same result alone or after any other.
"""

from __future__ import annotations

import atexit
import hashlib
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select

from survey6.server import catalog
from survey6.server.errors import UploadError
from survey6.server.registry import db
from survey6.server.registry.models import CapturedFile, Probe, utcnow
from survey6.server.rpc.upload_service import STATUS_OF
from survey6.server.settings import UploadSettings
from survey6.server.uploads import MAX_CHUNK_BYTES, MAX_SEQUENCE, Layout, UploadStore, landing_day
from survey6.wire.v1 import capture_pb2, upload_pb2

PROBES = ("p-00000000000000a1", "p-00000000000000b2")
HOSTILE_PROBE_IDS = (PROBES[1], "../p-00000000000000a1", "/etc", "", "p-" + "a" * 300, "p-\u00e9\n", "..")
SEQUENCES = (1, 2, 7, 0, MAX_SEQUENCE, MAX_SEQUENCE + 1, (1 << 64) - 1, 1_000_000_000_000)
MAX_FILES = 3
MAX_FILE_BYTES = 3000  # a case's files are small: the protocol is the same at any size
MAX_STEPS = 10
MAX_CHUNKS = 8
MAX_CHUNK_TAKE = 1024
T0_NS = 1_700_000_000_000_000_000
SETTINGS = UploadSettings(
    max_file_bytes=4096, probe_quota_bytes=6000, writeback_bytes=512, part_retention_s=60
)

# Metadata mutations (bits of Put.mutations / Offset.mutations).
PROBE_ID, OTHER_SHA, BAD_SHA, SIZE, SIZE_OFF_BY_ONE, FIRST_TIME, WINDOW, PACKETS = (1 << i for i in range(8))
PCAP, LABELS, SCHEMA, NO_INTERFACE, CAPTURED, NO_HEADER = (1 << i for i in range(8, 14))
# Where a stream starts.
START_ZERO, START_HELD, START_PAST_HELD, START_VALUE, START_SIZE, START_BEFORE_HELD = range(6)
# Where a chunk's bytes come from.
NEXT, OVERLAP, GAP, RAW, EMPTY, OVERSIZE = range(6)

_LANDED = re.compile(r"^landing/(p-[0-9a-f]{16})/\d{4}/\d{2}/\d{2}/(\d{12,19})\.(pcap|json)$")
_RECEIVING = re.compile(r"^receiving/(p-[0-9a-f]{16})/\d{12,19}\.(part|expect\.json)$")
_DIRECTORIES = re.compile(r"^(receiving|landing)(/p-[0-9a-f]{16}(/\d{4}(/\d{2}(/\d{2})?)?)?)?$")
_REGISTRY = re.compile(r"^registry\.sqlite3(-wal|-shm|-journal)?$")


@dataclass(frozen=True)
class Chunk:
    source: int = NEXT
    length: int = MAX_CHUNK_TAKE  # bytes taken from the file (NEXT, OVERLAP, GAP)
    delta: int = 0  # how far back (OVERLAP) or ahead (GAP) of the stream's offset
    raw: bytes = b""  # RAW: these bytes
    bad_crc: bool = False
    with_header: bool = False  # on the first chunk: sent in the header's message; later: a second header


@dataclass(frozen=True)
class Put:
    caller: int = 0
    file: int = 0
    sequence: int = 0  # index into SEQUENCES
    mutations: int = 0
    values: tuple[int, int, int, int] = (0, 0, 0, 0)  # u64 operands of the mutations
    start: int = START_HELD
    start_value: int = 0
    chunks: tuple[Chunk, ...] = ()


@dataclass(frozen=True)
class Offset:
    caller: int = 0
    file: int = 0
    sequence: int = 0
    mutations: int = 0
    values: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class Sweep:
    aged: bool = False  # run the abandoned-part sweep as if every part were past its retention


Step = Put | Offset | Sweep


@dataclass(frozen=True)
class Case:
    files: tuple[tuple[int, int], ...] = ((1000, 1),)  # (length, fill) of each file's bytes
    steps: tuple[Step, ...] = ()


def file_bytes(length: int, fill: int) -> bytes:
    return bytes((fill + i * 131) & 0xFF for i in range(length))


# -- the byte form ------------------------------------------------------------------------------


class _Reader:
    """Fixed-width little-endian fields; past the end everything reads as zero."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, width: int) -> bytes:
        out = self.data[self.pos : self.pos + width]
        self.pos += width
        return out + bytes(width - len(out))

    def int(self, width: int) -> int:
        return int.from_bytes(self.take(width), "little")


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def int(self, value: int, width: int) -> None:
        self.parts.append(value.to_bytes(width, "little"))

    def raw(self, value: bytes) -> None:
        self.parts.append(value)


def decode_case(data: bytes) -> Case:
    r = _Reader(data)
    files = tuple((r.int(2) % (MAX_FILE_BYTES + 1), r.int(1)) for _ in range(r.int(1) % MAX_FILES + 1))
    steps: list[Step] = []
    for _ in range(r.int(1) % MAX_STEPS + 1):
        kind = r.int(1) % 3
        if kind == 2:
            steps.append(Sweep(bool(r.int(1) & 1)))
            continue
        head = (r.int(1) % len(PROBES), r.int(1) % MAX_FILES, r.int(1) % len(SEQUENCES), r.int(2))
        values = (r.int(8), r.int(8), r.int(8), r.int(8))
        if kind == 1:
            steps.append(Offset(*head, values))
            continue
        start, start_value = r.int(1) % 6, r.int(8)
        chunks = []
        for _ in range(r.int(1) % (MAX_CHUNKS + 1)):
            source, length, delta, flags = r.int(1) % 6, r.int(2) % (MAX_CHUNK_TAKE + 1), r.int(1), r.int(1)
            raw = r.take(r.int(1)) if source == RAW else b""
            chunks.append(Chunk(source, length, delta, raw, bool(flags & 1), bool(flags & 2)))
        steps.append(Put(*head, values, start, start_value, tuple(chunks)))
    return Case(files, tuple(steps))


def encode_case(case: Case) -> bytes:
    w = _Writer()
    w.int(len(case.files) - 1, 1)
    for length, fill in case.files:
        w.int(length, 2)
        w.int(fill, 1)
    w.int(len(case.steps) - 1, 1)
    for step in case.steps:
        if isinstance(step, Sweep):
            w.int(2, 1)
            w.int(int(step.aged), 1)
            continue
        w.int(1 if isinstance(step, Offset) else 0, 1)
        for value, width in ((step.caller, 1), (step.file, 1), (step.sequence, 1), (step.mutations, 2)):
            w.int(value, width)
        for value in step.values:
            w.int(value, 8)
        if isinstance(step, Offset):
            continue
        w.int(step.start, 1)
        w.int(step.start_value, 8)
        w.int(len(step.chunks), 1)
        for chunk in step.chunks:
            w.int(chunk.source, 1)
            w.int(chunk.length, 2)
            w.int(chunk.delta, 1)
            w.int(int(chunk.bad_crc) | int(chunk.with_header) << 1, 1)
            if chunk.source == RAW:
                w.int(len(chunk.raw), 1)
                w.raw(chunk.raw)
    return b"".join(w.parts)


def seed_cases() -> dict[str, Case]:
    """Nearly every path of the protocol, for the fuzzer to start from."""
    whole = tuple(Chunk(NEXT, 700) for _ in range(3))
    return {
        "whole-file": Case(((2000, 3),), (Put(chunks=whole), Put(chunks=whole))),
        "paused-and-resumed": Case(
            ((2000, 5),), (Put(chunks=whole[:1]), Offset(), Put(chunks=whole), Sweep(aged=True))
        ),
        "hostile-chunks": Case(
            ((1500, 9), (100, 2)),
            (
                Put(chunks=(Chunk(NEXT, 500), Chunk(OVERLAP, 100, 7), Chunk(GAP, 100, 9))),
                Put(
                    chunks=(Chunk(RAW, raw=b"\x00" * 40), Chunk(NEXT, bad_crc=True), Chunk(with_header=True))
                ),
                Put(file=1, sequence=1, start=START_PAST_HELD, chunks=(Chunk(EMPTY), Chunk(OVERSIZE))),
            ),
        ),
        "hostile-metadata": Case(
            ((24, 0), (3000, 1)),
            (
                Put(mutations=PROBE_ID | PCAP, chunks=whole),
                Put(sequence=6, mutations=FIRST_TIME | PACKETS, values=(1 << 63, 0, (1 << 64) - 1, 0)),
                Put(file=1, sequence=4, mutations=SIZE, values=(0, 1 << 62, 0, 0), start=START_VALUE),
                Offset(sequence=5, mutations=BAD_SHA | WINDOW, values=(0, 12, 0, 1 << 63)),
            ),
        ),
        "quota-and-conflict": Case(
            ((2900, 1), (2900, 2), (2900, 3)),
            (
                Put(chunks=whole[:1] + (Chunk(NEXT, 1024), Chunk(NEXT, 1024), Chunk(NEXT, 1024))),
                Put(file=1, chunks=whole),
                Put(file=2, sequence=1, chunks=whole + whole),
                Put(caller=1, file=2, sequence=2, mutations=OTHER_SHA, chunks=whole),
            ),
        ),
    }


# -- running a case -----------------------------------------------------------------------------


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def build_metadata(step: Put | Offset, content: bytes) -> capture_pb2.CaptureMetadata:
    """Valid metadata for `content`, with the fields the step's mutations name made hostile."""
    flags, values = step.mutations, step.values
    m = capture_pb2.CaptureMetadata(
        sequence=SEQUENCES[step.sequence % len(SEQUENCES)],
        sha256_hex=hashlib.sha256(content).hexdigest(),
        file_size_bytes=len(content),
        file_format="pcapng",
        schema_version=1,
        packets=1,
        first_packet_time_ns=T0_NS,
        last_packet_time_ns=T0_NS,
        window_start_ns=T0_NS - 60_000_000_000,
        window_end_ns=T0_NS + 60_000_000_000,
    )
    m.interface.name = "eth0"
    if flags & PROBE_ID:
        m.probe_id = HOSTILE_PROBE_IDS[values[0] % len(HOSTILE_PROBE_IDS)]
    if flags & OTHER_SHA:
        m.sha256_hex = hashlib.sha256(content + b"other").hexdigest()
    if flags & BAD_SHA:
        m.sha256_hex = m.sha256_hex.upper()[: values[1] % 65]
    if flags & SIZE:
        m.file_size_bytes = values[1]
    if flags & SIZE_OFF_BY_ONE:
        m.file_size_bytes = max(0, len(content) + (1 if values[2] & 1 else -1))
    if flags & FIRST_TIME:
        m.first_packet_time_ns = m.last_packet_time_ns = _signed(values[2])
    if flags & WINDOW:
        m.first_packet_time_ns = m.last_packet_time_ns = 0
        m.window_start_ns = m.window_end_ns = _signed(values[3])
    if flags & PACKETS:
        m.packets = values[0]
    if flags & PCAP:
        m.file_format, m.packets, m.captured_bytes = "pcap", 0, max(len(content) - 24, 0)
    if flags & LABELS:
        m.labels["../site\n"] = "\x00\u202e" * 50
        m.filter, m.host.hostname = "/../../etc/passwd", "\ud7ff" * 10
    if flags & SCHEMA:
        m.schema_version = values[3] & 0xFFFFFFFF
    if flags & NO_INTERFACE:
        m.interface.name = ""
    if flags & CAPTURED:
        m.captured_bytes = values[2]
    return m


class UploadHarness:
    """A data directory with a migrated registry and both probes enrolled; ``run`` one case at a time."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="survey6-fuzz-upload-"))
        self.data_dir = self.root / "server"
        self.data_dir.mkdir(mode=0o750, exist_ok=True)
        self.engine = db.make_engine(db.sqlite_url(self.data_dir))
        db.upgrade(self.engine)
        self.sessions = db.session_factory(self.engine)
        with self.sessions.begin() as session:
            for probe_id in PROBES:
                if session.get(Probe, probe_id) is None:
                    session.add(
                        Probe(id=probe_id, hostname=probe_id, cert_serial=probe_id, cert_not_after=utcnow())
                    )
        self.layout = Layout.from_settings(self.data_dir, SETTINGS)
        self.layout.create()
        self.store = UploadStore(self.sessions, self.layout, SETTINGS)

    def close(self) -> None:
        self.engine.dispose()
        shutil.rmtree(self.root, ignore_errors=True)

    def run(self, case: Case) -> list[str]:
        """Runs every step and checks the server after each; the outcomes, for a test to look at."""
        files = [file_bytes(length, fill) for length, fill in case.files]
        outcomes = []
        try:
            for step in case.steps:
                outcomes.append(self._step(step, files))
                self.check_tree()
            self.store.remove_abandoned_parts(now=time.time() + 2 * SETTINGS.part_retention_s)
            left = [p for p in self.layout.receiving.rglob("*") if p.is_file()]
            assert not left, f"the abandoned-part sweep left {left}"
            self._check_catalog()
        finally:
            self.reset()
        return outcomes

    def _step(self, step: Step, files: list[bytes]) -> str:
        if isinstance(step, Sweep):
            self.store.remove_abandoned_parts(
                now=time.time() + (2 * SETTINGS.part_retention_s if step.aged else 0)
            )
            return "swept"
        content = files[step.file % len(files)]
        metadata = build_metadata(step, content)
        probe_id = PROBES[step.caller % len(PROBES)]
        try:
            if isinstance(step, Offset):
                request = upload_pb2.OffsetRequest(
                    sequence=metadata.sequence,
                    sha256_hex=metadata.sha256_hex,
                    file_size_bytes=metadata.file_size_bytes,
                )
                response = self.store.get_offset(probe_id, request)
                assert response.offset_bytes <= metadata.file_size_bytes, response
                return f"offset {response.offset_bytes}"
            receipt = self.store.put(probe_id, self._stream(step, probe_id, content, metadata))
        except UploadError as exc:
            assert type(exc) in STATUS_OF, f"{type(exc).__name__} has no gRPC status"
            assert "\n" not in str(exc), f"a refusal must be one line: {exc!r}"
            return STATUS_OF[type(exc)].name
        self._check_receipt(probe_id, metadata, content, receipt)
        return upload_pb2.Durability.Name(receipt.durability)

    def _held(self, probe_id: str, metadata: capture_pb2.CaptureMetadata) -> int:
        request = upload_pb2.OffsetRequest(
            sequence=metadata.sequence,
            sha256_hex=metadata.sha256_hex,
            file_size_bytes=metadata.file_size_bytes,
        )
        try:
            return self.store.get_offset(probe_id, request).offset_bytes
        except UploadError:
            return 0

    def _stream(
        self, step: Put, probe_id: str, content: bytes, metadata: capture_pb2.CaptureMetadata
    ) -> Iterator[upload_pb2.UploadChunk]:
        held = self._held(probe_id, metadata) if step.start != START_ZERO else 0
        start = {
            START_ZERO: 0,
            START_HELD: held,
            START_PAST_HELD: held + 1,
            START_VALUE: step.start_value,
            START_SIZE: metadata.file_size_bytes,
            START_BEFORE_HELD: max(held - 1, 0),
        }[step.start]
        header = upload_pb2.UploadChunk(
            header=upload_pb2.UploadHeader(metadata=metadata, start_offset_bytes=start & ((1 << 64) - 1))
        )
        chunks = list(step.chunks)
        if chunks and chunks[0].with_header:  # the header's own message carries the first data
            header.MergeFrom(self._chunk(chunks.pop(0), content, start))
            start += len(header.data)
        if not step.mutations & NO_HEADER:
            yield header
        offset = start
        for chunk in chunks:
            message = self._chunk(chunk, content, offset)
            offset += len(message.data)
            if chunk.with_header:
                message.header.CopyFrom(header.header)
            yield message

    @staticmethod
    def _chunk(chunk: Chunk, content: bytes, offset: int) -> upload_pb2.UploadChunk:
        begin = {OVERLAP: max(offset - chunk.delta, 0), GAP: offset + chunk.delta}.get(chunk.source, offset)
        data = {
            RAW: chunk.raw,
            EMPTY: b"",
            OVERSIZE: bytes(MAX_CHUNK_BYTES + 1),
        }.get(chunk.source, content[begin : begin + chunk.length])
        crc = zlib.crc32(data) ^ (1 if chunk.bad_crc else 0)
        return upload_pb2.UploadChunk(data=data, data_crc32=crc)

    # -- checks ---------------------------------------------------------------------------------

    def _check_receipt(
        self,
        probe_id: str,
        metadata: capture_pb2.CaptureMetadata,
        content: bytes,
        receipt: upload_pb2.UploadReceipt,
    ) -> None:
        assert receipt.sequence == metadata.sequence, receipt
        if receipt.durability == upload_pb2.DURABILITY_UNSPECIFIED:
            part = self.layout.part(probe_id, metadata.sequence)
            assert receipt.size_bytes < metadata.file_size_bytes, receipt
            assert part.stat().st_size == receipt.size_bytes, (part.stat().st_size, receipt)
            return
        with self.sessions() as session:
            row = catalog.find(session, probe_id, metadata.sequence)
        assert row is not None, receipt
        if receipt.durability == upload_pb2.DURABILITY_DURABLE:
            relative = Layout.landing_relative(probe_id, metadata.sequence, landing_day(metadata))
            assert row.landing_path == relative, (row.landing_path, relative)
        # ALREADY_DURABLE: where the first upload put it (the same file may come with other times).
        landed = (self.layout.landing / row.landing_path).read_bytes()
        assert hashlib.sha256(landed).hexdigest() == receipt.sha256_hex == metadata.sha256_hex, receipt
        assert len(landed) == receipt.size_bytes == metadata.file_size_bytes, receipt
        if receipt.durability == upload_pb2.DURABILITY_DURABLE:
            assert landed == content, "a landed file differs from the file the probe sent"

    def check_tree(self) -> None:
        """Everything under the data directory's parent is a file or directory the server makes."""
        assert [p.name for p in self.root.iterdir()] == [self.data_dir.name], list(self.root.iterdir())
        for path in self.data_dir.rglob("*"):
            relative = path.relative_to(self.data_dir).as_posix()
            assert not path.is_symlink(), relative
            if path.is_dir():
                assert _DIRECTORIES.match(relative), f"unexpected directory {relative}"
                continue
            assert _LANDED.match(relative) or _RECEIVING.match(relative) or _REGISTRY.match(relative), (
                f"unexpected file {relative}"
            )

    def _check_catalog(self) -> None:
        with self.sessions() as session:
            rows = session.scalars(select(CapturedFile)).all()
        for row in rows:
            assert row.state == catalog.STORED, (row.state, row.landing_path)
            landed = self.layout.landing / row.landing_path
            assert hashlib.sha256(landed.read_bytes()).hexdigest() == row.sha256_hex, row.landing_path
            assert landed.with_suffix(".json").is_file(), row.landing_path
        landed_files = [p for p in self.layout.landing.rglob("*.pcap")]
        assert len(landed_files) == len(rows), (landed_files, len(rows))

    def reset(self) -> None:
        with self.sessions.begin() as session:
            session.execute(delete(CapturedFile))
        for directory in (self.layout.receiving, self.layout.landing):
            for child in directory.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        assert not self.store._busy, "a stream's lock outlived its stream"


_HARNESS: UploadHarness | None = None


def upload_one(data: bytes) -> list[str]:
    """The fuzz entry point: one harness per process, one case per input."""
    global _HARNESS
    if _HARNESS is None:
        _HARNESS = UploadHarness()
        atexit.register(_HARNESS.close)
    return _HARNESS.run(decode_case(data))
