"""parse: pcapng sections, interfaces with their own link types and clocks, every packet block type."""

from __future__ import annotations

import struct

import pytest

from survey6.aggregator.errors import ParseError
from survey6.aggregator.parse import parse_bytes
from unit.aggregator.pcapbuild import (
    T0_NS,
    NgInterface,
    NgSection,
    Record,
    dpkt_row,
    ethernet,
    ipv6,
    pcapng,
    sll2,
    tcp,
    udp,
)

PACKET = ipv6("2001:db8::1", "2001:db8::2", 6, tcp(1234, 80))
EPB_BYTES = 12 + 20 + 76  # block framing + EPB fields + the 74-byte frame padded to 76
DNS_LIKE = ipv6("fd00::1", "fd00::2", 17, udp(999, 1000, b"x" * 10))


def two_interfaces(order: str = "<") -> NgSection:
    return NgSection(
        interfaces=[NgInterface(1, "eth0"), NgInterface(276, "any", tsresol=9, snaplen=262144)],
        records=[
            Record(ethernet(PACKET), T0_NS, interface=0),
            Record(sll2(DNS_LIKE), T0_NS + 1, interface=1),
            Record(sll2(PACKET), T0_NS + 2_000, interface=1),
            Record(ethernet(DNS_LIKE), T0_NS + 3_000, interface=0),
        ],
        order=order,
    )


@pytest.mark.parametrize("order", ["<", ">"])
def test_two_interfaces_with_their_own_link_types_and_resolutions(order: str) -> None:
    section = two_interfaces(order)
    result = parse_bytes(pcapng([section]))
    table = result.table

    assert result.stats.file_format == "pcapng"
    assert result.stats.packets == result.stats.ipv6_packets == 4
    assert table.column("interface_index").to_pylist() == [0, 1, 1, 0]
    assert table.column("link_type").to_pylist() == [1, 276, 276, 1]
    # eth0 keeps microseconds (the pcapng default); "any" has nanoseconds.
    assert table.column("timestamp_ns").to_pylist() == [
        T0_NS // 1000 * 1000,
        T0_NS + 1,
        T0_NS + 2_000,
        (T0_NS + 3_000) // 1000 * 1000,
    ]
    assert [i.name for i in result.interfaces] == ["eth0", "any"]
    for row, record in zip(table.to_pylist(), section.records, strict=True):
        expected = dpkt_row(1 if record.interface == 0 else 276, record.frame)
        assert expected is not None
        assert {k: row[k] for k in expected} == expected


def test_binary_resolution_and_offset() -> None:
    iface = NgInterface(101, tsresol=0x80 | 20, tsoffset_s=1_000)  # 2^-20 s, clock 1000 s behind
    ts = T0_NS // 1000 * 1000
    result = parse_bytes(pcapng([NgSection([iface], [Record(PACKET, ts)])]))
    [got] = result.table.column("timestamp_ns").to_pylist()
    assert abs(got - ts) < 1_000  # 2^-20 s is ~954 ns


def test_sections_with_different_byte_orders_number_interfaces_globally() -> None:
    first = NgSection([NgInterface(1, "a")], [Record(ethernet(PACKET), T0_NS)], order="<")
    second = NgSection(
        [NgInterface(101, "b"), NgInterface(1, "c")], [Record(PACKET, T0_NS + 5_000)], order=">"
    )
    second.records.append(Record(ethernet(PACKET), T0_NS + 6_000, interface=1))
    result = parse_bytes(pcapng([first, second]))

    assert result.table.column("interface_index").to_pylist() == [0, 1, 2]
    assert [i.name for i in result.interfaces] == ["a", "b", "c"]
    assert result.table.column("link_type").to_pylist() == [1, 101, 1]


def test_simple_and_obsolete_packet_blocks() -> None:
    section = NgSection(
        [NgInterface(1, snaplen=60)],
        [Record(ethernet(PACKET), T0_NS), Record(ethernet(PACKET)), Record(ethernet(PACKET), T0_NS + 7_000)],
        simple=[1],
        obsolete=[2],
    )
    result = parse_bytes(pcapng([section]))
    table = result.table

    assert result.stats.ipv6_packets == 3
    assert table.column("timestamp_ns").to_pylist() == [
        T0_NS // 1000 * 1000,
        None,
        (T0_NS + 7_000) // 1000 * 1000,
    ]
    # A simple packet block's captured length is its original length cut at the interface's snaplen.
    assert table.column("captured_length").to_pylist() == [74, 60, 74]
    # 60 bytes hold the IPv6 header but not the whole TCP header: the row stays, its ports are null.
    assert table.column("dst_port").to_pylist() == [80, None, 80]
    assert result.stats.truncated_l4_rows == 1


def test_unknown_blocks_are_skipped() -> None:
    data = pcapng([NgSection([NgInterface(1)], [Record(ethernet(PACKET))])])
    custom = struct.pack("<II", 0x00000BAD, 16) + b"abcd" + struct.pack("<I", 16)
    stats = struct.pack("<II", 5, 20) + bytes(8) + struct.pack("<I", 20)  # interface statistics
    result = parse_bytes(data + custom + stats + data[-EPB_BYTES:])
    assert result.stats.ipv6_packets == 2
    assert result.stats.unparsed_bytes == 0


def test_packet_naming_an_undeclared_interface_is_malformed() -> None:
    section = NgSection([NgInterface(1)], [Record(ethernet(PACKET)), Record(ethernet(PACKET), interface=3)])
    result = parse_bytes(pcapng([section]))
    assert (result.stats.ipv6_packets, result.stats.malformed_packets, result.stats.packets) == (1, 1, 2)


def test_captured_length_beyond_its_block_is_malformed() -> None:
    data = bytearray(pcapng([NgSection([NgInterface(1)], [Record(ethernet(PACKET))] * 2)]))
    second_epb = len(data) - EPB_BYTES
    struct.pack_into("<I", data, second_epb + 20, 5000)
    result = parse_bytes(bytes(data))
    assert (result.stats.ipv6_packets, result.stats.malformed_packets) == (1, 1)


def test_last_block_cut_short_and_bad_block_length() -> None:
    data = pcapng([NgSection([NgInterface(1)], [Record(ethernet(PACKET))] * 3)])
    cut = parse_bytes(data[:-10])
    assert (cut.stats.ipv6_packets, cut.stats.truncated_packets, cut.stats.packets) == (2, 1, 3)
    assert cut.stats.unparsed_bytes == EPB_BYTES - 10

    corrupt = bytearray(data)
    struct.pack_into("<I", corrupt, len(data) - EPB_BYTES + 4, 7)  # not a multiple of 4
    broken = parse_bytes(bytes(corrupt))
    assert broken.stats.ipv6_packets == 2
    assert broken.stats.unparsed_bytes == EPB_BYTES


def test_not_a_section_header_first() -> None:
    with pytest.raises(ParseError, match="not a pcapng file"):
        parse_bytes(b"\x0a\x0d\x0d\x0a" + bytes(40))


def test_out_of_range_timestamp_resolution() -> None:
    with pytest.raises(ParseError, match="resolution"):
        parse_bytes(pcapng([NgSection([NgInterface(1, tsresol=40)], [Record(PACKET)])]))
