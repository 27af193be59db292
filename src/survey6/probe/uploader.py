"""Idle-window delivery: sealed files go to the server oldest first, only while the link is idle.

An upload asks the server how much of the file it already holds (``GetOffset``), streams the rest
in CRC-checked chunks (``Put``) at a share of the link's idle headroom, and stops mid-file as soon
as the link turns busy; the server keeps what it got and the next idle window resumes from there.
A file leaves the spool only after a receipt that says it is durable with the same SHA-256.
Overrides: ``upload-now``, a backlog over its high-water mark, or a file waiting longer than the
maximum deferral: then the link's business is ignored (the rate limit still applies).

The rate limit is one token bucket for the uploader's whole life (see ``TokenBucket``): files,
streams and reconnections all draw from it, so no file starts with a burst of its own.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from survey6.probe.linkmonitor import LinkMonitor
from survey6.probe.metadata import read_sidecar
from survey6.probe.settings import DeliverySettings
from survey6.probe.spool import ReadyFile, Spool
from survey6.wire.v1 import capture_pb2, upload_pb2, upload_pb2_grpc

log = logging.getLogger(__name__)

IDLE_SAMPLE_INTERVAL_S = 1.0  # how often the link is looked at while no upload runs
# ...and while one does: with the monitor's one-second window, traffic that makes the link busy
# stops an upload (or lowers its rate) within about 1.25 s.
UPLOAD_SAMPLE_INTERVAL_S = 0.25
OFFSET_DEADLINE_S = 30.0
PUT_IDLE_DEADLINE_S = 600.0  # the whole Put; a paused upload ends its stream long before
RETRY_AFTER_FAILURE_S = 30.0  # a file the server refused is tried again after this
UNAVAILABLE_PAUSE_S = 5.0  # the server is away: capture goes on, uploads wait this long between tries
MIN_HEADROOM_RATIO = 0.05  # the rate floor of an override on a saturated link, as a share of capacity
DURABLE = (upload_pb2.DURABILITY_DURABLE, upload_pb2.DURABILITY_ALREADY_DURABLE)

# The limit holds over every window of this length or longer (and the bench measures 1 s windows).
RATE_WINDOW_S = 1.0
# A chunk carries at most this long at the current rate, so that a chunk released at once does not
# make a short window much busier than the limit (100 ms windows stay within ~1.2 x of it).
PIECE_S = 0.02
# Each chunk brings ~50 bytes of framing, its own TCP segments' headers and an ACK back, which the
# link monitor counts as other traffic (see LinkMonitor._own_on_the_wire): at slow rates, chunks of
# at least this size keep that near 10 % of the upload's rate (1 KiB chunks made it ~17 %).
MIN_PIECE_BYTES = 4096
# Bytes a chunk costs on the link, as the bucket counts them: TCP, IPv6 and Ethernet headers take
# 86 bytes of each 1500-byte frame (6 %), and each chunk has protobuf, gRPC, HTTP/2 and TLS
# framing. Charged in full, so the limit holds on the wire and not only for the file's bytes.
WIRE_BYTES_PER_FILE_BYTE = 1.06
CHUNK_FRAMING_BYTES = 64
# Refilling never slows below this share of the rate, even when one piece is a large part of a
# window's budget (rates under ~16 kbit/s, where the 1 s bound gives way to this floor).
MIN_PACE_RATIO = 0.5
TOKEN_WAIT_SLICE_S = UPLOAD_SAMPLE_INTERVAL_S  # a long wait for tokens re-reads the rate this often
# A piece this close to its time goes at once and the bucket owes the rest: a wake-up per chunk at
# hundreds of MB/s would cost more than the wait.
SHORTEST_WAIT_S = 0.001


def wire_cost(file_bytes: int) -> float:
    """The link bytes a chunk of `file_bytes` takes, as the token bucket charges them."""
    return file_bytes * WIRE_BYTES_PER_FILE_BYTE + CHUNK_FRAMING_BYTES


class TokenBucket:
    """Paces bytes so that no window of ``window_s`` or longer carries more than the rate allows.

    It starts empty and holds at most the piece being waited for, so neither a new file, nor a new
    stream, nor a long pause between uploads buys a burst: the most that goes at once is one piece.
    It refills at the rate less the largest recent piece per window, because a window can begin
    just before one piece is released and end just after another: with pieces of at most c, a
    bucket of one piece and a refill of r - c/W, any window of W seconds or longer carries at most
    c + (r - c/W) W = r W (a little less again for the debt of ``SHORTEST_WAIT_S`` it may run up).
    The rate is read again at each refill (it follows the link), and a rate of 0 means no limit.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = RATE_WINDOW_S) -> None:
        self.clock = clock
        self.window_s = window_s
        self.tokens = 0.0
        self.at = clock()
        # (time, count) of the last window's pieces, each larger than all taken after it: the first
        # is the largest (a sliding maximum, so a take costs the same at any rate).
        self._largest: deque[tuple[float, float]] = deque()

    def pace(self, rate_bytes_per_s: float, count: float) -> float:
        """The refill rate that keeps every window within the rate, for pieces of `count` bytes."""
        largest = max(count, self._largest[0][1]) if self._largest else count
        within_window = (rate_bytes_per_s * self.window_s - largest) / (self.window_s + SHORTEST_WAIT_S)
        return max(within_window, rate_bytes_per_s * MIN_PACE_RATIO)

    def take(self, count: float, rate: Callable[[], float], stop: threading.Event) -> bool:
        """Waits until `count` bytes may go at ``rate()`` bytes/s and takes them.

        Returns False when `stop` was set first (nothing is taken then).
        """
        while True:
            now = self.clock()
            limit = rate()
            if limit <= 0:  # no limit known: nothing is saved up for later either
                self.tokens, self.at = 0.0, now
                return True
            while self._largest and self._largest[0][0] <= now - self.window_s:
                self._largest.popleft()
            pace = self.pace(limit, count)
            self.tokens = min(count, self.tokens + (now - self.at) * pace)
            self.at = now
            wait_s = (count - self.tokens) / pace
            if wait_s < SHORTEST_WAIT_S:
                self.tokens -= count
                while self._largest and self._largest[-1][1] <= count:
                    self._largest.pop()
                self._largest.append((now, count))
                return True
            if stop.wait(min(wait_s, TOKEN_WAIT_SLICE_S)):
                return False


