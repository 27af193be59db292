"""The datasets: their Hive layout, the packets writer, and the one definition of each derived dataset.

Layout (``docs/datasets.md`` documents every column)::

    <output>/packets/date=YYYY-MM-DD/probe_id=P/<sequence:012d>-<sha256[:16]>.parquet   per capture and day
    <output>/<derived>/date=YYYY-MM-DD/probe_id=P/part-0.parquet                       per partition

``packets`` holds ``PACKETS_SCHEMA``: the enriched packets plus the RFC 5952 text of both addresses. A
derived dataset is one SELECT over a view named ``packets`` (one partition's packet files), written
once in the SQL that DuckDB and Spark share (``engines.dialect`` holds the few spellings where they
differ). Every output column is cast explicitly, so both engines write the same Parquet schema.

A packet without a timestamp (a pcapng simple packet block) is filed under the date of its capture's
earliest timestamped packet, or ``EPOCH_DATE`` when none has one; its derived times are null.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from survey6.aggregator import addresses
from survey6.aggregator.engines import dialect as sql
from survey6.aggregator.engines.dialect import Dialect
from survey6.aggregator.errors import AggregatorError
from survey6.aggregator.schema import ADDRESS_TEXT_FIELDS, ENRICHED_SCHEMA
from survey6.aggregator.settings import DatasetSettings
from survey6.common.files import fsync_directory, fsync_file

log = logging.getLogger(__name__)

PACKETS = "packets"
PACKETS_SCHEMA = pa.schema(list(ENRICHED_SCHEMA) + ADDRESS_TEXT_FIELDS)
PART_FILE = "part-0.parquet"  # the single file of a derived dataset's partition
STAGING_DIR = "_staging"  # under the output root; "_" hides it from Spark and Hive readers
COMPRESSION = "zstd"
NS_PER_DAY = 86_400 * 1_000_000_000
# The date of a packet without a timestamp (pcapng simple packet block) when its capture has no
# timestamped packet at all to borrow a date from.
EPOCH_DATE = "1970-01-01"
SHA_PREFIX_CHARS = 16  # of the SHA-256 in a packet file's name: 64 bits tell a probe's files apart
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
# The server's probe ids are "p-<hex>"; any id must at least be one safe path component.
_PROBE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True, order=True)
class Partition:
    """One Hive partition of a dataset: ``date=YYYY-MM-DD/probe_id=<id>``."""

    date: str  # UTC date of the packets' timestamps
    probe_id: str

    def __post_init__(self) -> None:
        if not _is_date(self.date):
            raise AggregatorError(f"partition date {self.date!r} is not a YYYY-MM-DD date")
        if not _PROBE_ID.match(self.probe_id):
            raise AggregatorError(
                f"probe id {self.probe_id!r} cannot name a partition: "
                "it needs 1-64 letters, digits, '-' or '_'"
            )

    def path(self, root: Path, dataset: str) -> Path:
        return root / dataset / f"date={self.date}" / f"probe_id={self.probe_id}"

    @classmethod
    def of_directory(cls, directory: Path) -> Partition:
        """The partition a ``.../date=D/probe_id=P`` directory holds."""
        return cls(directory.parent.name.removeprefix("date="), directory.name.removeprefix("probe_id="))


# -- packets ---------------------------------------------------------------------------------------


def write_packets(table: pa.Table, output_root: Path, *, sha256_hex: str, sequence: int) -> list[Partition]:
    """Writes one capture's enriched packets (``ENRICHED_SCHEMA``) to the ``packets`` dataset.

    The table is split by UTC date of ``timestamp_ns``; each piece goes to
    ``packets/date=D/probe_id=P/<sequence:012d>-<sha256_hex[:16]>.parquet``, written atomically. A
    packet without a timestamp takes the date of its capture's earliest timestamped packet (the same
    probe's), or ``EPOCH_DATE`` when none has one. The names are deterministic, so writing the same
    capture again replaces its files with identical ones; files of the same capture (same SHA-256)
    that the new split does not produce are removed. A table with zero rows writes nothing.

    Returns:
        The partitions touched, sorted.

    Raises:
        AggregatorError: the table is not an enriched packet table, its probe id cannot name a
            partition (a standalone capture's "" included), or a file cannot be written.
    """
    stem = _file_stem(sha256_hex, sequence)
    if table.num_rows == 0:
        return []
    table = _packets_table(table)
    written: dict[Path, Partition] = {}
    for partition, piece in _split_by_partition(table):
        path = partition.path(output_root, PACKETS) / f"{stem}.parquet"
        _mkdir(path.parent)
        write_table_atomically(piece, path)
        written[path] = partition
    stale = {p: Partition.of_directory(p.parent) for p in _capture_files(output_root, sha256_hex)}
    for path in stale.keys() - written.keys():
        _unlink(path)
        written[path] = stale[path]
    log.debug("wrote %d packets of %s to %d partitions", table.num_rows, stem, len(written))
    return sorted(set(written.values()))


def remove_packets(output_root: Path, *, sha256_hex: str) -> list[Partition]:
    """Removes every packet file of the capture with this SHA-256; returns the partitions touched.

    Raises:
        AggregatorError: ``sha256_hex`` is not a SHA-256 or a file cannot be removed.
    """
    _check_sha256(sha256_hex)
    touched = set()
    for path in _capture_files(output_root, sha256_hex):
        _unlink(path)
        touched.add(Partition.of_directory(path.parent))
    return sorted(touched)


def packet_files(output_root: Path, partition: Partition) -> list[Path]:
    """The partition's packet files, sorted (a writer's hidden temporary files excluded)."""
    directory = partition.path(output_root, PACKETS)
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))


def derived_path(output_root: Path, dataset: str, partition: Partition) -> Path:
    return partition.path(output_root, dataset) / PART_FILE


def temporary_path(target: Path) -> Path:
    """A hidden name next to ``target``: same filesystem, so the final rename is atomic."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def publish(written: Path, target: Path) -> None:
    """Moves a completely written file over ``target``: a reader sees the old file or the new one."""
    try:
        fsync_file(written)
        os.replace(written, target)
        fsync_directory(target.parent)
    except OSError as exc:
        raise AggregatorError(f"cannot publish {target}: {exc.strerror or exc}") from exc


