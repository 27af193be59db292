"""The capture engine end to end: real libpcap on a veth pair, the real command, real files."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.frames import frame
from support.netns import NetnsPair
from support.probe_process import PROBE, ProbeCapture, read_spool

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
    # The kernel's counters, file by file, add up to what was written: no window is left uncounted.
    received = sum(int(str(f.metadata["kernel_delta"]["received_packets"])) for f in files)  # type: ignore[index]
    assert received == sum(f.records for f in files)
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


# -- a full spool --------------------------------------------------------------------------------

ONLY_TEST_FRAMES = "ip6 and udp port 33333"  # the link's own chatter would blur exact loss counts


def spool_state(spool: Path) -> dict[str, int]:
    return {k: int(v) for k, v in json.loads((spool / "state.json").read_text()).items()}


def run_until_full(netns_pair: NetnsPair, spool: Path, policy: str, frames: int) -> list:  # type: ignore[type-arg]
    limits = ("--max-size", "64KiB", "--quota", "256KiB", "--min-free", "0", "--full-policy", policy)
    probe = ProbeCapture(netns_pair, spool, "--rotate", "1h", *limits, "--filter", ONLY_TEST_FRAMES)
    probe.start()
    try:
        for burst in range(4):
            netns_pair.send_frames("ipv6", frames // 4, start=burst * (frames // 4), size=1000)
            time.sleep(1.2)  # longer than the full spool's retry interval
    finally:
        assert probe.stop() == 0, probe.stderr
    assert "lost to a full spool" in "".join(probe.stdout)
    return read_spool(spool)


def test_full_spool_pause_keeps_the_oldest_and_counts_every_lost_packet(
    netns_pair: NetnsPair, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    files = run_until_full(netns_pair, spool, "pause", 1200)
    kept = [i for f in files for i in f.indexes]
    state = spool_state(spool)
    kernel_dropped = sum(int(str(f.metadata["kernel_delta"]["dropped_packets"])) for f in files)  # type: ignore[index]
    assert kept == list(range(len(kept)))  # the first packets, in order
    assert 0 < len(kept) < 1200
    assert state["lost_files_total"] == 0
    assert len(kept) + state["lost_packets_total"] + kernel_dropped == 1200
    losses = [json.loads(line) for line in (spool / "losses.jsonl").read_text().splitlines()]
    assert sum(entry["packets"] for entry in losses) == state["lost_packets_total"]
    assert all(entry["reason"] == "spool full (pause)" for entry in losses)


def test_full_spool_drop_oldest_keeps_the_newest_and_counts_dropped_files(
    netns_pair: NetnsPair, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    files = run_until_full(netns_pair, spool, "drop-oldest", 1200)
    kept = [i for f in files for i in f.indexes]
    state = spool_state(spool)
    assert state["lost_files_total"] >= 1
    first_kept = kept[0]
    assert kept == list(range(first_kept, 1200))  # the newest packets, in order, none missing
    assert state["lost_packets_total"] == first_kept  # exactly the packets of the dropped files
    sequences = [int(str(f.metadata["sequence"])) for f in files]
    assert sequences == list(range(state["lost_files_total"] + 1, state["last_sequence"] + 1))
    losses = [json.loads(line) for line in (spool / "losses.jsonl").read_text().splitlines()]
    assert sorted(entry["sequence"] for entry in losses) == list(range(1, state["lost_files_total"] + 1))


# -- bad input -----------------------------------------------------------------------------------


def run_probe(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, PROBE, *args], capture_output=True, text=True, timeout=60)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("survey6-probe: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_interface(tmp_path: Path) -> None:
    result = run_probe("capture", "-i", "nosuch0", "-o", str(tmp_path / "spool"))
    assert_one_line_error(result, "nosuch0")
    assert not (tmp_path / "spool").exists()


def test_no_permission_names_cap_net_raw(tmp_path: Path) -> None:
    drop = ("setpriv", "--bounding-set=-net_raw,-net_admin", "--inh-caps=-net_raw,-net_admin")
    result = run_probe("capture", "-i", "lo", "-o", str(tmp_path / "spool"), prefix=drop)
    assert_one_line_error(result, "CAP_NET_RAW")
    assert not (tmp_path / "spool").exists()


def test_unwritable_spool(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_probe("capture", "-i", "lo", "-o", str(blocker / "spool"), "--duration", "1s")
    assert_one_line_error(result, "not writable")


def write_pcap(path: Path, frames: list[bytes], *, pcapng: bool = False) -> None:
    import dpkt

    with open(path, "wb") as stream:
        writer = dpkt.pcapng.Writer(stream) if pcapng else dpkt.pcap.Writer(stream, nano=True)
        for index, frame in enumerate(frames):
            writer.writepkt(frame, ts=1_700_000_000 + index / 1000)


def ipv6_frames(count: int, size: int = 200) -> list[bytes]:
    mac_a, mac_b = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    return [frame("ipv6", i, size, mac_a, mac_b) for i in range(count)]


@pytest.mark.parametrize("pcapng", [False, True], ids=["pcap", "pcapng"])
def test_read_ingests_a_file_through_the_spool(tmp_path: Path, pcapng: bool) -> None:
    source = tmp_path / "input.cap"
    write_pcap(source, ipv6_frames(2000, size=300), pcapng=pcapng)
    spool = tmp_path / "spool"
    result = run_probe("capture", "--read", str(source), "-o", str(spool), "--max-size", "64KiB")
    assert result.returncode == 0, result.stderr
    files = read_spool(spool)
    assert len(files) > 5
    assert [i for f in files for i in f.indexes] == list(range(2000))
    assert "read 2,000 packets" in result.stdout
    first = files[0].metadata
    assert int(str(first["first_packet_time_ns"])) == 1_700_000_000 * 10**9


@pytest.mark.parametrize("damage", ["garbage", "bad-record", "truncated-header"])
def test_corrupt_read_file_leaves_nothing_behind(tmp_path: Path, damage: str) -> None:
    source = tmp_path / "input.pcap"
    write_pcap(source, ipv6_frames(3000, size=300))
    data = bytearray(source.read_bytes())
    if damage == "garbage":
        data = bytearray(b"this is not a capture file at all" * 10)
    elif damage == "bad-record":
        # a record header two thirds in claims 2 GiB of data: libpcap must stop there
        offset = 24 + (16 + 300 + 62) * 2000
        data[offset + 8 : offset + 16] = (0x7FFF_FFFF).to_bytes(4, "little") * 2
    else:
        data = data[:10]
    source.write_bytes(bytes(data))
    spool = tmp_path / "spool"
    result = run_probe("capture", "--read", str(source), "-o", str(spool), "--max-size", "64KiB")
    assert_one_line_error(result, "input.pcap")
    for area in ("ready", "open"):
        assert not list((spool / area).glob("*")) if (spool / area).exists() else True


def test_free_space_floor_pauses_and_counts(netns_pair: NetnsPair, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    # A floor no filesystem here can meet: the spool is full from the start.
    probe = ProbeCapture(netns_pair, spool, "--min-free", "1000TiB", "--filter", ONLY_TEST_FRAMES)
    probe.start()
    try:
        netns_pair.send_frames("ipv6", 300)
        time.sleep(1.5)
    finally:
        assert probe.stop() == 0, probe.stderr
    assert read_spool(spool) == []
    assert spool_state(spool)["lost_packets_total"] == 300


def test_two_interfaces_share_one_gapless_sequence(netns_pair: NetnsPair, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    probe = ProbeCapture(netns_pair, spool, "-i", "lo", "--rotate", "1s")
    probe.start()
    try:
        netns_pair.send_frames("ipv6", 200)
        netns_pair.exec(netns_pair.ns_b, ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", "::1"])
        time.sleep(1.2)
    finally:
        assert probe.stop() == 0, probe.stderr
    files = read_spool(spool)
    by_interface: dict[str, int] = {}
    for f in files:
        name = str(f.metadata["interface"]["name"])  # type: ignore[index]
        by_interface[name] = by_interface.get(name, 0) + f.records
    assert by_interface[netns_pair.if_b] >= 200
    assert by_interface["lo"] >= 6  # three echo requests and three replies
    assert sorted(int(str(f.metadata["sequence"])) for f in files) == list(range(1, len(files) + 1))


def test_capture_runs_as_an_unprivileged_user_with_only_the_capture_capabilities() -> None:
    import shutil
    import tempfile

    unprivileged = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                    "--inh-caps=-all,+net_raw,+net_admin", "--ambient-caps=+net_raw,+net_admin",
                    "--bounding-set=-all,+net_raw,+net_admin")  # fmt: skip
    reachable = subprocess.run([*unprivileged, PROBE, "--version"], capture_output=True, timeout=60)
    if reachable.returncode != 0:
        pytest.skip("this checkout is not readable by an unprivileged user, so it cannot run one")
    work = Path(tempfile.mkdtemp(prefix="survey6-unprivileged-"))
    try:
        work.chmod(0o777)
        result = run_probe(
            "capture", "-i", "lo", "-o", str(work / "spool"), "--duration", "1s", prefix=unprivileged
        )
        assert result.returncode == 0, result.stderr
        assert "captured" in result.stdout
        assert (work / "spool" / "state.json").stat().st_uid == 65534
    finally:
        shutil.rmtree(work)
