"""Idle-window delivery: sealed files go to the server oldest first, only while the link is idle.

An upload asks the server how much of the file it already holds (``GetOffset``), streams the rest
in CRC-checked chunks (``Put``) at a share of the link's idle headroom, and stops mid-file as soon
as the link turns busy; the server keeps what it got and the next idle window resumes from there.
A file leaves the spool only after a receipt that says it is durable with the same SHA-256.
Overrides: ``upload-now``, a backlog over its high-water mark, or a file waiting longer than the
maximum deferral: then the link's business is ignored (the rate limit still applies).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from survey6.probe.linkmonitor import LinkMonitor
from survey6.probe.metadata import read_sidecar
from survey6.probe.settings import DeliverySettings
from survey6.probe.spool import ReadyFile, Spool
from survey6.wire.v1 import capture_pb2, upload_pb2, upload_pb2_grpc

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 1.0
OFFSET_DEADLINE_S = 30.0
PUT_IDLE_DEADLINE_S = 600.0  # the whole Put; a paused upload ends its stream long before
RETRY_AFTER_FAILURE_S = 30.0  # a file the server refused is tried again after this
UNAVAILABLE_PAUSE_S = 5.0  # the server is away: capture goes on, uploads wait this long between tries
MIN_HEADROOM_RATIO = 0.05  # the rate floor of an override on a saturated link, as a share of capacity
DURABLE = (upload_pb2.DURABILITY_DURABLE, upload_pb2.DURABILITY_ALREADY_DURABLE)


class TokenBucket:
    """Bytes per second with a burst of one second; `take` sleeps (interruptibly) for tokens.
    A rate of 0 means no limit (the link's capacity is unknown)."""

    def __init__(self, rate_bytes_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_bytes_per_s
        self.clock = clock
        self.tokens = rate_bytes_per_s
        self.at = clock()

    def take(self, count: int, stop: threading.Event) -> None:
        if self.rate <= 0:
            return  # no limit known
        while True:
            now = self.clock()
            self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= count or self.tokens >= self.rate:  # a chunk bigger than a second's worth
                self.tokens -= count
                return
            if stop.wait((count - self.tokens) / self.rate):
                return


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
    ) -> None:
        self.spool = spool
        self.stub = stub
        self.monitor = monitor
        self.settings = settings
        self.probe_id = probe_id
        self.status = UploadStatus()
        self.upload_now = threading.Event()
        self.stop = threading.Event()
        self._failed_at: dict[int, float] = {}
        self._sampled_at = 0.0
        self._paused_until = 0.0
        self._last_decision: tuple[str | None, int] = (None, 0)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stop.is_set():
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
            if reason is None or time.monotonic() < self._paused_until:
                self.stop.wait(SAMPLE_INTERVAL_S)
                continue
            if not self.upload(ready[0], override=reason != "idle"):
                self.stop.wait(SAMPLE_INTERVAL_S)  # paused or failed: look again in a moment

    def _sample(self) -> None:
        now = time.monotonic()
        if now - self._sampled_at >= SAMPLE_INTERVAL_S:
            self._sampled_at = now
            self.monitor.sample()

    def _candidates(self) -> list[ReadyFile]:
        now = time.monotonic()
        return [
            f
            for f in self.spool.ready_files()
            if now - self._failed_at.get(f.sequence, -RETRY_AFTER_FAILURE_S) >= RETRY_AFTER_FAILURE_S
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
        metadata = read_sidecar(ready.sidecar)
        metadata.probe_id = self.probe_id
        self.status.uploading = True
        try:
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

    def _chunks(
        self, ready: ReadyFile, metadata: capture_pb2.CaptureMetadata, start: int, override: bool
    ) -> Iterator[upload_pb2.UploadChunk]:
        yield upload_pb2.UploadChunk(
            header=upload_pb2.UploadHeader(metadata=metadata, start_offset_bytes=start)
        )
        bucket = TokenBucket(self._rate_bytes_per_s())
        with open(ready.path, "rb") as stream:
            stream.seek(start)
            while not self.stop.is_set():
                self._sample()
                if not override and self.monitor.busy:
                    log.info(
                        "link busy: pausing the upload of %d at offset %d", ready.sequence, stream.tell()
                    )
                    return  # ending the stream; the server keeps what it has
                bucket.rate = self._rate_bytes_per_s()
                data = stream.read(self.settings.chunk_bytes)
                if not data:
                    return
                bucket.take(len(data), self.stop)
                self.monitor.add_own_bytes(len(data))
                yield upload_pb2.UploadChunk(data=data, data_crc32=zlib.crc32(data))

    def _rate_bytes_per_s(self) -> float:
        """The configured share of the headroom; 0 (no limit) only when the capacity is unknown.

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
            self._failed_at[ready.sequence] = time.monotonic()
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
            self._paused_until = time.monotonic() + UNAVAILABLE_PAUSE_S
            return
        log.error("server refused %d: %s; it stays in the spool", ready.sequence, detail)
        self._failed_at[ready.sequence] = time.monotonic()
