"""survey6's Uploader against the in-process server (real spool, gRPC with mTLS, registry, landing):
one token bucket across files, a pause as soon as the link turns busy, and upload-now and stop
waking the loop at once.

The link is virtual where time matters: its clock and byte counters are the test's, and the
uploader's waits for tokens move that clock instead of sleeping, so the pacing is checked exactly
and without timing the machine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.fleet_processes import wait_for
from support.upload_client import ProbeIdentity, UploadServer, make_capture
from survey6.probe.linkmonitor import LinkMonitor
from survey6.probe.settings import DeliverySettings
from survey6.probe.spool import Spool
from survey6.probe.uploader import Uploader, wire_cost
from survey6.wire.v1 import upload_pb2_grpc

CAPACITY_BPS = 800_000.0  # told to the monitor: with a share of 0.5, 50,000 link bytes/s
SHARE_RATIO = 0.5
LIMIT_BYTES_PER_S = CAPACITY_BPS * SHARE_RATIO / 8
VETH_OVERHEAD_RATIO = 1.003  # what the virtual interface adds to each byte the uploader releases


class VirtualLink(threading.Event):
    """The probe's clock and interface counters. As the uploader's stop event, each of its waits
    moves the clock on (and received background traffic with it) instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.rx = 0
        self.tx = 0
        self.background_bytes_per_s = 0.0  # received from background_since on
        self.background_since = float("inf")

    def clock(self) -> float:
        return self.now

    def counters(self, _interface: str) -> tuple[int, int]:
        return self.rx, self.tx

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        busy_s = max(self.now + timeout - max(self.now, self.background_since), 0.0)
        self.now += timeout
        self.rx += int(self.background_bytes_per_s * busy_s)
        return self.is_set()


class RecordingMonitor(LinkMonitor):
    """survey6's LinkMonitor on the virtual link; the uploader's bytes also leave on its tx."""

    def __init__(self, link: VirtualLink, **kwargs: float) -> None:
        settings = {"idle_threshold_ratio": 0.1, "idle_hold_s": 30.0, "smoothing_s": 5.0, **kwargs}
        super().__init__("virtual0", capacity_bps=CAPACITY_BPS, clock=link.clock, read_bytes=link.counters,
                         **settings)  # type: ignore[arg-type]  # fmt: skip
        self.link = link
        self.released: list[tuple[float, int]] = []  # (virtual time, file bytes) of every chunk

    def add_own_bytes(self, count: int) -> None:
        super().add_own_bytes(count)
        self.released.append((self.link.now, count))
        self.link.tx += int(count * VETH_OVERHEAD_RATIO)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path / "spool", quota_bytes=1 << 30, min_free_bytes=0, policy="pause")
    spool.open()
    yield spool
    spool.close()


def seal_captures(spool: Spool, count: int, packets: int) -> int:
    """Seals `count` real pcaps with valid sidecars into the spool; returns their total bytes."""
    total = 0
    for _ in range(count):
        sequence, part = spool.begin_file({"interface": "eth0"})
        capture = make_capture(sequence, packets=packets)
        part.write_bytes(capture.data)
        spool.seal(sequence, capture.metadata)
        total += len(capture.data)
    return total


def uploader_for(
    spool: Spool, upload: upload_pb2_grpc.UploadStub, probe: ProbeIdentity, monitor: LinkMonitor,
    link: VirtualLink | None = None,
) -> Uploader:  # fmt: skip
    settings = DeliverySettings(link_capacity_bps=CAPACITY_BPS, upload_share_ratio=SHARE_RATIO)
    if link is None:
        return Uploader(spool, upload, monitor, settings, probe.probe_id)
    return Uploader(spool, upload, monitor, settings, probe.probe_id, clock=link.clock, stop=link)


def most_in_a_window(released: list[tuple[float, int]], window_s: float) -> float:
    """The most link bytes (as the uploader charges them) released in any window of `window_s`."""
    return max(
        sum(wire_cost(size) for at, size in released if start <= at <= start + window_s)
        for start, _ in released
    )


def test_small_files_share_one_bucket_and_never_pass_the_limit(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub, spool: Spool
) -> None:
    """Before, each file started with a full bucket of its own, so a backlog of files smaller than
    a second's worth went as fast as the server took them (3.5-5 x the link in the benchmark)."""
    total = seal_captures(spool, 12, packets=20)  # 12 files of ~19 kB: each under a second's worth
    link = VirtualLink()
    monitor = RecordingMonitor(link)
    uploader = uploader_for(spool, upload, probe, monitor, link)
    started = link.now
    for ready in spool.ready_files():
        assert uploader.upload(ready, override=True)

    assert spool.ready_files() == [] and len(server.landed_files()) == 2 * 12
    assert sum(size for _, size in monitor.released) == total
    for window_s in (1.0, 2.0, 5.0):
        assert most_in_a_window(monitor.released, window_s) <= LIMIT_BYTES_PER_S * window_s
    # ...and not far under it: the bucket gives up one chunk's budget per second (4 KiB of 50 kB).
    elapsed_s = link.now - started
    assert sum(wire_cost(size) for _, size in monitor.released) / elapsed_s > 0.85 * LIMIT_BYTES_PER_S


def test_an_upload_pauses_within_about_a_second_of_the_link_turning_busy(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub, spool: Spool
) -> None:
    seal_captures(spool, 1, packets=400)  # ~380 kB: about eight seconds at the limit
    link = VirtualLink()
    monitor = RecordingMonitor(link, idle_hold_s=0.0)
    uploader = uploader_for(spool, upload, probe, monitor, link)
    monitor.sample()
    link.wait(1.0)
    monitor.sample()
    assert monitor.idle
    ready = spool.ready_files()[0]
    link.background_since = busy_at = link.now + 2.0
    link.background_bytes_per_s = 0.3 * CAPACITY_BPS / 8  # other traffic: 0.3 of the link

    assert not uploader.upload(ready, override=False)

    after = [at for at, _ in monitor.released if at >= busy_at]
    assert after, "the upload was still going when the link turned busy"
    # Before, the smoothed utilisation sampled once a second took ~3 s to cross the threshold, and
    # a rise of the rate limit's input took ~11 s to settle. Now: the monitor's one-second window
    # plus one quarter-second sample at most.
    assert max(after) - busy_at <= 1.25
    held = upload.GetOffset(make_capture(ready.sequence, packets=400).offset_request(), timeout=10)
    assert 0 < held.offset_bytes < ready.size_bytes  # the server keeps the part; it resumes later
    assert spool.ready_files() == [ready]


def test_upload_now_and_stop_wake_the_loop_at_once(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub, spool: Spool
) -> None:
    seal_captures(spool, 2, packets=20)
    looked = threading.Event()

    def counters(_interface: str) -> tuple[int, int]:
        looked.set()
        return 0, 0

    monitor = LinkMonitor("virtual0", capacity_bps=1e12, idle_threshold_ratio=0.1, idle_hold_s=1e9,
                          smoothing_s=5.0, read_bytes=counters)  # fmt: skip
    uploader = uploader_for(spool, upload, probe, monitor)
    uploader.idle_interval_s = 3600.0  # the loop would look again only after an hour by itself
    thread = threading.Thread(target=uploader.run, name="uploader", daemon=True)
    thread.start()
    try:
        assert looked.wait(10), "the loop never looked at the link"
        assert len(spool.ready_files()) == 2  # never idle: nothing goes by itself
        uploader.request_upload_now()
        wait_for(lambda: not spool.ready_files(), 30, "the backlog to go after upload-now")
        assert uploader.status.uploaded_files_total == 2
    finally:
        uploader.request_stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
