"""Classic pcap files in pure Python: read the header, walk the records, repair a crash-truncated file.

These helpers never load libpcap: they run on files the probe wrote (or a crash left behind) to count
packets, find the first and last timestamps and cut a partial record off the end. The layout is the
classic libpcap one: a 24-byte global header, then records of a 16-byte header and ``incl_len`` bytes::

    magic u32 | version u16 u16 | thiszone i32 | sigfigs u32 | snaplen u32 | linktype u32
    ts_sec u32 | ts_frac u32 | incl_len u32 | orig_len u32 | data[incl_len] ...

pcapng is recognised only to be refused: the probe writes classic pcap.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from survey6.probe.errors import PcapFileError

log = logging.getLogger(__name__)

GLOBAL_HEADER_BYTES = 24
RECORD_HEADER_BYTES = 16
# What libpcap itself accepts as the largest capture length; beyond it a record header is garbage.
MAX_SNAPLEN_BYTES = 262_144
# Records are walked in large reads so a 64 MiB file costs a handful of syscalls, not one per record.
SCAN_BLOCK_BYTES = 4 << 20  # 4 MiB

MAGIC_MICRO = 0xA1B2C3D4
MAGIC_NANO = 0xA1B23C4D
MAGIC_PCAPNG = 0x0A0D0D0A  # the section header block type; the same bytes in either byte order
NS_PER_S = 1_000_000_000


class TimestampPrecision(enum.IntEnum):
    """Fraction-of-second unit of record timestamps; the values are libpcap's PCAP_TSTAMP_PRECISION_*."""

    MICRO = 0
    NANO = 1

    @property
    def ns_per_tick(self) -> int:
        return 1000 if self is TimestampPrecision.MICRO else 1


@dataclass(frozen=True, slots=True)
class PcapHeader:
    """The global header of a classic pcap file."""

    byte_order: str  # struct prefix: "<" little-endian or ">" big-endian
    precision: TimestampPrecision
    version_major: int
    version_minor: int
    snaplen: int
    # The low 16 bits of the field; the upper bits may carry FCS information (draft-ietf-opsawg-pcap).
    linktype: int


@dataclass(frozen=True, slots=True)
class RecordScan:
    """What a walk over a file's record headers found.

    ``valid_end_offset`` is the byte offset just after the last complete, plausible record; a file
    is intact when it equals ``file_bytes``. Timestamps are integer nanoseconds since the epoch, or
    None when the file holds no complete record.
    """

    header: PcapHeader
    records: int
    wire_bytes: int  # sum of orig_len
    captured_bytes: int  # sum of incl_len
    first_ts_ns: int | None
    last_ts_ns: int | None
    valid_end_offset: int
    file_bytes: int
    truncated_tail: bool  # a partial record at the end: what a crash mid-write leaves
    corrupt: bool  # a record header with an impossible length; everything from it on is unusable

    @property
    def intact(self) -> bool:
        return self.valid_end_offset == self.file_bytes


@dataclass(frozen=True, slots=True)
class RepairResult:
    """The outcome of ``repair_truncated``.

    ``header_missing`` means the file is shorter than the global header: it holds no packet and was
    left untouched, for the caller to delete or rewrite.
    """

    header_missing: bool
    records_kept: int
    bytes_cut: int
    corrupt: bool = False


_MAGICS: dict[bytes, tuple[str, TimestampPrecision]] = {
    struct.pack("<I", MAGIC_MICRO): ("<", TimestampPrecision.MICRO),
    struct.pack(">I", MAGIC_MICRO): (">", TimestampPrecision.MICRO),
    struct.pack("<I", MAGIC_NANO): ("<", TimestampPrecision.NANO),
    struct.pack(">I", MAGIC_NANO): (">", TimestampPrecision.NANO),
}


def parse_header(data: bytes) -> PcapHeader:
    """Decode a 24-byte global header.

    Raises:
        PcapFileError: too short, pcapng, or not a pcap magic number.
    """
    if len(data) < GLOBAL_HEADER_BYTES:
        raise PcapFileError(f"pcap global header incomplete: {len(data)} of {GLOBAL_HEADER_BYTES} bytes")
    magic = bytes(data[:4])
    if magic == struct.pack("<I", MAGIC_PCAPNG):
        raise PcapFileError("file is pcapng, which this helper does not support (the probe writes pcap)")
    try:
        byte_order, precision = _MAGICS[magic]
    except KeyError as exc:
        raise PcapFileError(f"not a pcap file: magic number 0x{magic.hex()}") from exc
    major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack_from(byte_order + "HHiIII", data, 4)
    return PcapHeader(byte_order, precision, major, minor, snaplen, linktype & 0xFFFF)


