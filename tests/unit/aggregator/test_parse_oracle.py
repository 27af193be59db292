"""parse against dpkt on thousands of generated packets, and against anything at all (fuzzing).

Every column dpkt can produce is compared for every packet; the generator spreads the packets over
all supported link types, pcap and pcapng, and stacks extension headers, fragments, ESP, DNS.
"""

from __future__ import annotations

import random
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from survey6.aggregator.errors import ParseError
from survey6.aggregator.parse import ParseResult, parse_bytes
from unit.aggregator.pcapbuild import (
    T0_NS,
    NgInterface,
    NgSection,
    Record,
    ah_header,
    dns_message,
    dpkt_row,
    esp,
    ethernet,
    fragment_header,
    icmp6,
    ipv6,
    options_header,
    pcap,
    pcapng,
    routing_header,
    sctp,
    sll,
    sll2,
    tcp,
    udp,
)

LINK_TYPES = (1, 113, 276, 101, 229)
NAMES = ("example.org", "a.b.c.d.example", "xn--bcher-kva.example", "x" * 63 + ".net", "localhost")
EXT_KINDS = (0, 43, 60, 51, 44)


def upper_layer(rng: random.Random) -> tuple[int, bytes]:
    kind = rng.choice(("tcp", "tcp-dns", "udp", "udp-dns", "icmp", "sctp", "none", "esp"))
    port = rng.randrange(1024, 65536)
    if kind == "tcp":
        payload = rng.randbytes(rng.randrange(0, 40))
        return 6, tcp(port, rng.randrange(1024, 65536), rng.randrange(0x200), payload, rng.randrange(5, 9))
    if kind == "tcp-dns":
        message = dns_message(rng.choice(NAMES), rng.choice((1, 28, 15, 255)), response=rng.random() < 0.5)
        return 6, tcp(53, port, 0x18, struct.pack("!H", len(message)) + message)
    if kind in ("udp", "udp-dns"):
        dns = kind == "udp-dns"
        server = rng.choice((53, 5353)) if dns else rng.randrange(1024, 65536)
        body = (
            dns_message(rng.choice(NAMES), rng.randrange(1, 300), rcode=rng.randrange(16))
            if dns
            else b"z" * 9
        )
        return 17, udp(port, server, body) if rng.random() < 0.5 else udp(server, port, body)
    if kind == "icmp":
        return 58, icmp6(rng.choice((1, 2, 3, 4, 128, 129, 133, 134, 135, 136)), rng.randrange(8), bytes(8))
    if kind == "sctp":
        return 132, sctp(port, rng.randrange(1, 65536))
    if kind == "esp":
        return 50, esp(rng.getrandbits(32), rng.getrandbits(32), rng.randbytes(rng.randrange(8, 64)))
    return 59, rng.randbytes(rng.randrange(0, 16))


def random_packet(rng: random.Random) -> bytes:
    """dpkt reads a fragment header right only as the last of the chain before the upper layer (not ESP),
    and a later fragment only as the first: the generator stays inside what the oracle gets right."""
    next_header, body = upper_layer(rng)
    if next_header != 50 and rng.random() < 0.1:
        body, next_header = (
            fragment_header(next_header, 8 * rng.randrange(1, 8000), rng.random() < 0.5, 9) + body,
            44,
        )
        return ipv6(rng.randbytes(16), rng.randbytes(16), next_header, body)
    if next_header != 50 and rng.random() < 0.1:
        body, next_header = fragment_header(next_header, 0, True, rng.getrandbits(32)) + body, 44
    for kind in rng.sample(EXT_KINDS[:4], rng.choice((0, 0, 0, 1, 2, 3))):
        if kind in (0, 60):
            body = options_header(next_header, rng.randrange(3)) + body
        elif kind == 43:
            body = routing_header(next_header, rng.randrange(1, 3)) + body
        else:
            body = ah_header(next_header, rng.randrange(1, 5)) + body
        next_header = kind
    return ipv6(
        rng.randbytes(16),
        rng.randbytes(16),
        next_header,
        body,
        traffic_class=rng.randrange(256),
        flow_label=rng.randrange(1 << 20),
        hop_limit=rng.randrange(256),
    )


def frame(rng: random.Random, link_type: int, packet: bytes) -> bytes:
    if rng.random() < 0.05:  # not IPv6: the parser must skip what dpkt does not decode as IPv6
        packet = bytes.fromhex("4500001c000100004011f7c4c6120001c6120002") + udp(1, 2)
        ethertype = 0x0800
    else:
        ethertype = 0x86DD
    if link_type == 1:
        vlans = rng.choice(((), ((0x8100, 5),), ((0x88A8, 5), (0x8100, 6))))
        return ethernet(packet, ethertype, vlans)
    if link_type == 113:
        return sll(packet, ethertype)
    if link_type == 276:
        return sll2(packet, ethertype)
    return packet


def compare(result: ParseResult, expected: list[dict[str, Any] | None]) -> None:
    wanted = [row for row in expected if row is not None]
    got = result.table.to_pylist()
    assert len(got) == len(wanted) == result.stats.ipv6_packets
    for mine, theirs in zip(got, wanted, strict=True):
        assert {k: mine[k] for k in theirs} == theirs


