"""The capture engine end to end: real libpcap on a veth pair, the real command, real files."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from support.netns import NetnsPair
from support.probe_process import ProbeCapture, read_spool

pytestmark = pytest.mark.netns

UDP_PORT = 33_333  # the port frames.py uses


def total_packets(files: list) -> int:  # type: ignore[type-arg]
    return sum(f.records for f in files)


def test_every_ipv6_packet_lands_in_order_across_rotated_files(netns_pair: NetnsPair, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    probe = ProbeCapture(netns_pair, spool, "--rotate", "1s", "--label", "site=test")
    probe.start()
    try:
        sent = 0
        for burst in range(6):  # about three seconds: several time rotations
            sent += netns_pair.send_frames("ipv6", 500, start=burst * 500, size=200)
            time.sleep(0.5)
    finally:
        status = probe.stop()
    assert status == 0, probe.stderr
    files = read_spool(spool)
    assert len(files) >= 3, "expected rotation by time"
    indexes = [i for f in files for i in f.indexes]
    assert indexes == list(range(sent))  # nothing lost, nothing duplicated, in order
    assert [f.metadata["sequence"] for f in files] == [str(n) for n in range(1, len(files) + 1)] or [
        int(str(f.metadata["sequence"])) for f in files
    ] == list(range(1, len(files) + 1))
    for f in files:
        meta = f.metadata
        assert int(str(meta["packets"])) == f.records
        assert int(str(meta["file_size_bytes"])) == f.pcap.stat().st_size
        assert meta["labels"] == {"site": "test"}
        assert meta["interface"]["name"] == netns_pair.if_b  # type: ignore[index]
        assert meta["filter"] == "ip6 or (vlan and ip6)"
        assert int(str(meta["kernel_delta"]["dropped_packets"])) == 0  # type: ignore[index]
        if f.records:
            assert int(str(meta["first_packet_time_ns"])) <= int(str(meta["last_packet_time_ns"]))


def test_ipv4_and_arp_are_not_captured_but_vlan_tagged_ipv6_is(netns_pair: NetnsPair, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    probe = ProbeCapture(netns_pair, spool, "--rotate", "60s")
    probe.start()
    try:
        netns_pair.send_frames("ipv4", 100)
        netns_pair.send_frames("arp", 100)
        netns_pair.send_frames("ipv6", 100, start=0)
        netns_pair.send_frames("vlan-ipv6", 100, start=100)
        time.sleep(0.5)
    finally:
        assert probe.stop() == 0, probe.stderr
    files = read_spool(spool)
    indexes = [i for f in files for i in f.indexes]
    assert indexes == list(range(200))


def test_size_rotation(netns_pair: NetnsPair, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    probe = ProbeCapture(netns_pair, spool, "--rotate", "1h", "--max-size", "64KiB")
    probe.start()
    try:
        netns_pair.send_frames("ipv6", 600, size=1000)
        time.sleep(1.5)
    finally:
        assert probe.stop() == 0, probe.stderr
    files = read_spool(spool)
    assert len(files) >= 5
    assert [i for f in files for i in f.indexes] == list(range(600))
    for f in files[:-1]:
        # rotation happens after the libpcap call that crossed the limit: at most one batch over
        assert f.pcap.stat().st_size >= 64 << 10


def test_sigkill_then_restart_repairs_and_ships_the_partial_file(
    netns_pair: NetnsPair, tmp_path: Path
) -> None:
    from survey6.probe.pcapfile import scan_records

    spool = tmp_path / "spool"
    probe = ProbeCapture(netns_pair, spool, "--rotate", "1h")
    probe.start()
    netns_pair.send_frames("ipv6", 3000, size=300)
    time.sleep(2.5)  # more than one flush interval: the packets are in the file
    probe.stop(signal.SIGKILL)
    parts = list((spool / "open").glob("*.part"))
    assert len(parts) == 1
    on_disk = scan_records(parts[0]).records
    assert on_disk >= 3000  # every test frame, and maybe the link's own chatter
    with open(parts[0], "ab") as stream:  # what a crash mid-write leaves: half a record
        stream.write(b"\x01\x02\x03\x04\x05\x06\x07")

    again = ProbeCapture(netns_pair, spool, "--rotate", "1h")
    again.start()
    netns_pair.send_frames("ipv6", 500, start=3000, size=300)
    time.sleep(1.0)
    assert again.stop() == 0, again.stderr
    files = read_spool(spool)
    assert [int(str(f.metadata["sequence"])) for f in files] == [1, 2]
    repaired, fresh = files
    assert repaired.metadata["repaired"] is True
    assert int(str(repaired.metadata["repaired_truncated_bytes"])) == 7
    assert repaired.indexes == list(range(3000))
    assert repaired.records == on_disk == int(str(repaired.metadata["packets"]))
    assert fresh.metadata["repaired"] is False
    assert fresh.indexes == list(range(3000, 3500))
    assert not list((spool / "open").iterdir())
