"""datasets: the packets writer, the layout, and every derived dataset (DuckDB) against a Python oracle."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from survey6.aggregator import datasets
from survey6.aggregator.datasets import (
    DERIVED_DATASETS,
    PACKETS_SCHEMA,
    Partition,
    remove_packets,
    write_packets,
)
from survey6.aggregator.engines import Engine, open_engine
from survey6.aggregator.engines.dialect import DUCKDB, with_address_text
from survey6.aggregator.errors import AggregatorError
from survey6.aggregator.settings import AggregatorSettings, DatasetSettings
from unit.aggregator import datasetbuild
from unit.aggregator.datasetbuild import MIDNIGHT_NS, NS_PER_S, enriched, mixed_capture
from unit.aggregator.pcapbuild import NgInterface, NgSection, Record, ethernet, ipv6, pcapng, udp

DOCS = Path(__file__).resolve().parents[3] / "docs" / "datasets.md"
SETTINGS = DatasetSettings(
    flow_interval_s=30, series_interval_s=10, scanner_min_destinations=30, scanner_min_destination_64s=10
)
# Lower thresholds for half a capture, so that both of its scanners are still found.
HALF_SETTINGS = SETTINGS.model_copy(update={"scanner_min_destinations": 10, "scanner_min_destination_64s": 4})
DAY_1, DAY_2 = Partition("2023-11-14", "p-a"), Partition("2023-11-15", "p-a")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def capture() -> bytes:
    return mixed_capture(7)


@pytest.fixture
def engine() -> Iterator[Engine]:
    with contextlib.closing(open_engine(AggregatorSettings())) as opened:
        yield opened


# -- the packets writer ----------------------------------------------------------------------------


def test_a_capture_across_midnight_is_split_by_utc_date(tmp_path: Path, capture: bytes) -> None:
    table = enriched(capture, "p-a", 7)
    touched = write_packets(table, tmp_path, sha256_hex=sha(capture), sequence=7)

    assert touched == [DAY_1, DAY_2]
    name = f"000000000007-{sha(capture)[:16]}.parquet"
    assert files_under(tmp_path) == [
        f"packets/date=2023-11-14/probe_id=p-a/{name}",
        f"packets/date=2023-11-15/probe_id=p-a/{name}",
    ]
    before = pq.read_table(DAY_1.path(tmp_path, "packets") / name)
    after = pq.read_table(DAY_2.path(tmp_path, "packets") / name)
    assert before.schema == PACKETS_SCHEMA
    assert (
        max(before.column("timestamp_ns").to_pylist())
        < MIDNIGHT_NS
        <= min(after.column("timestamp_ns").to_pylist())
    )
    assert before.num_rows + after.num_rows == table.num_rows
    assert pa.concat_tables([before, after]).select(table.column_names).equals(table)
    texts = before.column("src_text").to_pylist()
    assert texts == [str(ipaddress.IPv6Address(a)) for a in before.column("src").to_pylist()]


def test_writing_the_same_capture_again_gives_the_same_files(tmp_path: Path, capture: bytes) -> None:
    table = enriched(capture, "p-a", 7)
    write_packets(table, tmp_path, sha256_hex=sha(capture), sequence=7)
    first = {p: p.read_bytes() for p in tmp_path.rglob("*.parquet")}

    assert write_packets(table, tmp_path, sha256_hex=sha(capture), sequence=7) == [DAY_1, DAY_2]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.parquet")} == first
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "a temporary file was left"


def test_a_capture_written_under_a_new_sequence_replaces_its_old_files(
    tmp_path: Path, capture: bytes
) -> None:
    write_packets(enriched(capture, "p-a", 7), tmp_path, sha256_hex=sha(capture), sequence=7)
    write_packets(enriched(capture, "p-a", 8), tmp_path, sha256_hex=sha(capture), sequence=8)

    assert [Path(f).name[:12] for f in files_under(tmp_path)] == ["000000000008"] * 2


def test_zero_rows_write_nothing(tmp_path: Path, capture: bytes) -> None:
    empty = enriched(capture, "p-a", 7).slice(0, 0)
    assert write_packets(empty, tmp_path, sha256_hex=sha(capture), sequence=7) == []
    assert list(tmp_path.iterdir()) == []


def test_packets_without_a_timestamp_take_their_captures_first_date(tmp_path: Path) -> None:
    frame = ethernet(ipv6("2001:db8::1", "2001:db8::2", 17, udp(1, 2)))
    section = NgSection(
        [NgInterface(1, "eth0")], [Record(frame, MIDNIGHT_NS + NS_PER_S), Record(frame)], simple=[1]
    )
    data = pcapng([section])
    table = enriched(data, "p-a", 1)
    assert table.column("timestamp_ns").to_pylist() == [MIDNIGHT_NS + NS_PER_S, None]

    assert write_packets(table, tmp_path, sha256_hex=sha(data), sequence=1) == [DAY_2]

    only_simple = pcapng([NgSection([NgInterface(1)], [Record(frame)], simple=[0])])
    written = write_packets(
        enriched(only_simple, "p-a", 2), tmp_path, sha256_hex=sha(only_simple), sequence=2
    )
    assert written == [Partition(datasets.EPOCH_DATE, "p-a")]


@pytest.mark.parametrize("probe_id", ["", "../up", "p/1", ".hidden"])
def test_a_probe_id_that_cannot_name_a_partition_is_refused(
    tmp_path: Path, capture: bytes, probe_id: str
) -> None:
    with pytest.raises(AggregatorError, match="cannot name a partition"):
        write_packets(enriched(capture, probe_id, 7), tmp_path, sha256_hex=sha(capture), sequence=7)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused_with_a_reason(tmp_path: Path, capture: bytes) -> None:
    table = enriched(capture, "p-a", 7)
    with pytest.raises(AggregatorError, match="not a SHA-256"):
        write_packets(table, tmp_path, sha256_hex="../../etc", sequence=7)
    with pytest.raises(AggregatorError, match="negative"):
        write_packets(table, tmp_path, sha256_hex=sha(capture), sequence=-1)
    with pytest.raises(AggregatorError, match="no column src_scope"):
        write_packets(table.drop_columns(["src_scope"]), tmp_path, sha256_hex=sha(capture), sequence=7)
    with pytest.raises(AggregatorError, match="not an enriched packet table") as caught:
        bad = table.set_column(table.schema.get_field_index("src"), "src", pa.array(["x"] * table.num_rows))
        write_packets(bad, tmp_path, sha256_hex=sha(capture), sequence=7)
    assert isinstance(caught.value.__cause__, pa.ArrowException)
    with pytest.raises(AggregatorError, match="not a YYYY-MM-DD date"):
        Partition("2023-02-30", "p-a")


def test_remove_packets_removes_only_that_capture(tmp_path: Path, capture: bytes) -> None:
    other = mixed_capture(8, first_ns=MIDNIGHT_NS + 3600 * NS_PER_S)
    write_packets(enriched(capture, "p-a", 7), tmp_path, sha256_hex=sha(capture), sequence=7)
    write_packets(enriched(other, "p-a", 8), tmp_path, sha256_hex=sha(other), sequence=8)

    assert remove_packets(tmp_path, sha256_hex=sha(capture)) == [DAY_1, DAY_2]
    assert [Path(f).name[:12] for f in files_under(tmp_path)] == ["000000000008"]
    assert remove_packets(tmp_path, sha256_hex=sha(capture)) == []


# -- derived datasets --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, capture: bytes
) -> tuple[Path, dict[Partition, dict[str, int]]]:
    root = tmp_path_factory.mktemp("built")
    write_packets(enriched(capture, "p-a", 7), root, sha256_hex=sha(capture), sequence=7)
    second = mixed_capture(9, first_ns=MIDNIGHT_NS + 600 * NS_PER_S, span_s=60)
    write_packets(enriched(second, "p-a", 8), root, sha256_hex=sha(second), sequence=8)
    with contextlib.closing(open_engine(AggregatorSettings())) as engine:
        rows = {p: engine.build(root, p, HALF_SETTINGS) for p in (DAY_1, DAY_2)}
    return root, rows


def packet_rows(root: Path, partition: Partition) -> list[dict[str, Any]]:
    tables = [pq.read_table(p) for p in datasets.packet_files(root, partition)]
    rows: list[dict[str, Any]] = pa.concat_tables(tables).to_pylist()
    return rows


@pytest.mark.parametrize("dataset", DERIVED_DATASETS)
@pytest.mark.parametrize("partition", [DAY_1, DAY_2], ids=["one-capture", "two-captures"])
def test_each_dataset_is_what_python_computes(
    built: tuple[Path, dict[Partition, dict[str, int]]], dataset: str, partition: Partition
) -> None:
    root, rows = built
    table = pq.read_table(datasets.derived_path(root, dataset, partition))
    expected = datasetbuild.expected(dataset, packet_rows(root, partition), HALF_SETTINGS)

    assert expected, "the capture should give every dataset some rows"
    assert rows[partition][dataset] == table.num_rows == len(expected)
    assert datasetbuild.canonical(table.to_pylist()) == expected


def test_the_answers_known_by_construction(tmp_path: Path, engine: Engine) -> None:
    data = mixed_capture(3, first_ns=MIDNIGHT_NS + 60 * NS_PER_S, span_s=60)
    write_packets(enriched(data, "p-a", 1), tmp_path, sha256_hex=sha(data), sequence=1)
    engine.build(tmp_path, DAY_2, SETTINGS)

    def rows(dataset: str) -> list[dict[str, Any]]:
        table: list[dict[str, Any]] = pq.read_table(
            datasets.derived_path(tmp_path, dataset, DAY_2)
        ).to_pylist()
        return table

    scanners = {r["src"]: r for r in rows("scanners")}
    assert {src: (r["met_destinations"], r["met_destination_64s"]) for src, r in scanners.items()} == {
        datasetbuild.SCANNER_SWEEP: (True, False),
        datasetbuild.SCANNER_64S: (False, True),
    }
    sweep, spread = scanners[datasetbuild.SCANNER_SWEEP], scanners[datasetbuild.SCANNER_64S]
    assert (sweep["destinations"], sweep["destination_64s"], sweep["icmpv6_packets"], sweep["scope"]) == (
        40,
        1,
        40,
        "documentation",
    )
    assert (spread["destinations"], spread["destination_64s"], spread["destination_ports"]) == (12, 12, 3)
    # 2001:db8:1:1::10 and ::11 are both low-byte; the /48 adds one EUI-64 address: still low-byte.
    sources_64 = {r["prefix"]: r for r in rows("sources_64")}
    assert (sources_64["2001:db8:1:1::/64"]["sources"], sources_64["2001:db8:1:1::/64"]["iid_class"]) == (
        2,
        "low-byte",
    )
    assert sources_64["2001:db8:1:2::/64"]["iid_class"] == "ieee-derived"
    # One EUI-64 router and fe80::1 (low-byte): a tie goes to the first name.
    assert (sources_64["fe80::/64"]["sources"], sources_64["fe80::/64"]["iid_class"]) == (2, "ieee-derived")
    sources_48 = {r["prefix"]: r for r in rows("sources_48")}
    assert (sources_48["2001:db8:1::/48"]["sources"], sources_48["2001:db8:1::/48"]["iid_class"]) in {
        (2, "low-byte"),
        (3, "low-byte"),
    }
    dns = rows("dns_queries")
    assert len(dns) == 61  # 30 UDP queries, 30 answers and one query over TCP
    assert sum(1 for r in dns if r["is_response"]) == 30
    assert [r["qtype"] for r in dns if r["protocol"] == 6] == [252]
    ports = {(r["protocol"], r["dst_port"]): r["packets"] for r in rows("port_series")}
    assert ports[(17, 7001)] == 1  # the second fragment carries no ports: only the first counts


def test_each_partition_is_one_file_and_nothing_else(
    built: tuple[Path, dict[Partition, dict[str, int]]],
) -> None:
    root, _ = built
    derived = [f for f in files_under(root) if not f.startswith("packets/")]
    assert derived == sorted(
        f"{name}/date={p.date}/probe_id=p-a/part-0.parquet"
        for name in DERIVED_DATASETS
        for p in (DAY_1, DAY_2)
    )


def test_every_derived_column_is_nullable_whatever_the_data(
    built: tuple[Path, dict[Partition, dict[str, int]]],
) -> None:
    # Spark writes every column OPTIONAL; a column DuckDB marked REQUIRED because one day's packets
    # happen to hold no null would give the same dataset two schemas.
    root, _ = built
    for name in DERIVED_DATASETS:
        for partition in (DAY_1, DAY_2):
            schema = pq.read_schema(datasets.derived_path(root, name, partition))
            assert [f.name for f in schema if not f.nullable] == [], (name, partition)


def test_a_rebuild_follows_the_packets_and_an_empty_partition_loses_its_files(
    tmp_path: Path, capture: bytes, engine: Engine
) -> None:
    write_packets(enriched(capture, "p-a", 7), tmp_path, sha256_hex=sha(capture), sequence=7)
    other = mixed_capture(8, first_ns=MIDNIGHT_NS - 7200 * NS_PER_S, span_s=60)
    write_packets(enriched(other, "p-a", 8), tmp_path, sha256_hex=sha(other), sequence=8)
    both = engine.build(tmp_path, DAY_1, SETTINGS)

    remove_packets(tmp_path, sha256_hex=sha(other))
    one = engine.build(tmp_path, DAY_1, SETTINGS)
    assert one["dns_queries"] < both["dns_queries"]
    assert one == {
        name: pq.read_metadata(datasets.derived_path(tmp_path, name, DAY_1)).num_rows for name in one
    }

    remove_packets(tmp_path, sha256_hex=sha(capture))
    assert engine.build(tmp_path, DAY_1, SETTINGS) == dict.fromkeys(DERIVED_DATASETS, 0)
    assert [f for f in files_under(tmp_path) if "2023-11-14" in f] == []


def test_a_failed_build_leaves_the_previous_files(tmp_path: Path, capture: bytes, engine: Engine) -> None:
    write_packets(enriched(capture, "p-a", 7), tmp_path, sha256_hex=sha(capture), sequence=7)
    engine.build(tmp_path, DAY_1, SETTINGS)
    before = {f: (tmp_path / f).read_bytes() for f in files_under(tmp_path)}
    (DAY_1.path(tmp_path, "packets") / "000000000009-0000000000000000.parquet").write_bytes(b"not parquet")

    with pytest.raises(AggregatorError, match="duckdb could not") as caught:
        engine.build(tmp_path, DAY_1, SETTINGS)
    assert isinstance(caught.value.__cause__, duckdb.Error)
    after = {
        f: (tmp_path / f).read_bytes()
        for f in files_under(tmp_path)
        if not f.endswith("0000000000000000.parquet")
    }
    assert after == before


def test_bad_settings_are_refused_before_anything_is_written(
    tmp_path: Path, capture: bytes, engine: Engine
) -> None:
    write_packets(enriched(capture, "p-a", 7), tmp_path, sha256_hex=sha(capture), sequence=7)
    with pytest.raises(AggregatorError, match="flow_interval_s must be at least 1 µs"):
        engine.build(tmp_path, DAY_1, DatasetSettings(flow_interval_s=1e-9))
    assert all(f.startswith("packets/") for f in files_under(tmp_path))
    with pytest.raises(AggregatorError, match="no derived dataset 'nope'"):
        datasets.derived_sql("nope", DUCKDB, SETTINGS)


def test_address_text_is_rfc_5952_as_python_writes_it() -> None:
    rng = random.Random(5)
    addresses = []
    for zeros in range(256):  # every pattern of zero hextets: each run length, position and tie
        hextets = [
            0 if zeros >> i & 1 else rng.choice([1, 0x10, 0xABC, 0xFFFF, rng.randrange(1, 1 << 16)])
            for i in range(8)
        ]
        addresses.append(b"".join(h.to_bytes(2, "big") for h in hextets))
    addresses += [rng.getrandbits(128).to_bytes(16, "big") for _ in range(100)]
    connection = duckdb.connect()
    connection.register("a", pa.table({"address": pa.array(addresses, pa.binary(16))}))
    query = with_address_text(
        DUCKDB, "SELECT address FROM a", {"x": ("address", 128), "y": ("address", 64), "z": ("address", 48)}
    )
    got = connection.execute(f"SELECT address, x__t, y__t, z__t FROM ({query})").fetchall()
    connection.close()

    assert len(got) == len(addresses)
    for address, *texts in got:
        want = [
            datasetbuild.text(address),
            datasetbuild.prefix(address, 64),
            datasetbuild.prefix(address, 48),
        ]
        assert texts == want


def test_the_documentation_names_every_column() -> None:
    text = DOCS.read_text(encoding="utf-8")
    sections = dict(re.findall(r"^### `(\w+)`\n(.*?)(?=^### |\Z)", text, re.M | re.S))
    assert sorted(sections) == sorted([*DERIVED_DATASETS, "packets"])
    rows = {name: set(re.findall(r"^\| `(\w+)` \|", body, re.M)) for name, body in sections.items()}
    with contextlib.closing(duckdb.connect()) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        connection.register("packets", pa.Table.from_pylist([], PACKETS_SCHEMA))
        for name in DERIVED_DATASETS:
            columns = [
                d[0] for d in connection.execute(datasets.derived_sql(name, DUCKDB, SETTINGS)).description
            ]
            assert rows[name] == set(columns), name
    assert rows["packets"] == set(PACKETS_SCHEMA.names)
