"""Wall-clock steps during a live capture: files still rotate on time and nothing is lost.

Each test runs one real Capture (libpcap on loopback, spool, sealer and alarm threads) in this
process, with its wall clock taken through ``Capture(clock_ns=...)`` so that the test can step it;
the monotonic clock is the real one. Datagrams go to a port bound here, so only they are captured.
The last test reads a file whose packets were stamped across a step back (the kernel stamps them
with the wall clock), which a test cannot do to this machine's clock.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.frames import frame
from survey6.probe.capture import NS_PER_S, Capture, CaptureOptions, Provenance
from survey6.probe.metadata import read_sidecar
from survey6.probe.pcap import CaptureHandle
from survey6.probe.spool import Spool

WAIT_S = 30.0  # every wait is bounded: without the fix, each one below would run out
POLL_S = 0.01
BUFFER_BYTES = 4 << 20
HOUR_NS = 3600 * NS_PER_S


class WallClock:
    """The capture's wall clock: the real one plus an offset, or frozen at one reading."""

    def __init__(self, offset_ns: int = 0) -> None:
        self.offset_ns = offset_ns
        self.frozen_ns: int | None = None

    def __call__(self) -> int:
        return self.frozen_ns if self.frozen_ns is not None else time.time_ns() + self.offset_ns

    def freeze(self) -> None:
        """From now on every reading is stepped back to this one: a wall-clock window never ends."""
        self.frozen_ns = self()


@dataclass
class Running:
    capture: Capture
    spool: Spool
    port: int
    errors: list[BaseException]

    def send(self, count: int) -> None:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
            for i in range(count):
                sender.sendto(b"survey6-clock-%04d" % i, ("::1", self.port))


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)


@contextmanager
def running_capture(
    tmp_path: Path, clock: WallClock, interval_s: float, quota_bytes: int = 1 << 40
) -> Iterator[Running]:
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    receiver.bind(("::1", 0))  # no ICMP unreachable back to the sender
    port = receiver.getsockname()[1]
    bpf = f"ip6 and udp dst port {port}"
    spool = Spool(tmp_path / "spool", quota_bytes=quota_bytes, min_free_bytes=0, policy="pause")
    spool.open()
    handle = CaptureHandle.live("lo", snaplen=65535, promisc=False, buffer_bytes=BUFFER_BYTES, bpf_filter=bpf)
    options = CaptureOptions(
        interface="lo",
        filter=bpf,
        snaplen_bytes=65535,
        buffer_bytes=BUFFER_BYTES,
        promiscuous=False,
        rotate_interval_s=interval_s,
        rotate_max_bytes=1 << 30,
    )
    capture = Capture(handle, options, spool, Provenance(probe_id="clock-steps"), clock_ns=clock)
    errors: list[BaseException] = []

    def body() -> None:
        try:
            capture.run()
        except BaseException as exc:  # reported below, after the thread ends
            errors.append(exc)

    thread = threading.Thread(target=body, name="capture", daemon=True)  # a hung one must not block exit
    thread.start()
    try:
        yield Running(capture, spool, port, errors)
    finally:
        capture.request_stop()
        thread.join(WAIT_S)
        handle.close()
        spool.close()
        receiver.close()
    assert not thread.is_alive(), "the capture did not stop"
    assert not errors, f"capture failed: {errors[0]}"


def sealed_packets(capture: Capture) -> int:
    """Packets in the sealed files, each sidecar read back and validated."""
    total = 0
    for ready in capture.sealed:
        metadata = read_sidecar(ready.sidecar)
        assert metadata.window_end_ns >= metadata.window_start_ns
        total += metadata.packets
    return total


