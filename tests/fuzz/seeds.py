"""Writes the seed inputs of tests/data/fuzz/<target>/ (``seed-*``; reproducers are ``crash-*``).

    .venv/bin/python tests/fuzz/seeds.py

Seeds are small, nearly valid inputs that reach deep into each target, so the fuzzer mutates from
there instead of rediscovering the file formats. Re-running rewrites the same bytes.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from survey6.common.capture_metadata import to_json  # noqa: E402
from survey6.wire.v1 import capture_pb2  # noqa: E402
from unit.aggregator import pcapbuild as b  # noqa: E402

CORPUS_DIR = TESTS_DIR / "data" / "fuzz"


def pcap_seeds() -> dict[str, bytes]:
    seeds = {f"seed-{name}": data for name, data in b.data_files().items() if data}
    dns_pointer = b.dns_message("a.example", 1)[:-4] + b"\x03www\xc0\x0c" + b"\x00\x01\x00\x01"
    loop = b.dns_message("a", 1)[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    frames = [
        b.ethernet(b.ipv6("2001:db8::1", "2001:db8::2", 17, b.udp(1, 53, dns_pointer))),
        b.ethernet(b.ipv6("2001:db8::1", "2001:db8::2", 17, b.udp(1, 53, loop))),
        b.ethernet(b.ipv6("2001:db8::1", "2001:db8::2", 6, b.tcp(53, 9, 0x18, struct.pack("!H", 30) + loop))),
        b.ethernet(b.ipv6("2001:db8::1", "2001:db8::2", 51, b.ah_header(135) + b.mobility_header())),
        b.sll(b.ipv6("fe80::1", "ff02::1", 132, b.sctp(1, 2))),
    ]
    seeds["seed-dns-tcp-ah-sll.pcap"] = b.pcap(
        [b.Record(f) for f in frames[:4]] + [b.Record(frames[4])], snaplen=262144
    )
    section = b.NgSection(
        [b.NgInterface(113, "sll", tsresol=0x86, tsoffset_s=7), b.NgInterface(101, "raw", snaplen=64)],
        [b.Record(frames[4]), b.Record(b.ipv6("::1", "::2", 59, b""), interface=1), b.Record(frames[0])],
        order=">",
        obsolete=[0],
        simple=[2],
    )
    seeds["seed-big-endian-obsolete.pcapng"] = b.pcapng([section, b.NgSection([b.NgInterface(1)])])
    return seeds


def metadata_seeds() -> dict[str, bytes]:
    data = b.pcap([b.Record(b.ethernet(b.ipv6("2001:db8::1", "2001:db8::2", 59, b"")))])
    metadata = capture_pb2.CaptureMetadata(
        probe_id="p-0123456789abcdef",
        sequence=7,
        snaplen_bytes=262144,
        filter="ip6 or (vlan and ip6)",
        first_packet_time_ns=b.T0_NS,
        last_packet_time_ns=b.T0_NS,
        window_start_ns=b.T0_NS - 60_000_000_000,
        window_end_ns=b.T0_NS + 60_000_000_000,
        packets=1,
        captured_bytes=len(data) - 40,
        file_size_bytes=len(data),
        sha256_hex=hashlib.sha256(data).hexdigest(),
        file_format="pcap",
        schema_version=1,
        labels={"site": "lab", "asn": "64496"},
    )
    metadata.interface.name = "eth0"
    metadata.interface.ipv6_prefixes.append("2001:db8::/64")
    metadata.host.hostname = "probe-1"
    metadata.kernel_delta.dropped_packets = 3
    pcapng = capture_pb2.CaptureMetadata()
    pcapng.CopyFrom(metadata)
    pcapng.file_format, pcapng.packets, pcapng.file_size_bytes = "pcapng", 0, 0
    return {
        "seed-valid-pcap.json": to_json(metadata).encode(),
        "seed-valid-pcapng.json": to_json(pcapng).encode(),
        "seed-compact.json": to_json(metadata).replace("\n", "").replace("  ", "").encode(),
    }


def upload_seeds() -> dict[str, bytes]:
    from fuzz.upload_harness import encode_case, seed_cases

    return {f"seed-{name}": encode_case(case) for name, case in seed_cases().items()}


def main() -> None:
    targets = sys.argv[1:] or ["pcap", "metadata", "upload"]
    makers = {"pcap": pcap_seeds, "metadata": metadata_seeds, "upload": upload_seeds}
    for target in targets:
        seeds = makers[target]()
        directory = CORPUS_DIR / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (directory / name).write_bytes(data)


if __name__ == "__main__":
    main()
