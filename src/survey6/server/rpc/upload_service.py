"""The Upload servicer (mTLS): maps the caller to its probe and each refusal to its status code."""

from __future__ import annotations

import logging
from collections.abc import Iterator
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


class UploadService(upload_pb2_grpc.UploadServicer):
    def __init__(self, fleet: Fleet, store: UploadStore) -> None:
        self.fleet = fleet
        self.store = store

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
        try:
            return self.store.put(probe.probe_id, request_iterator)
        except UploadError as exc:
            _abort(context, probe.probe_id, exc)
        except grpc.RpcError as exc:
            # Raised by the request iterator when the client cancels; what arrived is kept.
            log.info("upload stream from %s cancelled by the client", probe.probe_id)
            context.abort(grpc.StatusCode.CANCELLED, "stream cancelled")
            raise AssertionError("unreachable") from exc


def _abort(context: grpc.ServicerContext, probe_id: str, exc: UploadError) -> NoReturn:
    code = STATUS_OF.get(type(exc), grpc.StatusCode.INVALID_ARGUMENT)
    if isinstance(exc, OffsetMismatch):
        context.set_trailing_metadata(((EXPECTED_OFFSET_KEY, str(exc.expected_offset_bytes)),))
    log.warning("upload refused: %s", exc, extra={"probe_id": probe_id, "code": code.name})
    context.abort(code, str(exc))
