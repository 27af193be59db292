from __future__ import annotations

import json
from pathlib import Path

import pytest

from survey6.probe.errors import SpoolError, SpoolLockedError
from survey6.probe.metadata import SCHEMA_VERSION
from survey6.probe.spool import Spool
from survey6.wire.v1 import capture_pb2


def make_spool(root: Path, *, quota: int = 1 << 30, policy: str = "pause") -> Spool:
    spool = Spool(root, quota_bytes=quota, min_free_bytes=0, policy=policy)  # type: ignore[arg-type]
    spool.open()
    return spool


def seal_file(spool: Spool, payload_records: int, record_bytes: int = 100) -> int:
    """Writes a part file of `payload_records` fake records and seals it; returns its sequence."""
    sequence, part = spool.begin_file({"interface": "eth0"})
    size = 24 + payload_records * (16 + record_bytes)
    part.write_bytes(b"\0" * size)
    spool.seal(
        sequence,
        capture_pb2.CaptureMetadata(
            sequence=sequence,
            packets=payload_records,
            captured_bytes=payload_records * record_bytes,
            file_size_bytes=size,
            sha256_hex="ab" * 32,
            interface=capture_pb2.InterfaceFacts(name="eth0"),
            file_format="pcap",
            schema_version=SCHEMA_VERSION,
        ),
    )
    return sequence


def test_sequences_are_gapless_and_survive_delivery_and_reopening(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    assert [seal_file(spool, 3) for _ in range(3)] == [1, 2, 3]
    spool.delivered(1)
    spool.delivered(3)
    spool.close()
    again = make_spool(tmp_path)
    assert [f.sequence for f in again.ready_files()] == [2]
    assert seal_file(again, 1) == 4  # 3 was delivered, not forgotten
    assert again.state.delivered_files_total == 2


def test_a_part_file_reserves_its_sequence(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    first, _ = spool.begin_file({"interface": "eth0"})
    second, _ = spool.begin_file({"interface": "eth0"})
    assert (first, second) == (1, 2)
    assert spool.open_sequences() == [1, 2]
    spool.discard_open(2)
    assert spool.begin_file({})[0] == 2


def test_sealed_files_have_a_valid_sidecar(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    seal_file(spool, 5)
    ready = spool.ready_files()[0]
    meta = json.loads(ready.sidecar.read_text())
    assert meta["packets"] == "5" and meta["sequence"] == "1"
    assert not list(spool.open_dir.iterdir())


def test_drop_oldest_counts_what_it_drops(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, quota=3000, policy="drop-oldest")
    for packets in (10, 7, 5):
        seal_file(spool, packets)  # 1164 + 840 + 604 bytes
    assert not spool.is_full()
    seal_file(spool, 4)  # now 3092 bytes: over quota
    assert spool.is_full()
    assert spool.make_room()
    assert [f.sequence for f in spool.ready_files()] == [2, 3, 4]
    assert (spool.state.lost_files_total, spool.state.lost_packets_total) == (1, 10)
    assert [entry["sequence"] for entry in spool.losses()] == [1]


def test_pause_policy_never_deletes(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, quota=1000, policy="pause")
    seal_file(spool, 10)
    assert spool.is_full()
    assert not spool.make_room()
    assert len(spool.ready_files()) == 1
    spool.record_lost_packets(42, "spool full (pause)")
    assert spool.state.lost_packets_total == 42
    assert list(spool.losses())[0]["packets"] == 42


def test_retract_only_the_newest(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    for _ in range(3):
        seal_file(spool, 1)
    with pytest.raises(SpoolError, match="not the newest"):
        spool.retract([1])
    spool.retract([2, 3])
    assert [f.sequence for f in spool.ready_files()] == [1]
    assert seal_file(spool, 1) == 2


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    make_spool(tmp_path)
    with pytest.raises(SpoolLockedError, match="in use"):
        make_spool(tmp_path)


def test_delivering_an_unknown_sequence_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="not in the spool"):
        make_spool(tmp_path).delivered(9)


def test_unreadable_state_is_reported(tmp_path: Path) -> None:
    make_spool(tmp_path).close()
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(SpoolError, match="state.json is unreadable"):
        make_spool(tmp_path)
