"""A mixed capture for the dataset tests, and every derived dataset computed in plain Python.

The oracle works on the rows of the enriched table with ``ipaddress``, dicts and sets: it shares no
code with the SQL the engines run, so an agreement between the two means something.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import struct
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa

from survey6.aggregator.enrich import enrich
from survey6.aggregator.parse import parse_bytes
from survey6.aggregator.settings import DatasetSettings
from survey6.wire.v1 import capture_pb2
from unit.aggregator.pcapbuild import (
    Record,
    dns_message,
    ethernet,
    fragment_header,
    icmp6,
    ipv6,
    options_header,
    pcap,
    tcp,
    udp,
)

NS_PER_S = 1_000_000_000
MIDNIGHT_NS = 1_700_006_400 * NS_PER_S  # 2023-11-15T00:00:00Z
SCANNER_64S = "2001:db8:bad::64"  # one TCP SYN to each of many /64s
SCANNER_SWEEP = "2001:db8:bad::5"  # ICMPv6 echo to many addresses of one /64
RESOLVER = "2001:db8:53::53"
CLIENTS = ["2001:db8:1:1::10", "2001:db8:1:1::11", "2001:db8:1:2:211:22ff:fe33:4455", "fd00::1"]
ROUTER = "fe80::211:22ff:fe33:4401"


def mixed_frames(seed: int, *, first_ns: int, span_s: int, sweep: int = 40, spread: int = 12) -> list[Record]:
    """Scans, DNS over UDP and TCP, ICMPv6, fragments, extension headers and VLAN tags, spread over
    ``span_s`` seconds from ``first_ns``; ``sweep`` and ``spread`` size the two scanners."""
    rng = random.Random(seed)
    frames: list[bytes] = []
    for i in range(spread):
        frames.append(
            ipv6(SCANNER_64S, f"2001:db8:100:{i:x}::1", 6, tcp(40000 + i, (22, 80, 443)[i % 3], 0x02))
        )
    for i in range(sweep):
        frames.append(
            ipv6(SCANNER_SWEEP, f"2001:db8:200::{i + 1:x}", 58, icmp6(128, 0, struct.pack("!HH", 1, i)))
        )
    for i in range(30):
        client = rng.choice(CLIENTS)
        name, qtype = rng.choice([("www.example.org", 28), ("example.net", 1), ("_ipp._tcp.local", 12)])
        query = dns_message(name, qtype, ident=i)
        frames.append(ipv6(client, RESOLVER, 17, udp(50000 + i, 53, query)))
        answer = dns_message(name, qtype, response=True, rcode=rng.choice([0, 0, 3]), ident=i)
        frames.append(ipv6(RESOLVER, client, 17, udp(53, 50000 + i, answer), hop_limit=57))
    tcp_query = dns_message("axfr.example.org", 252, ident=99)
    frames.append(
        ipv6(CLIENTS[0], RESOLVER, 6, tcp(45000, 53, 0x18, struct.pack("!H", len(tcp_query)) + tcp_query))
    )
    for i in range(20):  # web traffic both ways, some with options headers
        client = rng.choice(CLIENTS)
        body = tcp(51000 + i, 443, rng.choice([0x02, 0x10, 0x18]), bytes(rng.randrange(0, 200)))
        if i % 4 == 0:
            frames.append(ipv6(client, "2001:db8:443::1", 0, options_header(6) + body))
        else:
            frames.append(ipv6(client, "2001:db8:443::1", 6, body))
        frames.append(ipv6("2001:db8:443::1", client, 6, tcp(443, 51000 + i, 0x12), hop_limit=52))
    first = fragment_header(17, 0, True, 0xF00D) + udp(7000, 7001, bytes(64))
    frames.append(ipv6(CLIENTS[1], "2001:db8:443::2", 44, first))
    frames.append(ipv6(CLIENTS[1], "2001:db8:443::2", 44, fragment_header(17, 72, False, 0xF00D) + bytes(40)))
    frames.append(ipv6(ROUTER, "ff02::1", 58, icmp6(134, 0, bytes(12)), hop_limit=255))
    frames.append(ipv6("fe80::1", "ff02::1:ff00:10", 58, icmp6(135, 0, bytes(20)), hop_limit=255))
    frames.append(ipv6("2001:db8:1:1::10", "2001:db8:443::3", 59, b""))
    rng.shuffle(frames)
    records = []
    for i, frame in enumerate(frames):
        vlans = [(0x8100, 100)] if i % 5 == 0 else []
        ts = first_ns + i * span_s * NS_PER_S // len(frames) + rng.randrange(1000)
        records.append(Record(ethernet(frame, vlans=vlans), ts))
    return records


def metadata(probe_id: str, sequence: int) -> capture_pb2.CaptureMetadata:
    return capture_pb2.CaptureMetadata(
        probe_id=probe_id,
        labels={"site": "test"},
        interface=capture_pb2.InterfaceFacts(name="eth0", link_type=1),
        sequence=sequence,
    )


def enriched(data: bytes, probe_id: str, sequence: int) -> pa.Table:
    return enrich(parse_bytes(data), metadata(probe_id, sequence))


def mixed_capture(seed: int, *, first_ns: int = MIDNIGHT_NS - 90 * NS_PER_S, span_s: int = 180) -> bytes:
    """A pcap of ``mixed_frames``; by default it runs from 23:58:30 to 00:01:30 UTC."""
    return pcap(mixed_frames(seed, first_ns=first_ns, span_s=span_s))


# -- the oracle --------------------------------------------------------------------------------------

Row = dict[str, Any]
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def expected(dataset: str, packets: Iterable[Row], settings: DatasetSettings) -> list[Row]:
    """``dataset`` computed from enriched packet rows (``pa.Table.to_pylist``), sorted."""
    rows = list(packets)
    return canonical(_ORACLES[dataset](rows, settings))


def canonical(rows: Iterable[Row]) -> list[Row]:
    """Rows in one order, whatever engine or oracle made them (a key of None-aware tuples)."""
    return sorted(
        rows, key=lambda row: tuple((v is not None, v if v is not None else 0) for v in row.values())
    )


def text(address: bytes) -> str:
    return str(ipaddress.IPv6Address(address))


def prefix(address: bytes, bits: int) -> str:
    value = int.from_bytes(address, "big")
    return str(ipaddress.IPv6Network((value >> (128 - bits) << (128 - bits), bits)))


def timestamp(ns: int | None) -> dt.datetime | None:
    return None if ns is None else EPOCH + dt.timedelta(microseconds=ns // 1000)


def interval(ns: int | None, seconds: float) -> dt.datetime | None:
    width = round(seconds * 1_000_000) * 1000
    return None if ns is None else timestamp(ns - ns % width)


def _flows(rows: list[Row], s: DatasetSettings) -> list[Row]:
    names = ("protocol", "src_port", "dst_port", "icmp_type", "icmp_code", "hop_limit", "tcp_flags")
    counts = Counter(
        (interval(r["timestamp_ns"], s.flow_interval_s), text(r["src"]), text(r["dst"]))
        + tuple(r[n] for n in names)
        + (r["payload_length"] + 40,)
        for r in rows
    )
    keys = ("interval_start", "src", "dst", *names, "ip_length")
    return [dict(zip(keys, key, strict=True)) | {"packets": n} for key, n in counts.items()]


def _rollup(rows: list[Row], key: Callable[[Row], Any]) -> dict[Any, Row]:
    groups: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    out = {}
    for k, members in groups.items():
        stamps = [r["timestamp_ns"] for r in members if r["timestamp_ns"] is not None]
        protocols = [r["protocol"] for r in members]
        out[k] = {
            "members": members,
            "scope": min(r["src_scope"] for r in members),
            "sources": len({r["src"] for r in members}),
            "packets": len(members),
            "bytes": sum(r["wire_length"] for r in members),
            "tcp_packets": protocols.count(6),
            "udp_packets": protocols.count(17),
            "icmpv6_packets": protocols.count(58),
            "destinations": len({r["dst"] for r in members}),
            "destination_64s": len({r["dst_prefix64"] for r in members}),
            "destination_ports": len({r["dst_port"] for r in members} - {None}),
            "protocols": len(set(protocols) - {None}),
            "first_seen": timestamp(min(stamps)) if stamps else None,
            "last_seen": timestamp(max(stamps)) if stamps else None,
        }
    return out


_METRICS = (
    "packets bytes tcp_packets udp_packets icmpv6_packets destinations destination_64s destination_ports "
    "protocols first_seen last_seen"
).split()


def _sources_128(rows: list[Row], s: DatasetSettings) -> list[Row]:
    return [
        {"src": text(src), "scope": g["scope"], "iid_class": g["members"][0]["src_iid_class"]}
        | {m: g[m] for m in _METRICS}
        for src, g in _rollup(rows, lambda r: r["src"]).items()
    ]


def _sources_prefix(bits: int) -> Callable[[list[Row], DatasetSettings], list[Row]]:
    def compute(rows: list[Row], s: DatasetSettings) -> list[Row]:
        out = []
        for _, g in _rollup(rows, lambda r: r[f"src_prefix{bits}"]).items():
            pairs = {(r["src"], r["src_iid_class"]) for r in g["members"]}
            by_class = Counter(cls for _, cls in pairs)
            # most sources first; among equals the first name, and no class (None) last
            top = sorted(by_class.items(), key=lambda item: (-item[1], item[0] is None, item[0] or ""))[0][0]
            head = {"prefix": prefix(g["members"][0]["src"], bits), "scope": g["scope"], "iid_class": top}
            out.append(head | {"sources": g["sources"]} | {m: g[m] for m in _METRICS})
        return out

    return compute


def _series(*, ports: bool) -> Callable[[list[Row], DatasetSettings], list[Row]]:
    def compute(rows: list[Row], s: DatasetSettings) -> list[Row]:
        groups: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
        for r in rows:
            if ports and not (r["protocol"] in (6, 17) and r["dst_port"] is not None):
                continue
            key = (interval(r["timestamp_ns"], s.series_interval_s), r["protocol"])
            groups[key + ((r["dst_port"],) if ports else ())].append(r)
        names = ("interval_start", "protocol") + (("dst_port",) if ports else ())
        return [
            dict(zip(names, key, strict=True))
            | {
                "packets": len(members),
                "bytes": sum(r["wire_length"] for r in members),
                "sources": len({r["src"] for r in members}),
            }
            for key, members in groups.items()
        ]

    return compute


def _dns_queries(rows: list[Row], s: DatasetSettings) -> list[Row]:
    return [
        {
            "time": timestamp(r["timestamp_ns"]),
            "timestamp_ns": r["timestamp_ns"],
            "src": text(r["src"]),
            "dst": text(r["dst"]),
            "protocol": r["protocol"],
            "src_port": r["src_port"],
            "dst_port": r["dst_port"],
            "qname": r["dns_qname"],
            "qtype": r["dns_qtype"],
            "rcode": r["dns_rcode"],
            "is_response": r["dns_is_response"],
        }
        for r in rows
        if r["dns_qname"] is not None
    ]


def _scanners(rows: list[Row], s: DatasetSettings) -> list[Row]:
    out = []
    for row in _sources_128(rows, s):
        by_destinations = row["destinations"] >= s.scanner_min_destinations
        by_64s = row["destination_64s"] >= s.scanner_min_destination_64s
        if by_destinations or by_64s:
            out.append(row | {"met_destinations": by_destinations, "met_destination_64s": by_64s})
    return out


_ORACLES: dict[str, Callable[[list[Row], DatasetSettings], list[Row]]] = {
    "flows": _flows,
    "sources_128": _sources_128,
    "sources_64": _sources_prefix(64),
    "sources_48": _sources_prefix(48),
    "protocol_series": _series(ports=False),
    "port_series": _series(ports=True),
    "dns_queries": _dns_queries,
    "scanners": _scanners,
}
