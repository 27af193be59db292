"""pcap / pcapng → Arrow: one row per IPv6 packet, decoded with numpy, a chunk of packets at a time.

The whole file is mapped into memory. The only per-packet Python is the walk over the record headers
(each says where the next starts, see ``pcapng``); every field is then gathered for a chunk of packets
at once with vectorised indexing. The extension-header chain is walked with all packets of the chunk
advancing one header per step, and DNS question names one label per step the same way; only a name
with a compression pointer or non-ASCII bytes is decoded in Python, message by message.

Nothing escapes for a bad packet: every record is either a row or counted in ``ParseStats`` under the
reason it was skipped, and every read is bounded by the record's captured length. A file that cannot
be read at all (empty, not pcap/pcapng, a cut header) raises ``ParseError``. Columns: ``schema``.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from survey6.aggregator.errors import ParseError
from survey6.aggregator.pcapng import I64, U8, Buffer, Interface, RecordIndex, gather, index_capture
from survey6.aggregator.schema import PACKET_SCHEMA

CHUNK_PACKETS = 1 << 16  # big enough to amortise numpy's per-call cost, small enough to stay in cache

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4 or IPv6
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# Link types with an EtherType: (offset of the EtherType, offset of the payload) from the frame start.
_ETHERTYPE_LINKS = {LINKTYPE_ETHERNET: (12, 14), LINKTYPE_LINUX_SLL: (14, 16), LINKTYPE_LINUX_SLL2: (0, 20)}
_RAW_LINKS = (LINKTYPE_RAW, LINKTYPE_IPV6)  # raw IP: IPv6 when the version nibble says so
ETHERTYPE_IPV6 = 0x86DD
_VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100, 0x9200)  # 802.1Q, 802.1ad and two pre-standard QinQ tags
MAX_VLAN_TAGS = 4
IPV6_HEADER_BYTES = 40

HOP_BY_HOP, ROUTING, FRAGMENT, ESP, AH, DEST_OPTS, MOBILITY = 0, 43, 44, 50, 51, 60, 135
TCP, UDP, ICMPV6, SCTP = 6, 17, 58, 132
MAX_EXT_HEADERS = 16  # a longer chain is treated as unwalkable rather than followed forever
_IS_EXT = np.zeros(256, bool)
_IS_EXT[[HOP_BY_HOP, ROUTING, FRAGMENT, ESP, AH, DEST_OPTS, MOBILITY]] = True
_L4_MIN_BYTES = np.zeros(256, np.int64)  # 0: not decoded
_L4_MIN_BYTES[[TCP, UDP, ICMPV6, SCTP]] = [20, 8, 4, 12]
_DNS_UDP_PORTS = (53, 5353)
_DNS_TCP_PORT = 53
DNS_HEADER_BYTES = 12
MAX_DNS_NAME_BYTES = 255  # in wire form, the final zero included (RFC 1035 3.1)

Bools = NDArray[np.bool_]

# Why a record did not become a row.
_OK, _NOT_IPV6, _UNSUPPORTED, _TRUNCATED, _MALFORMED = range(5)


@dataclass
class ParseStats:
    """What happened to every record of a file: ``packets`` = rows + every ``*_packets`` skip reason."""

    file_format: str = ""
    packets: int = 0  # records in the file, including the ones that could not be used
    ipv6_packets: int = 0  # rows
    not_ipv6_packets: int = 0  # another EtherType, or IPv4 on a raw link
    unsupported_link_packets: int = 0  # a link type this parser does not decode
    truncated_packets: int = 0  # captured too short for the link + IPv6 headers; a record cut by EOF
    malformed_packets: int = 0  # a record or header contradicting itself (IPv6 EtherType, version 4)
    incomplete_chain_rows: int = 0  # rows whose extension headers run past the captured bytes
    truncated_l4_rows: int = 0  # rows whose TCP/UDP/SCTP/ICMPv6 header was not captured whole
    dns_messages: int = 0  # DNS messages decoded
    malformed_dns_messages: int = 0  # DNS-port payloads that are not a readable DNS message
    unparsed_bytes: int = 0  # bytes after the last record that could be walked

    @property
    def skipped_packets(self) -> int:
        return (
            self.not_ipv6_packets
            + self.unsupported_link_packets
            + self.truncated_packets
            + self.malformed_packets
        )


@dataclass(frozen=True)
class ParseResult:
    table: pa.Table  # PACKET_SCHEMA
    stats: ParseStats
    interfaces: tuple[Interface, ...] = field(default_factory=tuple)


def parse_file(path: str | os.PathLike[str], *, chunk_packets: int = CHUNK_PACKETS) -> ParseResult:
    """Parses a pcap or pcapng file into one row per IPv6 packet.

    Raises:
        ParseError: the file cannot be read, or is not a readable pcap or pcapng file.
    """
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ParseError(f"{source}: empty file")
            # Mapped, not read: the pages come straight from the page cache, without a copy. The mapping
            # is released with its last reference (nothing parsed keeps one), not closed here, so that
            # an exception's traceback holding a view of it cannot turn into a BufferError.
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise ParseError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    return parse_bytes(data, source=source, chunk_packets=chunk_packets)


def parse_bytes(data: Buffer, *, source: str = "capture", chunk_packets: int = CHUNK_PACKETS) -> ParseResult:
    """Parses a whole capture held in memory (bytes or a read-only mapping); see ``parse_file``."""
    buf = np.frombuffer(data, np.uint8)
    index = index_capture(data, buf, source)
    stats = ParseStats(
        file_format=index.file_format,
        packets=len(index) + index.malformed_records + index.truncated_records,
        malformed_packets=index.malformed_records,
        truncated_packets=index.truncated_records,
        unparsed_bytes=index.unparsed_bytes,
    )
    link_types = np.array([i.link_type for i in index.interfaces] or [0], np.int64)
    chunk = max(chunk_packets, 1)
    batches = [
        _decode(data, buf, index, slice(start, start + chunk), link_types, stats)
        for start in range(0, len(index), chunk)
    ]
    table = pa.Table.from_batches(batches, schema=PACKET_SCHEMA)
    return ParseResult(table, stats, tuple(index.interfaces))


def _decode(
    data: Buffer, buf: U8, index: RecordIndex, rows: slice, link_types: I64, stats: ParseStats
) -> pa.RecordBatch:
    start = index.data_offsets[rows]
    end = start + index.captured_lengths[rows]
    links = link_types[index.interface_ids[rows]]
    ip, status = _link_layer(buf, start, end, links)
    counts = np.bincount(status, minlength=5)
    stats.ipv6_packets += int(counts[_OK])
    stats.not_ipv6_packets += int(counts[_NOT_IPV6])
    stats.unsupported_link_packets += int(counts[_UNSUPPORTED])
    stats.truncated_packets += int(counts[_TRUNCATED])
    stats.malformed_packets += int(counts[_MALFORMED])
    keep = np.flatnonzero(status == _OK)
    ip, end = ip[keep], end[keep]
    header = gather(buf, ip, IPV6_HEADER_BYTES)
    first_word = np.ascontiguousarray(header[:, :4]).view(">u4")[:, 0]  # version, class, flow label
    payload_length = (header[:, 4].astype(np.int64) << 8) | header[:, 5]
    # A zero payload length is a jumbogram (or TSO): the capture, not the field, bounds the payload.
    ip_end = np.where(payload_length > 0, np.minimum(end, ip + IPV6_HEADER_BYTES + payload_length), end)
    chain = _Chain(buf, ip + IPV6_HEADER_BYTES, header[:, 6].astype(np.int64), ip_end)
    upper = _UpperLayer(buf, chain, ip_end)
    stats.incomplete_chain_rows += int((chain.protocol < 0).sum())
    stats.truncated_l4_rows += int(upper.truncated)
    dns = _dns_columns(data, buf, upper, ip_end, stats)
    timestamps = index.timestamps_ns[rows][keep]
    stamped = None if index.has_timestamp is None else index.has_timestamp[rows][keep]
    columns: dict[str, Any] = {
        "timestamp_ns": pa.array(timestamps, pa.int64(), mask=None if stamped is None else ~stamped),
        "interface_index": pa.array(index.interface_ids[rows][keep], pa.int32()),
        "link_type": pa.array(links[keep], pa.uint16()),
        "captured_length": pa.array(index.captured_lengths[rows][keep], pa.uint32()),
        "wire_length": pa.array(index.wire_lengths[rows][keep], pa.uint32()),
        "src": _addresses(header[:, 8:24]),
        "dst": _addresses(header[:, 24:40]),
        "traffic_class": pa.array((first_word >> 20) & 0xFF, pa.uint8()),
        "flow_label": pa.array(first_word & 0xFFFFF, pa.uint32()),
        "payload_length": pa.array(payload_length, pa.uint16()),
        "next_header": pa.array(header[:, 6], pa.uint8()),
        "hop_limit": pa.array(header[:, 7], pa.uint8()),
        "ext_headers": chain.list_array(),
        "protocol": _nullable(chain.protocol, chain.protocol >= 0, pa.uint8()),
        **upper.columns(),
        **chain.fragment_columns(),
        **dns,
    }
    return pa.RecordBatch.from_pydict(columns, schema=PACKET_SCHEMA)


def _link_layer(buf: U8, start: I64, end: I64, links: I64) -> tuple[I64, I64]:
    """Offset of the IPv6 header in each frame, and a status saying why a frame has none."""
    status = np.full(len(start), _UNSUPPORTED, np.int64)
    ethertype_at = np.full(len(start), -1, np.int64)
    payload = start.copy()
    for link, (ethertype_offset, payload_offset) in _ETHERTYPE_LINKS.items():
        mine = links == link
        ethertype_at[mine] = start[mine] + ethertype_offset
        payload[mine] = start[mine] + payload_offset
        status[mine] = _OK
    raw = np.isin(links, _RAW_LINKS)
    status[raw] = _OK
    framed = ethertype_at >= 0
    status[framed & (payload > end)] = _TRUNCATED
    ethertype = np.where(framed, _be16(buf, ethertype_at), ETHERTYPE_IPV6)
    for _ in range(MAX_VLAN_TAGS):  # stacked tags: each is TCI u16 + the next EtherType u16
        tagged = (status == _OK) & np.isin(ethertype, _VLAN_ETHERTYPES)
        if not tagged.any():
            break
        status[tagged & (payload + 4 > end)] = _TRUNCATED
        tagged &= status == _OK
        ethertype[tagged] = _be16(buf, payload[tagged] + 2)
        payload[tagged] += 4
    status[(status == _OK) & (ethertype != ETHERTYPE_IPV6)] = _NOT_IPV6
    status[(status == _OK) & (payload >= end)] = _TRUNCATED
    version = np.take(buf, payload, mode="clip") >> 4
    wrong_version = (status == _OK) & (version != 6)
    status[wrong_version] = np.where(raw[wrong_version], _NOT_IPV6, _MALFORMED)
    status[(status == _OK) & (payload + IPV6_HEADER_BYTES > end)] = _TRUNCATED
    return payload, status


class _Chain:
    """The extension-header chain of every packet, walked one header per step for all packets at once.

    ``protocol`` is the upper-layer protocol (-1: the chain runs past the captured bytes); ``l4`` is
    where its header starts, valid only where ``decodable`` (not a later fragment, not ESP).
    """

    def __init__(self, buf: U8, pos: I64, next_header: I64, end: I64) -> None:
        n = len(pos)
        self.l4, self.protocol, self.steps = pos.copy(), np.full(n, -1, np.int64), []
        self.fragment = np.zeros(n, bool)
        self.fragment_id, self.fragment_offset = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.fragment_more = np.zeros(n, bool)
        self.decodable = np.zeros(n, bool)
        kind = next_header.copy()
        done = ~_IS_EXT[kind]
        self.protocol[done], self.decodable[done] = kind[done], True
        active = np.flatnonzero(~done)
        for _ in range(MAX_EXT_HEADERS):
            if not len(active):
                break
            step = np.full(n, -1, np.int64)
            step[active] = kind[active]
            self.steps.append(step)
            active = self._advance(buf, active, kind, end)

    def _advance(self, buf: U8, rows: I64, kind: I64, end: I64) -> I64:
        at, this = self.l4[rows], kind[rows]
        head = gather(buf, at, 8).astype(np.int64)
        following, size = head[:, 0], head[:, 1]
        length = np.where(this == AH, (size + 2) * 4, np.where(this == FRAGMENT, 8, (size + 1) * 8))
        esp = this == ESP  # everything after the ESP header is encrypted: the chain ends there
        self.protocol[rows[esp]] = ESP
        fits = ~esp & (at + length <= end[rows])
        fragment = fits & (this == FRAGMENT)
        field16 = (head[:, 2] << 8) | head[:, 3]
        hit = rows[fragment]
        self.fragment[hit] = True
        self.fragment_offset[hit] = (field16[fragment] >> 3) * 8
        self.fragment_more[hit] = (field16[fragment] & 1) == 1
        ident = (head[:, 4] << 24) | (head[:, 5] << 16) | (head[:, 6] << 8) | head[:, 7]
        self.fragment_id[hit] = ident[fragment]
        later = fragment & ((field16 >> 3) > 0)  # a later fragment starts mid-payload: nothing to decode
        moved = rows[fits]
        self.l4[moved] += length[fits]
        kind[moved] = following[fits]
        ends = fits & (later | ~_IS_EXT[following])
        self.protocol[rows[ends]] = following[ends]
        self.decodable[rows[ends & ~later]] = True
        still: I64 = rows[fits & ~ends]
        return still

    def list_array(self) -> pa.Array:
        n = len(self.l4)
        if not self.steps:
            return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.uint8()))
        steps = np.stack(self.steps, axis=1)
        present = steps >= 0  # each row's headers are a prefix of its steps, so row-major order is right
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(present.sum(axis=1), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(steps[present], pa.uint8()))

    def fragment_columns(self) -> dict[str, pa.Array]:
        return {
            "fragment_id": _nullable(self.fragment_id, self.fragment, pa.uint32()),
            "fragment_offset": _nullable(self.fragment_offset, self.fragment, pa.uint16()),
            "fragment_more": _nullable(self.fragment_more, self.fragment, pa.bool_()),
        }


class _UpperLayer:
    """TCP, UDP, SCTP and ICMPv6 header fields where the whole minimum header was captured."""

    def __init__(self, buf: U8, chain: _Chain, ip_end: I64) -> None:
        self.protocol, self.l4 = chain.protocol, chain.l4
        wanted = chain.decodable & (_L4_MIN_BYTES[np.maximum(self.protocol, 0)] > 0)
        self.ok = wanted & (self.l4 + _L4_MIN_BYTES[np.maximum(self.protocol, 0)] <= ip_end)
        self.truncated = int((wanted & ~self.ok).sum())
        head = gather(buf, self.l4, 14).astype(np.int64)
        self.src_port, self.dst_port = (head[:, 0] << 8) | head[:, 1], (head[:, 2] << 8) | head[:, 3]
        self.tcp_header_bytes = (head[:, 12] >> 4) * 4
        self.tcp_flags = ((head[:, 12] & 1) << 8) | head[:, 13]
        self.icmp_type, self.icmp_code = head[:, 0], head[:, 1]
        self.tcp, self.udp = self.ok & (self.protocol == TCP), self.ok & (self.protocol == UDP)

    def columns(self) -> dict[str, pa.Array]:
        ported = self.tcp | self.udp | (self.ok & (self.protocol == SCTP))
        icmp = self.ok & (self.protocol == ICMPV6)
        return {
            "src_port": _nullable(self.src_port, ported, pa.uint16()),
            "dst_port": _nullable(self.dst_port, ported, pa.uint16()),
            "tcp_flags": _nullable(self.tcp_flags, self.tcp, pa.uint16()),
            "icmp_type": _nullable(self.icmp_type, icmp, pa.uint8()),
            "icmp_code": _nullable(self.icmp_code, icmp, pa.uint8()),
        }


def _dns_columns(
    data: Buffer, buf: U8, upper: _UpperLayer, ip_end: I64, stats: ParseStats
) -> dict[str, pa.Array]:
    """DNS header and first question of every packet on a DNS port; every other row gets nulls.

    The question name is walked label by label for all messages at once, as the extension headers
    are; the rare name that needs more (a compression pointer, non-ASCII bytes) is decoded in Python.
    """
    sport, dport, n = upper.src_port, upper.dst_port, len(upper.src_port)
    udp = upper.udp & (np.isin(sport, _DNS_UDP_PORTS) | np.isin(dport, _DNS_UDP_PORTS))
    tcp = upper.tcp & ((sport == _DNS_TCP_PORT) | (dport == _DNS_TCP_PORT)) & (upper.tcp_header_bytes >= 20)
    start = np.where(udp, upper.l4 + 8, upper.l4 + upper.tcp_header_bytes)
    tcp &= start < ip_end  # a bare ACK or FIN on port 53 carries no message
    rows = np.flatnonzero(udp | tcp)
    start, end, over_tcp = start[rows], ip_end[rows], tcp[rows]
    # Over TCP a 2-byte length comes first; the message may go on in later segments.
    end = np.where(over_tcp, np.minimum(end, start + 2 + _be16(buf, start)), end)
    start = np.where(over_tcp, start + 2, start)
    header = gather(buf, start, DNS_HEADER_BYTES).astype(np.int64)
    flags, questions = (header[:, 2] << 8) | header[:, 3], (header[:, 4] << 8) | header[:, 5]
    valid = end - start >= DNS_HEADER_BYTES
    name_end, plain, slow, dots = _question_names(buf, start, end, valid & (questions > 0))
    plain &= name_end + 5 <= end  # the name is followed by its type and class
    names, non_ascii = _name_strings(buf, start, name_end, plain, dots)
    plain &= ~non_ascii
    slow |= non_ascii
    qtype = _be16(buf, name_end + 1)
    valid &= (questions == 0) | plain | slow
    named, replacements = plain.copy(), []
    for i in np.flatnonzero(slow).tolist():
        decoded = _decode_dns(bytes(data[start[i] : end[i]]))
        valid[i] = decoded is not None
        if decoded is not None and decoded[0] is not None:
            named[i], qtype[i] = True, decoded[1]
            replacements.append(decoded[0])
    if replacements:
        names = pc.replace_with_mask(names, pa.array(named & ~plain), pa.array(replacements, pa.string()))
    stats.dns_messages += int(valid.sum())
    stats.malformed_dns_messages += int((~valid).sum())
    position = np.full(n, -1, np.int64)
    position[rows] = np.arange(len(rows))
    has_header, has_question = np.zeros(n, bool), np.zeros(n, bool)
    has_header[rows], has_question[rows] = valid, named & valid
    return {
        "dns_qname": names.take(pa.array(position, mask=~has_question)),
        "dns_qtype": _nullable(_scatter(n, rows, qtype), has_question, pa.uint16()),
        "dns_rcode": _nullable(_scatter(n, rows, flags & 0x0F), has_header, pa.uint8()),
        "dns_is_response": _nullable(_scatter(n, rows, flags >> 15) == 1, has_header, pa.bool_()),
    }


def _question_names(buf: U8, start: I64, end: I64, asks: Bools) -> tuple[I64, Bools, Bools, tuple[I64, I64]]:
    """Walks the first question's labels: (end of name, plain name, needs Python, label length bytes)."""
    pos = start + DNS_HEADER_BYTES
    plain, slow = np.zeros(len(start), bool), np.zeros(len(start), bool)
    active, dot_rows, dot_at = np.flatnonzero(asks), [], []
    for _ in range(MAX_DNS_NAME_BYTES // 2 + 1):  # every label takes at least two bytes
        if not len(active):
            break
        at = pos[active]
        size = np.take(buf, at, mode="clip").astype(np.int64)
        inside = at < end[active]
        plain[active[inside & (size == 0)]] = True
        slow[active[inside & (size >= 0xC0)]] = True
        after = at + 1 + size  # a label must leave room for at least the name's final zero
        label = inside & (size > 0) & (size < 0x40) & (after < end[active])
        label &= after - start[active] - DNS_HEADER_BYTES < MAX_DNS_NAME_BYTES
        active = active[label]
        dot_rows.append(active)
        dot_at.append(at[label])
        pos[active] = after[label]
    plain[active] = False  # still walking: longer than a name may be
    dots = (np.concatenate(dot_rows), np.concatenate(dot_at)) if dot_rows else (np.zeros(0, np.int64),) * 2
    return pos, plain, slow, dots


def _name_strings(
    buf: U8, start: I64, name_end: I64, plain: Bools, dots: tuple[I64, I64]
) -> tuple[pa.Array, Bools]:
    """The plain names as one string array (null elsewhere), built from the wire bytes in one gather:
    a name is its bytes after the first length byte, each further length byte turned into a dot."""
    first = start + DNS_HEADER_BYTES + 1
    lengths = np.where(plain, np.maximum(name_end - first, 0), 0)
    offsets = np.zeros(len(start) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    chars = buf[np.arange(offsets[-1]) + np.repeat(first - offsets[:-1], lengths)]
    rows, at = dots
    inner = plain[rows] & (at >= first[rows])
    chars[offsets[rows[inner]] + at[inner] - first[rows[inner]]] = ord(".")
    owner = np.repeat(np.arange(len(start)), lengths)
    non_ascii = np.bincount(owner, weights=chars >= 0x80, minlength=len(start)) > 0
    if non_ascii.any():  # left to Python, which decodes UTF-8 and escapes the rest
        return _name_strings(buf, start, name_end, plain & ~non_ascii, dots)[0], non_ascii
    validity = pa.py_buffer(np.packbits(plain, bitorder="little"))
    array = pa.StringArray.from_buffers(
        len(start), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(chars), validity
    )
    return array, non_ascii


def _scatter(n: int, rows: I64, values: NDArray[Any]) -> I64:
    out = np.zeros(n, np.int64)
    out[rows] = values
    return out


def _decode_dns(message: bytes) -> tuple[str | None, int, int, bool] | None:
    """(first question name, its type, rcode, is response), or None when the message is not DNS."""
    if len(message) < DNS_HEADER_BYTES:
        return None
    flags, questions = struct.unpack_from("!HH", message, 2)
    rcode, response = flags & 0x0F, bool(flags & 0x8000)
    if not questions:
        return None, 0, rcode, response
    labels: list[bytes] = []
    pos, resume, floor, total = DNS_HEADER_BYTES, 0, DNS_HEADER_BYTES, 0
    while True:
        if pos >= len(message):
            return None
        size = message[pos]
        if size == 0:
            pos += 1
            break
        if size & 0xC0 == 0xC0:
            if pos + 2 > len(message):
                return None
            target = ((size & 0x3F) << 8) | message[pos + 1]
            if target >= floor:  # only strictly backwards pointers: a loop cannot be built
                return None
            resume, pos, floor = resume or pos + 2, target, target
            continue
        if size & 0xC0 or pos + 1 + size > len(message):
            return None
        total += size + 1
        if total >= MAX_DNS_NAME_BYTES:  # no room left for the final zero
            return None
        labels.append(message[pos + 1 : pos + 1 + size])
        pos += 1 + size
    pos = resume or pos
    if pos + 4 > len(message):
        return None
    name = b".".join(labels).decode("utf-8", "backslashreplace")
    return name, struct.unpack_from("!H", message, pos)[0], rcode, response


def _be16(buf: U8, at: I64) -> I64:
    high: I64 = np.take(buf, at, mode="clip").astype(np.int64)
    word: I64 = (high << 8) | np.take(buf, at + 1, mode="clip")
    return word


def _addresses(octets: NDArray[np.uint8]) -> pa.Array:
    flat = np.ascontiguousarray(octets)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(flat), [None, pa.py_buffer(flat)])


def _nullable(values: NDArray[Any], valid: NDArray[np.bool_], kind: pa.DataType) -> pa.Array:
    """Invalid entries become nulls. numpy narrows the values first, wrapping the garbage under the
    nulls, because Arrow's own (checked) cast would refuse it."""
    return pa.array(values.astype(kind.to_pandas_dtype(), copy=False), kind, mask=~valid)
