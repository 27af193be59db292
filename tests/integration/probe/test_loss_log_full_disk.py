"""The loss log on a full disk and after crashes: whole lines only, ids never reused, counts exact.

The full disk is a small tmpfs mounted by the test (root only): a write that needs a page the
filesystem no longer has is cut short, as on a real full disk.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.tmpfs import mounted_tmpfs
from survey6.probe.agent import Agent
from survey6.probe.capture import Capture, CaptureOptions, Provenance
from survey6.probe.errors import SpoolError
from survey6.probe.identity import Credentials, Identity
from survey6.probe.pcap import CaptureHandle, KernelStats
from survey6.probe.settings import ProbeSettings
from survey6.probe.spool import Spool
from unit.probe.test_spool_losses import make_spool, seal_file

PAGE_BYTES = 4096
NO_KEYS = Credentials(b"", b"", b"")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", "64k") as mount_point:
        yield mount_point


def fill(disk: Path) -> Path:
    """Takes every free page of `disk`; returns the file that holds them."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as stream:
        try:
            for _ in range(1024):  # bounded: the disk is 64 KiB
                stream.write(b"\0" * PAGE_BYTES)
        except OSError:
            pass
    return filler


def ids(spool: Spool) -> list[int]:
    return [record["id"] for record in spool.losses()]


def test_an_append_cut_short_by_a_full_disk_leaves_whole_lines_and_the_probe_starts(small_disk: Path) -> None:
    spool = make_spool(small_disk / "spool")
    # The first record ends just short of a page boundary: the next one needs a new page.
    spool.record_lost_packets(1, "x" * 3900, interface="eth0")
    log_path = small_disk / "spool" / "losses.jsonl"
    before = log_path.read_bytes()
    filler = fill(small_disk)
    with pytest.raises(SpoolError, match="No space left"):
        spool.record_lost_packets(2, "y" * 400, interface="eth0")
    assert log_path.read_bytes() == before  # the partial line was cut back
    assert spool.losses_recorded_total == 1 and spool.state.lost_packets_total == 1
    filler.unlink()
    spool.record_lost_packets(3, "z", interface="eth0")
    spool.close()
    again = make_spool(small_disk / "spool")  # refused to start before the fix
    assert ids(again) == [1, 2]
    assert [r["packets"] for r in again.losses()] == [1, 3]
    assert again.state.lost_packets_total == 4
    again.close()


def test_a_drop_whose_record_cannot_be_written_keeps_the_file(small_disk: Path) -> None:
    root = small_disk / "spool"
    spool = make_spool(root, quota=1 << 20, policy="drop-oldest")
    seal_file(spool, 10, received=10)
    spool.quota_bytes = 1  # everything counts as over quota now
    filler = fill(small_disk)
    with pytest.raises(SpoolError):
        spool.make_room()
    assert [f.sequence for f in spool.ready_files()] == [1]  # no gap without a record
    assert spool.state.lost_files_total == 0
    filler.unlink()
    spool.make_room()
    assert [(r["kind"], r["sequence"]) for r in spool.losses()] == [("dropped-file", 1)]
    assert spool.ready_files() == [] and spool.state.lost_files_total == 1
    spool.close()


def test_open_finishes_a_drop_recorded_before_a_crash_and_counts_it(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, policy="drop-oldest")
    seal_file(spool, 10, received=10)
    seal_file(spool, 4, received=4)
    spool.close()
    # What a crash right after the record's fsync leaves: the record, the file, the old state.
    record = {
        "id": 1,
        "kind": "dropped-file",
        "time_ns": 1,
        "reason": "spool full",
        "sequence": 1,
        "packets": 10,
    }
    (tmp_path / "losses.jsonl").write_text(json.dumps(record) + "\n")
    again = make_spool(tmp_path, policy="drop-oldest")
    assert [f.sequence for f in again.ready_files()] == [2]
    assert (again.state.lost_files_total, again.state.lost_packets_total) == (1, 10)
    again.close()
    third = make_spool(tmp_path)  # counted once
    assert (third.state.lost_files_total, third.state.lost_packets_total) == (1, 10)


