"""The spool's durability order, seen in the real system calls (strace): reserving a file does not
fsync, and no sequence is sealed before every earlier reservation is on disk."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see the calls")

MARK = "both-begun"
# Two captures share one spool: sequence 1 is still being written when sequence 2 is sealed.
SCRIPT = f"""
import os, sys
from pathlib import Path
from survey6.probe.metadata import SCHEMA_VERSION
from survey6.probe.spool import Spool
from survey6.wire.v1 import capture_pb2

spool = Spool(Path(sys.argv[1]), quota_bytes=1 << 30, min_free_bytes=0, policy="pause")
spool.open()
first, first_part = spool.begin_file({{"interface": "eth0"}})
first_part.write_bytes(b"")
second, second_part = spool.begin_file({{"interface": "eth1"}})
second_part.write_bytes(bytes(24))
os.write(2, b"{MARK}\\n")
spool.seal(second, capture_pb2.CaptureMetadata(
    sequence=second, file_size_bytes=24, sha256_hex="ab" * 32, file_format="pcap",
    interface=capture_pb2.InterfaceFacts(name="eth1"), schema_version=SCHEMA_VERSION))
"""
CALLS = "fsync,fdatasync,rename,renameat,renameat2,write"
LINE = re.compile(r"^(?P<call>\w+)\((?P<args>.*)")


def test_reserving_does_not_fsync_and_sealing_syncs_earlier_reservations_first(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    trace = tmp_path / "strace.txt"
    strace = ["strace", "-qq", "-y", "-o", str(trace), f"--trace={CALLS}"]
    result = subprocess.run(
        [*strace, sys.executable, "-c", SCRIPT, str(spool)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = trace.read_text().splitlines()
    calls = [(m.group("call"), m.group("args")) for line in lines if (m := LINE.match(line))]
    marks = [i for i, (call, args) in enumerate(calls) if call == "write" and MARK in args]
    assert len(marks) == 1
    begun, sealing = calls[: marks[0]], calls[marks[0] :]

    assert [c for c in begun if c[0] in ("fsync", "fdatasync")] == []  # begin_file left durability to later

    def first_index(call: str, fragment: str) -> int:
        found = [i for i, (name, args) in enumerate(sealing) if name.startswith(call) and fragment in args]
        assert found, f"no {call} of {fragment} while sealing"
        return found[0]

    sealed = first_index("rename", f"{spool}/ready/000000000002.pcap")
    assert first_index("fsync", f"{spool}/open/000000000001.part.json>") < sealed
    assert first_index("fsync", f"{spool}/open>") < sealed
    assert (spool / "ready" / "000000000002.pcap").exists()
    assert (spool / "open" / "000000000001.part.json").exists()  # still open, and now durable


RECOVERY_SCRIPT = """
import os, sys
from pathlib import Path
from survey6.probe.capture import Provenance
from survey6.probe.pcap import CaptureHandle
from survey6.probe.recovery import recover_open_files
from survey6.probe.spool import Spool

spool = Spool(Path(sys.argv[1]), quota_bytes=1 << 30, min_free_bytes=0, policy="pause")
spool.open()
sequence, part = spool.begin_file({"interface": "eth0", "link_type": 1, "snaplen_bytes": 65535})
with CaptureHandle.dead(1, 65535) as handle, handle.open_dumper(part) as dumper:
    for index in range(10):  # what a killed process leaves: whole records, only in the page cache
        dumper.write(1_700_000_000_000_000_000 + index, bytes(60))
    dumper.flush()
recover_open_files(spool, Provenance())
"""


def test_recovery_syncs_a_part_file_before_sealing_it(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    trace = tmp_path / "strace.txt"
    strace = ["strace", "-qq", "-y", "-o", str(trace), f"--trace={CALLS}"]
    result = subprocess.run(
        [*strace, sys.executable, "-c", RECOVERY_SCRIPT, str(spool)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = trace.read_text().splitlines()
    calls = [(m.group("call"), m.group("args")) for line in lines if (m := LINE.match(line))]
    part = f"{spool}/open/000000000001.part>"
    synced = [i for i, (name, args) in enumerate(calls) if name == "fsync" and part in args]
    target = f"{spool}/ready/000000000001.pcap"
    sealed = [i for i, (name, args) in enumerate(calls) if name.startswith("rename") and target in args]
    assert synced and len(sealed) == 1 and synced[0] < sealed[0]
    assert len(list((spool / "ready").glob("*.pcap"))) == 1