def write_table_atomically(table: pa.Table, target: Path) -> None:
    temporary = temporary_path(target)
    try:
        pq.write_table(table, temporary, compression=COMPRESSION)
        publish(temporary, target)
    except OSError as exc:
        raise AggregatorError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)


def _file_stem(sha256_hex: str, sequence: int) -> str:
    _check_sha256(sha256_hex)
    if sequence < 0:
        raise AggregatorError(f"capture sequence {sequence} is negative")
    return f"{sequence:012d}-{sha256_hex[:SHA_PREFIX_CHARS]}"


def _check_sha256(sha256_hex: str) -> None:
    if not _SHA256_HEX.match(sha256_hex):
        raise AggregatorError(f"{sha256_hex!r} is not a SHA-256 (64 lower-case hex digits)")


def _capture_files(output_root: Path, sha256_hex: str) -> list[Path]:
    pattern = f"date=*/probe_id=*/*-{sha256_hex[:SHA_PREFIX_CHARS]}.parquet"
    return sorted((output_root / PACKETS).glob(pattern))


def _packets_table(table: pa.Table) -> pa.Table:
    missing = [name for name in ENRICHED_SCHEMA.names if name not in table.column_names]
    if missing:
        raise AggregatorError(f"not an enriched packet table: no column {', '.join(missing)}")
    try:
        enriched = table.select(ENRICHED_SCHEMA.names).cast(ENRICHED_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise AggregatorError(f"not an enriched packet table: {exc}") from exc
    texts = [
        table.column(f.name).cast(pa.string())
        if f.name in table.column_names
        else addresses.text(enriched.column(f.name.removesuffix("_text")))
        for f in ADDRESS_TEXT_FIELDS
    ]
    return pa.Table.from_arrays(enriched.columns + texts, schema=PACKETS_SCHEMA)


def _split_by_partition(table: pa.Table) -> list[tuple[Partition, pa.Table]]:
    pieces = []
    probe_ids = table.column("probe_id")
    distinct = pc.unique(probe_ids).to_pylist()
    for probe_id in distinct:
        # A capture has one probe and mostly one date: filter (a copy) only when there is a split.
        of_probe = table if len(distinct) == 1 else table.filter(pc.equal(probe_ids, probe_id))
        stamps = of_probe.column("timestamp_ns")
        earliest = pc.min(stamps).as_py()
        days = np.floor_divide(
            pc.fill_null(stamps, 0 if earliest is None else earliest).to_numpy(), NS_PER_DAY
        )
        unique_days = np.unique(days)
        for day in unique_days:  # all-null stamps filled with 0: day 0 is EPOCH_DATE
            piece = of_probe if len(unique_days) == 1 else of_probe.filter(pa.array(days == day))
            pieces.append((Partition(str(np.datetime64(int(day), "D")), probe_id), piece))
    return pieces


def _is_date(text: str) -> bool:
    try:
        return bool(_DATE.match(text)) and datetime.date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


def _mkdir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AggregatorError(f"cannot create {directory}: {exc.strerror or exc}") from exc


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
        fsync_directory(path.parent)
    except OSError as exc:
        raise AggregatorError(f"cannot remove {path}: {exc.strerror or exc}") from exc


# -- derived datasets: one SELECT each over the view "packets" ------------------------------------

IPV6_HEADER_BYTES = 40  # the fixed header, which the payload length field does not count
_FLOW_FIELDS = {  # the flow tuple's fields besides time and addresses, with their output type
    "protocol": "SMALLINT",
    "src_port": "INTEGER",
    "dst_port": "INTEGER",
    "icmp_type": "SMALLINT",
    "icmp_code": "SMALLINT",
    "hop_limit": "SMALLINT",
    "tcp_flags": "INTEGER",
    "ip_length": "INTEGER",
}
_ROLLUP_METRICS = (
    ("packets", sql.count()),
    ("bytes", "sum(wire_length)"),
    ("tcp_packets", "sum(CASE WHEN protocol = 6 THEN 1 ELSE 0 END)"),
    ("udp_packets", "sum(CASE WHEN protocol = 17 THEN 1 ELSE 0 END)"),
    ("icmpv6_packets", "sum(CASE WHEN protocol = 58 THEN 1 ELSE 0 END)"),
    ("destinations", sql.count_distinct("dst")),
    ("destination_64s", sql.count_distinct("dst_prefix64")),
    ("destination_ports", sql.count_distinct("dst_port")),
    ("protocols", sql.count_distinct("protocol")),
)
Definition = Callable[[Dialect, DatasetSettings], str]


def _rollup(key: str) -> str:
    metrics = ", ".join(f"{aggregate} AS {name}" for name, aggregate in _ROLLUP_METRICS)
    return (
        f"SELECT {key} AS k, min(src) AS source_b, {sql.count_distinct('src')} AS sources, {metrics}, "
        "min(timestamp_ns) AS first_ns, max(timestamp_ns) AS last_ns, min(src_scope) AS scope, "
        f"min(src_iid_class) AS iid_class FROM packets GROUP BY {key}"
    )


def _rollup_columns(d: Dialect, key: str, iid_class: str, *, sources: bool) -> sql.Columns:
    columns: sql.Columns = [(key, "STRING", f"{key}__t"), ("scope", "STRING", "scope")]
    columns += [("iid_class", "STRING", iid_class)] + ([("sources", "BIGINT", "sources")] if sources else [])
    columns += [(name, "BIGINT", name) for name, _ in _ROLLUP_METRICS]
    return columns + [
        ("first_seen", None, sql.time(d, "first_ns")),
        ("last_seen", None, sql.time(d, "last_ns")),
    ]


def _sources(bits: int) -> Definition:
    def query(d: Dialect, settings: DatasetSettings) -> str:
        if bits == 128:
            columns = _rollup_columns(d, "src", "iid_class", sources=False)
            return sql.select(d, _rollup("src"), columns, {"src": ("k", 128)})
        key = f"src_prefix{bits}"
        # A prefix's class is the one most of its source addresses have; ties go to the first name.
        top = (
            "SELECT k, iid_class FROM (SELECT k, iid_class, row_number() OVER (PARTITION BY k "
            "ORDER BY n DESC, iid_class ASC NULLS LAST) AS place FROM (SELECT "
            f"{key} AS k, src_iid_class AS iid_class, {sql.count_distinct('src')} AS n FROM packets "
            f"GROUP BY {key}, src_iid_class) AS classes) AS ranked WHERE place = 1"
        )
        rollup = (
            f"SELECT r.*, t.iid_class AS top_iid_class FROM ({_rollup(key)}) AS r "
            f"JOIN ({top}) AS t ON r.k = t.k"
        )
        columns = _rollup_columns(d, "prefix", "top_iid_class", sources=True)
        return sql.select(d, rollup, columns, {"prefix": ("source_b", bits)})

    return query


def _scanners(d: Dialect, settings: DatasetSettings) -> str:
    n, m = int(settings.scanner_min_destinations), int(settings.scanner_min_destination_64s)
    query = f"SELECT * FROM ({_rollup('src')}) AS r WHERE destinations >= {n} OR destination_64s >= {m}"
    columns = _rollup_columns(d, "src", "iid_class", sources=False) + [
        ("met_destinations", "BOOLEAN", f"destinations >= {n}"),
        ("met_destination_64s", "BOOLEAN", f"destination_64s >= {m}"),
    ]
    return sql.select(d, query, columns, {"src": ("k", 128)})


def _flows(d: Dialect, settings: DatasetSettings) -> str:
    fields = ", ".join(_FLOW_FIELDS)
    start = sql.micros(d, "timestamp_ns", sql.interval_ns(settings.flow_interval_s, "flow_interval_s"))
    packet_fields = ", ".join(name for name in _FLOW_FIELDS if name != "ip_length")
    packets = (
        f"SELECT {start} AS start_us, src AS src_b, dst AS dst_b, {packet_fields}, "
        f"CAST(payload_length AS INTEGER) + {IPV6_HEADER_BYTES} AS ip_length FROM packets"
    )
    query = (
        f"SELECT start_us, src_b, dst_b, {fields}, {sql.count()} AS packets FROM ({packets}) AS p "
        f"GROUP BY start_us, src_b, dst_b, {fields}"
    )
    columns: sql.Columns = [
        ("interval_start", None, d.timestamp("start_us")),
        ("src", "STRING", "src__t"),
        ("dst", "STRING", "dst__t"),
    ]
    columns += [(name, kind, name) for name, kind in _FLOW_FIELDS.items()] + [
        ("packets", "BIGINT", "packets")
    ]
    return sql.select(d, query, columns, {"src": ("src_b", 128), "dst": ("dst_b", 128)})


def _series(*, ports: bool) -> Definition:
    def query(d: Dialect, settings: DatasetSettings) -> str:
        start = sql.micros(
            d, "timestamp_ns", sql.interval_ns(settings.series_interval_s, "series_interval_s")
        )
        keys = "start_us, protocol" + (", dst_port" if ports else "")
        where = " WHERE protocol IN (6, 17) AND dst_port IS NOT NULL" if ports else ""
        packets = f"SELECT {start} AS start_us, protocol, dst_port, wire_length, src FROM packets{where}"
        aggregate = (
            f"SELECT {keys}, {sql.count()} AS packets, sum(wire_length) AS bytes, "
            f"{sql.count_distinct('src')} AS sources FROM ({packets}) AS p GROUP BY {keys}"
        )
        columns: sql.Columns = [
            ("interval_start", None, d.timestamp("start_us")),
            ("protocol", "SMALLINT", "protocol"),
        ]
        columns += [("dst_port", "INTEGER", "dst_port")] if ports else []
        columns += [(name, "BIGINT", name) for name in ("packets", "bytes", "sources")]
        return sql.select(d, aggregate, columns, {})

    return query


def _dns_queries(d: Dialect, settings: DatasetSettings) -> str:
    query = (
        "SELECT timestamp_ns, src AS src_b, dst AS dst_b, protocol, src_port, dst_port, dns_qname, "
        "dns_qtype, dns_rcode, dns_is_response FROM packets WHERE dns_qname IS NOT NULL"
    )
    columns: sql.Columns = [
        ("time", None, sql.time(d, "timestamp_ns")),
        ("timestamp_ns", "BIGINT", "timestamp_ns"),
        ("src", "STRING", "src__t"),
        ("dst", "STRING", "dst__t"),
        ("protocol", "SMALLINT", "protocol"),
        ("src_port", "INTEGER", "src_port"),
        ("dst_port", "INTEGER", "dst_port"),
        ("qname", "STRING", "dns_qname"),
        ("qtype", "INTEGER", "dns_qtype"),
        ("rcode", "SMALLINT", "dns_rcode"),
        ("is_response", "BOOLEAN", "dns_is_response"),
    ]
    return sql.select(d, query, columns, {"src": ("src_b", 128), "dst": ("dst_b", 128)})


_DEFINITIONS: dict[str, Definition] = {
    "flows": _flows,
    "sources_128": _sources(128),
    "sources_64": _sources(64),
    "sources_48": _sources(48),
    "protocol_series": _series(ports=False),
    "port_series": _series(ports=True),
    "dns_queries": _dns_queries,
    "scanners": _scanners,
}
DERIVED_DATASETS: tuple[str, ...] = tuple(_DEFINITIONS)


def derived_sql(dataset: str, dialect: Dialect, settings: DatasetSettings) -> str:
    """The one definition of ``dataset``, spelled for ``dialect``: a SELECT over the view ``packets``.

    Raises:
        AggregatorError: no such dataset, or an interval setting below 1 µs.
    """
    try:
        definition = _DEFINITIONS[dataset]
    except KeyError as exc:
        known = ", ".join(DERIVED_DATASETS)
        raise AggregatorError(f"no derived dataset {dataset!r}; there are {known}") from exc
    return definition(dialect, settings)
