"""The client key of the Join limiter (survey6.server.attempts) on peer strings taken from a live
in-process gRPC server: whatever gRPC reports for a connection over IPv4, IPv6 or a unix socket,
two connections of one client count as one client. The limiter's window and totals are tested in
tests/integration/security/test_token_guessing.py."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from survey6.server.attempts import client_key

METHOD = "/survey6.test.Peer/Echo"
DEADLINE_S = 10.0
# Channels otherwise share connections through gRPC's global subchannel pool.
NEW_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class PeerRecorder:
    """Remembers the peer string of every call it serves."""

    peers: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.peers.append(context.peer())
        return request


@dataclass
class PeerServer:
    recorder: PeerRecorder
    targets: dict[str, str]  # transport -> a target reaching it

    def peers_of(self, transport: str, connections: int) -> list[str]:
        """The peer strings of `connections` calls, each on a new channel (so a new connection)."""
        start = len(self.recorder.peers)
        for _ in range(connections):
            with grpc.insecure_channel(self.targets[transport], NEW_CONNECTION) as channel:
                echo: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
                assert echo(b"ping", timeout=DEADLINE_S) == b"ping"
        return self.recorder.peers[start:]


@pytest.fixture(scope="module")
def peer_server() -> Iterator[PeerServer]:
    recorder = PeerRecorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "survey6.test.Peer", {"Echo": grpc.unary_unary_rpc_method_handler(recorder.echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    # A short directory: a unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="s6peer") as directory:
        socket_path = Path(directory) / "peer.sock"
        targets = {
            "ipv4": f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}",
            "ipv6": f"[::1]:{server.add_insecure_port('[::1]:0')}",
            "unix": f"unix:{socket_path}",
        }
        server.add_insecure_port(targets["unix"])
        server.start()
        try:
            yield PeerServer(recorder, targets)
        finally:
            server.stop(grace=None).wait(5)


@pytest.mark.parametrize(
    "transport, client",
    [("ipv4", "127.0.0.1"), ("ipv6", "::/64"), ("unix", "unix")],
)
def test_connections_of_one_client_count_as_that_client(
    peer_server: PeerServer, transport: str, client: str
) -> None:
    peers = peer_server.peers_of(transport, 3)
    assert all(peer.startswith(f"{transport}:") for peer in peers), peers
    if transport != "unix":
        assert len(set(peers)) == 3, peers  # each connection its own source port
    assert {client_key(peer, 64) for peer in peers} == {client}


def test_an_ipv6_client_counts_by_the_prefix_asked_for(peer_server: PeerServer) -> None:
    (peer,) = peer_server.peers_of("ipv6", 1)
    assert client_key(peer, 128) == "::1/128"
    assert client_key(peer, 48) == "::/48"


def test_the_peer_strings_recorded_in_the_integration_tests_are_what_grpc_writes(
    peer_server: PeerServer,
) -> None:
    # test_token_guessing.py checks the key of hand-written peers in gRPC's spelling; if a gRPC
    # release spelled them differently, this says so before the limiter silently counts nothing.
    (ipv4,) = peer_server.peers_of("ipv4", 1)
    (ipv6,) = peer_server.peers_of("ipv6", 1)
    (unix,) = peer_server.peers_of("unix", 1)
    assert ipv4.rpartition(":")[0] == "ipv4:127.0.0.1"
    assert ipv6.rpartition(":")[0] == "ipv6:%5B::1%5D"
    assert unix == "unix:"
