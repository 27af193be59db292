"""DuckDB and Spark build the same datasets: the same Parquet schema and the same rows, exactly.

Both engines run on copies of the same packet files: a mixed capture across midnight (scans, DNS
over UDP and TCP, ICMPv6, fragments, extension headers, VLAN tags) and the committed samples, one of
them with a packet that has no timestamp. Every dataset must have rows, or agreeing would mean
little, and both must also agree with the Python oracle. One Spark session (``local[2]``) serves the
module: it takes the better part of a minute to start on a small machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from survey6.aggregator import datasets
from survey6.aggregator.datasets import DERIVED_DATASETS, Partition, write_packets
from survey6.aggregator.engines import Engine, open_engine
from survey6.aggregator.settings import AggregatorSettings, DatasetSettings, SparkSettings
from unit.aggregator import datasetbuild
from unit.aggregator.pcapbuild import data_files

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SETTINGS = DatasetSettings(
    flow_interval_s=30, series_interval_s=10, scanner_min_destinations=10, scanner_min_destination_64s=4
)
DAY_1, DAY_2 = Partition("2023-11-14", "p-a"), Partition("2023-11-15", "p-a")
# Parquet defines a bare INT32 / INT64 as a signed integer of that width; DuckDB spells it out.
IMPLICIT_INT_ANNOTATIONS = {"Int(bitWidth=32, isSigned=true)", "Int(bitWidth=64, isSigned=true)"}


@pytest.fixture(scope="module")
def packets_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("input")
    samples = data_files()
    captures = [
        datasetbuild.mixed_capture(11),
        samples["two-interfaces.pcapng"],
        samples["ethernet-mixed.pcap"],
    ]
    for sequence, data in enumerate(captures, start=1):
        table = datasetbuild.enriched(data, "p-a", sequence)
        write_packets(table, root, sha256_hex=hashlib.sha256(data).hexdigest(), sequence=sequence)
    return root


@pytest.fixture(scope="module")
def spark() -> Iterator[Engine]:
    settings = AggregatorSettings(engine="spark", spark=SparkSettings(master="local[2]", driver_memory="1g"))
    with contextlib.closing(open_engine(settings)) as engine:
        yield engine


@pytest.fixture(scope="module")
def duckdb() -> Iterator[Engine]:
    with contextlib.closing(open_engine(AggregatorSettings())) as engine:
        yield engine


def copy_of(packets_root: Path, target: Path) -> Path:
    shutil.copytree(packets_root / datasets.PACKETS, target / datasets.PACKETS)
    return target


def parquet_columns(path: Path) -> list[tuple[object, ...]]:
    schema = pq.ParquetFile(path).schema
    columns: list[tuple[object, ...]] = []
    for i in range(len(schema)):
        column = schema.column(i)
        logical = str(column.logical_type)
        logical = "None" if logical in IMPLICIT_INT_ANNOTATIONS else logical
        levels = (column.max_definition_level, column.max_repetition_level)
        columns.append((column.path, column.physical_type, logical, *levels))
    return columns


def test_both_engines_are_the_ones_asked_for(duckdb: Engine, spark: Engine) -> None:
    assert (duckdb.name, spark.name) == ("duckdb", "spark")


def build_both(
    packets_root: Path,
    tmp_path: Path,
    engines: tuple[Engine, Engine],
    partition: Partition,
    settings: DatasetSettings,
) -> tuple[Path, Path]:
    """Builds ``partition`` with DuckDB and with Spark, each on its own copy of the packets; checks that
    both wrote the same datasets, and returns the two output roots."""
    roots = [copy_of(packets_root, tmp_path / engine.name) for engine in engines]
    rows = [engine.build(root, partition, settings) for engine, root in zip(engines, roots, strict=True)]
    assert rows[0] == rows[1]
    assert sorted(rows[0]) == sorted(DERIVED_DATASETS)
    for name in DERIVED_DATASETS:
        duck_file, spark_file = (datasets.derived_path(root, name, partition) for root in roots)
        duck_table, spark_table = pq.read_table(duck_file), pq.read_table(spark_file)
        assert duck_table.schema.remove_metadata() == spark_table.schema.remove_metadata(), name
        assert parquet_columns(duck_file) == parquet_columns(spark_file), name
        duck_rows = datasetbuild.canonical(duck_table.to_pylist())
        assert duck_rows == datasetbuild.canonical(spark_table.to_pylist()), name
        assert len(duck_rows) == rows[0][name]
    assert list((roots[1] / datasets.STAGING_DIR).iterdir()) == []
    for root in roots:
        assert [p for p in root.rglob(".*")] == [], "a temporary file was left"
    return roots[0], roots[1]


@pytest.mark.parametrize("partition", [DAY_1, DAY_2], ids=["three-captures", "after-midnight"])
def test_duckdb_and_spark_write_the_same_datasets(
    packets_root: Path, tmp_path: Path, duckdb: Engine, spark: Engine, partition: Partition
) -> None:
    duck_root, _ = build_both(packets_root, tmp_path, (duckdb, spark), partition, SETTINGS)

    packets = pa.concat_tables(
        pq.read_table(p) for p in datasets.packet_files(duck_root, partition)
    ).to_pylist()
    for name in DERIVED_DATASETS:
        rows = pq.read_table(datasets.derived_path(duck_root, name, partition)).to_pylist()
        assert rows, f"{name} is empty: the comparison would prove little"
        assert datasetbuild.canonical(rows) == datasetbuild.expected(name, packets, SETTINGS), name


def test_an_empty_dataset_has_the_same_schema_from_both(
    packets_root: Path, tmp_path: Path, duckdb: Engine, spark: Engine
) -> None:
    unreachable = {"scanner_min_destinations": 10**9, "scanner_min_destination_64s": 10**9}
    duck_root, _ = build_both(
        packets_root, tmp_path, (duckdb, spark), DAY_2, SETTINGS.model_copy(update=unreachable)
    )
    assert pq.read_metadata(datasets.derived_path(duck_root, "scanners", DAY_2)).num_rows == 0


def test_the_null_timestamp_is_there_to_compare(packets_root: Path) -> None:
    stamps = [pq.read_table(p).column("timestamp_ns") for p in datasets.packet_files(packets_root, DAY_1)]
    assert sum(s.null_count for s in stamps) == 1


def test_spark_empties_a_partition_without_packets(tmp_path: Path, spark: Engine) -> None:
    target = datasets.derived_path(tmp_path, "flows", DAY_1)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"stale")
    assert spark.build(tmp_path, DAY_1, SETTINGS) == dict.fromkeys(DERIVED_DATASETS, 0)
    assert not target.exists()
