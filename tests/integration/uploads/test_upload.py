"""Uploads over real mTLS gRPC into an in-process server: landing, idempotence, resume, corruption."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator

import grpc

from support.fleet_processes import wait_for
from support.upload_client import (
    CHUNK_BYTES,
    ProbeIdentity,
    UploadServer,
    data_chunk,
    data_chunks,
    header,
    make_capture,
    put,
    status_of,
    stream,
)
from survey6.server.queue import INGEST_FUNCTION, job_id_for
from survey6.wire.v1 import upload_pb2, upload_pb2_grpc


def landed_path(server: UploadServer, probe_id: str, sequence: int) -> str:
    return f"{probe_id}/2024/05/06/{sequence:012d}.pcap"


def test_a_complete_upload_lands_is_catalogued_and_queued_once(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub
) -> None:
    capture = make_capture(1)
    offset = upload.GetOffset(capture.offset_request(), timeout=10)
    assert offset.offset_bytes == 0 and not offset.HasField("receipt")

    receipt = put(upload, stream(capture))

    assert receipt.durability == upload_pb2.DURABILITY_DURABLE
    assert receipt.sha256_hex == capture.sha256_hex
    assert receipt.size_bytes == len(capture.data)
    assert receipt.sequence == 1 and receipt.stored_ns > 0
    relative = landed_path(server, probe.probe_id, 1)
    pcap = server.landing / relative
    assert hashlib.sha256(pcap.read_bytes()).hexdigest() == capture.sha256_hex
    sidecar = json.loads(pcap.with_suffix(".json").read_text())
    assert sidecar["probe_id"] == probe.probe_id  # the certificate's id, filled in by the server
    assert sidecar["sequence"] == "1" and sidecar["interface"]["name"] == "eth0"
    assert server.landed_files() == sorted([pcap, pcap.with_suffix(".json")])
    assert not any(p.is_file() for p in server.receiving.rglob("*"))  # nothing left in receiving/

    queue = server.queue()
    wait_for(lambda: server.state(probe.probe_id, 1) == "queued", 10, "the row to be queued")
    row = server.row(probe.probe_id, 1)
    assert row is not None
    assert (row.sha256_hex, row.size_bytes, row.packets, row.landing_path) == (
        capture.sha256_hex,
        len(capture.data),
        200,
        relative,
    )
    assert row.first_packet_time_ns == capture.metadata.first_packet_time_ns
    assert row.stored_at is not None and row.queued_at is not None
    assert queue.job_ids == [job_id_for(probe.probe_id, 1)]
    job = queue.jobs[0]
    assert job.func_name == INGEST_FUNCTION
    assert job.kwargs == {
        "probe_id": probe.probe_id,
        "sequence": 1,
        "sha256_hex": capture.sha256_hex,
        "landing_path": relative,
        "landing_root": str(server.landing),
    }


def test_uploading_the_same_file_again_is_already_durable(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub
) -> None:
    capture = make_capture(7)
    first = put(upload, stream(capture))
    assert first.durability == upload_pb2.DURABILITY_DURABLE
    wait_for(lambda: server.queue().job_ids, 10, "the ingest job")

    offset = upload.GetOffset(capture.offset_request(), timeout=10)
    assert offset.HasField("receipt")
    assert offset.receipt.durability == upload_pb2.DURABILITY_ALREADY_DURABLE
    assert offset.receipt.sha256_hex == capture.sha256_hex
    assert offset.receipt.stored_ns == first.stored_ns
    again = put(upload, stream(capture))
    assert again.durability == upload_pb2.DURABILITY_ALREADY_DURABLE
    assert again.size_bytes == len(capture.data)

    server.app.drainer.drain()
    assert server.queue().job_ids == [job_id_for(probe.probe_id, 7)]
    assert len(server.landed_files()) == 2  # one .pcap, one .json


def test_a_different_file_cannot_reuse_a_stored_sequence(
    server: UploadServer, upload: upload_pb2_grpc.UploadStub
) -> None:
    put(upload, stream(make_capture(3)))
    other = make_capture(3, packets=10)
    code, details = status_of(lambda: upload.GetOffset(other.offset_request(), timeout=10))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "already stored" in details
    code, details = status_of(lambda: put(upload, stream(other)))
    assert code == grpc.StatusCode.ALREADY_EXISTS


def test_an_interrupted_upload_resumes_from_the_offset(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub
) -> None:
    capture = make_capture(2, packets=400)
    half = len(capture.data) // 2

    partial = put(upload, stream(capture, 0, half))

    assert partial.durability == upload_pb2.DURABILITY_UNSPECIFIED
    assert partial.size_bytes == half
    assert upload.GetOffset(capture.offset_request(), timeout=10).offset_bytes == half
    assert server.row(probe.probe_id, 2) is None
    receipt = put(upload, stream(capture, half))
    assert receipt.durability == upload_pb2.DURABILITY_DURABLE
    assert receipt.sha256_hex == capture.sha256_hex
    pcap = server.landing / landed_path(server, probe.probe_id, 2)
    assert pcap.read_bytes() == capture.data


def test_a_header_only_stream_changes_nothing(
    server: UploadServer, upload: upload_pb2_grpc.UploadStub
) -> None:
    capture = make_capture(4)
    receipt = put(upload, [header(capture)])
    assert receipt.durability == upload_pb2.DURABILITY_UNSPECIFIED and receipt.size_bytes == 0
    assert put(upload, stream(capture)).durability == upload_pb2.DURABILITY_DURABLE


def test_a_corrupted_chunk_is_data_loss_and_none_of_it_is_written(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub
) -> None:
    capture = make_capture(5)
    good = list(data_chunks(capture.data, 0, 100_000))
    bad = data_chunk(capture.data[100_000:150_000], crc=12345)

    code, details = status_of(lambda: put(upload, [header(capture), *good, bad]))

    assert code == grpc.StatusCode.DATA_LOSS
    assert "offset 100000" in details
    assert upload.GetOffset(capture.offset_request(), timeout=10).offset_bytes == 100_000
    part = server.receiving / probe.probe_id / "000000000005.part"
    assert part.read_bytes() == capture.data[:100_000]  # the good chunks kept, nothing of the bad
    receipt = put(upload, stream(capture, 100_000))
    assert receipt.durability == upload_pb2.DURABILITY_DURABLE
    assert (server.landing / landed_path(server, probe.probe_id, 5)).read_bytes() == capture.data


def test_a_whole_file_sha256_mismatch_discards_the_part(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub
) -> None:
    capture = make_capture(6)
    tampered = bytearray(capture.data)
    tampered[500] ^= 0xFF  # each chunk's CRC matches its (wrong) data; only the sha256 can tell

    code, details = status_of(lambda: put(upload, [header(capture), *data_chunks(bytes(tampered))]))

    assert code == grpc.StatusCode.DATA_LOSS
    assert "sha256 mismatch" in details and "resend from offset 0" in details
    assert not any(p.is_file() for p in server.receiving.rglob("*"))
    assert upload.GetOffset(capture.offset_request(), timeout=10).offset_bytes == 0
    assert server.row(probe.probe_id, 6) is None and server.landed_files() == []
    assert put(upload, stream(capture)).durability == upload_pb2.DURABILITY_DURABLE


def test_a_stream_from_zero_replaces_a_part_started_for_another_file(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub
) -> None:
    first = make_capture(8, packets=100)
    put(upload, stream(first, 0, 5000))
    other = make_capture(8, packets=50)  # the probe re-made file 8: another sha256 and size
    assert upload.GetOffset(other.offset_request(), timeout=10).offset_bytes == 0
    assert put(upload, stream(other)).durability == upload_pb2.DURABILITY_DURABLE
    assert (server.landing / landed_path(server, probe.probe_id, 8)).read_bytes() == other.data


def test_a_cancelled_stream_keeps_what_arrived(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub
) -> None:
    capture = make_capture(9, packets=400)
    release = threading.Event()

    def cancelled_midway() -> Iterator[upload_pb2.UploadChunk]:
        yield header(capture)
        yield from data_chunks(capture.data, 0, 3 * CHUNK_BYTES)
        release.wait(30)

    future = upload.Put.future(cancelled_midway(), timeout=30)
    try:
        wait_for(
            lambda: upload.GetOffset(capture.offset_request(), timeout=10).offset_bytes == 3 * CHUNK_BYTES,
            10,
            "three chunks at the server",
        )
        future.cancel()  # as when the probe dies or its deadline passes
    finally:
        release.set()
    assert future.cancelled()
    assert upload.GetOffset(capture.offset_request(), timeout=10).offset_bytes == 3 * CHUNK_BYTES
    receipt = put(upload, stream(capture, 3 * CHUNK_BYTES))  # the file is free again: no stale lock
    assert receipt.durability == upload_pb2.DURABILITY_DURABLE
    assert (server.landing / landed_path(server, probe.probe_id, 9)).read_bytes() == capture.data
