"""A real server process killed mid-upload: restarted on the same ports and data, the upload resumes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import redis
from rq import Queue

from support.fleet_processes import ServerProcess, wait_for
from support.upload_client import (
    data_chunks,
    enrol,
    header,
    make_capture,
    put,
    stream,
    upload_channel,
)
from survey6.server import catalog
from survey6.server.queue import QUEUE_NAME, job_id_for
from survey6.server.registry import db
from survey6.wire.v1 import upload_pb2, upload_pb2_grpc


def test_an_upload_resumes_after_the_server_was_killed(tmp_path: Path, redis_url: str) -> None:
    server = ServerProcess(tmp_path)
    server.env["SURVEY6_REDIS_URL"] = redis_url
    server.start()
    channels: list[grpc.Channel] = []

    def connect() -> upload_pb2_grpc.UploadStub:
        channels.append(upload_channel(f"127.0.0.1:{server.control_port}", ca_pem, identity))
        return upload_pb2_grpc.UploadStub(channels[-1])

    try:
        ca_pem = (server.data_dir / "pki" / "ca.crt").read_bytes()
        identity = enrol(server.enrol_address, ca_pem, server.token())
        upload = connect()
        capture = make_capture(1, packets=2000)  # about 2 MB
        half = len(capture.data) // 2
        release = threading.Event()

        def interrupted() -> Iterator[upload_pb2.UploadChunk]:
            yield header(capture)
            yield from data_chunks(capture.data, 0, half)
            release.wait(60)

        future = upload.Put.future(interrupted(), timeout=60)
        wait_for(
            lambda: upload.GetOffset(capture.offset_request(), timeout=10).offset_bytes == half,
            20,
            "the first half at the server",
        )
        server.stop(kill=True)
        release.set()
        assert future.exception() is not None  # the stream died with the server

        server.start()
        upload = connect()
        offset = upload.GetOffset(capture.offset_request(), timeout=20, wait_for_ready=True)
        assert offset.offset_bytes == half
        receipt = put(upload, stream(capture, half))
        assert receipt.durability == upload_pb2.DURABILITY_DURABLE
        assert receipt.sha256_hex == capture.sha256_hex
        landing = server.data_dir / "landing"
        pcap = landing / identity.probe_id / "2024/05/06/000000000001.pcap"
        assert pcap.read_bytes() == capture.data

        again = put(upload, stream(capture))
        assert again.durability == upload_pb2.DURABILITY_ALREADY_DURABLE
        queue = Queue(QUEUE_NAME, connection=redis.Redis.from_url(redis_url))
        wait_for(lambda: queue.job_ids, 10, "the ingest job")
        assert queue.job_ids == [job_id_for(identity.probe_id, 1)]
        assert sorted(p.name for p in landing.rglob("*") if p.is_file()) == [
            "000000000001.json",
            "000000000001.pcap",
        ]
        engine = db.make_engine(db.sqlite_url(server.data_dir))
        try:
            with db.session_factory(engine)() as session:
                row = catalog.find(session, identity.probe_id, 1)
                assert row is not None and row.state == "queued"
        finally:
            engine.dispose()
    finally:
        for channel in channels:
            channel.close()
        server.stop()
