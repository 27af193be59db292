"""An in-process server (real gRPC, real TLS, real Redis) and probes enrolled with it by a real Join."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.upload_client import ProbeIdentity, UploadServer
from survey6.server.app import ServerApp
from survey6.server.settings import QueueSettings, ServerSettings, UploadSettings
from survey6.server.setup import initialise
from survey6.wire.v1 import upload_pb2_grpc

DRAIN_INTERVAL_S = 0.2


@pytest.fixture
def make_server(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., UploadServer]]:
    """Starts a server with the given upload settings; stopped at the end of the test."""
    started: list[UploadServer] = []

    def start(**uploads: Any) -> UploadServer:
        data_dir = tmp_path / f"server{len(started)}"
        initialise(data_dir, server_names=["localhost", "127.0.0.1"], admin_password="not-used-here")
        settings = ServerSettings(
            data_dir=data_dir,
            grpc_listen="127.0.0.1:0",
            enrol_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            redis_url=redis_url,
            uploads=UploadSettings(**uploads),
            queue=QueueSettings(drain_interval_s=DRAIN_INTERVAL_S),
        )
        app = ServerApp(settings)
        app.start()
        server = UploadServer(app, redis_url)
        started.append(server)
        return server

    yield start
    for server in started:
        for channel in server.channels:
            channel.close()
        server.app.stop()


@pytest.fixture
def server(make_server: Callable[..., UploadServer]) -> UploadServer:
    return make_server()


@pytest.fixture
def probe(server: UploadServer) -> ProbeIdentity:
    return server.enrol()


@pytest.fixture
def upload(server: UploadServer, probe: ProbeIdentity) -> upload_pb2_grpc.UploadStub:
    return server.stub(probe)
