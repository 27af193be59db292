"""Capture containers, classic pcap and pcapng, reduced to one index of packet records.

Both formats become a ``RecordIndex``: where each packet's bytes start in the file, how many were
captured, the original length, the time in ns and the interface. pcapng is the general case (a
classic pcap is one interface with one link type), which is why both live in this module. A Python
loop visits each record header once, only to find the next; the header fields are then gathered with
numpy for all records at once.

Classic pcap: a 24-byte global header (magic, version, thiszone, sigfigs, snaplen, link type), then
``ts_sec u32 | ts_frac u32 | captured u32 | original u32 | data`` per record, in the byte order and
timestamp precision (µs or ns) the magic announces.

pcapng: blocks of ``type u32 | total length u32 | body | total length u32``, in the byte order of
their section header::

    SHB  0x0A0D0D0A  byte-order magic 0x1A2B3C4D, version, section length, options
    IDB  1           link type u16, reserved u16, snaplen u32, options (if_name, if_tsresol, if_tsoffset)
    EPB  6           interface u32, ts high u32, ts low u32, captured u32, original u32, data, options
    PB   2           (obsolete) interface u16, drops u16, then as EPB
    SPB  3           original u32, data (interface 0, no timestamp)
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from survey6.aggregator.errors import ParseError

I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]
Buffer = bytes | mmap.mmap  # a whole capture file, read or mapped

PCAP_HEADER_BYTES = 24
PCAP_RECORD_BYTES = 16
# libpcap refuses records longer than this (or the file's snaplen when larger): such a header is garbage.
MAX_RECORD_BYTES = 262_144
_PCAP_MAGICS = {  # magic as it appears in the file → (byte order, timestamp units per second)
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}

BLOCK_SHB = 0x0A0D0D0A  # the same bytes in either byte order, so it can be recognised before the order
SHB_MAGIC = b"\x0a\x0d\x0d\x0a"
BLOCK_IDB = 1
BLOCK_PB = 2
BLOCK_SPB = 3
BLOCK_EPB = 6
EPB_MIN_BYTES = 32  # 28-byte header + trailing length
IDB_MIN_BYTES = 20
EPB_DATA_OFFSET = 28
SPB_DATA_OFFSET = 12
OPT_END = 0
OPT_IF_NAME = 2
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
NS_PER_S = 1_000_000_000
DEFAULT_TS_UNITS_PER_S = 1_000_000  # pcapng's default if_tsresol is 6: microseconds
MAX_TS_OFFSET_S = (1 << 63) // NS_PER_S // 2  # an if_tsoffset of ±146 years leaves int64 ns room
_ORDERS = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}


@dataclass(frozen=True)
class Interface:
    """One capture interface: pcap's single implicit one, or a pcapng interface description block."""

    link_type: int
    snaplen_bytes: int = 0
    name: str = ""
    ts_units_per_s: int = DEFAULT_TS_UNITS_PER_S
    ts_offset_s: int = 0


@dataclass
class RecordIndex:
    """Per packet record: data offset in the file, captured and wire length, time, interface.

    ``has_timestamp`` is None when every record has one (only pcapng simple packet blocks lack it).
    Records that could not be located are counted, never listed.
    """

    file_format: str
    data_offsets: I64
    captured_lengths: I64
    wire_lengths: I64
    timestamps_ns: I64
    interface_ids: I64
    interfaces: list[Interface]
    has_timestamp: NDArray[np.bool_] | None = None
    malformed_records: int = 0  # a record header that contradicts its block or names no interface
    truncated_records: int = 0  # the last record runs past the end of the file
    unparsed_bytes: int = 0  # bytes after the last record that could be walked

    def __len__(self) -> int:
        return len(self.data_offsets)


