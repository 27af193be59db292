"""parse: link layers and classic pcap variants, every field checked against dpkt's decoding."""

from __future__ import annotations

from typing import Any

import pytest

from survey6.aggregator.parse import ParseResult, parse_bytes
from unit.aggregator.pcapbuild import (
    ETHERTYPE_IPV4,
    T0_NS,
    Record,
    dpkt_row,
    ethernet,
    icmp6,
    ipv6,
    pcap,
    sll,
    sll2,
    tcp,
    udp,
)

V4_PACKET = bytes.fromhex("4500001c000100004011f7c4c6120001c6120002") + udp(1, 2)
PACKET = ipv6(
    "2001:db8::1", "2001:db8:0:1::2", 6, tcp(40000, 443, 0x12), traffic_class=0xB8, flow_label=0xABCDE
)


def rows(result: ParseResult) -> list[dict[str, Any]]:
    return result.table.to_pylist()


def assert_matches_dpkt(link_type: int, frames: list[bytes], result: ParseResult) -> None:
    expected = [row for row in (dpkt_row(link_type, f) for f in frames) if row is not None]
    got = rows(result)
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert {k: mine[k] for k in theirs} == theirs


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [True, False])
def test_pcap_in_both_byte_orders_and_precisions(order: str, nano: bool) -> None:
    records = [Record(ethernet(PACKET), T0_NS + i * 1_001_001) for i in range(5)]
    result = parse_bytes(pcap(records, nano=nano, order=order))

    times = result.table.column("timestamp_ns").to_pylist()
    expected = [r.ts_ns if nano else r.ts_ns // 1000 * 1000 for r in records]
    assert times == expected
    assert result.stats.file_format == "pcap"
    assert result.stats.packets == result.stats.ipv6_packets == 5
    assert_matches_dpkt(1, [r.frame for r in records], result)
    assert set(result.table.column("interface_index").to_pylist()) == {0}


def test_ethernet_with_single_and_stacked_vlan_tags() -> None:
    frames = [
        ethernet(PACKET),
        ethernet(PACKET, vlans=[(0x8100, 100)]),
        ethernet(PACKET, vlans=[(0x88A8, 30), (0x8100, 100)]),
        ethernet(V4_PACKET, ETHERTYPE_IPV4, vlans=[(0x8100, 7)]),
    ]
    result = parse_bytes(pcap([Record(f) for f in frames]))

    assert result.stats.ipv6_packets == 3
    assert result.stats.not_ipv6_packets == 1
    assert_matches_dpkt(1, frames, result)
    assert result.table.column("captured_length").to_pylist() == [len(f) for f in frames[:3]]


def test_stacked_tags_beyond_what_dpkt_reads() -> None:
    # dpkt stops after two tags; four stacked tags (legacy 0x9100 included) still lead to IPv6.
    frame = ethernet(PACKET, vlans=[(0x9100, 1), (0x88A8, 2), (0x8100, 3), (0x8100, 4)])
    [row] = rows(parse_bytes(pcap([Record(frame)])))
    assert row["dst_port"] == 443


@pytest.mark.parametrize(("link_type", "frame_of"), [(113, sll), (276, sll2)])
def test_linux_cooked_captures(link_type: int, frame_of: Any) -> None:
    frames = [
        frame_of(PACKET),
        frame_of(ipv6("fe80::1", "ff02::1", 58, icmp6(135, 0))),
        frame_of(V4_PACKET, 0x0800),
    ]
    result = parse_bytes(pcap([Record(f) for f in frames], link_type=link_type))

    assert result.stats.ipv6_packets == 2
    assert result.stats.not_ipv6_packets == 1
    assert result.table.column("link_type").to_pylist() == [link_type] * 2
    assert_matches_dpkt(link_type, frames, result)


def test_cooked_capture_with_a_vlan_tag_left_in() -> None:
    frame = sll(b"\x00\x64\x86\xdd" + PACKET, protocol=0x8100)
    [row] = rows(parse_bytes(pcap([Record(frame)], link_type=113)))
    assert row["src_port"] == 40000


@pytest.mark.parametrize("link_type", [101, 229])
def test_raw_ip_links(link_type: int) -> None:
    frames = [PACKET, V4_PACKET, ipv6("::1", "::1", 17, udp(5353, 5353))]
    result = parse_bytes(pcap([Record(f) for f in frames], link_type=link_type))

    assert result.stats.ipv6_packets == 2
    assert result.stats.not_ipv6_packets == 1  # IPv4 on a raw link is not IPv6, not a broken packet
    assert_matches_dpkt(link_type, frames, result)


def test_ipv6_ethertype_with_another_version_is_malformed() -> None:
    frames = [ethernet(V4_PACKET), ethernet(PACKET)]
    result = parse_bytes(pcap([Record(f) for f in frames]))
    assert (result.stats.malformed_packets, result.stats.ipv6_packets) == (1, 1)


def test_unsupported_link_type_is_counted_not_guessed() -> None:
    result = parse_bytes(pcap([Record(PACKET)] * 3, link_type=105))  # 802.11
    assert result.table.num_rows == 0
    assert result.stats.unsupported_link_packets == 3


def test_fcs_bits_in_the_link_type_field_are_ignored() -> None:
    result = parse_bytes(pcap([Record(ethernet(PACKET))], link_type=1 | (1 << 26) | (4 << 28)))
    assert result.stats.ipv6_packets == 1


def test_wire_length_and_snaplen_cut_frames() -> None:
    frame = ethernet(ipv6("2001:db8::1", "2001:db8::2", 17, udp(1, 2, bytes(1000))))
    [row] = rows(parse_bytes(pcap([Record(frame, captured=96)])))
    assert (row["captured_length"], row["wire_length"]) == (96, len(frame))
    assert row["payload_length"] == 1008
    assert (row["src_port"], row["dst_port"]) == (1, 2)


def test_many_chunks_give_the_same_rows_as_one() -> None:
    frames = [ethernet(ipv6("2001:db8::1", "2001:db8::2", 17, udp(i, 53 + i % 2))) for i in range(100)]
    data = pcap([Record(f, T0_NS + i) for i, f in enumerate(frames)])
    whole = parse_bytes(data)
    chunked = parse_bytes(data, chunk_packets=7)
    assert chunked.table.equals(whole.table)
    assert chunked.stats == whole.stats
    assert len(chunked.table.to_batches()) == 15