def read_header(path: str | os.PathLike[str]) -> PcapHeader:
    """Read and decode the global header of the pcap file at ``path``.

    Raises:
        PcapFileError: the file cannot be opened, is too short, is pcapng or is not pcap.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(GLOBAL_HEADER_BYTES)
    except OSError as exc:
        raise PcapFileError(f"cannot read pcap file {path}: {exc.strerror or exc}") from exc
    try:
        return parse_header(data)
    except PcapFileError as exc:
        raise PcapFileError(f"{path}: {exc}") from exc


def max_record_bytes(header: PcapHeader) -> int:
    """The largest ``incl_len`` a sane record of this file can have."""
    if 0 < header.snaplen <= MAX_SNAPLEN_BYTES:
        return header.snaplen
    return MAX_SNAPLEN_BYTES  # snaplen 0 or absurd (some writers put 0xffff_ffff there)


def scan_records(path: str | os.PathLike[str]) -> RecordScan:
    """Walk every record header of a classic pcap file without reading packets one syscall at a time.

    Raises:
        PcapFileError: the file cannot be read or its global header is missing or not pcap.
    """
    header = read_header(path)
    try:
        with open(path, "rb", buffering=0) as f:
            file_bytes = os.fstat(f.fileno()).st_size
            f.seek(GLOBAL_HEADER_BYTES)
            return _walk(f, header, file_bytes)
    except OSError as exc:
        raise PcapFileError(f"cannot read pcap file {path}: {exc.strerror or exc}") from exc


def _walk(f: BinaryIO, header: PcapHeader, file_bytes: int) -> RecordScan:
    record = struct.Struct(header.byte_order + "IIII")
    limit = max_record_bytes(header)
    tick_ns = header.precision.ns_per_tick
    records = wire = captured = 0
    first_ts: int | None = None
    last_sec = last_frac = 0
    corrupt = False
    # ``buf[pos:]`` is unconsumed; ``base`` is the file offset of ``buf[0]``.
    buf = b""
    base = GLOBAL_HEADER_BYTES
    pos = 0
    eof = False
    while True:
        if len(buf) - pos < RECORD_HEADER_BYTES + limit and not eof:
            # Refill so that any one record, header and data, fits in what is buffered.
            chunk = f.read(SCAN_BLOCK_BYTES)
            eof = not chunk
            base += pos
            buf = buf[pos:] + chunk
            pos = 0
            continue
        end = len(buf)
        if end - pos < RECORD_HEADER_BYTES:
            break
        sec, frac, incl, orig = record.unpack_from(buf, pos)
        if incl > limit:
            corrupt = True
            break
        nxt = pos + RECORD_HEADER_BYTES + incl
        if nxt > end:
            break
        if first_ts is None:
            first_ts = sec * NS_PER_S + frac * tick_ns
        last_sec, last_frac = sec, frac
        records += 1
        wire += orig
        captured += incl
        pos = nxt
    valid_end = base + pos
    return RecordScan(
        header=header,
        records=records,
        wire_bytes=wire,
        captured_bytes=captured,
        first_ts_ns=first_ts,
        last_ts_ns=None if first_ts is None else last_sec * NS_PER_S + last_frac * tick_ns,
        valid_end_offset=valid_end,
        file_bytes=file_bytes,
        truncated_tail=not corrupt and valid_end < file_bytes,
        corrupt=corrupt,
    )


def repair_truncated(path: str | os.PathLike[str]) -> RepairResult:
    """Cut a crash-truncated pcap file back to its last complete record, durably. Idempotent.

    A file shorter than the global header is left alone and reported with ``header_missing=True``.
    A record header with an impossible length ends the file too: what follows it cannot be framed.

    Raises:
        PcapFileError: the file cannot be read or written, or is not classic pcap.
    """
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise PcapFileError(f"cannot stat pcap file {path}: {exc.strerror or exc}") from exc
    if size < GLOBAL_HEADER_BYTES:
        return RepairResult(header_missing=True, records_kept=0, bytes_cut=0)
    scan = scan_records(path)
    cut = scan.file_bytes - scan.valid_end_offset
    if cut:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.truncate(fd, scan.valid_end_offset)
                os.fsync(fd)  # the new length must survive a second crash before anyone reads it
            finally:
                os.close(fd)
        except OSError as exc:
            raise PcapFileError(f"cannot truncate pcap file {path}: {exc.strerror or exc}") from exc
        log.warning(
            "cut %d bytes off %s after %d complete records%s",
            cut,
            Path(path).name,
            scan.records,
            " (corrupt record header)" if scan.corrupt else "",
        )
    return RepairResult(header_missing=False, records_kept=scan.records, bytes_cut=cut, corrupt=scan.corrupt)
