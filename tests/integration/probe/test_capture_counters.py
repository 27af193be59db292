"""The capture thread's hot path: per-file counters end where the file ends, and no fsync stalls it.

Both tests run one real Capture (libpcap, spool, sealer thread) in host B of a namespace pair through
``capture_driver.py``, with traffic written onto the veth link from host A.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support.netns import NetnsPair
from support.probe_process import read_spool

pytestmark = pytest.mark.netns

DRIVER = Path(__file__).with_name("capture_driver.py")
LINE_TIMEOUT_S = 30.0
ONLY_TEST_FRAMES = "ip6 and udp port 33333"  # frames.py's port: the link's own chatter is not captured
FRAME_PAYLOAD_BYTES = 1000
FRAME_WIRE_BYTES = FRAME_PAYLOAD_BYTES + 8 + 40 + 14  # UDP, IPv6 and Ethernet headers
IN_WINDOW_FRAMES = 200
LATE_FRAMES = 2000  # ten times the file's own traffic: impossible to miss if it were counted
RELATIVE_TOLERANCE = 1e-6  # the sidecar keeps a ratio; recomputing bytes from it rounds
SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "syncfs", "sync")


class Driver:
    """capture_driver.py in host B, optionally under strace; reads its JSON lines with a deadline."""

    def __init__(self, pair: NetnsPair, spool: Path, *args: str, strace_to: Path | None = None) -> None:
        tracer = []
        if strace_to is not None:
            calls = ",".join(SYNC_CALLS)
            tracer = ["strace", "-f", "-qq", "-y", "-o", str(strace_to), f"--trace={calls}"]
        argv = [sys.executable, str(DRIVER), "--interface", pair.if_b, "--spool", str(spool), *args]
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", pair.ns_b, *tracer, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def expect(self, event: str) -> dict[str, object]:
        try:
            message: dict[str, object] = json.loads(self._lines.get(timeout=LINE_TIMEOUT_S))
        except queue.Empty:
            raise AssertionError(f"capture_driver said nothing while waiting for {event!r}") from None
        assert message["event"] == event, message
        return message

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self) -> str:
        """Waits for the exit (killing the driver if it hangs); returns its stderr."""
        try:
            _, stderr = self.process.communicate(timeout=LINE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return stderr


def link_bytes(pair: NetnsPair) -> int:
    """rx + tx bytes of host B's end of the link, as the capture reads them."""
    stats = f"/sys/class/net/{pair.if_b}/statistics"
    return sum(
        int(n) for n in pair.exec(pair.ns_b, ["cat", f"{stats}/rx_bytes", f"{stats}/tx_bytes"]).split()
    )