def test_thousands_of_packets_in_every_link_type_and_container() -> None:
    rng = random.Random(20261123)
    interfaces = [
        NgInterface(link, f"if{link}", tsresol=rng.choice((None, 3, 9, 0x80 | 24))) for link in LINK_TYPES
    ]
    section = NgSection(interfaces)
    expected: list[dict[str, Any] | None] = []
    for i in range(3000):
        link_index = rng.randrange(len(LINK_TYPES))
        data = frame(rng, LINK_TYPES[link_index], random_packet(rng))
        section.records.append(Record(data, T0_NS + i * 997, interface=link_index))
        expected.append(dpkt_row(LINK_TYPES[link_index], data))

    compare(parse_bytes(pcapng([section]), chunk_packets=512), expected)
    for link_index, link in enumerate(LINK_TYPES):
        mine = [(r, e) for r, e in zip(section.records, expected, strict=True) if r.interface == link_index]
        result = parse_bytes(pcap([r for r, _ in mine], link_type=link, order=rng.choice("<>")))
        compare(result, [e for _, e in mine])
        assert result.table.column("timestamp_ns").to_pylist() == [r.ts_ns for r, e in mine if e is not None]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 40), link=st.sampled_from(LINK_TYPES))
def test_any_mix_matches_dpkt(seed: int, count: int, link: int) -> None:
    rng = random.Random(seed)
    frames = [frame(rng, link, random_packet(rng)) for _ in range(count)]
    compare(
        parse_bytes(pcap([Record(f) for f in frames], link_type=link)), [dpkt_row(link, f) for f in frames]
    )


def _sample_capture(rng: random.Random, as_pcapng: bool) -> bytes:
    link = rng.choice(LINK_TYPES)
    records = [Record(frame(rng, link, random_packet(rng))) for _ in range(12)]
    if as_pcapng:
        return pcapng([NgSection([NgInterface(link, tsresol=9)], records)])
    return pcap(records, link_type=link)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    as_pcapng=st.booleans(),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 10**6),
)
def test_damaged_captures_never_escape_as_anything_but_parse_error(
    seed: int, as_pcapng: bool, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(_sample_capture(random.Random(seed), as_pcapng))
    for position, value in flips:
        data[position % len(data)] = value
    data = data[: cut % (len(data) + 1)]
    try:
        result = parse_bytes(bytes(data), chunk_packets=5)
    except ParseError:
        return
    s = result.stats
    assert s.packets == s.ipv6_packets + s.skipped_packets
    assert result.table.num_rows == s.ipv6_packets
    assert 0 <= s.unparsed_bytes <= len(data)
    lengths = result.table.column("captured_length").to_pylist()
    assert all(length <= len(data) for length in lengths)


_LABEL = st.one_of(
    st.binary(min_size=1, max_size=63).map(lambda b: bytes([len(b)]) + b),
    st.sampled_from([b"\x00", b"\xc0\x0a", b"\xc0\x0c", b"\x40", b"\x3f"]),
    st.text("abcé-", min_size=1, max_size=10).map(lambda t: bytes([len(t.encode())]) + t.encode()),
)


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(
        st.tuples(st.integers(0, 2), st.lists(_LABEL, max_size=6), st.binary(max_size=6), st.booleans()),
        min_size=1,
        max_size=20,
    )
)
def test_vectorised_dns_agrees_with_the_message_by_message_decoder(
    messages: list[tuple[int, list[bytes], bytes, bool]],
) -> None:
    from survey6.aggregator.parse import _decode_dns  # the reference the slow path uses

    payloads = []
    for questions, labels, tail, terminated in messages:
        name = b"".join(labels) + (b"\x00" if terminated else b"")
        payloads.append(struct.pack("!6H", 1, 0x8183, questions, 0, 0, 0) + name + tail)
    frames = [ethernet(ipv6("2001:db8::1", "2001:db8::2", 17, udp(5353, 53, p))) for p in payloads]
    result = parse_bytes(pcap([Record(f) for f in frames]))
    for row, payload in zip(result.table.to_pylist(), payloads, strict=True):
        expected = _decode_dns(payload)
        if expected is None:
            assert (row["dns_rcode"], row["dns_qname"]) == (None, None)
            continue
        name, qtype, rcode, response = expected
        assert (row["dns_rcode"], row["dns_is_response"]) == (rcode, response)
        assert (row["dns_qname"], row["dns_qtype"]) == (name, qtype if name is not None else None)


_BLOCK = st.tuples(
    st.sampled_from([1, 2, 3, 5, 6, 6, 6, 0x0A0D0D0A, 0xBAD]),
    st.integers(0, 80),  # the body length the header claims, aligned or not
    st.binary(max_size=80),
)


@settings(max_examples=300, deadline=None)
@given(order=st.sampled_from("<>"), blocks=st.lists(_BLOCK, max_size=12), header_damage=st.integers(0, 40))
def test_arbitrary_pcapng_blocks_are_counted_or_refused(
    order: str, blocks: list[tuple[int, int, bytes]], header_damage: int
) -> None:
    data = bytearray(pcapng([NgSection([NgInterface(1)], [], order=order)]))
    for kind, claimed, body in blocks:
        if kind == 0x0A0D0D0A:
            body = (b"\x1a\x2b\x3c\x4d" if order == ">" else b"\x4d\x3c\x2b\x1a") + body
        data += struct.pack(order + "II", kind, 12 + claimed) + body + struct.pack(order + "I", 12 + claimed)
    if header_damage < len(data) and header_damage >= 28:
        data[header_damage] ^= 0xFF
    try:
        result = parse_bytes(bytes(data))
    except ParseError:
        return
    s = result.stats
    assert s.packets == s.ipv6_packets + s.skipped_packets
    assert 0 <= s.unparsed_bytes <= len(data)
