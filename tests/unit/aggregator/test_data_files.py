"""The committed sample captures: reproducible from the builders, and parsed as dpkt reads them."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import dpkt
import pytest

from survey6.aggregator.enrich import enrich
from survey6.aggregator.errors import ParseError
from survey6.aggregator.parse import parse_file
from unit.aggregator.pcapbuild import data_files, dpkt_row

DATA = Path(__file__).resolve().parents[2] / "data" / "aggregator"


def test_committed_files_are_what_the_builders_write() -> None:
    expected = data_files()
    assert sorted(p.name for p in DATA.iterdir() if p.name != "README.md") == sorted(expected)
    for name, data in expected.items():
        assert (DATA / name).read_bytes() == data, f"{name} differs: regenerate with write_data_files()"
    assert sum(len(d) for d in expected.values()) < 64 * 1024


@pytest.mark.parametrize(
    "name", ["ethernet-mixed.pcap", "raw-ipv6-big-endian-nano.pcap", "truncated-tail.pcap"]
)
def test_pcap_files_against_dpkt_reading_the_same_file(name: str) -> None:
    result = parse_file(DATA / name)
    with open(DATA / name, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        link = reader.datalink()
        expected = [(ts, row) for ts, buf in reader if (row := dpkt_row(link, buf)) is not None]
    got = result.table.to_pylist()
    assert len(got) == len(expected) == result.stats.ipv6_packets
    for mine, (ts, theirs) in zip(got, expected, strict=True):
        assert {k: mine[k] for k in theirs} == theirs
        # dpkt gives float seconds for µs files, Decimal for ns files: both print exactly.
        assert mine["timestamp_ns"] == int(Decimal(str(ts)) * 1_000_000_000)


def test_ethernet_mixed() -> None:
    result = parse_file(DATA / "ethernet-mixed.pcap")
    s = result.stats
    assert (s.packets, s.ipv6_packets, s.not_ipv6_packets, s.truncated_l4_rows, s.dns_messages) == (
        14,
        12,
        2,
        0,
        3,
    )
    table = result.table
    assert table.column("dns_qname").to_pylist()[2:5] == [
        "www.example.org",
        "www.example.org",
        "_ipp._tcp.local",
    ]
    assert table.column("ext_headers").to_pylist()[7:11] == [[0], [0, 43, 44, 60], [44], [50]]
    assert table.column("protocol").to_pylist()[7:11] == [58, 6, 6, 50]
    assert table.column("dst_port").to_pylist()[8:10] == [443, None]
    last = table.slice(11).to_pylist()[0]
    assert (last["captured_length"], last["wire_length"], last["dst_port"]) == (128, 1062, 33334)
    enriched = enrich(result).to_pylist()
    assert [r["src_iid_class"] for r in enriched[8:11]] == ["embedded-ipv4", "embedded-ipv4", "isatap"]
    assert enriched[8]["dst_iid_class"] == "embedded-port"


def test_two_interfaces() -> None:
    result = parse_file(DATA / "two-interfaces.pcapng")
    assert [i.name for i in result.interfaces] == ["eth0", "any"]
    assert result.table.column("interface_index").to_pylist() == [0, 1, 0]
    assert result.table.column("timestamp_ns").null_count == 1  # the simple packet block
    assert result.stats.not_ipv6_packets == 1


def test_damaged_and_empty_files() -> None:
    tail = parse_file(DATA / "truncated-tail.pcap").stats
    assert (tail.ipv6_packets, tail.truncated_packets) == (2, 1)
    assert parse_file(DATA / "header-only.pcap").table.num_rows == 0
    with pytest.raises(ParseError, match="empty file"):
        parse_file(DATA / "empty.pcap")
    with pytest.raises(ParseError, match="not a pcap or pcapng file"):
        parse_file(DATA / "garbage.bin")


def test_the_file_is_unmapped_once_parsed() -> None:
    # parse_file maps the capture; nothing it returns may keep the mapping (and the file) alive.
    result = parse_file(DATA / "two-interfaces.pcapng")
    assert "two-interfaces.pcapng" not in Path("/proc/self/maps").read_text()
    assert result.table.num_rows == 3
