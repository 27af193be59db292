"""The libpcap binding against the real library: dumpers, offline reads, filters and a live capture on lo."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import dpkt
import pytest

from survey6.probe.errors import (
    CaptureError,
    CapturePermissionError,
    DumpWriteError,
    FilterError,
    NoSuchInterfaceError,
    PcapFileError,
)
from survey6.probe.pcap import CaptureHandle, Dumper, KernelStats, LoopBroken
from survey6.probe.pcapfile import GLOBAL_HEADER_BYTES, TimestampPrecision, read_header, scan_records

T0_NS = 1_700_000_000_123_456_789
LOOP_DEADLINE_S = 10.0  # every loop below gives up after this, so a bug cannot hang the suite


def frame(i: int) -> bytes:
    """An Ethernet + IPv6 frame of varying length; the contents only need to be distinct."""
    return (
        b"\x02" * 6
        + b"\x04" * 6
        + b"\x86\xdd"
        + bytes([0x60])
        + bytes(39)
        + i.to_bytes(4, "big") * (i % 7 + 1)
    )


def write_sample(path: Path, n: int, precision: TimestampPrecision = TimestampPrecision.NANO) -> None:
    with CaptureHandle.dead(precision=precision) as dead, dead.open_dumper(path) as out:
        for i in range(n):
            out.write(T0_NS + i * 1_000_003, frame(i), orig_len=len(frame(i)) + i)
        out.flush()


def read_dpkt(path: Path) -> list[tuple[float, bytes]]:
    with path.open("rb") as f:
        return [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(f)]


def drain(handle: CaptureHandle, out: Dumper) -> int:
    """Dispatch until end of file; bounded."""
    total = 0
    deadline = time.monotonic() + LOOP_DEADLINE_S
    while time.monotonic() < deadline:
        n = handle.dispatch_into(out)
        if n == 0:
            return total
        total += n
    raise AssertionError("offline dispatch did not reach end of file")


def test_dead_handle_dumper_writes_records_dpkt_can_read(tmp_path: Path) -> None:
    path = tmp_path / "w.pcap"
    write_sample(path, 20)
    header = read_header(path)
    assert header.precision is TimestampPrecision.NANO and header.linktype == 1
    packets = read_dpkt(path)
    assert [buf for _, buf in packets] == [frame(i) for i in range(20)]
    scan = scan_records(path)
    assert scan.first_ts_ns == T0_NS and scan.last_ts_ns == T0_NS + 19 * 1_000_003
    assert scan.wire_bytes == sum(len(frame(i)) + i for i in range(20))


def test_offline_redump_through_dispatch_is_byte_identical(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_sample(src, 500)
    with CaptureHandle.offline(src) as handle, handle.open_dumper(dst) as out:
        assert handle.is_offline and handle.datalink == 1
        assert drain(handle, out) == 500
        assert out.tell() == src.stat().st_size
    assert dst.read_bytes()[GLOBAL_HEADER_BYTES:] == src.read_bytes()[GLOBAL_HEADER_BYTES:]
    assert dst.read_bytes() == src.read_bytes()


def test_offline_reads_micro_files_at_nanosecond_precision(tmp_path: Path) -> None:
    src, dst = tmp_path / "micro.pcap", tmp_path / "nano.pcap"
    write_sample(src, 10, TimestampPrecision.MICRO)
    with CaptureHandle.offline(src) as handle, handle.open_dumper(dst) as out:
        handle.run_loop(out)
    assert read_header(src).precision is TimestampPrecision.MICRO
    assert read_header(dst).precision is TimestampPrecision.NANO
    assert scan_records(dst).first_ts_ns == (T0_NS // 1000) * 1000  # micro file: sub-µs digits gone
    assert [b for _, b in read_dpkt(dst)] == [b for _, b in read_dpkt(src)]


def test_fd_dumper_leaves_the_callers_descriptor_open(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pcap", tmp_path / "fd.pcap"
    write_sample(src, 50)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with CaptureHandle.offline(src) as handle, handle.open_dumper_fd(fd, name=dst.name) as out:
            drain(handle, out)
            out.flush()
            os.fsync(fd)
            assert dst.stat().st_size == src.stat().st_size  # flushed: visible before close
        os.fstat(fd)  # still open after the dumper closed its duplicate
    finally:
        os.close(fd)
    assert dst.read_bytes() == src.read_bytes()


def test_flush_reports_a_full_disk(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with CaptureHandle.dead() as dead, dead.open_dumper_fd(fd, name="full") as out:
            out.write(T0_NS, frame(1))
            with pytest.raises(DumpWriteError, match="No space left"):
                out.flush()
    finally:
        os.close(fd)


def test_offline_dispatch_with_a_count_reads_in_batches(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pcap", tmp_path / "batched.pcap"
    write_sample(src, 30)
    with CaptureHandle.offline(src) as handle, handle.open_dumper(dst) as out:
        batches = [handle.dispatch_into(out, 7) for _ in range(6)]
    assert batches == [7, 7, 7, 7, 2, 0]
    assert dst.read_bytes() == src.read_bytes()


def test_run_loop_stops_at_count(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pcap", tmp_path / "first7.pcap"
    write_sample(src, 30)
    with CaptureHandle.offline(src) as handle, handle.open_dumper(dst) as out:
        handle.run_loop(out, count=7)
    assert scan_records(dst).records == 7


@pytest.mark.parametrize("damage", ["bad_magic", "absurd_length", "truncated"])
def test_corrupt_pcap_raises_pcap_file_error(tmp_path: Path, damage: str) -> None:
    src = tmp_path / "in.pcap"
    write_sample(src, 5)
    data = src.read_bytes()
    if damage == "bad_magic":
        data = b"\x00\x01\x02\x03" + data[4:]
    elif damage == "absurd_length":
        data = data + struct.pack("<IIII", 1, 0, 50_000_000, 50_000_000) + bytes(64)
    else:
        data = data[:-7]
    src.write_bytes(data)
    with pytest.raises(PcapFileError):
        with CaptureHandle.offline(src) as handle, handle.open_dumper(tmp_path / "out.pcap") as out:
            drain(handle, out)


def test_missing_file_raises_pcap_file_error(tmp_path: Path) -> None:
    with pytest.raises(PcapFileError, match="absent.pcap"):
        CaptureHandle.offline(tmp_path / "absent.pcap")


def test_stats_are_not_available_offline(tmp_path: Path) -> None:
    write_sample(tmp_path / "in.pcap", 1)
    with CaptureHandle.offline(tmp_path / "in.pcap") as handle, pytest.raises(CaptureError):
        handle.stats()


def test_offline_filter_selects_packets(tmp_path: Path) -> None:
    write_sample(tmp_path / "in.pcap", 10)
    for expression, expected in (("ip6", 10), ("ip", 0)):
        with CaptureHandle.offline(tmp_path / "in.pcap") as handle:
            handle.set_filter(expression)
            with handle.open_dumper(tmp_path / "out.pcap") as out:
                drain(handle, out)
        assert scan_records(tmp_path / "out.pcap").records == expected


def test_bad_filter_raises_filter_error_naming_the_expression(tmp_path: Path) -> None:
    write_sample(tmp_path / "in.pcap", 1)
    with CaptureHandle.offline(tmp_path / "in.pcap") as handle:
        with pytest.raises(FilterError, match="ip6 and udp prot 53") as info:
            handle.set_filter("ip6 and udp prot 53")
    assert "syntax error" in str(info.value)
    with pytest.raises(FilterError):
        CaptureHandle.live("lo", bpf_filter="not a (filter")


def test_nonexistent_interface_raises_no_such_interface() -> None:
    with pytest.raises(NoSuchInterfaceError, match="nosuch6if0"):
        CaptureHandle.live("nosuch6if0")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_capture_without_cap_net_raw_names_the_capability() -> None:
    script = (
        "from survey6.probe.pcap import CaptureHandle\n"
        "from survey6.probe.errors import CapturePermissionError\n"
        "try:\n    CaptureHandle.live('lo')\n"
        "except CapturePermissionError as exc:\n    print(exc)\n"
    )
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    done = subprocess.run([*nobody, sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "CAP_NET_RAW" in done.stdout
    assert issubclass(CapturePermissionError, CaptureError)


def test_kernel_stats_deltas_survive_a_32_bit_wrap() -> None:
    before = KernelStats(received=2**32 - 10, dropped=5, interface_dropped=0)
    after = KernelStats(received=20, dropped=7, interface_dropped=0)
    assert after.since(before) == KernelStats(received=30, dropped=2, interface_dropped=0)


class _Capture(threading.Thread):
    """Runs dispatch_into on a live handle until LoopBroken; records counts and any failure."""

    def __init__(self, handle: CaptureHandle, out: Dumper) -> None:
        super().__init__(daemon=True)
        self.handle, self.out = handle, out
        self.counted = 0
        self.broken = False
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + LOOP_DEADLINE_S
        try:
            while time.monotonic() < deadline:
                self.counted += self.handle.dispatch_into(self.out)
        except LoopBroken:
            self.broken = True
        except BaseException as exc:  # reported to the test thread
            self.error = exc


def test_live_capture_on_loopback_writes_every_datagram(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    receiver.bind(("::1", 0))  # a port no one else uses, and no ICMP unreachable back to the sender
    port = receiver.getsockname()[1]
    path = tmp_path / "lo.pcap"
    with receiver, CaptureHandle.live("lo", bpf_filter=f"ip6 and udp port {port}") as handle:
        assert handle.precision is TimestampPrecision.NANO
        with handle.open_dumper(path) as out:
            capture = _Capture(handle, out)
            capture.start()
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
                for i in range(50):
                    sender.sendto(b"survey6-%03d" % i, ("::1", port))
            deadline = time.monotonic() + LOOP_DEADLINE_S
            while capture.counted < 50 and capture.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            stats = handle.stats()
            handle.breakloop()
            capture.join(timeout=LOOP_DEADLINE_S)
        assert not capture.is_alive() and capture.error is None and capture.broken
    assert stats.received >= 50 and stats.dropped == 0
    packets = read_dpkt(path)
    assert len(packets) == scan_records(path).records == 50
    payloads = [bytes(dpkt.ethernet.Ethernet(buf).data.data.data) for _, buf in packets]
    assert payloads == [b"survey6-%03d" % i for i in range(50)]
    first_ns = scan_records(path).first_ts_ns
    assert first_ns is not None and abs(first_ns - time.time_ns()) < 60 * 10**9


def test_breakloop_and_close_from_another_thread_end_an_idle_loop(tmp_path: Path) -> None:
    handle = CaptureHandle.live("lo", bpf_filter="ip6 and udp port 9")
    with handle.open_dumper(tmp_path / "idle.pcap") as out:
        capture = _Capture(handle, out)
        capture.start()
        time.sleep(0.2)  # inside libpcap, waiting for packets that never come
        started = time.monotonic()
        handle.close()  # breaks the loop and waits for it before freeing the pcap_t
        capture.join(timeout=LOOP_DEADLINE_S)
        assert time.monotonic() - started < 2.0
    assert capture.broken and capture.error is None
    with pytest.raises(CaptureError, match="closed"):
        _ = handle.datalink
    with pytest.raises(LoopBroken):
        handle.dispatch_into(out)
