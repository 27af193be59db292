"""Capture files built byte by byte for the parser tests, and dpkt's reading of a frame as the oracle.

Builders take and return plain bytes so a test can cut, corrupt or stack them freely; nothing here
uses the code under test.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dpkt

ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_IPV4 = 0x0800
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
T0_NS = 1_700_000_000_123_456_789  # 2023-11-14, with every ns digit used


def addr(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


# --- network and transport layers -------------------------------------------------------------------


def ipv6(
    src: str | bytes,
    dst: str | bytes,
    next_header: int,
    payload: bytes,
    *,
    traffic_class: int = 0,
    flow_label: int = 0,
    hop_limit: int = 64,
    payload_length: int | None = None,
) -> bytes:
    first = (6 << 28) | (traffic_class << 20) | flow_label
    length = len(payload) if payload_length is None else payload_length
    s = addr(src) if isinstance(src, str) else src
    d = addr(dst) if isinstance(dst, str) else dst
    return struct.pack("!IHBB", first, length, next_header, hop_limit) + s + d + payload


def options_header(next_header: int, units_of_8: int = 0) -> bytes:
    """Hop-by-hop or destination options: PadN filling (units_of_8 + 1) * 8 bytes."""
    size = (units_of_8 + 1) * 8
    return bytes([next_header, units_of_8, 1, size - 4]) + bytes(size - 4)


def routing_header(next_header: int, addresses: int = 1) -> bytes:
    """Type-0-like routing header carrying ``addresses`` 16-byte addresses."""
    return bytes([next_header, addresses * 2, 0, addresses]) + bytes(4) + bytes(16 * addresses)


def fragment_header(next_header: int, offset_bytes: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset_bytes // 8) << 3 | int(more), ident)


def ah_header(next_header: int, icv_words: int = 3) -> bytes:
    """Authentication header; its length field counts 4-byte words minus 2."""
    return struct.pack("!BBHII", next_header, icv_words + 1, 0, 0x1234, 7) + bytes(4 * icv_words)


def mobility_header(next_header: int = 59) -> bytes:
    return bytes([next_header, 0, 5, 0]) + bytes(4)


def esp(spi: int = 0x100, seq: int = 1, body: bytes = b"\xaa" * 24) -> bytes:
    return struct.pack("!II", spi, seq) + body


def tcp(sport: int, dport: int, flags: int = 0x02, payload: bytes = b"", header_words: int = 5) -> bytes:
    off_flags = (header_words << 12) | flags
    options = bytes(4 * (header_words - 5))  # all-zero: end-of-options padding
    return struct.pack("!HHIIHHHH", sport, dport, 1, 0, off_flags, 65535, 0, 0) + options + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHII", sport, dport, 0xBEEF, 0)


def icmp6(kind: int, code: int, body: bytes = b"\x00" * 4) -> bytes:
    return struct.pack("!BBH", kind, code, 0) + body


def dns_message(
    name: str, qtype: int, *, response: bool = False, rcode: int = 0, ident: int = 0x4242
) -> bytes:
    flags = (0x8000 if response else 0) | 0x0100 | rcode
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\x00"
    answers = 1 if response else 0
    body = question + struct.pack("!HH", qtype, 1)
    if response:  # one A record whose owner is a compression pointer back to the question
        body += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x01\x02\x03\x04"
    return struct.pack("!HHHHHH", ident, flags, 1, answers, 0, 0) + body


# --- link layers ----------------------------------------------------------------------------------


def ethernet(payload: bytes, ethertype: int = ETHERTYPE_IPV6, vlans: Sequence[tuple[int, int]] = ()) -> bytes:
    """``vlans``: (tag EtherType, VLAN id) from the outermost in."""
    tags = b""
    types = [t for t, _ in vlans] + [ethertype]
    for (_, vid), inner in zip(vlans, types[1:], strict=True):
        tags += struct.pack("!HH", vid, inner)
    return MAC_B + MAC_A + struct.pack("!H", types[0]) + tags + payload


def sll(payload: bytes, protocol: int = ETHERTYPE_IPV6) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", protocol) + payload


def sll2(payload: bytes, protocol: int = ETHERTYPE_IPV6) -> bytes:
    return struct.pack("!HHiHBB8s", protocol, 0, 3, 1, 0, 6, MAC_A + b"\0\0") + payload


# --- containers -----------------------------------------------------------------------------------


@dataclass
class Record:
    frame: bytes
    ts_ns: int = T0_NS
    captured: int | None = None  # cut the frame to this many bytes (a snaplen)
    interface: int = 0

    @property
    def data(self) -> bytes:
        return self.frame if self.captured is None else self.frame[: self.captured]


def pcap(
    records: Sequence[Record],
    *,
    link_type: int = 1,
    nano: bool = True,
    order: str = "<",
    snaplen: int = 65535,
) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, link_type)]
    for r in records:
        sec, frac = divmod(r.ts_ns, 1_000_000_000)
        frac = frac if nano else frac // 1000
        out.append(struct.pack(order + "IIII", sec, frac, len(r.data), len(r.frame)) + r.data)
    return b"".join(out)


def _block(order: str, kind: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack(order + "II", kind, 12 + len(body)) + body + struct.pack(order + "I", 12 + len(body))


def _option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + bytes(-len(value) % 4)


@dataclass
class NgInterface:
    link_type: int
    name: str = ""
    tsresol: int | None = None  # the if_tsresol byte; None = default microseconds
    tsoffset_s: int = 0
    snaplen: int = 0

    def units_per_s(self) -> int:
        if self.tsresol is None:
            return 1_000_000
        return 2 ** (self.tsresol & 0x7F) if self.tsresol & 0x80 else 10**self.tsresol


@dataclass
class NgSection:
    interfaces: list[NgInterface]
    records: list[Record] = field(default_factory=list)
    order: str = "<"
    simple: Sequence[int] = ()  # indexes of records written as simple packet blocks
    obsolete: Sequence[int] = ()  # ... as obsolete packet blocks (type 2)


def pcapng(sections: Sequence[NgSection]) -> bytes:
    out = []
    for s in sections:
        o = s.order
        out.append(_block(o, 0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
        for iface in s.interfaces:
            opts = b""
            if iface.name:
                opts += _option(o, 2, iface.name.encode())
            if iface.tsresol is not None:
                opts += _option(o, 9, bytes([iface.tsresol]))
            if iface.tsoffset_s:
                opts += _option(o, 14, struct.pack(o + "q", iface.tsoffset_s))
            opts += _option(o, 0, b"") if opts else b""
            out.append(_block(o, 1, struct.pack(o + "HHI", iface.link_type, 0, iface.snaplen) + opts))
        for i, r in enumerate(s.records):
            if i in s.simple:
                out.append(_block(o, 3, struct.pack(o + "I", len(r.frame)) + r.data))
                continue
            iface = s.interfaces[r.interface] if r.interface < len(s.interfaces) else NgInterface(1)
            units = (r.ts_ns - iface.tsoffset_s * 1_000_000_000) * iface.units_per_s() // 1_000_000_000
            units &= (1 << 64) - 1  # an absurd resolution still writes a (wrapped) timestamp
            head = struct.pack(o + "I", r.interface)
            if i in s.obsolete:
                head = struct.pack(o + "HH", r.interface, 0)
            fields_ = struct.pack(o + "IIII", units >> 32, units & 0xFFFFFFFF, len(r.data), len(r.frame))
            out.append(_block(o, 2 if i in s.obsolete else 6, head + fields_ + r.data))
    return b"".join(out)


# --- the oracle -----------------------------------------------------------------------------------

_DPKT_EXT = {
    dpkt.ip6.IP6HopOptsHeader: 0,
    dpkt.ip6.IP6RoutingHeader: 43,
    dpkt.ip6.IP6FragmentHeader: 44,
    dpkt.ip6.IP6ESPHeader: 50,
    dpkt.ip6.IP6AHHeader: 51,
    dpkt.ip6.IP6DstOptsHeader: 60,
}
_DNS_UDP_PORTS = (53, 5353)


def dpkt_row(link_type: int, frame: bytes) -> dict[str, Any] | None:
    """The parser's columns for one frame as dpkt decodes it; None when dpkt finds no IPv6 packet."""
    if link_type == 1:
        ip = dpkt.ethernet.Ethernet(frame).data
    elif link_type == 113:
        ip = dpkt.sll.SLL(frame).data
    elif link_type == 276:
        ip = dpkt.sll2.SLL2(frame).data
    else:
        ip = dpkt.ip6.IP6(frame) if frame[:1] and frame[0] >> 4 == 6 else None
    if not isinstance(ip, dpkt.ip6.IP6):
        return None
    chain = [_DPKT_EXT[type(h)] for h in ip.all_extension_headers]
    row: dict[str, Any] = {
        "src": ip.src,
        "dst": ip.dst,
        "traffic_class": ip.fc,
        "flow_label": ip.flow,
        "payload_length": ip.plen,
        "next_header": ip.nxt,
        "hop_limit": ip.hlim,
        "ext_headers": chain,
        "protocol": 50 if chain[-1:] == [50] else ip.p,
    }
    frag = ip.extension_hdrs.get(44)
    row["fragment_id"] = frag.id if frag else None
    row["fragment_offset"] = frag.frag_off * 8 if frag else None
    row["fragment_more"] = bool(frag.m_flag) if frag else None
    l4 = ip.data
    ported = isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP | dpkt.sctp.SCTP)
    row["src_port"] = l4.sport if ported else None
    row["dst_port"] = l4.dport if ported else None
    row["tcp_flags"] = l4.flags if isinstance(l4, dpkt.tcp.TCP) else None
    icmp = isinstance(l4, dpkt.icmp6.ICMP6)
    row["icmp_type"], row["icmp_code"] = (l4.type, l4.code) if icmp else (None, None)
    row.update(dns_qname=None, dns_qtype=None, dns_rcode=None, dns_is_response=None)
    message = None
    if isinstance(l4, dpkt.udp.UDP) and {l4.sport, l4.dport} & set(_DNS_UDP_PORTS):
        message = l4.data
    elif isinstance(l4, dpkt.tcp.TCP) and 53 in (l4.sport, l4.dport) and len(l4.data) > 2:
        message = l4.data[2:]
    if message is not None:
        try:
            dns = dpkt.dns.DNS(message)
        except (dpkt.UnpackError, IndexError):
            return row
        row.update(dns_rcode=dns.rcode, dns_is_response=bool(dns.qr))
        if dns.qd:
            row.update(dns_qname=dns.qd[0].name, dns_qtype=dns.qd[0].type)
    return row


