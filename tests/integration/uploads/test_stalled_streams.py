"""Upload streams that stall, and partial uploads nobody resumes, against the in-process server.

A client that stops sending in the middle of a stream, without ending it or dropping the connection,
must not keep one of the server's RPC threads: more such streams than the server has threads would
otherwise stop every upload and heartbeat. And a partial upload nobody comes back for is removed
after its retention by the server's own background work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc

from support.fleet_processes import wait_for
from support.upload_client import (
    CHUNK_BYTES,
    UploadServer,
    data_chunks,
    header,
    make_capture,
    put,
    stream,
)
from survey6.server.app import RPC_WORKERS
from survey6.wire.v1 import upload_pb2, upload_pb2_grpc

STALLED_STREAMS = RPC_WORKERS + 4


def test_stalled_streams_are_cancelled_and_free_the_server(make_server: Callable[..., UploadServer]) -> None:
    server = make_server(stream_idle_timeout_s=1.0)
    probe = server.enrol()
    upload = server.stub(probe)
    captures = [make_capture(100 + i, packets=400) for i in range(STALLED_STREAMS)]
    release = threading.Event()

    def stalling(capture_index: int) -> Iterator[upload_pb2.UploadChunk]:
        capture = captures[capture_index]
        yield header(capture)
        yield from data_chunks(capture.data, 0, 2 * CHUNK_BYTES)
        release.wait(120)  # the client neither sends more nor ends the stream

    calls = [upload.Put.future(stalling(i), timeout=120) for i in range(STALLED_STREAMS)]
    try:
        # More stalled streams than the server has RPC threads: without the idle timeout, this
        # upload (and every heartbeat) would wait for the clients' two-minute deadline.
        fresh = make_capture(99)
        assert put(upload, stream(fresh)).durability == upload_pb2.DURABILITY_DURABLE
        wait_for(lambda: all(call.done() for call in calls), 60, "the stalled streams to be cancelled")
    finally:
        release.set()
    for call in calls:
        try:
            call.result()
            raise AssertionError("a stalled stream ended normally")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.CANCELLED
    for capture in captures:  # what arrived before the stall is kept, and the file can be resumed
        assert upload.GetOffset(capture.offset_request(), timeout=10).offset_bytes == 2 * CHUNK_BYTES
    resumed = captures[0]
    receipt = put(upload, stream(resumed, 2 * CHUNK_BYTES))
    assert receipt.durability == upload_pb2.DURABILITY_DURABLE


def test_the_server_removes_abandoned_parts_by_itself(make_server: Callable[..., UploadServer]) -> None:
    server = make_server(part_retention_s=2.0)
    probe = server.enrol()
    upload: upload_pb2_grpc.UploadStub = server.stub(probe)
    capture = make_capture(7)
    assert put(upload, stream(capture, 0, 5000)).size_bytes == 5000
    part = server.receiving / probe.probe_id / "000000000007.part"
    assert part.exists()
    wait_for(lambda: not part.exists(), 30, "the abandoned part to be removed")
    assert upload.GetOffset(capture.offset_request(), timeout=10).offset_bytes == 0
    assert put(upload, stream(capture)).durability == upload_pb2.DURABILITY_DURABLE
