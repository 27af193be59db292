"""The worker's result carries what the audit balances: rows written to the ``packets`` dataset and
records skipped for an ingested file, the sidecar's claim for a quarantined one; the server stores
them in the catalog. Real redis-server, real worker process, real registry and Parquet files."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy.orm import Session, sessionmaker

from support.aggregator_inputs import (
    ETHERNET_IPV6_HEADERS_BYTES,
    FIRST_NS,
    Landed,
    frames,
    metadata_for,
    settings_for,
)
from survey6.aggregator import datasets
from survey6.aggregator.settings import AggregatorSettings
from survey6.common import capture_metadata
from survey6.server import audit, catalog
from survey6.server.queue import Drainer, IngestQueue
from survey6.server.registry import db
from survey6.server.registry.models import Probe, utcnow
from unit.aggregator.pcapbuild import Record, ethernet, pcap

WORKER_TIMEOUT_S = 240.0
PROBE = "p-0a1b2c3d4e5f"
ETHERTYPE_IPV4 = 0x0800


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    (tmp_path / "registry").mkdir()
    engine = db.make_engine(db.sqlite_url(tmp_path / "registry"))
    db.upgrade(engine)
    factory = db.session_factory(engine)
    with factory.begin() as session:
        session.add(
            Probe(
                id=PROBE,
                hostname="h",
                cert_serial="1",
                cert_not_after=utcnow(),
                last_health={"spool": {"last_sealed_sequence": "3"}},
            )
        )
    yield factory
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> AggregatorSettings:
    return settings_for(tmp_path, redis_url=redis_url)


def land_records(landing: Path, sequence: int, records: list[Record]) -> Landed:
    """A capture of `records` and its sidecar, where and as the server lands them."""
    data = pcap(records)
    meta = metadata_for(data, records, probe_id=PROBE, sequence=sequence)
    meta.kernel_delta.received_packets = len(records)
    relative = f"{PROBE}/{dt.datetime.fromtimestamp(FIRST_NS / 1e9, dt.UTC):%Y/%m/%d}/{sequence:012d}.pcap"
    path = landing / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(capture_metadata.to_json(meta), encoding="utf-8")
    path.write_bytes(data)
    return Landed(PROBE, sequence, relative, path, meta.sha256_hex, len(records))


def store(sessions: sessionmaker[Session], landed: Landed, sha256_hex: str) -> None:
    """Records the file in the catalog from its sidecar, as the upload path does."""
    meta = capture_metadata.from_json(landed.path.with_suffix(".json").read_bytes(), source="test")
    with sessions.begin() as session:
        row = catalog.add_received(
            session,
            PROBE,
            meta,
            sha256_hex=sha256_hex,
            size_bytes=landed.path.stat().st_size,
            landing_path=landed.landing_path,
        )
        catalog.mark_stored(session, row.id)


def parquet_rows(output: Path, sha256_hex: str) -> int:
    files = (output / datasets.PACKETS).rglob(f"*-{sha256_hex[:16]}.parquet")
    return sum(pq.read_metadata(path).num_rows for path in files)


def run_burst(settings: AggregatorSettings) -> None:
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "survey6.aggregator", "worker", "--burst",
            "--redis-url", settings.redis_url,
            "--output", str(settings.output_dir),
            "--state-dir", str(settings.state_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _, err = worker.communicate(timeout=WORKER_TIMEOUT_S)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err


def test_ingest_results_carry_dataset_rows_and_quarantined_claims(
    sessions: sessionmaker[Session], settings: AggregatorSettings, redis_url: str
) -> None:
    clean = land_records(settings.landing_dir, 1, frames(30))
    mixed_records = frames(12)
    mixed_records[3] = Record(
        mixed_records[3].frame, mixed_records[3].ts_ns, captured=ETHERNET_IPV6_HEADERS_BYTES - 10
    )
    mixed_records[7] = Record(ethernet(b"\x45" + bytes(39), ethertype=ETHERTYPE_IPV4), mixed_records[7].ts_ns)
    mixed = land_records(settings.landing_dir, 2, mixed_records)
    refused = land_records(settings.landing_dir, 3, frames(9))
    store(sessions, clean, clean.sha256_hex)
    store(sessions, mixed, mixed.sha256_hex)
    store(sessions, refused, "e" * 64)  # not what the server verified: quarantined
    queue = IngestQueue(redis_url)
    try:
        drainer = Drainer(sessions, queue, settings.landing_dir)
        assert drainer.drain() == 3
        run_burst(settings)
        assert drainer.collect_results() == 3
    finally:
        queue.close()

    with sessions() as session:
        rows = {r.sequence: r for r in (catalog.find(session, PROBE, s) for s in (1, 2, 3)) if r is not None}
        document = audit.audit_fleet(session)
    # The catalog's rows are what is in the Parquet files, not what was parsed.
    assert rows[1].dataset_rows == parquet_rows(settings.output_dir, clean.sha256_hex) == 30
    assert rows[2].dataset_rows == parquet_rows(settings.output_dir, mixed.sha256_hex) == 10
    assert rows[2].skipped_packets == 2
    assert (
        rows[3].state == catalog.FAILED and rows[3].quarantined_packets == 9 and rows[3].dataset_rows is None
    )
    probe = document["probes"][0]
    assert probe["sequences"]["ingested"] == [[1, 2]] and probe["sequences"]["quarantined"] == [[3, 3]]
    landed = next(i for i in probe["identities"] if i["name"] == "landed")
    assert landed["holds"] and landed["left"] == 51
    assert (
        probe["terms"]["dataset_rows"],
        probe["terms"]["skipped_by_parser"],
        probe["terms"]["quarantined"],
    ) == (
        40,
        2,
        9,
    )
    assert document["exit_code"] == audit.EXIT_OK
