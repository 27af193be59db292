"""Hostile and malformed uploads: refused with a clear status, and never a file outside the landing zone."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from support.fleet_processes import wait_for
from support.upload_client import (
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
from survey6.wire.v1 import capture_pb2, upload_pb2, upload_pb2_grpc


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_metadata_naming_another_probe_is_refused(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub
) -> None:
    victim = server.enrol()
    capture = make_capture(1)
    forged = capture_pb2.CaptureMetadata()
    forged.CopyFrom(capture.metadata)
    forged.probe_id = victim.probe_id

    code, details = status_of(
        lambda: put(upload, [header(capture, metadata=forged), *data_chunks(capture.data)])
    )

    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert victim.probe_id in details and probe.probe_id in details
    assert server.landed_files() == []
    assert server.row(victim.probe_id, 1) is None and server.row(probe.probe_id, 1) is None


def test_metadata_with_its_own_probe_id_is_accepted(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub
) -> None:
    capture = make_capture(1)
    capture.metadata.probe_id = probe.probe_id
    assert put(upload, stream(capture)).durability == upload_pb2.DURABILITY_DURABLE


def test_path_like_strings_never_name_a_path(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub, tmp_path: Path
) -> None:
    before = files_under(tmp_path)
    capture = make_capture(9)
    hostile = capture.metadata
    hostile.interface.name = "../../etc"
    hostile.host.hostname = "/etc/passwd"
    hostile.filter = "../../../../tmp/x"
    hostile.labels["../site"] = "../../.."
    hostile.file_format = "pcap"

    receipt = put(upload, stream(capture))

    assert receipt.durability == upload_pb2.DURABILITY_DURABLE
    expected = server.landing / probe.probe_id / "2024" / "05" / "06" / "000000000009.pcap"
    assert expected.read_bytes() == capture.data
    new = files_under(tmp_path) - before
    landed = {p for p in new if p.is_relative_to(server.landing)}
    assert landed == {expected, expected.with_suffix(".json")}
    # Anything else new is the server's own bookkeeping, never under a client-chosen name.
    assert all(p.is_relative_to(server.app.settings.data_dir) for p in new)
    assert not any("etc" in p.parts or "passwd" in p.name for p in new)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sequence": 0}, "sequence"),
        ({"sha256_hex": "../../" + "a" * 58}, "sha256_hex"),
        ({"schema_version": 2}, "schema_version"),
        ({"file_format": "../../x"}, "file_format"),
        ({"first_packet_time_ns": -5, "window_start_ns": -60}, "names no date"),
    ],
)
def test_invalid_headers_are_refused(
    server: UploadServer, upload: upload_pb2_grpc.UploadStub, change: dict[str, object], message: str
) -> None:
    capture = make_capture(1)
    bad = capture_pb2.CaptureMetadata()
    bad.CopyFrom(capture.metadata)
    for name, value in change.items():
        setattr(bad, name, value)
    if bad.first_packet_time_ns < 0:
        bad.last_packet_time_ns = bad.first_packet_time_ns
        bad.window_end_ns = 0
    code, details = status_of(
        lambda: put(upload, [header(capture, metadata=bad), *data_chunks(capture.data)])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details
    assert server.landed_files() == []


def test_get_offset_refuses_a_malformed_request(upload: upload_pb2_grpc.UploadStub) -> None:
    for request in (
        upload_pb2.OffsetRequest(sequence=0, sha256_hex="a" * 64, file_size_bytes=10),
        upload_pb2.OffsetRequest(sequence=1, sha256_hex="../x", file_size_bytes=10),
    ):
        code, _ = status_of(lambda r=request: upload.GetOffset(r, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_put_without_a_header_is_refused(server: UploadServer, upload: upload_pb2_grpc.UploadStub) -> None:
    capture = make_capture(1)
    code, details = status_of(lambda: put(upload, data_chunks(capture.data)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "header" in details
    code, _ = status_of(lambda: put(upload, []))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = status_of(lambda: put(upload, [header(capture), header(capture)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert server.landed_files() == []


def test_an_oversized_chunk_is_refused(server: UploadServer, upload: upload_pb2_grpc.UploadStub) -> None:
    capture = make_capture(1, packets=1500)  # over 1 MiB
    assert len(capture.data) > (1 << 20)
    code, details = status_of(
        lambda: put(upload, [header(capture), data_chunk(capture.data[: (1 << 20) + 1])])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 1048576" in details
    assert upload.GetOffset(capture.offset_request(), timeout=10).offset_bytes == 0
    # A chunk of exactly 1 MiB is fine.
    receipt = put(upload, [header(capture), data_chunk(capture.data[: 1 << 20])])
    assert receipt.size_bytes == 1 << 20


def test_a_chunk_past_the_end_of_the_file_is_refused(
    server: UploadServer, upload: upload_pb2_grpc.UploadStub
) -> None:
    capture = make_capture(1)
    code, details = status_of(lambda: put(upload, [header(capture), data_chunk(capture.data + b"extra")]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "runs past" in details
    assert server.landed_files() == []


@pytest.mark.parametrize("start", [0, 500, 2000])
def test_a_wrong_start_offset_is_a_failed_precondition(
    upload: upload_pb2_grpc.UploadStub, start: int
) -> None:
    capture = make_capture(1)
    put(upload, stream(capture, 0, 1000))
    with pytest.raises(grpc.RpcError) as raised:
        upload.Put(iter(stream(capture, start)), timeout=10)
    error = raised.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "resume from offset 1000" in (error.details() or "")
    trailing = {m.key: m.value for m in error.trailing_metadata()}
    assert str(trailing["survey6-expected-offset-bytes"]) == "1000"  # a str at run time (stubs: bytes)
    assert upload.GetOffset(capture.offset_request(), timeout=10).offset_bytes == 1000
    assert put(upload, stream(capture, 1000)).durability == upload_pb2.DURABILITY_DURABLE


def test_a_file_over_the_maximum_size_is_refused(make_server: Callable[..., UploadServer]) -> None:
    server = make_server(max_file_bytes="100KiB")
    upload = server.stub(server.enrol())
    capture = make_capture(1)
    assert len(capture.data) > 100 * 1024
    code, details = status_of(lambda: upload.GetOffset(capture.offset_request(), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 102400 bytes" in details
    code, _ = status_of(lambda: put(upload, stream(capture)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert server.landed_files() == []


def test_the_probe_quota_is_enforced(make_server: Callable[..., UploadServer]) -> None:
    first, second = make_capture(1), make_capture(2)
    server = make_server(probe_quota_bytes=len(first.data) + len(second.data) // 2)
    upload = server.stub(server.enrol())
    assert put(upload, stream(first)).durability == upload_pb2.DURABILITY_DURABLE
    code, details = status_of(lambda: put(upload, stream(second)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "quota" in details
    other_probe = server.stub(server.enrol())  # the quota is per probe
    assert put(other_probe, stream(second)).durability == upload_pb2.DURABILITY_DURABLE


def test_a_caller_without_a_client_certificate_gets_nothing(server: UploadServer) -> None:
    anonymous = server.stub(None)
    capture = make_capture(1)
    code, _ = status_of(lambda: anonymous.GetOffset(capture.offset_request(), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    code, _ = status_of(lambda: put(anonymous, stream(capture)))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert server.landed_files() == [] and files_under(server.receiving) == set()


def test_concurrent_streams_of_one_file_do_not_mix(
    server: UploadServer, probe: ProbeIdentity, upload: upload_pb2_grpc.UploadStub
) -> None:
    capture = make_capture(3)
    release = threading.Event()

    def held_open() -> Iterator[upload_pb2.UploadChunk]:
        yield header(capture)
        yield data_chunk(capture.data[:1000])
        release.wait(30)  # the stream stays open, holding the file

    future = upload.Put.future(held_open(), timeout=30)
    try:
        wait_for(
            lambda: upload.GetOffset(capture.offset_request(), timeout=10).offset_bytes == 1000,
            10,
            "the first stream's bytes",
        )
        second = server.stub(probe)
        code, details = status_of(lambda: put(second, stream(capture, 1000)))
        assert code == grpc.StatusCode.ABORTED and "another stream" in details
    finally:
        release.set()
    assert future.result().size_bytes == 1000
    assert put(upload, stream(capture, 1000)).durability == upload_pb2.DURABILITY_DURABLE
    assert (server.landing / probe.probe_id / "2024/05/06/000000000003.pcap").read_bytes() == capture.data