def test_ids_continue_after_the_log_is_lost(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    spool.record_lost_packets(5, "spool full (pause)")
    spool.record_lost_packets(6, "spool full (pause)")
    spool.acknowledge_losses(2)
    spool.close()
    (tmp_path / "losses.jsonl").unlink()
    again = make_spool(tmp_path)
    again.record_lost_packets(7, "spool full (pause)")
    assert ids(again) == [3]
    assert [r["id"] for r in again.unacknowledged_losses(10)] == [3]
    assert again.state.lost_packets_total == 18


@pytest.mark.parametrize("bad_line", ["[1, 2]", '"text"', "{not json", '{"id": "seven", "packets": 1}'])
def test_a_log_with_an_unreadable_line_is_set_aside_and_the_probe_starts(
    tmp_path: Path, bad_line: str
) -> None:
    good = [
        {"id": 1, "kind": "not-written", "time_ns": 1, "reason": "r", "sequence": None, "packets": 2},
        {"id": 3, "kind": "not-written", "time_ns": 3, "reason": "r", "sequence": None, "packets": 4},
    ]
    text = json.dumps(good[0]) + "\n" + bad_line + "\n" + json.dumps(good[1]) + "\n"
    (tmp_path / "losses.jsonl").write_text(text)
    spool = make_spool(tmp_path)
    assert ids(spool) == [1, 3]
    (aside,) = tmp_path.glob("losses.jsonl.corrupt-*")
    assert aside.read_text() == text
    spool.record_lost_packets(1, "spool full (pause)")
    assert ids(spool) == [1, 3, 4]


def test_an_acknowledgement_the_full_disk_cannot_save_leaves_the_agent_running(small_disk: Path) -> None:
    settings = ProbeSettings(state_dir=small_disk / "state")
    identity = Identity("p-1", "::1", 1, 2, 1000)
    agent = Agent(settings, identity, Credentials(b"", b"", b""))
    agent.spool = spool = make_spool(small_disk / "spool")
    spool.record_lost_packets(1, "spool full (pause)")
    spool.record_lost_packets(2, "spool full (pause)")
    filler = fill(small_disk)
    agent.acknowledge_losses(2)  # raised out of the heartbeat thread before the fix
    assert spool.state.losses_acknowledged_through == 0
    assert [r["id"] for r in spool.unacknowledged_losses(10)] == [1, 2]  # sent again later
    filler.unlink()
    agent.acknowledge_losses(2)
    assert spool.unacknowledged_losses(10) == []
    spool.close()


def test_a_stop_that_cannot_record_the_ring_leftover_still_lets_the_capture_go(small_disk: Path) -> None:
    agent = Agent(ProbeSettings(state_dir=small_disk / "state"), Identity("p-1", "::1", 1, 2, 1000), NO_KEYS)
    agent.spool = spool = make_spool(small_disk / "spool")
    options = CaptureOptions("lo", "ip6", 65535, 1 << 20, False, 60.0, 1 << 20)
    with CaptureHandle.dead(1, 65535) as handle:
        capture = Capture(handle, options, spool, Provenance(probe_id="p-1"))
        # Its last window: 10 counted, 7 written; 3 are left in the ring.
        capture.status.kernel = KernelStats(10, 0, 0)
        capture.status.packets_written = 7
        capture.status.last_sealed_sequence = 4
        agent.captures = [capture]
        filler = fill(small_disk)
        agent._stop_capture()  # raised before the fix, and kept the capture
        assert agent.captures == []
        filler.unlink()
        agent._stop_capture()  # a second stop has nothing left to record
    assert list(spool.losses()) == []
    spool.close()


def test_an_acknowledgement_waiting_on_its_state_write_does_not_hold_up_rotation(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    spool.record_lost_packets(1, "spool full (pause)")
    # A FIFO where the state's temporary file goes: the write blocks in open() until a reader
    # comes, as a slow fsync would keep it waiting.
    fifo = tmp_path / ".state.json.tmp"
    os.mkfifo(fifo)
    failures: list[BaseException] = []

    def acknowledge() -> None:
        try:
            spool.acknowledge_losses(1)
        except OSError as exc:  # fsync of a FIFO: the acknowledgement is not durable
            failures.append(exc)

    acknowledging = threading.Thread(target=acknowledge)
    acknowledging.start()
    for _ in range(1000):  # until the acknowledgement is under way (it is set before the write)
        if spool.state.losses_acknowledged_through == 1:
            break
        time.sleep(0.01)
    rotating = threading.Thread(target=spool.begin_file, args=({"interface": "eth0"},))
    rotating.start()
    rotating.join(timeout=30)  # a bound on a hang, not a measurement
    blocked = rotating.is_alive()
    reader = os.open(fifo, os.O_RDONLY)  # lets the write go on, whatever happened
    try:
        acknowledging.join(timeout=30)
        rotating.join(timeout=30)
    finally:
        os.close(reader)
    assert not blocked  # begin_file waited for the state's fsync before the fix
    assert not acknowledging.is_alive() and not rotating.is_alive()
    if failures:  # not saved: the record is sent again
        assert [r["id"] for r in spool.unacknowledged_losses(10)] == [1]
    fifo.unlink(missing_ok=True)
    spool.acknowledge_losses(1)
    assert spool.unacknowledged_losses(10) == []