def gather(buf: U8, offsets: NDArray[Any], width: int) -> U8:
    """``width`` bytes from each offset as an (n, width) array; bytes past the end of ``buf`` read as 0.

    Never raises for an offset out of range, so callers gather first and mask by the captured length
    after: whatever a row holds beyond its packet's captured bytes is never used.
    """
    if len(buf) < width:  # only tiny, broken files: pad so that one full window exists
        buf = np.concatenate([buf, np.zeros(width - len(buf), np.uint8)])
    last = len(buf) - width
    offsets = np.clip(offsets, 0, None)
    rows: U8 = sliding_window_view(buf, width)[np.minimum(offsets, last)]
    near_end = offsets > last
    if near_end.any():  # windows that would run off the end come from a zero-padded copy of the tail
        tail = np.concatenate([buf[last:], np.zeros(width, np.uint8)])
        rows[near_end] = sliding_window_view(tail, width)[np.minimum(offsets[near_end] - last, width)]
    return rows


def units_to_ns(units: NDArray[np.uint64], units_per_s: int) -> I64:
    """Timestamp units (10^-k or 2^-k s) to ns, exact for every decimal resolution up to 10^-18."""
    if NS_PER_S % units_per_s == 0:
        return (units * np.uint64(NS_PER_S // units_per_s)).astype(np.int64)
    if units_per_s % NS_PER_S == 0:
        return (units // np.uint64(units_per_s // NS_PER_S)).astype(np.int64)
    seconds, fraction = np.divmod(units, np.uint64(units_per_s))
    # A binary fraction times 1e9 overflows uint64 beyond 2^-34; float64 keeps the ns exact enough.
    return seconds.astype(np.int64) * NS_PER_S + np.round(fraction * (NS_PER_S / units_per_s)).astype(
        np.int64
    )


def index_capture(data: Buffer, buf: U8, source: str) -> RecordIndex:
    """Finds every packet record of a pcap or pcapng file held in ``data`` (``buf``: the same bytes).

    Raises:
        ParseError: empty, not pcap or pcapng, or its first header cut short or invalid.
    """
    magic = bytes(data[:4])
    if not magic:
        raise ParseError(f"{source}: empty file")
    if magic == SHB_MAGIC:
        return index_pcapng(data, buf, source)
    if magic not in _PCAP_MAGICS:
        raise ParseError(f"{source}: not a pcap or pcapng file (magic {magic.hex()})")
    if len(data) < PCAP_HEADER_BYTES:
        raise ParseError(f"{source}: pcap header cut short at {len(data)} bytes")
    return _index_pcap(data, buf, magic)


def _index_pcap(data: Buffer, buf: U8, magic: bytes) -> RecordIndex:
    order, units_per_s = _PCAP_MAGICS[magic]
    snaplen, link_type = struct.unpack_from(order + "II", data, 16)
    offsets = np.asarray(_walk_pcap(data, order), np.int64)
    words = gather(buf, offsets, PCAP_RECORD_BYTES).view(order + "u4").reshape(-1, 4).astype(np.int64)
    seconds, fraction, captured, wire = words.T
    malformed = 0
    # A corrupt length sends the walk into garbage: stop at the first impossible record.
    bad = np.flatnonzero(captured > max(snaplen, MAX_RECORD_BYTES))
    if len(bad):
        end, malformed, keep = int(offsets[bad[0]]), 1, int(bad[0])
        offsets, seconds, fraction, captured, wire = (
            a[:keep] for a in (offsets, seconds, fraction, captured, wire)
        )
    elif len(offsets) and offsets[-1] + PCAP_RECORD_BYTES + captured[-1] > len(data):
        end = int(offsets[-1])
        offsets, seconds, fraction, captured, wire = (
            a[:-1] for a in (offsets, seconds, fraction, captured, wire)
        )
    elif len(offsets):
        end = int(offsets[-1] + PCAP_RECORD_BYTES + captured[-1])
    else:
        end = PCAP_HEADER_BYTES
    unparsed = len(data) - end
    return RecordIndex(
        file_format="pcap",
        data_offsets=offsets + PCAP_RECORD_BYTES,
        captured_lengths=captured,
        wire_lengths=wire,
        timestamps_ns=seconds * NS_PER_S + fraction * (NS_PER_S // units_per_s),
        interface_ids=np.zeros(len(offsets), np.int64),
        # The upper 16 bits of the link type field carry FCS information, not the link type.
        interfaces=[Interface(link_type & 0xFFFF, snaplen, "", units_per_s)],
        malformed_records=malformed,
        truncated_records=int(unparsed > 0 and not malformed),
        unparsed_bytes=unparsed,
    )


def _walk_pcap(data: Buffer, order: str) -> list[int]:
    """Offsets of the record headers: the one loop that runs per packet, kept to three statements."""
    captured = struct.Struct(order + "I").unpack_from
    offsets: list[int] = []
    append = offsets.append
    off = PCAP_HEADER_BYTES
    try:
        while True:
            length = captured(data, off + 8)[0]  # raises when fewer than 12 bytes are left
            append(off)
            off += PCAP_RECORD_BYTES + length
    except struct.error:
        pass
    return offsets


def index_pcapng(data: Buffer, buf: U8, source: str) -> RecordIndex:
    """Walks the blocks of a pcapng file.

    Raises:
        ParseError: the file does not start with a valid section header block.
    """
    if len(data) < 28 or data[:4] != SHB_MAGIC or data[8:12] not in _ORDERS:
        raise ParseError(f"{source}: not a pcapng file (no valid section header block)")
    walk = _Walk(data, source)
    walk.run()
    return walk.index(buf)


@dataclass
class _Section:
    first_packet: int
    order: str
    first_interface: int


class _Walk:
    """The block walk; the only per-packet Python is the loop in ``run``."""

    def __init__(self, data: Buffer, source: str) -> None:
        self.data, self.source = data, source
        self.offsets: list[int] = []
        self.sections: list[_Section] = []
        self.interfaces: list[Interface] = []
        self.end = 0  # offset just after the last whole block
        self.truncated = 0

    def run(self) -> None:
        data, offsets = self.data, self.offsets
        append = offsets.append
        head = struct.Struct("<II").unpack_from
        off = 0
        while True:
            try:
                btype, blen = head(data, off)
            except struct.error:  # fewer than 8 bytes left: the end of the blocks
                break
            if btype == BLOCK_EPB and blen >= EPB_MIN_BYTES and not blen & 3:
                append(off)
                off += blen
                continue
            if btype == BLOCK_SHB:
                order = _ORDERS.get(data[off + 8 : off + 12])
                if order is None:
                    break
                head = struct.Struct(order + "II").unpack_from
                blen = head(data, off)[1]
                self.sections.append(_Section(len(offsets), order, len(self.interfaces)))
            if blen < 12 or blen & 3:  # cannot be skipped reliably: the rest is unparsed
                break
            if off + blen > len(data) or (btype == BLOCK_IDB and blen < IDB_MIN_BYTES):
                break
            if btype == BLOCK_IDB:
                self.interfaces.append(self._interface(off, blen))
            elif btype in (BLOCK_PB, BLOCK_SPB):
                append(off)
            off += blen
        if offsets and offsets[-1] + self._packet_length(offsets[-1]) > len(data):
            off = offsets.pop()  # the last packet block runs past the end of the file
            self.truncated = 1
        self.end = min(off, len(data))

    def _packet_length(self, off: int) -> int:
        # In the byte order of the packet's own section: later sections may have another one.
        order = next(s.order for s in reversed(self.sections) if s.first_packet < len(self.offsets))
        length: int = struct.unpack_from(order + "I", self.data, off + 4)[0]
        return length

    def _interface(self, off: int, blen: int) -> Interface:
        order = self.sections[-1].order
        link_type, _, snaplen = struct.unpack_from(order + "HHI", self.data, off + 8)
        name, units_per_s, offset_s = "", DEFAULT_TS_UNITS_PER_S, 0
        pos, end = off + 16, off + blen - 4
        while pos + 4 <= end:
            code, length = struct.unpack_from(order + "HH", self.data, pos)
            value = self.data[pos + 4 : min(pos + 4 + length, end)]
            if code == OPT_END:
                break
            if code == OPT_IF_NAME:
                name = value.rstrip(b"\0").decode("utf-8", "replace")
            elif code == OPT_IF_TSRESOL and value:
                units_per_s = _units_per_s(value[0], self.source)
            elif code == OPT_IF_TSOFFSET and len(value) == 8:
                offset_s = _offset_s(struct.unpack(order + "q", value)[0], self.source)
            pos += 4 + length + (-length & 3)
        return Interface(link_type, snaplen, name, units_per_s, offset_s)

    def index(self, buf: U8) -> RecordIndex:
        parts = [self._section_records(buf, i) for i in range(len(self.sections))]
        cols = [np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.int64) for k in range(6)]
        offsets, captured, wire, interface, units, valid = cols
        timestamps = np.zeros(len(offsets), np.int64)
        for i, iface in enumerate(self.interfaces):
            mine = interface == i
            if mine.any():
                ns = units_to_ns(units[mine].astype(np.uint64), iface.ts_units_per_s)
                timestamps[mine] = ns + iface.ts_offset_s * NS_PER_S
        stamped = valid == 2  # 2: a timestamped record, 1: one without (SPB), 0: malformed
        keep = valid > 0
        return RecordIndex(
            file_format="pcapng",
            data_offsets=offsets[keep],
            captured_lengths=captured[keep],
            wire_lengths=wire[keep],
            timestamps_ns=timestamps[keep],
            interface_ids=interface[keep],
            interfaces=self.interfaces,
            has_timestamp=None if stamped[keep].all() else stamped[keep],
            malformed_records=int((~keep).sum()),
            truncated_records=self.truncated,
            unparsed_bytes=len(self.data) - self.end,
        )

    def _section_records(self, buf: U8, i: int) -> list[I64]:
        section = self.sections[i]
        stop = self.sections[i + 1].first_packet if i + 1 < len(self.sections) else len(self.offsets)
        offs = np.asarray(self.offsets[section.first_packet : stop], dtype=np.int64)
        words = gather(buf, offs, EPB_DATA_OFFSET).view(section.order + "u4").astype(np.int64)
        btype, blen, word2, ts_high, ts_low, captured, wire = words.T
        spb, pb = btype == BLOCK_SPB, btype == BLOCK_PB
        # The obsolete packet block has a 16-bit interface id followed by a 16-bit drop count.
        local = np.where(pb, word2 & 0xFFFF if section.order == "<" else word2 >> 16, word2)
        local[spb] = 0
        wire = np.where(spb, word2, wire)
        after = self.sections[i + 1].first_interface if i + 1 < len(self.sections) else len(self.interfaces)
        n_local = after - section.first_interface
        snaplen = self.interfaces[section.first_interface].snaplen_bytes if n_local > 0 else 0
        spb_captured = np.minimum(wire, blen - SPB_DATA_OFFSET - 4)
        captured = np.where(spb, np.minimum(spb_captured, snaplen) if snaplen else spb_captured, captured)
        data_offsets = offs + np.where(spb, SPB_DATA_OFFSET, EPB_DATA_OFFSET)
        fits = (captured >= 0) & (data_offsets - offs + captured + 4 <= blen)
        valid = np.where(fits & (local < n_local), np.where(spb, 1, 2), 0)
        units = (ts_high << 32) | ts_low
        return [data_offsets, captured, wire, local + section.first_interface, units, valid]


def _offset_s(offset_s: int, source: str) -> int:
    # Added to int64 ns timestamps: an offset whose ns do not fit cannot name a time.
    if abs(offset_s) > MAX_TS_OFFSET_S:
        raise ParseError(f"{source}: interface timestamp offset {offset_s} s is out of range")
    return offset_s


def _units_per_s(tsresol: int, source: str) -> int:
    exponent = tsresol & 0x7F
    if exponent > (63 if tsresol & 0x80 else 18):
        raise ParseError(f"{source}: interface timestamp resolution {tsresol:#x} is out of range")
    return int((2 if tsresol & 0x80 else 10) ** exponent)
