"""Reservations (begin_file) are made durable by sync_open, off the capture thread."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from survey6.probe.errors import SpoolError
from survey6.probe.spool import Spool


def make_spool(root: Path) -> Spool:
    spool = Spool(root, quota_bytes=1 << 30, min_free_bytes=0, policy="pause")
    spool.open()
    return spool


def test_a_reservation_is_complete_before_it_is_synced(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    sequence, part = spool.begin_file({"interface": "eth0", "window_start_ns": 7})
    # What a process crash (page cache intact) leaves for recovery: the whole info, under its final name.
    assert spool.part_info(sequence) == {"interface": "eth0", "window_start_ns": 7, "sequence": 1}
    assert [p.name for p in spool.open_dir.iterdir()] == [f"{part.name}.json"]
    spool.sync_open()
    assert json.loads((spool.open_dir / f"{part.name}.json").read_text())["sequence"] == 1


def test_sync_open_skips_reservations_sealed_or_discarded_meanwhile(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    kept, _ = spool.begin_file({"interface": "eth0"})
    discarded, _ = spool.begin_file({"interface": "eth0"})
    vanished, part = spool.begin_file({"interface": "eth0"})
    spool.discard_open(discarded)
    (spool.open_dir / f"{part.name}.json").unlink()  # gone between the snapshot and its fsync
    spool.sync_open()
    spool.sync_open()  # nothing left to do
    assert spool.open_sequences() == [kept]
    assert (kept, vanished) == (1, 3)


def test_sync_open_failure_is_a_spool_error(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    spool.begin_file({"interface": "eth0"})
    shutil.rmtree(spool.open_dir)  # the directory to sync is gone
    with pytest.raises(SpoolError, match="cannot sync spool directory") as caught:
        spool.sync_open()
    assert isinstance(caught.value.__cause__, FileNotFoundError)
