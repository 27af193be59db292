"""A probe killed while its spool's filesystem is full starts again, and repairs its file once it has room.

The full disk is a small tmpfs mounted by the test (root only). The probe is the real
``survey6-probe capture`` process, capturing on the loopback interface; the first one is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.tmpfs import mounted_tmpfs
from survey6.probe.metadata import read_sidecar
from survey6.probe.pcapfile import scan_records

PROBE = str(Path(sys.executable).with_name("survey6-probe"))
PAGE_BYTES = 4096
START_TIMEOUT_S = 20.0
RUN_TIMEOUT_S = 60.0
PARTIAL_RECORD = b"\x01" * 11  # what a kill in the middle of a record leaves
# The first run's spool reaches the disk's size: its sealed files are big enough that dropping the
# oldest frees the room the repair needs.
POLICY_ARGS = ["--min-free", "32KiB", "--quota", "1MiB", "--filter", "ip6 and udp", "--max-size", "64KiB"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", "512k") as mount_point:
        yield mount_point


def fill(disk: Path) -> Path:
    """Takes every free page of `disk` but one; returns the file that holds them.

    The page left is what the soak's full disk had: room for a loss record, none for the repaired
    file's sidecar and state after it (the write that failed with ENOSPC before the fix).
    """
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as stream:
        try:
            for _ in range(1024):  # bounded: the disk is 512 KiB
                stream.write(b"\0" * PAGE_BYTES)
        except OSError:
            pass
    os.truncate(filler, filler.stat().st_size - PAGE_BYTES)
    return filler


def send_udp(count: int) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        for index in range(count):
            sock.sendto(index.to_bytes(8, "big") + bytes(1000), ("::1", 33_334))


def killed_capture(spool: Path, policy: str) -> Path:
    """Runs a capture until it has sealed a file and written packets into the next, then SIGKILLs it.

    Returns the part file it left, with a partial last record appended (the kill cut a write).
    """
    argv = [PROBE, "capture", "-i", "lo", "-o", str(spool), "--full-policy", policy, *POLICY_ARGS]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and not list((spool / "open").glob("*.part")):
            time.sleep(0.1)
        for _ in range(200):  # bounded: each round is 20 packets of 1 KB
            send_udp(20)
            time.sleep(0.05)
            parts = sorted((spool / "open").glob("*.part"))
            if list((spool / "ready").glob("*.pcap")) and parts and parts[-1].stat().st_size > 8192:
                break
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    (part,) = sorted((spool / "open").glob("*.part"))
    with open(part, "ab") as stream:
        stream.write(PARTIAL_RECORD)
    return part


def run_capture(spool: Path, policy: str) -> subprocess.CompletedProcess[str]:
    argv = [PROBE, "capture", "-i", "lo", "-o", str(spool), "--full-policy", policy, "--duration", "1s",
            *POLICY_ARGS]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def losses(spool: Path) -> list[dict[str, object]]:
    path = spool / "losses.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sequence_of(path: Path) -> int:
    return int(path.name.split(".", 1)[0])


def assert_repaired(spool: Path, sequence: int, packets: int) -> None:
    (pcap,) = [p for p in (spool / "ready").glob("*.pcap") if sequence_of(p) == sequence]
    metadata = read_sidecar(pcap.with_suffix(".json"))
    assert metadata.repaired and metadata.packets == packets
    assert metadata.repaired_truncated_bytes == len(PARTIAL_RECORD)
    truncated = [r for r in losses(spool) if r["kind"] == "truncated-record"]
    assert [(r["sequence"], r["packets"]) for r in truncated] == [(sequence, 1)]


def test_drop_oldest_makes_room_then_repairs_the_file_and_the_probe_runs(small_disk: Path) -> None:
    spool = small_disk / "spool"
    part = killed_capture(spool, "drop-oldest")
    sequence, packets = sequence_of(part), scan_records(part).records
    assert packets > 0
    oldest = min(sequence_of(p) for p in (spool / "ready").glob("*.pcap"))
    fill(small_disk)

    result = run_capture(spool, "drop-oldest")  # exit status 1 and a traceback before the fix

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not part.exists()
    assert_repaired(spool, sequence, packets)
    dropped = [r for r in losses(spool) if r["kind"] == "dropped-file"]
    assert oldest in [r["sequence"] for r in dropped]  # the room was made by a recorded drop


def test_pause_keeps_the_file_until_there_is_room(small_disk: Path) -> None:
    spool = small_disk / "spool"
    part = killed_capture(spool, "pause")
    sequence, packets = sequence_of(part), scan_records(part).records
    assert packets > 0
    filler = fill(small_disk)

    result = run_capture(spool, "pause")

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "cannot repair capture file" in result.stdout + result.stderr  # one line, no traceback
    assert scan_records(part).records == packets  # kept for the next start, nothing lost
    assert not [r for r in losses(spool) if r["kind"] == "dropped-file"]

    filler.unlink()
    again = run_capture(spool, "pause")

    assert again.returncode == 0, again.stderr
    assert not part.exists()
    assert_repaired(spool, sequence, packets)
