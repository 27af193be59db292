"""parse: files that cannot be read raise ParseError; damaged records are counted, never fatal."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from survey6.aggregator.errors import AggregatorError, ParseError
from survey6.aggregator.parse import parse_bytes, parse_file
from survey6.aggregator.schema import PACKET_SCHEMA
from survey6.common.errors import Survey6Error
from unit.aggregator.pcapbuild import Record, ethernet, ipv6, pcap, udp

FRAME = ethernet(ipv6("2001:db8::1", "2001:db8::2", 17, udp(1, 2, b"payload")))
RECORD_BYTES = 16 + len(FRAME)


def test_error_tree() -> None:
    assert issubclass(ParseError, AggregatorError)
    assert issubclass(AggregatorError, Survey6Error)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    with pytest.raises(ParseError, match="empty.pcap: empty file"):
        parse_file(path)


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n\r\n", bytes(range(256)) * 4, b"\xd4\xc3"])
def test_garbage_is_not_a_capture(data: bytes) -> None:
    with pytest.raises(ParseError, match="not a pcap or pcapng file"):
        parse_bytes(data, source="junk.bin")


def test_global_header_cut_short() -> None:
    with pytest.raises(ParseError, match="pcap header cut short at 20 bytes"):
        parse_bytes(pcap([])[:20])


def test_missing_file_keeps_the_cause(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="cannot read") as caught:
        parse_file(tmp_path / "nope.pcap")
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_only_the_global_header_is_an_empty_table() -> None:
    result = parse_bytes(pcap([]))
    assert result.table.num_rows == 0
    assert result.table.schema == PACKET_SCHEMA
    assert (result.stats.packets, result.stats.unparsed_bytes) == (0, 0)


@pytest.mark.parametrize("cut", [1, 8, 15, 16, 17, RECORD_BYTES - 1])
def test_last_record_cut_by_the_end_of_the_file(cut: int) -> None:
    data = pcap([Record(FRAME)] * 3)
    result = parse_bytes(data[: len(data) - RECORD_BYTES + cut])
    assert result.stats.ipv6_packets == 2
    assert (result.stats.truncated_packets, result.stats.packets) == (1, 3)
    assert result.stats.unparsed_bytes == cut


def test_impossible_record_length_stops_the_walk() -> None:
    data = bytearray(pcap([Record(FRAME)] * 4))
    struct.pack_into("<I", data, 24 + 2 * RECORD_BYTES + 8, 0x7FFFFFF0)
    result = parse_bytes(bytes(data))
    assert result.stats.ipv6_packets == 2
    assert (result.stats.malformed_packets, result.stats.packets) == (1, 3)
    assert result.stats.unparsed_bytes == 2 * RECORD_BYTES


def test_every_record_is_accounted_for() -> None:
    frames = [FRAME, FRAME[:20], ethernet(b"\x45" + bytes(30), 0x0800), ethernet(b"\x45" + bytes(50))]
    result = parse_bytes(pcap([Record(f) for f in frames] + [Record(FRAME, captured=30)]))
    s = result.stats
    assert (s.ipv6_packets, s.truncated_packets, s.not_ipv6_packets, s.malformed_packets) == (1, 2, 1, 1)
    assert s.packets == s.ipv6_packets + s.skipped_packets == 5
