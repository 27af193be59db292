"""The Upload servicer (mTLS): maps the caller to its probe and each refusal to its status code, and
cancels upload streams that stall."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

import grpc

from survey6.server.errors import (
    OffsetMismatch,
    QuotaExceeded,
    UploadBusy,
    UploadConflict,
    UploadCorrupt,
    UploadError,
    UploadForbidden,
    UploadRejected,
)
from survey6.server.fleet import Fleet
from survey6.server.rpc.auth import probe_of
from survey6.server.rpc.services import guarded
from survey6.server.uploads import UploadStore
from survey6.wire.v1 import upload_pb2, upload_pb2_grpc

log = logging.getLogger(__name__)

STATUS_OF: dict[type[UploadError], grpc.StatusCode] = {
    UploadRejected: grpc.StatusCode.INVALID_ARGUMENT,
    UploadForbidden: grpc.StatusCode.PERMISSION_DENIED,
    UploadConflict: grpc.StatusCode.ALREADY_EXISTS,
    OffsetMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    UploadCorrupt: grpc.StatusCode.DATA_LOSS,
    QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UploadBusy: grpc.StatusCode.ABORTED,
}
# Trailing metadata of a FAILED_PRECONDITION: where the probe must resume.
EXPECTED_OFFSET_KEY = "survey6-expected-offset-bytes"
MAX_WATCH_INTERVAL_S = 1.0  # the watchdog looks at least this often, and four times per timeout


@dataclass(eq=False)
class _Stream:
    context: grpc.ServicerContext
    probe_id: str
    waiting_since: float | None = None  # when the servicer began to wait for the next chunk
    timed_out: bool = False


class StreamWatchdog:
    """Cancels streams that have waited longer than `idle_timeout_s` for their next message.

    The sync server gives each stream one of its RPC threads for as long as the stream lasts; a
    client that stops sending without ending the stream or dropping the connection would hold it
    until its deadline (or forever, without one), and 32 such clients would stop every upload and
    heartbeat. Only the wait for a message counts: writing and landing are the server's own time.
    One thread looks at every stream; it runs while there are streams and ends with the last one.
    """

    def __init__(self, idle_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self._streams: set[_Stream] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, context: grpc.ServicerContext, probe_id: str) -> Iterator[_Stream]:
        stream = _Stream(context, probe_id)
        with self._lock:
            self._streams.add(stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="upload-watchdog", daemon=True)
                self._thread.start()
        try:
            yield stream
        finally:
            with self._lock:
                self._streams.discard(stream)

    def guard(
        self, stream: _Stream, requests: Iterator[upload_pb2.UploadChunk]
    ) -> Iterator[upload_pb2.UploadChunk]:
        """The requests, with the time spent waiting for each one noted for the watchdog."""
        while True:
            stream.waiting_since = self.clock()
            try:
                chunk = next(requests)
            except StopIteration:
                return
            finally:
                stream.waiting_since = None
            yield chunk

    def _watch(self) -> None:
        interval_s = min(self.idle_timeout_s / 4, MAX_WATCH_INTERVAL_S)
        while True:
            time.sleep(interval_s)
            with self._lock:
                if not self._streams:
                    self._thread = None
                    return
                streams = list(self._streams)
            now = self.clock()
            for stream in streams:
                since = stream.waiting_since
                if since is not None and now - since >= self.idle_timeout_s and not stream.timed_out:
                    stream.timed_out = True
                    log.warning(
                        "upload stream from %s sent nothing for %g s: cancelled (what arrived is kept)",
                        stream.probe_id,
                        self.idle_timeout_s,
                    )
                    stream.context.cancel()


class UploadService(upload_pb2_grpc.UploadServicer):
    def __init__(self, fleet: Fleet, store: UploadStore) -> None:
        self.fleet = fleet
        self.store = store
        self.watchdog = StreamWatchdog(store.settings.stream_idle_timeout_s)

    @guarded
    def GetOffset(
        self, request: upload_pb2.OffsetRequest, context: grpc.ServicerContext
    ) -> upload_pb2.OffsetResponse:
        probe = probe_of(context, self.fleet)
        try:
            return self.store.get_offset(probe.probe_id, request)
        except UploadError as exc:
            _abort(context, probe.probe_id, exc)

    @guarded
    def Put(
        self, request_iterator: Iterator[upload_pb2.UploadChunk], context: grpc.ServicerContext
    ) -> upload_pb2.UploadReceipt:
        probe = probe_of(context, self.fleet)
        with self.watchdog.watching(context, probe.probe_id) as stream:
            try:
                return self.store.put(probe.probe_id, self.watchdog.guard(stream, request_iterator))
            except UploadError as exc:
                _abort(context, probe.probe_id, exc)
            except grpc.RpcError as exc:
                # Raised by the request iterator when the stream is cancelled; what arrived is kept.
                if not stream.timed_out:
                    log.info("upload stream from %s cancelled by the client", probe.probe_id)
                context.abort(grpc.StatusCode.CANCELLED, "stream cancelled")
                raise AssertionError("unreachable") from exc


def _abort(context: grpc.ServicerContext, probe_id: str, exc: UploadError) -> NoReturn:
    code = STATUS_OF.get(type(exc), grpc.StatusCode.INVALID_ARGUMENT)
    if isinstance(exc, OffsetMismatch):
        context.set_trailing_metadata(((EXPECTED_OFFSET_KEY, str(exc.expected_offset_bytes)),))
    log.warning("upload refused: %s", exc, extra={"probe_id": probe_id, "code": code.name})
    context.abort(code, str(exc))
