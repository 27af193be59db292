"""Fixtures with real parts: Redis, network namespaces, TLS gRPC. Each is used by a test of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.grpc_server import TlsGrpcServer, serve_tls
from support.netns import NetnsPair
from support.pki import CertAuthority, make_ca
from support.redis_server import RedisServer


@pytest.fixture(autouse=True)
def _clean_survey6_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees SURVEY6_* settings from the shell that started pytest."""
    for name in list(os.environ):
        if name.startswith("SURVEY6_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session on a free loopback port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis, running and empty at the start of the test."""
    import redis

    redis_server.start()  # a previous test may have stopped it to simulate an outage
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """Two namespaces joined by a veth pair, fd00::1/64 and fd00::2/64; removed afterwards."""
    pair = NetnsPair()
    try:
        pair.create()
        yield pair
    finally:
        pair.destroy()


@pytest.fixture(scope="session")
def tls_ca() -> CertAuthority:
    return make_ca()


@pytest.fixture
def grpc_tls_server(tls_ca: CertAuthority) -> Iterator[TlsGrpcServer]:
    """An in-process gRPC server on port 0 with a real TLS certificate from `tls_ca`."""
    with serve_tls(tls_ca) as server:
        yield server


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
