"""pipeline: discovery, ingest with quarantine, idempotent re-runs, repair of dirty partitions, cleanup.

Everything real: the parser, the dataset writer, the DuckDB engine, SQLite, the filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support.aggregator_inputs import DATA_DIR, bad_files, good_pcap, land, settings_for, tree_snapshot
from survey6.aggregator import datasets
from survey6.aggregator.errors import AggregatorError
from survey6.aggregator.ledger import INGESTED, QUARANTINED, Ledger
from survey6.aggregator.pipeline import (
    STAGING_DIRNAME,
    Capture,
    cleanup,
    discover,
    ingest_file,
    run,
)
from survey6.aggregator.quarantine import Quarantine
from survey6.aggregator.settings import AggregatorSettings

PROBE = "p-test"


@pytest.fixture
def settings(tmp_path: Path) -> AggregatorSettings:
    return settings_for(tmp_path)


@pytest.fixture
def ledger(settings: AggregatorSettings) -> Iterator[Ledger]:
    with Ledger.in_state_dir(settings.state_dir) as opened:
        yield opened


def packet_rows(settings: AggregatorSettings) -> int:
    """Rows of the packets dataset in every partition the ledger says was written."""
    with Ledger.in_state_dir(settings.state_dir) as ledger:
        keys = {p for f in ledger.files(INGESTED) for p in f.partitions}
    return sum(
        pq.read_table(datasets.Partition(date=d, probe_id=p).path(settings.output_dir, "packets")).num_rows
        for d, p in keys
    )


def user_folder(root: Path, names: list[str]) -> Path:
    """A folder of committed samples and the bad files of ``bad_files`` named in ``names``."""
    root.mkdir(parents=True, exist_ok=True)
    bad = bad_files()
    for name in names:
        if name in bad:
            (root / name).write_bytes(bad[name][0])
        else:
            shutil.copyfile(DATA_DIR / name, root / name)
    return root


# -- discover -------------------------------------------------------------------------------------


def test_discover_finds_landed_captures_in_order(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    land(landing, "p-b", 2)
    land(landing, "p-a", 1)
    land(landing, "p-b", 1)
    (landing / "p-a" / "2024" / "05" / "06" / "notes.pcap").write_bytes(b"")  # not a landed name
    found = discover(landing=landing)
    assert [(c.probe_id, c.sequence, c.source) for c in found.captures] == [
        ("p-a", 1, "landing"),
        ("p-b", 1, "landing"),
        ("p-b", 2, "landing"),
    ]


def test_discover_knows_captures_by_magic_not_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "capture.dat").write_bytes(good_pcap(3))  # a capture under another name
    shutil.copyfile(DATA_DIR / "two-interfaces.pcapng", folder / "trace")
    (folder / "empty.pcap").write_bytes(b"")  # named like one: found, to be quarantined
    (folder / "notes.txt").write_text("not a capture")
    (folder / "capture.json").write_text("{}")  # sidecars are not counted as ignored files
    (folder / ".hidden.pcap").write_bytes(good_pcap(1))
    found = discover(paths=[folder, folder / "notes.txt"], probe_id=PROBE)
    assert sorted(c.path.relative_to(folder).as_posix() for c in found.captures) == [
        "empty.pcap",
        "notes.txt",  # named explicitly: taken as a capture (and will be quarantined)
        "sub/capture.dat",
        "trace",
    ]
    assert all(c.probe_id == PROBE and c.source == "user" for c in found.captures)
    assert found.ignored == ()  # notes.txt was named, so it is not "ignored"


def test_a_folder_run_counts_what_is_no_capture_as_ignored(
    settings: AggregatorSettings, tmp_path: Path
) -> None:
    folder = user_folder(tmp_path / "input", ["garbage.bin", "ethernet-mixed.pcap"])
    (folder / "readme.md").write_text("hello")
    assert discover(paths=[folder]).ignored == (folder / "garbage.bin", folder / "readme.md")
    summary = run(settings, paths=[folder], probe_id=PROBE)
    assert (summary.files_seen, summary.files_ingested, summary.files_ignored, summary.complete) == (
        1,
        1,
        2,
        True,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"paths": [Path("/nonexistent/capture.pcap")]}, "no such file or directory"),
        ({"landing": Path("/nonexistent/landing")}, "is not a directory"),
        ({"paths": [], "probe_id": "../etc"}, "is not valid"),
    ],
)
def test_discover_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(AggregatorError, match=message):
        discover(**kwargs)  # type: ignore[arg-type]


# -- ingest and quarantine ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_every_bad_kind_is_quarantined_with_its_reason_and_the_run_goes_on(
    settings: AggregatorSettings, tmp_path: Path, name: str
) -> None:
    folder = user_folder(tmp_path / "input", ["ethernet-mixed.pcap", name, "raw-ipv6-big-endian-nano.pcap"])
    before = tree_snapshot(folder)
    # Named as well: in a folder, a file that is no capture by magic or name is only counted as ignored.
    summary = run(settings, paths=[folder, folder / name], probe_id=PROBE)

    reason = bad_files()[name][1]
    assert (summary.files_seen, summary.files_ingested, summary.files_quarantined) == (3, 2, 1)
    assert summary.quarantined == [
        {"path": str(folder / name), "reason": reason, "detail": summary.quarantined[0]["detail"]}
    ]
    assert name in summary.quarantined[0]["detail"]
    assert not summary.complete
    assert tree_snapshot(folder) == before  # the user's files are untouched

    with Ledger.in_state_dir(settings.state_dir) as ledger:
        (bad,) = ledger.files(QUARANTINED)
    assert (bad.reason, bad.path, bad.partitions, bad.rows_written) == (reason, str(folder / name), (), 0)
    kept = settings.state_dir / "quarantine"
    assert (kept / f"{bad.sha256_hex}.capture").read_bytes() == (folder / name).read_bytes()
    record = json.loads((kept / f"{bad.sha256_hex}.reason.json").read_text())
    assert (record["reason"], record["source_path"], record["probe_id"]) == (
        reason,
        str(folder / name),
        PROBE,
    )

    # Nothing of the bad file is in the datasets: exactly the good files' IPv6 packets.
    assert packet_rows(settings) == summary.rows_written == 12 + 5
    assert summary.skipped_packets == {"not_ipv6": 2}  # the IPv4 and ARP frames of ethernet-mixed


def test_a_header_only_capture_is_ingested_with_no_rows(settings: AggregatorSettings, tmp_path: Path) -> None:
    folder = user_folder(tmp_path / "input", ["header-only.pcap"])
    summary = run(settings, paths=[folder], probe_id=PROBE)
    assert (summary.files_ingested, summary.packets, summary.rows_written, summary.complete) == (
        1,
        0,
        0,
        True,
    )


def test_rerunning_changes_nothing(settings: AggregatorSettings, tmp_path: Path) -> None:
    folder = user_folder(
        tmp_path / "input", ["ethernet-mixed.pcap", "two-interfaces.pcapng", *sorted(bad_files())]
    )
    land(settings.landing_dir, "p-1", 1)
    paths = [folder, folder / "garbage.bin"]
    first = run(settings, landing=settings.landing_dir, paths=paths, probe_id=PROBE)
    assert first.files_ingested == 3 and first.files_quarantined == len(bad_files())
    assert first.partitions_built >= 2
    datasets_before = tree_snapshot(settings.output_dir)
    state_before = tree_snapshot(settings.state_dir / "quarantine")

    second = run(settings, landing=settings.landing_dir, paths=paths, probe_id=PROBE)

    assert (second.files_seen, second.files_already_done) == (first.files_seen, first.files_seen)
    assert second.files_already_quarantined == len(bad_files())
    assert (second.files_ingested, second.files_quarantined, second.partitions_built) == (0, 0, 0)
    assert second.complete  # nothing new went wrong
    assert tree_snapshot(settings.output_dir) == datasets_before  # same files, bytes and mtimes
    assert tree_snapshot(settings.state_dir / "quarantine") == state_before


def test_a_crash_between_ingest_and_aggregate_is_repaired_by_the_next_run(
    settings: AggregatorSettings, ledger: Ledger
) -> None:
    landed = land(settings.landing_dir, "p-1", 7, count=30)
    (capture,) = discover(landing=settings.landing_dir).captures
    outcome = ingest_file(
        capture,
        ledger=ledger,
        quarantine=Quarantine.in_state_dir(settings.state_dir),
        output_root=settings.output_dir,
    )
    # ... and the process dies here, before the derived datasets are built.
    assert outcome.state == "ingested" and outcome.rows == landed.packets
    (partition,) = outcome.partitions
    assert [d.key for d in ledger.dirty()] == [partition]
    part = datasets.Partition(date=partition[0], probe_id=partition[1])
    assert not any(part.path(settings.output_dir, name).exists() for name in datasets.DERIVED_DATASETS)

    summary = run(settings, landing=settings.landing_dir)

    assert (summary.files_already_done, summary.partitions_built) == (1, 1)
    assert ledger.dirty() == []
    assert all(part.path(settings.output_dir, name).exists() for name in datasets.DERIVED_DATASETS)
    assert set(summary.dataset_rows) >= set(datasets.DERIVED_DATASETS)


def test_no_aggregate_leaves_partitions_dirty_for_a_later_run(settings: AggregatorSettings) -> None:
    land(settings.landing_dir, "p-1", 1)
    first = run(settings, landing=settings.landing_dir, aggregate=False)
    assert (first.files_ingested, first.partitions_built) == (1, 0)
    second = run(settings, landing=settings.landing_dir)
    assert (second.files_already_done, second.partitions_built) == (1, 1)


def test_a_sha256_other_than_the_servers_is_quarantined(settings: AggregatorSettings, ledger: Ledger) -> None:
    landed = land(settings.landing_dir, "p-1", 3)
    capture = Capture(landed.path, "landing", "p-1", 3, expected_sha256="0" * 64)
    outcome = ingest_file(
        capture,
        ledger=ledger,
        quarantine=Quarantine.in_state_dir(settings.state_dir),
        output_root=settings.output_dir,
    )
    assert (outcome.state, outcome.reason) == ("quarantined", "sha256-mismatch")
    assert "the server recorded 0000" in outcome.detail
    assert landed.path.exists()  # the landing zone is the server's: never emptied by the aggregator
    assert (settings.state_dir / "quarantine" / f"{landed.sha256_hex}.sidecar.json").exists()


def test_a_landed_file_changed_after_its_sidecar_is_quarantined(settings: AggregatorSettings) -> None:
    landed = land(settings.landing_dir, "p-1", 4)
    data = bytearray(landed.path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last packet
    landed.path.write_bytes(bytes(data))
    summary = run(settings, landing=settings.landing_dir)
    assert [q["reason"] for q in summary.quarantined] == ["sha256-mismatch"]
    assert "its sidecar says" in summary.quarantined[0]["detail"]


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        ("other-probe", "bad-metadata", "the sidecar names probe 'p-2'"),
        ("no-sidecar", "bad-metadata", "no metadata sidecar"),
        ("invalid-sidecar", "bad-metadata", "not valid capture metadata"),
    ],
)
def test_a_landed_file_whose_sidecar_does_not_fit_is_quarantined(
    settings: AggregatorSettings, change: str, reason: str, message: str
) -> None:
    landed = land(settings.landing_dir, "p-1", 5)
    sidecar = landed.path.with_suffix(".json")
    if change == "other-probe":
        sidecar.write_text(sidecar.read_text().replace('"p-1"', '"p-2"'))
    elif change == "no-sidecar":
        sidecar.unlink()
    else:
        sidecar.write_text('{"probe_id": 7}')
    summary = run(settings, landing=settings.landing_dir)
    assert [q["reason"] for q in summary.quarantined] == [reason]
    assert message in summary.quarantined[0]["detail"]


def test_a_file_that_vanished_is_unreadable_and_not_recorded(
    settings: AggregatorSettings, ledger: Ledger
) -> None:
    capture = Capture(settings.landing_dir / "gone.pcap", "user", PROBE)
    outcome = ingest_file(
        capture,
        ledger=ledger,
        quarantine=Quarantine.in_state_dir(settings.state_dir),
        output_root=settings.output_dir,
    )
    assert outcome.state == "unreadable" and "No such file" in outcome.detail
    assert ledger.files() == []  # tried again by the next run


def test_a_user_capture_needs_a_probe_id(settings: AggregatorSettings, tmp_path: Path) -> None:
    folder = user_folder(tmp_path / "input", ["ethernet-mixed.pcap"])
    with pytest.raises(
        AggregatorError, match="ethernet-mixed.pcap has no sidecar naming its probe: give --probe-id"
    ):
        run(settings, paths=[folder])
    assert not (settings.state_dir / "ledger.sqlite3").exists()  # refused before anything was done


def test_the_same_content_under_two_names_is_ingested_once(
    settings: AggregatorSettings, tmp_path: Path
) -> None:
    folder = user_folder(tmp_path / "input", ["ethernet-mixed.pcap"])
    shutil.copyfile(folder / "ethernet-mixed.pcap", folder / "copy.pcap")
    summary = run(settings, paths=[folder], probe_id=PROBE)
    assert (summary.files_ingested, summary.files_already_done) == (1, 1)
    assert packet_rows(settings) == 12


# -- cleanup --------------------------------------------------------------------------------------


def test_cleanup_removes_old_staging_and_expired_quarantine(
    settings: AggregatorSettings, tmp_path: Path
) -> None:
    staging = settings.state_dir / STAGING_DIRNAME
    (staging / "old-run" / "part").mkdir(parents=True)
    (staging / "old-run" / "part" / "x.parquet").write_bytes(b"left over")
    (staging / "fresh").write_bytes(b"in use")
    writer_staging = settings.output_dir / datasets.STAGING_DIR / "build-1"
    writer_staging.mkdir(parents=True)
    partition = settings.output_dir / "packets" / "date=2024-05-06" / "probe_id=p-1"
    partition.mkdir(parents=True)
    (partition / ".000000000001-0123456789abcdef.parquet.99.tmp").write_bytes(b"killed mid-write")
    (partition / ".000000000002-0123456789abcdef.parquet.98.tmp").write_bytes(b"being written now")
    (partition / "000000000001-0123456789abcdef.parquet").write_bytes(b"a dataset file")
    old_s = 1_000_000.0
    for path in (
        staging / "old-run",
        writer_staging,
        partition / ".000000000001-0123456789abcdef.parquet.99.tmp",
    ):
        os.utime(path, (old_s, old_s))
    os.utime(partition / "000000000001-0123456789abcdef.parquet", (old_s, old_s))
    quarantine = Quarantine.in_state_dir(settings.state_dir)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"junk")
    quarantine.put(bad, sha256_hex="1" * 64, reason="unreadable", detail="junk")
    quarantine.put(bad, sha256_hex="2" * 64, reason="unreadable", detail="junk")
    os.utime(settings.state_dir / "quarantine" / f"{'1' * 64}.reason.json", (old_s, old_s))

    report = cleanup(
        state_dir=settings.state_dir,
        output_root=settings.output_dir,
        quarantine=quarantine,
        staging_retention_s=3600,
        quarantine_retention_s=86400,
    )

    assert (report.staging_removed, report.quarantine_removed) == (3, 1)
    assert sorted(p.name for p in staging.iterdir()) == ["fresh"]
    assert not writer_staging.exists()
    assert sorted(p.name for p in partition.iterdir()) == [
        ".000000000002-0123456789abcdef.parquet.98.tmp",
        "000000000001-0123456789abcdef.parquet",  # old, but a dataset file: never staging
    ]
    assert sorted(p.name for p in (settings.state_dir / "quarantine").iterdir()) == [
        f"{'2' * 64}.capture",
        f"{'2' * 64}.reason.json",
    ]
    assert bad.read_bytes() == b"junk"


def test_a_quarantine_retention_of_zero_keeps_files_forever(
    settings: AggregatorSettings, tmp_path: Path
) -> None:
    quarantine = Quarantine.in_state_dir(settings.state_dir)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"junk")
    quarantine.put(bad, sha256_hex="3" * 64, reason="unreadable", detail="junk", now=0.0)
    assert quarantine.expire(0) == 0
    assert [e["sha256_hex"] for e in quarantine.entries()] == ["3" * 64]


def test_a_fifo_where_a_capture_should_be_does_not_hang_the_run(
    settings: AggregatorSettings, tmp_path: Path
) -> None:
    fifo = tmp_path / "live.pcap"
    os.mkfifo(fifo)
    summary = run(settings, paths=[fifo], probe_id=PROBE)
    assert summary.unreadable == [{"path": str(fifo), "detail": f"{fifo}: cannot read: not a regular file"}]
    assert not summary.complete