@dataclass
class UploadStatus:
    uploading: bool = False
    last_upload_ns: int = 0
    uploaded_files_total: int = 0
    uploaded_bytes_total: int = 0
    last_error: str = ""


class Uploader:
    def __init__(
        self,
        spool: Spool,
        stub: upload_pb2_grpc.UploadStub,
        monitor: LinkMonitor,
        settings: DeliverySettings,
        probe_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        stop: threading.Event | None = None,
    ) -> None:
        """`clock` and `stop` (whose ``wait`` is every wait for tokens) can be given so that tests run
        the pacing on a virtual clock."""
        self.spool = spool
        self.stub = stub
        self.monitor = monitor
        self.settings = settings
        self.probe_id = probe_id
        self.clock = clock
        self.status = UploadStatus()
        self.upload_now = threading.Event()
        self.stop = stop or threading.Event()
        self.idle_interval_s = IDLE_SAMPLE_INTERVAL_S
        self.bucket = TokenBucket(clock)
        self._wake = threading.Event()  # cuts the loop's wait short: upload-now, stop
        self._failed_at: dict[int, float] = {}
        self._sampled_at = -float("inf")
        self._paused_until = 0.0
        self._last_decision: tuple[str | None, int] = (None, 0)

    def request_upload_now(self) -> None:
        """The ``upload-now`` override; the loop looks at once instead of at its next round."""
        self.upload_now.set()
        self._wake.set()

    def request_stop(self) -> None:
        self.stop.set()
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stop.is_set():
            # Cleared before looking: a request that comes while we look is seen now or wakes the wait.
            self._wake.clear()
            self._sample()
            ready = self._candidates()
            reason = self.reason_to_upload(ready)
            if (reason, len(ready)) != self._last_decision:
                self._last_decision = (reason, len(ready))
                log.debug(
                    "upload decision",
                    extra={
                        "reason": reason,
                        "ready_files": len(ready),
                        "utilisation": self.monitor.utilisation,
                    },
                )
            if reason is None or self.clock() < self._paused_until:
                self._wake.wait(self.idle_interval_s)
                continue
            if not self.upload(ready[0], override=reason != "idle"):
                self._wake.wait(self.idle_interval_s)  # paused or failed: look again in a moment

    def _sample(self) -> None:
        now = self.clock()
        interval = UPLOAD_SAMPLE_INTERVAL_S if self.status.uploading else IDLE_SAMPLE_INTERVAL_S
        if now - self._sampled_at >= interval:
            self._sampled_at = now
            self.monitor.sample()

    def _candidates(self) -> list[ReadyFile]:
        now = self.clock()
        return [
            f
            for f in self.spool.ready_files()
            if now - self._failed_at.get(f.sequence, -float("inf")) >= RETRY_AFTER_FAILURE_S
        ]

    def reason_to_upload(self, ready: list[ReadyFile]) -> str | None:
        """Why an upload may start now, or None: "upload-now", "backlog", "deferral" or "idle"."""
        if not ready:
            self.upload_now.clear()
            return None
        if self.upload_now.is_set():
            return "upload-now"
        if sum(f.size_bytes for f in ready) >= self.settings.backlog_high_water_bytes:
            return "backlog"
        try:
            oldest_age_s = time.time() - ready[0].path.stat().st_mtime
        except FileNotFoundError:
            return None
        if oldest_age_s >= self.settings.max_deferral_s:
            return "deferral"
        if self.monitor.idle and self.monitor.quiet_hour_now():
            return "idle"
        return None

    # -- one file -------------------------------------------------------------------------------

    def upload(self, ready: ReadyFile, *, override: bool) -> bool:
        """Sends one file, or what the link allows of it; True when the server has it durably."""
        if not self.spool.begin_delivery(ready.sequence):
            return False  # dropped by the spool's full policy since it was listed
        self.status.uploading = True
        try:
            metadata = read_sidecar(ready.sidecar)
            metadata.probe_id = self.probe_id
            offset = self.stub.GetOffset(
                upload_pb2.OffsetRequest(
                    sequence=ready.sequence,
                    sha256_hex=metadata.sha256_hex,
                    file_size_bytes=metadata.file_size_bytes,
                ),
                timeout=OFFSET_DEADLINE_S,
            )
            if offset.HasField("receipt"):
                return self._finish(ready, metadata, offset.receipt, sent=0)
            if offset.offset_bytes:
                log.info("resuming the upload of %d at offset %d", ready.sequence, offset.offset_bytes)
            chunks = self._chunks(ready, metadata, offset.offset_bytes, override)
            receipt = self.stub.Put(chunks, timeout=PUT_IDLE_DEADLINE_S)
            return self._finish(ready, metadata, receipt, sent=metadata.file_size_bytes - offset.offset_bytes)
        except grpc.RpcError as exc:
            self._failed(ready, exc)
            return False
        finally:
            self.status.uploading = False
            self.spool.end_delivery()

    def _chunks(
        self, ready: ReadyFile, metadata: capture_pb2.CaptureMetadata, start: int, override: bool
    ) -> Iterator[upload_pb2.UploadChunk]:
        yield upload_pb2.UploadChunk(
            header=upload_pb2.UploadHeader(metadata=metadata, start_offset_bytes=start)
        )
        with open(ready.path, "rb") as stream:
            stream.seek(start)
            while not self.stop.is_set():
                self._sample()
                if not override and self.monitor.busy:
                    log.info(
                        "link busy: pausing the upload of %d at offset %d", ready.sequence, stream.tell()
                    )
                    return  # ending the stream; the server keeps what it has
                data = stream.read(self._piece_bytes())
                if not data or not self.bucket.take(wire_cost(len(data)), self._current_rate, self.stop):
                    return
                self.monitor.add_own_bytes(len(data))
                yield upload_pb2.UploadChunk(data=data, data_crc32=zlib.crc32(data))

    def _piece_bytes(self) -> int:
        """The next chunk's size: the configured chunk, or less when the rate is low (``PIECE_S``)."""
        rate = self._rate_bytes_per_s()
        if rate <= 0:
            return self.settings.chunk_bytes
        return int(min(max(rate * PIECE_S, MIN_PIECE_BYTES), self.settings.chunk_bytes))

    def _current_rate(self) -> float:
        """The rate after a fresh look at the link when one is due (a long wait for tokens)."""
        self._sample()
        return self._rate_bytes_per_s()

    def _rate_bytes_per_s(self) -> float:
        """The configured share of the headroom in link bytes/s; 0 (no limit) only when the capacity
        is unknown.

        An override (upload-now, backlog, deferral) on a busy link still gets a small floor, so
        that it moves at all without taking the link.
        """
        capacity = self.monitor.capacity_bps
        if not capacity:
            return 0.0
        headroom = max(self.monitor.headroom_bps(), capacity * MIN_HEADROOM_RATIO)
        return self.settings.upload_share_ratio * headroom / 8

    def _finish(
        self,
        ready: ReadyFile,
        metadata: capture_pb2.CaptureMetadata,
        receipt: upload_pb2.UploadReceipt,
        sent: int,
    ) -> bool:
        if receipt.durability not in DURABLE:
            log.info("upload of %d paused with %d bytes at the server", ready.sequence, receipt.size_bytes)
            return False
        if receipt.sha256_hex != metadata.sha256_hex or receipt.sequence != ready.sequence:
            self.status.last_error = f"receipt for {ready.sequence} does not match the file; kept"
            log.error(self.status.last_error, extra={"receipt_sha256": receipt.sha256_hex})
            self._failed_at[ready.sequence] = self.clock()
            return False
        self.spool.delivered(ready.sequence)
        self._failed_at.pop(ready.sequence, None)
        self.status.last_upload_ns = time.time_ns()
        self.status.uploaded_files_total += 1
        self.status.uploaded_bytes_total += max(sent, 0)
        log.info("delivered", extra={"sequence": ready.sequence, "bytes": metadata.file_size_bytes})
        return True

    def _failed(self, ready: ReadyFile, exc: grpc.RpcError) -> None:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        self.status.last_error = f"{code}: {detail}"
        if code in (grpc.StatusCode.DATA_LOSS, grpc.StatusCode.FAILED_PRECONDITION):
            log.warning("upload of %d must restart from the server's offset: %s", ready.sequence, detail)
            return  # the next round asks for the offset again
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ):
            log.info("server unavailable for uploads (%s); the file stays in the spool", code)
            self._paused_until = self.clock() + UNAVAILABLE_PAUSE_S
            return
        log.error("server refused %d: %s; it stays in the spool", ready.sequence, detail)
        self._failed_at[ready.sequence] = self.clock()
