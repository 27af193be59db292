"""The three Airflow DAGs, through Airflow itself: a DagBag import, then one ``airflow dags test`` run
of each DAG on a real landing zone (captures and sidecars as the server lands them, bad files among
them), with the real parser, ledger, quarantine and a real Spark on ``local[2]``.

Airflow runs in child processes with a temporary AIRFLOW_HOME (see ``support.airflow_home``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support.aggregator_inputs import FIRST_NS, NS_PER_DAY, frames, metadata_for
from support.airflow_home import AirflowHome, describe_failure
from survey6.aggregator import datasets
from survey6.aggregator.ledger import INGESTED, QUARANTINED, Ledger
from survey6.aggregator.quarantine import REASON_SUFFIX, Quarantine
from survey6.common import capture_metadata
from unit.aggregator.pcapbuild import ETHERTYPE_IPV4, MAC_A, Record, ethernet, pcap, udp

PARSE, AGGREGATE, MAINTENANCE = "survey6_parse_captures", "survey6_aggregate_datasets", "survey6_maintenance"
PROBE_A, PROBE_B = "p-0a0a0a0a0a0a", "p-0b0b0b0b0b0b"
DAY_S = 86_400
# Four DAG runs, one of them with Spark: a bound for a hung test on a loaded machine, not an expectation.
END_TO_END_TIMEOUT_S = 3600
# Migrating the metadata database (the module fixture) and loading the DagBag, with the same margin.
DAGBAG_TEST_TIMEOUT_S = 1200

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Landing:
    root: Path
    ipv6_packets: dict[tuple[str, str], int]  # (date, probe id) → IPv6 packets of the good files
    sources: dict[tuple[str, str], int]  # (date, probe id) → distinct IPv6 source addresses
    unreadable: Path  # not a capture at all: quarantined "unreadable"
    damaged: Path  # a capture cut short: quarantined "damaged"


def _not_ipv6() -> list[bytes]:
    """An ARP request and an IPv4/UDP packet: records the probe keeps, rows the parser skips."""
    arp = bytes.fromhex("0001080006040001") + MAC_A + bytes(4) + bytes(6) + bytes(4)
    v4 = bytes.fromhex("4500001c000100004011f7c4c6120001c6120002") + udp(1, 2)
    return [ethernet(arp, 0x0806), ethernet(v4, ETHERTYPE_IPV4)]


def _relative(probe_id: str, sequence: int, first_ns: int) -> str:
    day = dt.datetime.fromtimestamp(first_ns / 1e9, dt.UTC)
    return f"{probe_id}/{day:%Y/%m/%d}/{sequence:012d}.pcap"


def _land(
    root: Path, probe_id: str, sequence: int, data: bytes, records: list[Record], first_ns: int
) -> Path:
    """Writes a capture and its sidecar where and as the server lands them (sidecar first).

    ``records`` are the whole records the sidecar counts; its sizes are made to add up for ``data``
    (as a probe's do), so a bad file gets past the sidecar checks and fails on its content.
    """
    meta = metadata_for(data, records, probe_id=probe_id, sequence=sequence)
    meta.captured_bytes = (
        len(data)
        - capture_metadata.PCAP_GLOBAL_HEADER_BYTES
        - (capture_metadata.PCAP_RECORD_HEADER_BYTES * len(records))
    )
    meta.window_start_ns, meta.window_end_ns = first_ns, first_ns + 60 * 10**9
    path = root / _relative(probe_id, sequence, first_ns)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(capture_metadata.to_json(meta), encoding="utf-8")
    path.write_bytes(data)
    return path


def _land_good(root: Path, probe_id: str, sequence: int, count: int, first_ns: int) -> set[str]:
    """A capture of ``count`` IPv6 packets with two non-IPv6 records among them; returns its sources."""
    ipv6_records = frames(count, first_ns)
    others = [Record(f, first_ns + 500_000 + i) for i, f in enumerate(_not_ipv6())]
    records = sorted(ipv6_records + others, key=lambda r: r.ts_ns)
    _land(root, probe_id, sequence, pcap(records), records, first_ns)
    return {f"2001:db8:{i % 7:x}::{i + 1:x}" for i in range(count)}


def build_landing(root: Path) -> Landing:
    day1 = dt.datetime.fromtimestamp(FIRST_NS / 1e9, dt.UTC).date().isoformat()
    day2_ns = FIRST_NS + NS_PER_DAY
    day2 = dt.datetime.fromtimestamp(day2_ns / 1e9, dt.UTC).date().isoformat()
    sources_a = _land_good(root, PROBE_A, 1, 20, FIRST_NS)
    sources_a |= _land_good(root, PROBE_A, 2, 30, FIRST_NS + 60 * 10**9)
    sources_b = _land_good(root, PROBE_B, 1, 25, day2_ns)
    garbage = b"GARBAGE!" + bytes((i * 37 + 11) % 256 for i in range(504))
    unreadable = _land(root, PROBE_B, 2, garbage, [], day2_ns + 60 * 10**9)
    cut = frames(4, day2_ns + 120 * 10**9)
    # Four records of which the last lost its final 20 bytes: a copy cut short.
    damaged = _land(root, PROBE_B, 3, pcap(cut)[:-20], cut[:3], day2_ns + 120 * 10**9)
    return Landing(
        root,
        ipv6_packets={(day1, PROBE_A): 50, (day2, PROBE_B): 25},
        sources={(day1, PROBE_A): len(sources_a), (day2, PROBE_B): len(sources_b)},
        unreadable=unreadable,
        damaged=damaged,
    )


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHome]:
    """One migrated Airflow metadata database for the module (migrating takes a while)."""
    home = AirflowHome.create(tmp_path_factory.mktemp("airflow-home"))
    home.migrate()
    yield home


@pytest.mark.timeout(DAGBAG_TEST_TIMEOUT_S)
def test_dagbag_imports_the_three_dags_cleanly(airflow_home: AirflowHome, tmp_path: Path) -> None:
    # Settings are read when a task runs, never while parsing: a config file that does not exist
    # would otherwise be an import error here.
    report = airflow_home.dagbag_report({"SURVEY6_CONFIG": str(tmp_path / "no-such-aggregator.toml")})

    assert report["import_errors"] == {}
    assert report["warnings"] == {}
    assert report["dag_ids"] == sorted([AGGREGATE, MAINTENANCE, PARSE])
    # Parsing declares only: no data library, no pipeline, no Spark at parse time.
    assert report["heavy_modules"] == []
    dags = report["dags"]
    assert dags[PARSE]["tasks"] == [
        "announce_dirty_partitions",
        "discover_new_captures",
        "ingest",
        "summarize",
    ]
    assert dags[AGGREGATE]["tasks"] == ["build", "dirty_partitions", "summarize"]
    assert dags[MAINTENANCE]["tasks"] == ["clean_up", "report_backlog"]
    for dag in dags.values():
        # Every task: 3 retries, 2 minutes doubling each time, a retry policy (settings errors: none).
        assert {tuple(r) for r in dag["retries"].values()} == {(3, 120.0, 2.0, True)}
    assert "survey6_dirty_partitions" in dags[AGGREGATE]["schedule"]


def _settings_file(tmp_path: Path, landing: Path) -> Path:
    config = tmp_path / "aggregator.toml"
    config.write_text(
        f'landing_dir = "{landing}"\n'
        f'output_dir = "{tmp_path / "datasets"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        # The aggregate DAG must use Spark even though the settings name DuckDB.
        'engine = "duckdb"\n'
        "[spark]\n"
        'master = "local[2]"\n'
        'driver_memory = "1g"\n',
        encoding="utf-8",
    )
    return config


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def _age_quarantined(state: Path, sha256_hex: str, seconds: float) -> None:
    """Makes a quarantined file look refused ``seconds`` ago (its reason record and the file's time)."""
    reason = state / "quarantine" / f"{sha256_hex}{REASON_SUFFIX}"
    record = json.loads(reason.read_text(encoding="utf-8"))
    then = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    record["quarantined_at"] = then.isoformat().replace("+00:00", "Z")
    reason.write_text(json.dumps(record), encoding="utf-8")
    _age(reason, seconds)


def _packet_rows(output: Path, key: tuple[str, str]) -> int:
    partition = datasets.Partition(date=key[0], probe_id=key[1])
    return sum(pq.read_metadata(f).num_rows for f in datasets.packet_files(output, partition))


@pytest.mark.timeout(END_TO_END_TIMEOUT_S)
def test_each_dag_runs_on_a_real_landing_zone(airflow_home: AirflowHome, tmp_path: Path) -> None:
    landing = build_landing(tmp_path / "landing")
    env = {"SURVEY6_CONFIG": str(_settings_file(tmp_path, landing.root))}
    output, state = tmp_path / "datasets", tmp_path / "state"

    # -- parse: the good files become packets, the bad ones are quarantined with their reasons
    done = airflow_home.dags_test(PARSE, env)
    assert done.returncode == 0, describe_failure(done)

    with Ledger.in_state_dir(state) as ledger:
        ingested = {f.path: f for f in ledger.files(INGESTED)}
        quarantined = {f.path: f for f in ledger.files(QUARANTINED)}
        dirty = {d.key for d in ledger.dirty()}
    assert len(ingested) == 3
    assert {p: f.reason for p, f in quarantined.items()} == {
        str(landing.unreadable): "unreadable",
        str(landing.damaged): "damaged",
    }
    assert dirty == set(landing.ipv6_packets)
    for key, packets in landing.ipv6_packets.items():
        assert _packet_rows(output, key) == packets
    reasons = {str(e["source_path"]): e for e in Quarantine.in_state_dir(state).entries()}
    assert reasons[str(landing.unreadable)]["reason"] == "unreadable"
    assert landing.unreadable.name in str(reasons[str(landing.unreadable)]["detail"])
    assert landing.unreadable.exists()  # the landed file stays the server's
    # The Asset event that starts the aggregate DAG under a scheduler, naming the dirty partitions.
    partitions = sorted([list(k) for k in landing.ipv6_packets])
    assert airflow_home.asset_events("survey6_dirty_partitions") == [(PARSE, {"partitions": partitions})]
    assert AGGREGATE in airflow_home.dags_queued_by_assets()

    # -- aggregate: every derived dataset of both partitions, built by Spark
    done = airflow_home.dags_test(AGGREGATE, env)
    assert done.returncode == 0, describe_failure(done)

    with Ledger.in_state_dir(state) as ledger:
        assert ledger.dirty() == []
    [(producer, extra)] = airflow_home.asset_events("survey6_derived_datasets")
    assert producer == AGGREGATE
    assert sorted(extra["partitions"]) == sorted(f"{d}/{p}" for d, p in landing.ipv6_packets)
    for key, sources in landing.sources.items():
        partition = datasets.Partition(date=key[0], probe_id=key[1])
        for name in datasets.DERIVED_DATASETS:
            path = datasets.derived_path(output, name, partition)
            metadata = pq.read_metadata(path)
            assert "parquet-mr" in metadata.created_by, (name, metadata.created_by)  # Spark's writer
        assert pq.read_metadata(datasets.derived_path(output, "sources_128", partition)).num_rows == sources
        flows = pq.read_table(datasets.derived_path(output, "flows", partition))
        assert sum(flows.column("packets").to_pylist()) == landing.ipv6_packets[key]

    # -- maintenance: staging and quarantine past their retention go, recent ones stay
    old_staging, new_staging = state / "staging" / "run-crashed-long-ago", state / "staging" / "run-now"
    old_staging.mkdir(parents=True)
    new_staging.mkdir()
    _age(old_staging, 2 * DAY_S)  # staging_retention_s: 1 day
    _age_quarantined(state, quarantined[str(landing.unreadable)].sha256_hex, 31 * DAY_S)  # retention: 30 days

    done = airflow_home.dags_test(MAINTENANCE, env)
    assert done.returncode == 0, describe_failure(done)

    assert not old_staging.exists() and new_staging.exists()
    left = {str(e["source_path"]): e["reason"] for e in Quarantine.in_state_dir(state).entries()}
    assert left == {str(landing.damaged): "damaged"}
    assert airflow_home.last_return_value(MAINTENANCE, "report_backlog") == {
        "quarantined_by_reason": {"damaged": 1, "unreadable": 1},  # counted before clean_up ran
        "quarantined_recently": 1,
        "dirty_partitions": 0,
        "stale_dirty_partitions": 0,
    }
    assert airflow_home.last_return_value(MAINTENANCE, "clean_up") == {
        "staging_removed": 1,
        "quarantine_removed": 1,
    }

    # -- parse again: nothing is new, nothing changes (the expired file is still known to the ledger)
    done = airflow_home.dags_test(PARSE, env)
    assert done.returncode == 0, describe_failure(done)
    with Ledger.in_state_dir(state) as ledger:
        assert len(ledger.files(INGESTED)) == 3 and len(ledger.files(QUARANTINED)) == 2
        assert ledger.dirty() == []
    for key, packets in landing.ipv6_packets.items():
        assert _packet_rows(output, key) == packets
    assert len(airflow_home.asset_events("survey6_dirty_partitions")) == 1  # no new event: nothing changed
