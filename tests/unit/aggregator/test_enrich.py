"""enrich: file metadata as constant columns, address classes and prefix keys, sidecars."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

import pytest

from survey6.aggregator.enrich import enrich, enrich_file, read_sidecar, sidecar_path
from survey6.aggregator.parse import parse_bytes
from survey6.aggregator.schema import ENRICHED_SCHEMA
from survey6.common import capture_metadata
from survey6.common.errors import MetadataError
from survey6.wire.v1 import capture_pb2
from unit.aggregator.pcapbuild import NgInterface, NgSection, Record, ethernet, ipv6, pcap, pcapng, tcp

SRC, DST = "2001:db8:1234:5678:0211:22ff:fe33:4455", "ff02::1"
PACKETS = [
    Record(ethernet(ipv6(SRC, DST, 6, tcp(1, 2)))),
    Record(ethernet(ipv6("fe80::1", "2002:c000:201::1", 59, b""))),
]


def metadata(data: bytes, **changes: object) -> capture_pb2.CaptureMetadata:
    meta = capture_pb2.CaptureMetadata(
        probe_id="p-7",
        labels={"site": "ams", "asn": "64500"},
        interface=capture_pb2.InterfaceFacts(name="eth0", link_type=1),
        sequence=42,
        packets=len(PACKETS),
        captured_bytes=sum(len(r.data) for r in PACKETS),
        file_size_bytes=len(data),
        sha256_hex=hashlib.sha256(data).hexdigest(),
        file_format="pcap",
        schema_version=capture_metadata.SCHEMA_VERSION,
    )
    for key, value in changes.items():
        setattr(meta, key, value)
    return meta


def test_metadata_and_address_columns() -> None:
    data = pcap(PACKETS)
    table = enrich(parse_bytes(data), metadata(data))

    assert table.schema == ENRICHED_SCHEMA
    first, second = table.to_pylist()
    assert (first["probe_id"], first["interface_name"], first["sequence"]) == ("p-7", "eth0", 42)
    assert dict(first["labels"]) == {"asn": "64500", "site": "ams"}
    assert (first["src_scope"], first["src_iid_class"]) == ("documentation", "ieee-derived")
    assert (first["dst_scope"], first["dst_iid_class"]) == ("multicast-link-local", None)
    assert (second["src_scope"], second["dst_scope"], second["dst_iid_class"]) == (
        "link-local",
        "6to4",
        "low-byte",
    )
    src = int(ipaddress.IPv6Address(SRC))
    assert (first["src_prefix64"], first["src_prefix48"]) == (src >> 64, src >> 80)


def test_without_metadata_the_constants_are_empty() -> None:
    table = enrich(parse_bytes(pcap(PACKETS)))
    row = table.to_pylist()[0]
    assert (row["probe_id"], row["labels"], row["interface_name"], row["sequence"]) == ("", [], "", 0)


def test_pcapng_interface_names_win() -> None:
    section = NgSection(
        [NgInterface(1, "wan0"), NgInterface(1)], [PACKETS[0], Record(PACKETS[1].frame, interface=1)]
    )
    data = pcapng([section])
    table = enrich(parse_bytes(data), metadata(data, file_format="pcapng"))
    assert table.column("interface_name").to_pylist() == ["wan0", "eth0"]


def test_address_text_on_request() -> None:
    table = enrich(parse_bytes(pcap(PACKETS)), address_text=True)
    assert table.column("src_text").to_pylist() == [str(ipaddress.IPv6Address(SRC)), "fe80::1"]
    assert table.column("dst_text").to_pylist() == ["ff02::1", "2002:c000:201::1"]
    assert "src_text" not in enrich(parse_bytes(pcap(PACKETS))).column_names


def test_empty_capture_enriches_to_an_empty_table() -> None:
    table = enrich(parse_bytes(pcap([])), address_text=True)
    assert table.num_rows == 0
    assert table.schema.names[: len(ENRICHED_SCHEMA)] == ENRICHED_SCHEMA.names


def test_enrich_file_reads_the_sidecar(tmp_path: Path) -> None:
    data = pcap(PACKETS)
    path = tmp_path / "42.pcap"
    path.write_bytes(data)
    assert read_sidecar(path) is None
    sidecar_path(path).write_text(capture_metadata.to_json(metadata(data)))

    capture = enrich_file(path)
    assert capture.metadata is not None and capture.metadata.sequence == 42
    assert capture.table.column("probe_id").to_pylist() == ["p-7", "p-7"]
    assert capture.stats.ipv6_packets == 2

    other = enrich_file(path, metadata(data, probe_id="given"))
    assert set(other.table.column("probe_id").to_pylist()) == {"given"}


def test_invalid_sidecar_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "1.pcap"
    path.write_bytes(pcap(PACKETS))
    sidecar_path(path).write_text('{"probe_id": 5}')
    with pytest.raises(MetadataError, match="1.json"):
        enrich_file(path)