def aligned_offset_ns(interval_s: float) -> int:
    """An offset that puts the wall clock just after a multiple of the interval: a whole window ahead."""
    interval_ns = int(interval_s * NS_PER_S)
    now = time.time_ns()
    return (now // interval_ns + 1) * interval_ns - now


def test_a_step_back_within_the_window_does_not_hold_off_rotation(tmp_path: Path) -> None:
    interval_s = 4.0
    clock = WallClock(aligned_offset_ns(interval_s))
    with running_capture(tmp_path, clock, interval_s) as run:
        wait_for(lambda: run.spool.part_path(1).exists() or run.errors, "the first file")
        clock.freeze()  # still inside the first window, which on the wall clock now never ends
        run.send(20)
        wait_for(lambda: run.capture.status.packets_written >= 20 or run.errors, "20 packets written")
        # Rotated on the monotonic deadline (one interval), twice: the second file starts and ends
        # with the clock stood still too.
        wait_for(lambda: run.capture.status.files_sealed >= 2 or run.errors, "two files rotated by time")
        run.send(5)
        wait_for(lambda: run.capture.status.packets_written >= 25 or run.errors, "5 more packets written")
    assert run.capture.status.files_sealed >= 3
    assert sealed_packets(run.capture) == 25


def test_a_step_back_before_the_files_start_seals_it_with_its_packets(tmp_path: Path) -> None:
    interval_s = 600.0  # the monotonic deadline is far away: only the step can end the file
    clock = WallClock(aligned_offset_ns(interval_s))
    with running_capture(tmp_path, clock, interval_s) as run:
        wait_for(lambda: run.spool.part_path(1).exists() or run.errors, "the first file")
        run.send(10)
        wait_for(lambda: run.capture.status.packets_written >= 10 or run.errors, "10 packets written")
        clock.offset_ns -= HOUR_NS
        run.send(10)  # the next packets show the capture thread the step
        wait_for(lambda: run.capture.status.files_sealed >= 1 or run.errors, "the first file sealed")
        first = read_sidecar(run.capture.sealed[0].sidecar)
        wait_for(lambda: run.capture.status.packets_written >= 20 or run.errors, "20 packets written")
    assert first.window_end_ns == first.window_start_ns  # it ended (stepped back) before it began
    assert run.capture.status.files_sealed == 2
    second = read_sidecar(run.capture.sealed[1].sidecar)
    assert second.window_start_ns < first.window_start_ns  # on the stepped clock
    assert sealed_packets(run.capture) == 20


def test_a_paused_capture_retries_with_the_wall_clock_stood_still(tmp_path: Path) -> None:
    clock = WallClock()
    with running_capture(tmp_path, clock, 600.0, quota_bytes=0) as run:
        wait_for(lambda: run.capture.status.state == "spool-full" or run.errors, "the pause")
        clock.freeze()
        run.spool.quota_bytes = 1 << 40  # room again
        wait_for(lambda: run.spool.part_path(1).exists() or run.errors, "the retry to begin a file")
        wait_for(lambda: run.capture.status.state == "capturing" or run.errors, "capturing again")
        run.send(10)
        wait_for(lambda: run.capture.status.packets_written >= 10 or run.errors, "10 packets written")
    assert sealed_packets(run.capture) == 10
    assert run.capture.status.packets_lost_spool_full == 0


def test_packets_stamped_across_a_step_back_are_sealed_with_their_time_range(tmp_path: Path) -> None:
    import dpkt

    source = tmp_path / "stepped.pcap"
    mac_a, mac_b = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    step_back_s = 1000
    with open(source, "wb") as stream:
        writer = dpkt.pcap.Writer(stream, nano=True)
        for index in range(40):
            at_s = 1_700_000_000 + index - (step_back_s if index >= 20 else 0)  # whole seconds: exact
            writer.writepkt(frame("ipv6", index, 200, mac_a, mac_b), ts=at_s)
    spool = Spool(tmp_path / "spool", quota_bytes=1 << 40, min_free_bytes=0, policy="pause")
    spool.open()
    with CaptureHandle.offline(source) as handle:
        options = CaptureOptions(
            interface="stepped",
            filter="",
            snaplen_bytes=handle.snaplen,
            buffer_bytes=0,
            promiscuous=False,
            rotate_interval_s=600.0,
            rotate_max_bytes=1 << 30,
        )
        capture = Capture(handle, options, spool, Provenance(probe_id="clock-steps"))
        capture.run()  # sealing validates the sidecar: the first packet is after the last one
    spool.close()
    assert capture.status.files_sealed == 1
    metadata = read_sidecar(capture.sealed[0].sidecar)
    assert metadata.packets == 40
    assert metadata.first_packet_time_ns == (1_700_000_000 + 20 - step_back_s) * NS_PER_S
    assert metadata.last_packet_time_ns == (1_700_000_000 + 19) * NS_PER_S
