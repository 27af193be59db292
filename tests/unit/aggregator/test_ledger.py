"""ledger: files keyed by SHA-256, dirty partitions with generations, the result outbox."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from survey6.aggregator.errors import AggregatorError
from survey6.aggregator.ledger import INGESTED, QUARANTINED, FileRecord, Ledger, LedgerError

SHA_A, SHA_B = "a" * 64, "b" * 64
DAY1, DAY2 = ("2024-05-06", "p-1"), ("2024-05-07", "p-1")


def ingested(sha: str = SHA_A, partitions: tuple[tuple[str, str], ...] = (DAY1,)) -> FileRecord:
    return FileRecord(
        sha256_hex=sha,
        path="/captures/000000000001.pcap",
        probe_id="p-1",
        sequence=1,
        state=INGESTED,
        size_bytes=1234,
        packets=12,
        rows_written=10,
        skipped={"not_ipv6": 2},
        parse_stats={"packets": 12, "ipv6_packets": 10, "not_ipv6_packets": 2},
        partitions=partitions,
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.in_state_dir(tmp_path / "state") as opened:
        yield opened


def test_a_recorded_file_reads_back_whole(ledger: Ledger) -> None:
    entry = ingested()
    assert ledger.record(entry, now=1000.0) is True
    back = ledger.get(SHA_A)
    assert back is not None
    assert back == FileRecord(**{**entry.__dict__, "recorded_at": 1000.0})
    assert ledger.get(SHA_B) is None


def test_recording_the_same_content_twice_keeps_the_first(ledger: Ledger) -> None:
    assert ledger.record(ingested(), now=1.0)
    again = FileRecord(
        sha256_hex=SHA_A, path="/elsewhere.pcap", probe_id="p-2", sequence=9, state=QUARANTINED
    )
    assert ledger.record(again, now=2.0) is False
    kept = ledger.get(SHA_A)
    assert kept is not None and (kept.path, kept.state) == ("/captures/000000000001.pcap", INGESTED)
    assert [f.sha256_hex for f in ledger.files()] == [SHA_A]


def test_files_by_state(ledger: Ledger) -> None:
    ledger.record(ingested(SHA_A), now=1.0)
    ledger.record(
        FileRecord(SHA_B, "/bad.pcap", "p-1", 2, QUARANTINED, reason="unreadable", detail="empty file"),
        now=2.0,
    )
    assert [f.sha256_hex for f in ledger.files(INGESTED)] == [SHA_A]
    (bad,) = ledger.files(QUARANTINED)
    assert (bad.reason, bad.detail, bad.partitions) == ("unreadable", "empty file", ())


def test_recording_a_file_marks_its_partitions_dirty(ledger: Ledger) -> None:
    ledger.record(ingested(partitions=(DAY2, DAY1)), now=50.0)
    dirty = ledger.dirty()
    assert [d.key for d in dirty] == [DAY1, DAY2]
    assert {d.dirty_since for d in dirty} == {50.0}


def test_a_partition_marked_again_during_its_build_stays_dirty(ledger: Ledger) -> None:
    ledger.mark_dirty([DAY1], now=10.0)
    (seen,) = ledger.dirty()
    ledger.mark_dirty([DAY1], now=20.0)  # another file landed in it while it was being built
    assert ledger.clear_dirty(seen) is False
    (still,) = ledger.dirty()
    assert still.generation == seen.generation + 1
    assert still.dirty_since == 10.0  # how long it has waited is kept
    assert ledger.clear_dirty(still) is True
    assert ledger.dirty() == []


def test_the_ledger_is_shared_between_connections(tmp_path: Path) -> None:
    with Ledger.in_state_dir(tmp_path) as first, Ledger.in_state_dir(tmp_path) as second:
        first.record(ingested(), now=1.0)
        assert second.get(SHA_A) is not None
        assert [d.key for d in second.dirty()] == [DAY1]
    mode = sqlite3.connect(tmp_path / "ledger.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_the_result_outbox_is_ordered_and_drained(ledger: Ledger) -> None:
    for n in range(5):
        ledger.add_result(f'{{"n": {n}}}')
    first = ledger.pending_results(3)
    assert [payload for _, payload in first] == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
    ledger.drop_results(row_id for row_id, _ in first)
    assert [payload for _, payload in ledger.pending_results(10)] == ['{"n": 3}', '{"n": 4}']


def test_a_ledger_from_a_newer_survey6_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(LedgerError, match="has schema 99"):
        Ledger(path)


def test_an_unopenable_ledger_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite3").write_bytes(b"this is not a database, but it is long enough" * 100)
    with pytest.raises(LedgerError, match="cannot open the ledger") as raised:
        Ledger.in_state_dir(tmp_path)
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)
    assert issubclass(LedgerError, AggregatorError)
