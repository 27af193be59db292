"""Aggregator test inputs: good captures with valid sidecars, landed like the server lands them, and
every kind of bad file the pipeline must quarantine (from the committed samples and built here)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from survey6.aggregator.settings import AggregatorSettings
from survey6.common import capture_metadata
from survey6.wire.v1 import capture_pb2
from unit.aggregator.pcapbuild import Record, ethernet, ipv6, pcap, udp

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "aggregator"
# 2024-05-06T07:08:09Z
FIRST_NS = 1_714_979_289_000_000_000
NS_PER_DAY = 86_400 * 1_000_000_000
ETHERNET_IPV6_HEADERS_BYTES = 14 + 40


def frames(count: int, first_ns: int = FIRST_NS, step_ns: int = 1_000_000) -> list[Record]:
    """IPv6/UDP in Ethernet from documentation-prefix sources (distinct for the first 65535)."""
    return [
        Record(
            ethernet(
                ipv6(
                    f"2001:db8:{i % 7:x}::{i % 0xFFFF + 1:x}",
                    "2001:db8:ffff::1",
                    17,
                    udp(1024 + i % 60000, 53),
                )
            ),
            first_ns + i * step_ns,
        )
        for i in range(count)
    ]


def good_pcap(count: int = 20, first_ns: int = FIRST_NS, step_ns: int = 1_000_000) -> bytes:
    return pcap(frames(count, first_ns, step_ns))


def metadata_for(
    data: bytes, records: list[Record], *, probe_id: str, sequence: int
) -> capture_pb2.CaptureMetadata:
    """Capture metadata that validates, as a probe writes it for ``data`` (a pcap of ``records``)."""
    first = records[0].ts_ns if records else 0
    last = records[-1].ts_ns if records else 0
    window = (first or FIRST_NS) - (first or FIRST_NS) % 60_000_000_000
    meta = capture_pb2.CaptureMetadata(
        probe_id=probe_id,
        sequence=sequence,
        snaplen_bytes=65535,
        filter="ip6 or (vlan and ip6)",
        first_packet_time_ns=first,
        last_packet_time_ns=last,
        window_start_ns=window,
        window_end_ns=window + 60_000_000_000,
        packets=len(records),
        captured_bytes=sum(len(r.data) for r in records),
        file_size_bytes=len(data),
        sha256_hex=hashlib.sha256(data).hexdigest(),
        link_utilisation_mean_ratio=-1,
        link_utilisation_peak_ratio=-1,
        file_format="pcap",
        schema_version=capture_metadata.SCHEMA_VERSION,
        labels={"site": "test"},
    )
    meta.interface.name = "eth0"
    meta.interface.link_type = 1
    meta.host.hostname = "aggregator-test"
    return meta


@dataclass(frozen=True)
class Landed:
    probe_id: str
    sequence: int
    landing_path: str  # relative to the landing root, as the server's job names it
    path: Path
    sha256_hex: str
    packets: int


def land(
    landing_root: Path,
    probe_id: str,
    sequence: int,
    count: int = 20,
    first_ns: int = FIRST_NS,
    step_ns: int = 1_000_000,
) -> Landed:
    """Writes a capture and its sidecar where the server lands them (sidecar first, as it does)."""
    records = frames(count, first_ns, step_ns)
    data = pcap(records)
    meta = metadata_for(data, records, probe_id=probe_id, sequence=sequence)
    day = dt.datetime.fromtimestamp(first_ns / 1e9, dt.UTC)
    relative = f"{probe_id}/{day:%Y/%m/%d}/{sequence:012d}.pcap"
    path = landing_root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(capture_metadata.to_json(meta), encoding="utf-8")
    path.write_bytes(data)
    return Landed(probe_id, sequence, relative, path, meta.sha256_hex, count)


def bad_files() -> dict[str, tuple[bytes, str]]:
    """Every kind of input that must be quarantined: file name → (bytes, expected reason code)."""
    good = good_pcap(5)
    wrong_magic = b"\xa1\xb2\xc3\xd5" + good[4:]  # one bit off the big-endian µs magic
    snaplen_cut = pcap(
        [Record(r.frame, r.ts_ns, captured=ETHERNET_IPV6_HEADERS_BYTES - 10) for r in frames(4)]
    )
    return {
        "empty.pcap": ((DATA_DIR / "empty.pcap").read_bytes(), "unreadable"),
        "garbage.bin": ((DATA_DIR / "garbage.bin").read_bytes(), "unreadable"),
        "wrong-magic.pcap": (wrong_magic, "unreadable"),
        "header-cut.pcap": (good[:20], "unreadable"),
        "truncated-tail.pcap": ((DATA_DIR / "truncated-tail.pcap").read_bytes(), "damaged"),
        "snaplen-cut.pcap": (snaplen_cut, "snaplen-cut"),
    }


def settings_for(tmp_path: Path, **changes: object) -> AggregatorSettings:
    """Settings with every directory under ``tmp_path`` and the embedded engine."""
    return AggregatorSettings(
        landing_dir=tmp_path / "landing",
        output_dir=tmp_path / "datasets",
        state_dir=tmp_path / "state",
        engine="duckdb",
        **changes,  # type: ignore[arg-type]
    )


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: relative path → (size, mtime in ns, SHA-256)."""
    snapshot = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            stat = path.stat()
            snapshot[str(path.relative_to(root))] = (
                stat.st_size,
                stat.st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return snapshot
