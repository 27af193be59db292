"""parse: extension-header chains, upper layers, DNS and truncated packets."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from survey6.aggregator.parse import parse_bytes
from unit.aggregator.pcapbuild import (
    Record,
    ah_header,
    dns_message,
    dpkt_row,
    esp,
    ethernet,
    fragment_header,
    icmp6,
    ipv6,
    mobility_header,
    options_header,
    pcap,
    routing_header,
    sctp,
    tcp,
    udp,
)

SRC, DST = "2001:db8::a", "2001:db8::b"


def parse_one(packet: bytes, captured: int | None = None) -> dict[str, Any]:
    [row] = parse_bytes(pcap([Record(ethernet(packet), captured=captured)])).table.to_pylist()
    return row


def check_against_dpkt(packet: bytes) -> dict[str, Any]:
    row = parse_one(packet)
    expected = dpkt_row(1, ethernet(packet))
    assert expected is not None
    assert {k: row[k] for k in expected} == expected
    return row


def test_full_extension_chain_before_tcp() -> None:
    payload = (
        options_header(43, 1)
        + routing_header(44, 2)
        + fragment_header(60, 0, True, 0xCAFE)
        + options_header(6)
        + tcp(5000, 22, 0x1FF)
    )
    row = check_against_dpkt(ipv6(SRC, DST, 0, payload))
    assert row["ext_headers"] == [0, 43, 44, 60]
    assert (row["protocol"], row["src_port"], row["dst_port"], row["tcp_flags"]) == (6, 5000, 22, 0x1FF)
    assert (row["fragment_id"], row["fragment_offset"], row["fragment_more"]) == (0xCAFE, 0, True)


def test_later_fragment_has_no_upper_layer_fields() -> None:
    row = check_against_dpkt(ipv6(SRC, DST, 44, fragment_header(17, 1448, False, 7) + bytes(100)))
    assert row["ext_headers"] == [44]
    assert (row["protocol"], row["fragment_offset"], row["fragment_more"]) == (17, 1448, False)
    assert row["src_port"] is None


def test_authentication_header_then_udp() -> None:
    row = check_against_dpkt(ipv6(SRC, DST, 51, ah_header(17) + udp(500, 4500)))
    assert (row["ext_headers"], row["protocol"], row["dst_port"]) == ([51], 17, 4500)


def test_esp_ends_the_chain() -> None:
    row = check_against_dpkt(ipv6(SRC, DST, 0, options_header(50) + esp()))
    assert (row["ext_headers"], row["protocol"], row["src_port"]) == ([0, 50], 50, None)


def test_mobility_header_and_no_next_header() -> None:
    row = parse_one(ipv6(SRC, DST, 60, options_header(135) + mobility_header(59)))
    assert (row["ext_headers"], row["protocol"]) == ([60, 135], 59)


def test_icmpv6_and_sctp() -> None:
    echo = check_against_dpkt(ipv6(SRC, "ff02::1", 58, icmp6(128, 0, b"\x00\x01\x00\x02")))
    assert (echo["protocol"], echo["icmp_type"], echo["icmp_code"], echo["src_port"]) == (58, 128, 0, None)
    unreachable = check_against_dpkt(ipv6(SRC, DST, 58, icmp6(1, 4, bytes(4) + bytes(48))))
    assert (unreachable["icmp_type"], unreachable["icmp_code"]) == (1, 4)
    association = check_against_dpkt(ipv6(SRC, DST, 132, sctp(2905, 2906)))
    assert (association["src_port"], association["dst_port"], association["tcp_flags"]) == (2905, 2906, None)


@pytest.mark.parametrize("port", [53, 5353])
def test_udp_dns_query_and_response(port: int) -> None:
    query = check_against_dpkt(ipv6(SRC, DST, 17, udp(40000, port, dns_message("www.example.org", 28))))
    assert (query["dns_qname"], query["dns_qtype"], query["dns_rcode"], query["dns_is_response"]) == (
        "www.example.org",
        28,
        0,
        False,
    )
    answer = dns_message("Example.ORG", 1, response=True, rcode=3)
    response = check_against_dpkt(ipv6(DST, SRC, 17, udp(port, 40000, answer)))
    assert (
        response["dns_qname"],
        response["dns_qtype"],
        response["dns_rcode"],
        response["dns_is_response"],
    ) == (
        "Example.ORG",
        1,
        3,
        True,
    )


def test_tcp_dns_after_the_length_prefix() -> None:
    message = dns_message("mail.example.net", 15)
    segment = tcp(53, 50000, 0x18, struct.pack("!H", len(message)) + message, header_words=8)
    row = check_against_dpkt(ipv6(DST, SRC, 6, segment))
    assert (row["dns_qname"], row["dns_qtype"]) == ("mail.example.net", 15)


def test_dns_root_name_and_no_question() -> None:
    root = parse_one(ipv6(SRC, DST, 17, udp(1, 53, dns_message("", 2))))
    assert (root["dns_qname"], root["dns_qtype"]) == ("", 2)
    header_only = struct.pack("!HHHHHH", 1, 0x8180, 0, 0, 0, 0)
    empty = parse_one(ipv6(SRC, DST, 17, udp(53, 1, header_only)))
    assert (empty["dns_qname"], empty["dns_rcode"], empty["dns_is_response"]) == (None, 0, True)


def raw_question(name_wire: bytes, qtype: int = 16) -> bytes:
    return struct.pack("!6H", 9, 0x0100, 1, 0, 0, 0) + name_wire + struct.pack("!HH", qtype, 1)


def test_names_that_take_the_slow_path_match_dpkt() -> None:
    # A compression pointer inside the question (to the zero arcount at offset 10), and UTF-8 labels.
    pointer = check_against_dpkt(ipv6(SRC, DST, 17, udp(1, 53, raw_question(b"\x03foo\xc0\x0a"))))
    assert (pointer["dns_qname"], pointer["dns_qtype"]) == ("foo", 16)
    utf8 = "bücher.example".encode()
    wire = bytes([7]) + utf8[:7] + bytes([7]) + utf8[8:] + b"\x00"
    assert (
        check_against_dpkt(ipv6(SRC, DST, 17, udp(1, 53, raw_question(wire))))["dns_qname"]
        == "bücher.example"
    )


def test_invalid_utf8_in_a_name_is_escaped() -> None:
    row = parse_one(ipv6(SRC, DST, 17, udp(1, 53, raw_question(b"\x02\xff\xfe\x03com\x00"))))
    assert row["dns_qname"] == "\\xff\\xfe.com"


def test_longest_name_and_one_byte_more() -> None:
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3d" + b"b" * 61 + b"\x00"  # 255 bytes
    longest = parse_one(ipv6(SRC, DST, 17, udp(1, 53, raw_question(labels))))
    assert len(longest["dns_qname"]) == 253
    too_long = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3e" + b"b" * 62 + b"\x00"
    result = parse_bytes(pcap([Record(ethernet(ipv6(SRC, DST, 17, udp(1, 53, raw_question(too_long)))))]))
    assert result.stats.malformed_dns_messages == 1


def test_many_dns_messages_in_one_chunk() -> None:
    names = [f"host{i}.{'sub.' * (i % 4)}example.org" for i in range(300)]
    frames = [
        ethernet(ipv6(SRC, DST, 17, udp(1000 + i, 53, dns_message(name, i % 300 + 1))))
        for i, name in enumerate(names)
    ]
    frames.insert(150, ethernet(ipv6(SRC, DST, 17, udp(1, 53, raw_question(b"\x03foo\xc0\x0a")))))
    table = parse_bytes(pcap([Record(f) for f in frames])).table
    assert table.column("dns_qname").to_pylist() == names[:150] + ["foo"] + names[150:]
    assert table.column("dns_qtype").to_pylist() == [i % 300 + 1 for i in range(150)] + [16] + [
        i % 300 + 1 for i in range(150, 300)
    ]


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x01",  # shorter than a DNS header
        struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\x05abc",  # a label running off the end
        struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c",  # a pointer to itself
        struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\x80abc\x00" + bytes(4),  # reserved label type
        struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\x3f" + b"a" * 63 + b"\x00",  # no room for the type
    ],
)
def test_malformed_dns_keeps_the_row_and_is_counted(payload: bytes) -> None:
    result = parse_bytes(pcap([Record(ethernet(ipv6(SRC, DST, 17, udp(1, 53, payload))))]))
    [row] = result.table.to_pylist()
    assert row["dst_port"] == 53
    assert (row["dns_qname"], row["dns_rcode"]) == (None, None)
    assert (result.stats.malformed_dns_messages, result.stats.dns_messages) == (1, 0)


def test_bare_ack_on_port_53_is_not_dns() -> None:
    result = parse_bytes(pcap([Record(ethernet(ipv6(SRC, DST, 6, tcp(53, 9999, 0x10))))]))
    assert (result.stats.dns_messages, result.stats.malformed_dns_messages) == (0, 0)


def test_ethernet_padding_is_not_payload() -> None:
    # A 60-byte minimum frame pads a short packet; the IPv6 payload length bounds the upper layer.
    packet = ipv6(SRC, DST, 17, udp(1, 53, b""))
    frame = ethernet(packet) + bytes(20)
    result = parse_bytes(pcap([Record(frame)]))
    assert result.stats.malformed_dns_messages == 1  # an empty message, not 20 bytes of padding as DNS


CHAIN = ipv6(SRC, DST, 0, options_header(44) + fragment_header(6, 0, False, 1) + tcp(80, 8080))


@pytest.mark.parametrize(
    ("captured", "outcome"),
    [
        (13, "truncated"),  # not even the EtherType
        (14, "truncated"),  # the EtherType but no IPv6 byte
        (14 + 39, "truncated"),  # one byte short of the IPv6 header
        (14 + 40, "chain"),  # the header but no extension header
        (14 + 40 + 15, "chain"),  # hop-by-hop whole, fragment header cut
        (14 + 40 + 16, "l4"),  # the chain whole, no TCP
        (14 + 40 + 16 + 19, "l4"),  # one byte short of the TCP header
        (14 + 40 + 16 + 20, "ok"),
    ],
)
def test_snaplen_cuts_at_every_layer(captured: int, outcome: str) -> None:
    result = parse_bytes(pcap([Record(ethernet(CHAIN), captured=captured)], snaplen=captured))
    stats = result.stats
    if outcome == "truncated":
        assert (stats.truncated_packets, result.table.num_rows) == (1, 0)
        return
    [row] = result.table.to_pylist()
    assert row["captured_length"] == captured
    assert row["payload_length"] == len(CHAIN) - 40
    assert stats.incomplete_chain_rows == (outcome == "chain")
    assert stats.truncated_l4_rows == (outcome == "l4")
    assert row["protocol"] == (None if outcome == "chain" else 6)
    assert row["src_port"] == (80 if outcome == "ok" else None)
    # A header announced by the one before it is listed even when it was cut off.
    assert row["ext_headers"] == ([0] if captured == 14 + 40 else [0, 44])


def test_payload_length_shorter_than_the_headers() -> None:
    packet = ipv6(SRC, DST, 6, tcp(1, 2), payload_length=10)
    result = parse_bytes(pcap([Record(ethernet(packet))]))
    [row] = result.table.to_pylist()
    assert (row["protocol"], row["src_port"], result.stats.truncated_l4_rows) == (6, None, 1)


def test_jumbogram_payload_length_zero_uses_the_capture() -> None:
    row = parse_one(ipv6(SRC, DST, 0, options_header(17) + udp(7, 9), payload_length=0))
    assert (row["payload_length"], row["protocol"], row["dst_port"]) == (0, 17, 9)


def test_endless_chain_stops() -> None:
    payload = b"".join(options_header(60) for _ in range(40)) + tcp(1, 2)
    result = parse_bytes(pcap([Record(ethernet(ipv6(SRC, DST, 60, payload)))]))
    [row] = result.table.to_pylist()
    assert len(row["ext_headers"]) == 16
    assert row["protocol"] is None
    assert result.stats.incomplete_chain_rows == 1