# --- the committed sample captures (tests/data/aggregator) --------------------------------------


def data_files() -> dict[str, bytes]:
    """The sample captures, byte for byte; ``test_data_files`` checks the committed copies match."""
    dns_query = dns_message("www.example.org", 28, ident=7)
    chain = options_header(43) + routing_header(44) + fragment_header(60, 0, True, 0xBEEF)
    chain += options_header(6) + tcp(44321, 443, 0x02)
    arp = bytes.fromhex("0001080006040001") + MAC_A + bytes(4) + bytes(6) + bytes(4)
    v4 = bytes.fromhex("4500001c000100004011f7c4c6120001c6120002") + udp(1, 2)
    mixed = [
        ethernet(ipv6("2001:db8::1", "2001:db8::2", 6, tcp(50000, 80, 0x02), flow_label=0x12345)),
        ethernet(ipv6("2001:db8::2", "2001:db8::1", 6, tcp(80, 50000, 0x12)), vlans=[(0x8100, 10)]),
        ethernet(
            ipv6("2001:db8::1", "2001:db8::53", 17, udp(40000, 53, dns_query)),
            vlans=[(0x88A8, 20), (0x8100, 30)],
        ),
        ethernet(
            ipv6(
                "2001:db8::53",
                "2001:db8::1",
                17,
                udp(53, 40000, dns_message("www.example.org", 28, response=True, ident=7)),
            )
        ),
        ethernet(
            ipv6(
                "fe80::211:22ff:fe33:4455",
                "ff02::fb",
                17,
                udp(5353, 5353, dns_message("_ipp._tcp.local", 12)),
            )
        ),
        ethernet(ipv6("2001:db8::1", "2001:db8::2", 58, icmp6(128, 0, b"\x00\x01\x00\x01" + b"ping"))),
        ethernet(
            ipv6(
                "fe80::1", "ff02::1:ff00:2", 58, icmp6(135, 0, bytes(4) + addr("2001:db8::2")), hop_limit=255
            )
        ),
        ethernet(ipv6("fe80::1", "ff02::16", 0, options_header(58) + icmp6(143, 0, bytes(4)), hop_limit=1)),
        ethernet(ipv6("2001:db8:1::c000:201", "2001:db8:2::80", 0, chain, traffic_class=0x28)),
        ethernet(
            ipv6(
                "2001:db8:1::c000:201",
                "2001:db8:2::80",
                44,
                fragment_header(6, 1232, False, 0xBEEF) + bytes(64),
            )
        ),
        ethernet(ipv6("2001:db8::5efe:c000:201", "2001:db8::1", 50, esp())),
        ethernet(ipv6("2001:db8::1", "2001:db8::2", 17, udp(33333, 33334, bytes(1000)))),
        ethernet(v4, ETHERTYPE_IPV4),
        ethernet(arp, 0x0806),
    ]
    first = Record(b"", T0_NS).ts_ns // 1000 * 1000
    mixed_records = [Record(f, first + i * 1_000_000, captured=min(len(f), 128)) for i, f in enumerate(mixed)]
    ng = NgSection(
        [NgInterface(1, "eth0"), NgInterface(276, "any", tsresol=9)],
        [
            Record(ethernet(ipv6("2001:db8::1", "2001:db8::2", 6, tcp(1, 2))), T0_NS // 1000 * 1000),
            Record(sll2(ipv6("fd00::1", "fd00::2", 17, udp(1, 53, dns_query))), T0_NS + 1, interface=1),
            Record(sll2(v4, ETHERTYPE_IPV4), T0_NS + 2, interface=1),
            Record(ethernet(ipv6("fd00::1", "ff02::2", 58, icmp6(133, 0)))),
        ],
        simple=[3],
    )
    raw = [ipv6("2001:db8::1", f"2001:db8::{i:x}", 17, udp(1000 + i, 123, bytes(48))) for i in range(1, 6)]
    tail = pcap([Record(ethernet(ipv6("2001:db8::1", "2001:db8::2", 59, b"")), T0_NS + i) for i in range(3)])
    garbage = b"GARBAGE!" + bytes((i * 37 + 11) % 256 for i in range(504))
    return {
        "ethernet-mixed.pcap": pcap(mixed_records, nano=False, snaplen=128),
        "two-interfaces.pcapng": pcapng([ng]),
        "raw-ipv6-big-endian-nano.pcap": pcap(
            [Record(p, T0_NS + i) for i, p in enumerate(raw)], link_type=229, order=">"
        ),
        "truncated-tail.pcap": tail[:-20],
        "header-only.pcap": pcap([]),
        "empty.pcap": b"",
        "garbage.bin": garbage,
    }


def write_data_files(directory: str) -> None:
    """Rewrites the sample captures (after a deliberate change to ``data_files``)."""
    from pathlib import Path

    for name, data in data_files().items():
        (Path(directory) / name).write_bytes(data)
