"""What a report holds, and the read-only DuckDB queries that gather it from the datasets.

``read`` opens an in-memory DuckDB connection, makes one view per dataset over exactly the selected
Parquet files (``report`` chooses them), and fills a ``Report`` with plain values. Every number comes
from the derived datasets, which are small, except the packet and byte totals, the probes' labels and
the exact source count of the top /48s, which only the ``packets`` dataset holds.

Counts that the datasets keep per probe and day (a scanner's destinations) are shown as the largest
single probe-day value, which is what the scanner criteria were tested against; counts of distinct
things over the whole selection (sources, /64s, /48s) are computed exactly.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from survey6.aggregator import datasets
from survey6.aggregator.datasets import Partition
from survey6.aggregator.errors import AggregatorError

SERIES_POINTS_MAX = 240  # time buckets in the protocol chart: about one per 4 px of its width
PROTOCOLS_SHOWN = 6  # protocols drawn on their own; the rest are summed as "other"
OTHER = "other"
NO_IID_CLASS = "none"  # multicast, unspecified and loopback sources have no interface ID
NXDOMAIN_RCODE = 3
_PREFIX48_SHIFT_BITS = 128 - 48  # a /48's network address → the packets' right-aligned src_prefix48
# Bucket widths a reader takes in at a glance ("per 5 minutes"), tried from the smallest.
_NICE_BUCKETS_S: tuple[int, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
_NICE_BUCKETS_S += (10800, 21600, 43200, 86400, 172800, 604800)
US_PER_S = 1_000_000
DEFAULT_SERIES_INTERVAL_US = 60 * US_PER_S  # a single interval start tells no step: the default
DATASETS_READ = ("sources_128", "sources_64", "sources_48", "protocol_series", "scanners", "dns_queries")
PROTOCOL_NAMES = {
    4: "IPv4-in-IPv6",
    6: "TCP",
    17: "UDP",
    41: "IPv6-in-IPv6",
    47: "GRE",
    50: "ESP",
    51: "AH",
    58: "ICMPv6",
    59: "no next header",
    132: "SCTP",
}
DNS_TYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    43: "DS",
    46: "RRSIG",
    48: "DNSKEY",
    52: "TLSA",
    64: "SVCB",
    65: "HTTPS",
    251: "IXFR",
    252: "AXFR",
    255: "ANY",
    257: "CAA",
}


# -- what a report holds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeRow:
    probe_id: str
    labels: tuple[str, ...]  # "key=value", every labelling the probe's files carried
    packets: int
    bytes: int
    first_date: str
    last_date: str
    days: int
    files: int


@dataclass(frozen=True)
class Summary:
    probes: tuple[ProbeRow, ...]
    dates: tuple[str, ...]  # the UTC dates that have packets
    partitions: int
    files: int  # capture files (one capture split at midnight counts once)
    packets: int
    bytes: int
    first_seen: dt.datetime | None
    last_seen: dt.datetime | None
    sources_128: int | None  # None: the derived dataset is not built
    sources_64: int | None
    sources_48: int | None


@dataclass(frozen=True)
class SourceRow:
    """A source address or /48 over the whole selection."""

    key: str  # RFC 5952 text; a prefix ends in "/48"
    scope: str
    iid_class: str | None  # of a /48: the class most of its sources have
    packets: int
    bytes: int
    sources: int | None  # distinct addresses in a /48; None for an address
    destinations: int  # the most it reached at one probe on one day
    probes: int
    first_seen: dt.datetime | None
    last_seen: dt.datetime | None


@dataclass(frozen=True)
class ProtocolMix:
    bucket_s: int
    starts: tuple[dt.datetime, ...]  # every bucket of the span, empty ones included
    series: tuple[tuple[str, tuple[int, ...]], ...]  # (protocol, packets per bucket), largest first
    untimed_packets: int  # packets without a timestamp (pcapng simple blocks): in no bucket


@dataclass(frozen=True)
class ClassShare:
    name: str
    sources: int
    packets: int


@dataclass(frozen=True)
class ScannerRow:
    src: str
    scope: str
    iid_class: str | None
    packets: int
    destinations: int  # each the most in one probe-day: what the criteria were tested against
    destination_64s: int
    destination_ports: int
    met_destinations: bool
    met_destination_64s: bool
    probes: tuple[str, ...]
    days: int
    first_seen: dt.datetime | None
    last_seen: dt.datetime | None


@dataclass(frozen=True)
class DnsNameRow:
    qname: str
    queries: int
    responses: int
    nxdomain: int  # responses with rcode NXDOMAIN
    clients: int  # distinct sources of the queries
    qtypes: tuple[str, ...]


@dataclass(frozen=True)
class DnsTypeRow:
    qtype: str
    queries: int
    responses: int


@dataclass(frozen=True)
class Report:
    output_root: Path
    generated_at: dt.datetime
    dates: tuple[str | None, str | None] | None  # the filter as asked; None ends are open
    probe_ids: tuple[str, ...] | None
    top_n: int
    summary: Summary
    top_sources: tuple[SourceRow, ...]
    top_48s: tuple[SourceRow, ...]
    protocol_mix: ProtocolMix | None
    scopes: tuple[ClassShare, ...]
    iid_classes: tuple[ClassShare, ...]
    scanners: tuple[ScannerRow, ...]
    scanner_count: int | None  # candidates in all, of which ``scanners`` are the top; None: not built
    scanner_criteria: tuple[int, int] | None  # (destinations, destination /64s) of the given settings
    dns_names: tuple[DnsNameRow, ...]
    dns_types: tuple[DnsTypeRow, ...]
    dns_messages: int | None  # None: dns_queries is not built
    notes: tuple[str, ...]  # what the page must say is missing


Layout = dict[str, dict[Partition, list[Path]]]  # dataset → partition → its Parquet files


def read(
    selected: Layout,
    *,
    output_root: Path,
    dates: tuple[str | None, str | None] | None,
    probe_ids: tuple[str, ...] | None,
    top_n: int,
    criteria: tuple[int, int] | None,
    notes: tuple[str, ...],
) -> Report:
    """The report of the ``selected`` files; the other arguments are recorded in it as they are.

    Raises:
        AggregatorError: a dataset file cannot be read.
    """
    connection = duckdb.connect(config={"autoinstall_known_extensions": False})
    try:
        reader = _Reader(connection, selected)
        summary = _summary(reader, selected)
        top_sources, top_48s = _top_sources(reader, top_n)
        scanners, scanner_count = _scanners(reader, top_n)
        dns_names, dns_types, dns_messages = _dns(reader, top_n)
        scopes, iid_classes = _class_shares(reader)
        protocol_mix = _protocol_mix(reader)
    except duckdb.Error as exc:
        raise AggregatorError(f"cannot read the datasets under {output_root}: {exc}") from exc
    finally:
        connection.close()
    return Report(
        output_root=output_root,
        generated_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        dates=dates,
        probe_ids=probe_ids,
        top_n=top_n,
        summary=summary,
        top_sources=top_sources,
        top_48s=top_48s,
        protocol_mix=protocol_mix,
        scopes=scopes,
        iid_classes=iid_classes,
        scanners=scanners,
        scanner_count=scanner_count,
        scanner_criteria=criteria,
        dns_names=dns_names,
        dns_types=dns_types,
        dns_messages=dns_messages,
        notes=notes,
    )


# -- the queries ---------------------------------------------------------------------------------------


class _Reader:
    """One view per dataset over exactly the selected files, with ``date`` and ``probe_id`` columns."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, selected: Layout) -> None:
        self._connection = connection
        self._connection.execute("SET TimeZone = 'UTC'")  # timestamps come back as UTC datetimes
        self.available = {name for name, parts in selected.items() if parts}
        for name in self.available:
            # A view cannot take parameters, so the paths are quoted as SQL literals.
            files = ", ".join(_literal(str(path)) for parts in selected[name].values() for path in parts)
            # The partition columns are text, as the directory names are: an all-digit probe id
            # must not become a number.
            self._connection.execute(
                f"CREATE TEMP VIEW {name} AS SELECT * FROM read_parquet([{files}], hive_partitioning = true, "
                "hive_types = {'date': VARCHAR, 'probe_id': VARCHAR}, file_row_number = true)"
            )

    def rows(self, query: str, parameters: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self._connection.execute(query, parameters or []).fetchall()

    def one(self, query: str, parameters: list[Any] | None = None) -> tuple[Any, ...]:
        return self.rows(query, parameters)[0]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _summary(reader: _Reader, selected: Layout) -> Summary:
    packet_parts = selected[datasets.PACKETS]
    # A capture's files carry its sequence and SHA-256 in their name, whichever date they fall on.
    files_of: dict[str, set[str]] = defaultdict(set)
    for partition, paths in packet_parts.items():
        files_of[partition.probe_id].update(path.name for path in paths)
    probes: list[ProbeRow] = []
    packets = octets = 0
    if datasets.PACKETS in reader.available:
        probes = _probes(reader, files_of)
        packets, octets = sum(p.packets for p in probes), sum(p.bytes for p in probes)
    distinct = {}
    for name, key in (("sources_128", "src"), ("sources_64", "prefix"), ("sources_48", "prefix")):
        distinct[name] = (
            reader.one(f"SELECT count(DISTINCT {key}) FROM {name}")[0] if name in reader.available else None
        )
    first_seen = last_seen = None
    if "sources_128" in reader.available:
        first_seen, last_seen = reader.one("SELECT min(first_seen), max(last_seen) FROM sources_128")
    return Summary(
        probes=tuple(probes),
        dates=tuple(sorted({p.date for parts in selected.values() for p in parts})),
        partitions=len({p for parts in selected.values() for p in parts}),
        files=sum(len(names) for names in files_of.values()),
        packets=packets,
        bytes=octets,
        first_seen=first_seen,
        last_seen=last_seen,
        sources_128=distinct["sources_128"],
        sources_64=distinct["sources_64"],
        sources_48=distinct["sources_48"],
    )


def _probes(reader: _Reader, files_of: dict[str, set[str]]) -> list[ProbeRow]:
    rows = reader.rows(
        "SELECT probe_id, count(*), sum(wire_length), min(date), max(date), count(DISTINCT date) "
        "FROM packets GROUP BY probe_id ORDER BY count(*) DESC, probe_id"
    )
    # A file's labels are its capture's: one row of each file tells them, and DuckDB reads only that
    # row when the filter is on the row number (decoding the map of every packet costs ten times more).
    labelled: dict[str, set[str]] = defaultdict(set)
    for probe_id, labels in reader.rows(
        "SELECT DISTINCT probe_id, labels FROM packets WHERE file_row_number = 0"
    ):
        labelled[probe_id].update(f"{key}={value}" for key, value in labels.items())
    return [
        ProbeRow(
            probe_id=probe_id,
            labels=tuple(sorted(labelled[probe_id])),
            packets=packets,
            bytes=int(octets),
            first_date=first,
            last_date=last,
            days=days,
            files=len(files_of[probe_id]),
        )
        for probe_id, packets, octets, first, last, days in rows
    ]


def _top_sources(reader: _Reader, top_n: int) -> tuple[tuple[SourceRow, ...], tuple[SourceRow, ...]]:
    addresses: tuple[SourceRow, ...] = ()
    prefixes: tuple[SourceRow, ...] = ()
    columns = (
        "min(scope), {iid}, sum(packets), sum(bytes), max(destinations), count(DISTINCT probe_id), "
        "min(first_seen), max(last_seen)"
    )
    if "sources_128" in reader.available:
        rows = reader.rows(
            f"SELECT src, {columns.format(iid='min(iid_class)')} FROM sources_128 GROUP BY src "
            "ORDER BY sum(packets) DESC, src LIMIT ?",
            [top_n],
        )
        addresses = tuple(_source_row(key, None, *rest) for key, *rest in rows)
    if "sources_48" in reader.available:
        # The class most of the prefix's sources have, weighing each probe-day by its sources.
        iid = "arg_max(iid_class, sources)"
        rows = reader.rows(
            f"SELECT prefix, {columns.format(iid=iid)} FROM sources_48 GROUP BY prefix "
            "ORDER BY sum(packets) DESC, prefix LIMIT ?",
            [top_n],
        )
        sources = _sources_per_48(reader, [row[0] for row in rows])
        prefixes = tuple(_source_row(key, sources.get(key), *rest) for key, *rest in rows)
    return addresses, prefixes


def _source_row(key: str, sources: int | None, *values: Any) -> SourceRow:
    scope, iid_class, packets, octets, destinations, probes, first_seen, last_seen = values
    return SourceRow(
        key,
        scope,
        iid_class,
        int(packets),
        int(octets),
        sources,
        int(destinations),
        probes,
        first_seen,
        last_seen,
    )


def _sources_per_48(reader: _Reader, prefixes: list[str]) -> dict[str, int]:
    """Distinct addresses in each /48 over the whole selection: a sum of the per-partition counts
    would count an address seen on two days twice, so this one comes from the packets."""
    if not prefixes or datasets.PACKETS not in reader.available:
        return {}
    keys = {int(ipaddress.IPv6Network(p).network_address) >> _PREFIX48_SHIFT_BITS: p for p in prefixes}
    rows = reader.rows(
        "SELECT src_prefix48, count(DISTINCT src) FROM packets WHERE list_contains(?, src_prefix48) "
        "GROUP BY src_prefix48",
        [list(keys)],
    )
    return {keys[key]: count for key, count in rows}


def _class_shares(reader: _Reader) -> tuple[tuple[ClassShare, ...], tuple[ClassShare, ...]]:
    if "sources_128" not in reader.available:
        return (), ()
    shares = []
    for column in ("scope", f"coalesce(iid_class, '{NO_IID_CLASS}')"):
        # One address has one scope and one class, so its rows on several probe-days agree.
        rows = reader.rows(
            f"SELECT {column} AS name, count(DISTINCT src), sum(packets) FROM sources_128 "
            "GROUP BY name ORDER BY count(DISTINCT src) DESC, sum(packets) DESC, name"
        )
        shares.append(tuple(ClassShare(name, sources, int(packets)) for name, sources, packets in rows))
    return shares[0], shares[1]


def _scanners(reader: _Reader, top_n: int) -> tuple[tuple[ScannerRow, ...], int | None]:
    if "scanners" not in reader.available:
        return (), None
    rows = reader.rows(
        "SELECT src, min(scope), min(iid_class), sum(packets), max(destinations), max(destination_64s), "
        "max(destination_ports), bool_or(met_destinations), bool_or(met_destination_64s), "
        "list(DISTINCT probe_id ORDER BY probe_id), count(DISTINCT date), min(first_seen), max(last_seen) "
        "FROM scanners GROUP BY src "
        "ORDER BY max(destinations) DESC, max(destination_64s) DESC, sum(packets) DESC, src LIMIT ?",
        [top_n],
    )
    count = reader.one("SELECT count(DISTINCT src) FROM scanners")[0]
    scanners = tuple(
        ScannerRow(
            src, scope, iid, int(packets), dsts, d64s, ports, met_d, met_64, tuple(probes), days, first, last
        )
        for src, scope, iid, packets, dsts, d64s, ports, met_d, met_64, probes, days, first, last in rows
    )
    return scanners, count


def _dns(reader: _Reader, top_n: int) -> tuple[tuple[DnsNameRow, ...], tuple[DnsTypeRow, ...], int | None]:
    if "dns_queries" not in reader.available:
        return (), (), None
    # A message whose QR bit was not captured is counted as a query.
    query, response = "NOT coalesce(is_response, false)", "coalesce(is_response, false)"
    names = reader.rows(
        f"SELECT qname, count(*) FILTER (WHERE {query}), count(*) FILTER (WHERE {response}), "
        f"count(*) FILTER (WHERE {response} AND rcode = {NXDOMAIN_RCODE}), "
        f"count(DISTINCT src) FILTER (WHERE {query}), list(DISTINCT qtype ORDER BY qtype) "
        "FROM dns_queries GROUP BY qname ORDER BY 2 DESC, 3 DESC, qname LIMIT ?",
        [top_n],
    )
    types = reader.rows(
        f"SELECT qtype, count(*) FILTER (WHERE {query}), count(*) FILTER (WHERE {response}) "
        "FROM dns_queries GROUP BY qtype ORDER BY 2 DESC, 3 DESC, qtype"
    )
    messages = reader.one("SELECT count(*) FROM dns_queries")[0]
    return (
        tuple(
            DnsNameRow(qname, q, r, nx, clients, tuple(dns_type(t) for t in qtypes))
            for qname, q, r, nx, clients, qtypes in names
        ),
        tuple(DnsTypeRow(dns_type(qtype), q, r) for qtype, q, r in types),
        messages,
    )


def dns_type(qtype: int | None) -> str:
    """A DNS type's mnemonic, or ``TYPEn`` as RFC 3597 writes an unknown one."""
    if qtype is None:
        return "?"
    return DNS_TYPES.get(qtype, f"TYPE{qtype}")


def protocol_name(protocol: int | None) -> str:
    if protocol is None:
        return "unknown (headers cut short)"
    return PROTOCOL_NAMES.get(protocol, f"protocol {protocol}")


def _protocol_mix(reader: _Reader) -> ProtocolMix | None:
    if "protocol_series" not in reader.available:
        return None
    starts = [row[0] for row in reader.rows(
        "SELECT DISTINCT epoch_us(interval_start) FROM protocol_series "
        "WHERE interval_start IS NOT NULL ORDER BY 1"
    )]  # fmt: skip
    untimed = reader.one(
        "SELECT coalesce(sum(packets), 0) FROM protocol_series WHERE interval_start IS NULL"
    )[0]
    if not starts:
        return None
    bucket_us = _bucket_us(starts)
    first_us = starts[0] - starts[0] % bucket_us
    count = (starts[-1] - first_us) // bucket_us + 1
    rows = reader.rows(
        "SELECT (epoch_us(interval_start) - ?) // ? AS bucket, protocol, sum(packets) FROM protocol_series "
        "WHERE interval_start IS NOT NULL GROUP BY ALL",
        [first_us, bucket_us],
    )
    totals: dict[str, int] = defaultdict(int)
    for _, protocol, packets in rows:
        totals[protocol_name(protocol)] += int(packets)
    ranked = sorted(totals, key=lambda name: (-totals[name], name))
    shown = ranked if len(ranked) <= PROTOCOLS_SHOWN else ranked[: PROTOCOLS_SHOWN - 1]
    series = {name: [0] * count for name in shown}
    if len(shown) < len(ranked):
        series[OTHER] = [0] * count
    for bucket, protocol, packets in rows:
        name = protocol_name(protocol)
        series[name if name in shown else OTHER][bucket] += int(packets)
    return ProtocolMix(
        bucket_s=bucket_us // US_PER_S,
        starts=tuple(_time(first_us + i * bucket_us) for i in range(count)),
        series=tuple((name, tuple(values)) for name, values in series.items()),
        untimed_packets=int(untimed),
    )


def _bucket_us(starts: list[int]) -> int:
    """The smallest nice bucket width that is a multiple of the series' own interval (the smallest step
    between two of its interval starts, so no bucket holds a fractional interval) and makes at most
    ``SERIES_POINTS_MAX`` buckets; a plain multiple of the interval when no nice width fits."""
    steps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    step = min(steps) if steps else DEFAULT_SERIES_INTERVAL_US
    span = starts[-1] - starts[0] + step
    for width in (seconds * US_PER_S for seconds in _NICE_BUCKETS_S):
        if width % step == 0 and span <= width * SERIES_POINTS_MAX:
            return width
    return step * -(-span // (step * SERIES_POINTS_MAX))


def _time(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