def test_sidecar_counters_end_at_hand_off_however_late_the_file_is_sealed(
    netns_pair: NetnsPair, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    at_launch = link_bytes(netns_pair)
    driver = Driver(netns_pair, spool, "--filter", ONLY_TEST_FRAMES)
    try:
        driver.expect("ready")  # the file has begun: its start counters are read
        at_ready = link_bytes(netns_pair)
        sent = netns_pair.send_frames("ipv6", IN_WINDOW_FRAMES, size=FRAME_PAYLOAD_BYTES)
        in_window = link_bytes(netns_pair) - at_ready
        # The sealer's queue is held: the file is handed off (its end counters read) but not sealed.
        driver.send(f"hold-and-stop {sent}")
        driver.expect("handed-off")
        at_hand_off = link_bytes(netns_pair)
        late = netns_pair.send_frames("ipv6", LATE_FRAMES, start=sent, size=FRAME_PAYLOAD_BYTES)
        late_bytes = link_bytes(netns_pair) - at_hand_off
        driver.send("release")  # now the sealer seals the file, long after its end
        driver.expect("stopped")
    finally:
        stderr = driver.finish()
    assert driver.process.returncode == 0, stderr
    assert late_bytes >= late * FRAME_WIRE_BYTES  # the late traffic did cross the captured interface
    assert in_window >= sent * FRAME_WIRE_BYTES

    [sealed] = read_spool(spool)
    meta = sealed.metadata
    assert sealed.indexes == list(range(sent))
    kernel = meta["kernel_delta"]
    assert isinstance(kernel, dict)
    assert int(kernel["received_packets"]) == sent
    assert int(kernel["dropped_packets"]) == 0
    interface = meta["interface"]
    assert isinstance(interface, dict)
    speed_mbps = int(interface["link_speed_mbps"])
    assert speed_mbps > 0, "veth reports a link speed once it is up"
    elapsed_s = (int(str(meta["window_end_ns"])) - int(str(meta["window_start_ns"]))) / 1e9
    ratio = meta["link_utilisation_mean_ratio"]
    assert isinstance(ratio, float) and 0 < ratio < 1
    counted = ratio * speed_mbps * 1e6 * elapsed_s / 8
    # At least the traffic inside the window, at most what crossed the link before the hand-off: none
    # of the late traffic, which a counter read by the sealer would have added.
    assert in_window * (1 - RELATIVE_TOLERANCE) <= counted
    assert counted <= (at_hand_off - at_launch) * (1 + RELATIVE_TOLERANCE)


def test_consecutive_files_count_every_link_byte_once(netns_pair: NetnsPair, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    at_launch = link_bytes(netns_pair)
    driver = Driver(netns_pair, spool, "--filter", ONLY_TEST_FRAMES, "--max-size", str(64 << 10))
    try:
        driver.expect("ready")
        at_ready = link_bytes(netns_pair)
        sent = netns_pair.send_frames("ipv6", 2000, size=FRAME_PAYLOAD_BYTES)
        before_stop = link_bytes(netns_pair)
        driver.send(f"stop {sent}")
        driver.expect("stopped")
    finally:
        stderr = driver.finish()
    assert driver.process.returncode == 0, stderr
    after_stop = link_bytes(netns_pair)
    files = read_spool(spool)
    assert len(files) >= 10  # rotated by size many times while the traffic flowed
    assert [i for f in files for i in f.indexes] == list(range(sent))

    # Each file counts from the previous file's hand-off (its window end: no time rotation here) to
    # its own; the first from its start.
    counted = 0.0
    count_from_ns = int(str(files[0].metadata["window_start_ns"]))
    for f in files:
        interface = f.metadata["interface"]
        assert isinstance(interface, dict)
        ratio = f.metadata["link_utilisation_mean_ratio"]
        assert isinstance(ratio, float) and 0 <= ratio < 1
        end_ns = int(str(f.metadata["window_end_ns"]))
        counted += ratio * int(interface["link_speed_mbps"]) * 1e6 * (end_ns - count_from_ns) / 1e9 / 8
        count_from_ns = end_ns
    # Counting from before "ready" to after the last frame was sent, and within what the link carried
    # from launch to exit: no byte counted twice (overlapping files) or left out (gaps between them).
    assert (before_stop - at_ready) * (1 - RELATIVE_TOLERANCE) <= counted
    assert counted <= (after_stop - at_launch) * (1 + RELATIVE_TOLERANCE)


SYSCALL_LINE = re.compile(r"^(?P<tid>\d+)\s+(?P<call>\w+)\((?P<args>.*)")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see which thread calls fsync")
def test_the_capture_thread_never_fsyncs_and_every_reservation_is_still_made_durable(
    netns_pair: NetnsPair, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    trace = tmp_path / "strace.txt"
    max_size = 64 << 10  # 64 KiB: a rotation every ~60 frames
    driver = Driver(netns_pair, spool, "--filter", ONLY_TEST_FRAMES, "--max-size", str(max_size),
                    strace_to=trace)  # fmt: skip
    try:
        capture_tid = int(str(driver.expect("ready")["capture_tid"]))
        sent = netns_pair.send_frames("ipv6", 600, size=FRAME_PAYLOAD_BYTES)
        driver.send(f"stop {sent}")
        stopped = driver.expect("stopped")
    finally:
        stderr = driver.finish()
    assert driver.process.returncode == 0, stderr
    files = read_spool(spool)
    assert [i for f in files for i in f.indexes] == list(range(sent))
    assert int(str(stopped["files_sealed"])) == len(files) >= 5  # several rotations

    calls = [m for line in trace.read_text().splitlines() if (m := SYSCALL_LINE.match(line))]
    assert calls, "strace saw no sync call at all"
    on_capture_thread = [m.group(0) for m in calls if int(m.group("tid")) == capture_tid]
    assert on_capture_thread == []
    # Off the capture thread, each file's reservation was still made durable: its part info and open/.
    synced = {m.group("args") for m in calls if m.group("call") == "fsync"}
    for sequence in range(1, len(files) + 1):
        info = f"{spool}/open/{sequence:012d}.part.json>"
        assert any(info in args for args in synced), f"reservation {sequence} never synced"
    assert any(f"{spool}/open>" in args for args in synced)
