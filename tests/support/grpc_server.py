"""An in-process gRPC server on port 0 with real TLS, serving the standard health service."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from support.pki import CertAuthority, Issued

LISTEN_HOST = "localhost"


@dataclass
class TlsGrpcServer:
    server: grpc.Server
    port: int
    ca: CertAuthority
    health: health.HealthServicer

    @property
    def target(self) -> str:
        return f"{LISTEN_HOST}:{self.port}"

    def channel(self, client: Issued | None = None, ca_pem: bytes | None = None) -> grpc.Channel:
        """A TLS channel trusting `ca_pem` (the server's CA by default), with an optional client cert."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem or self.ca.cert_pem,
            private_key=client.key_pem if client else None,
            certificate_chain=client.cert_pem if client else None,
        )
        return grpc.secure_channel(self.target, credentials)


@contextmanager
def serve_tls(ca: CertAuthority, *, require_client_cert: bool = False) -> Iterator[TlsGrpcServer]:
    issued = ca.issue("localhost", server=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(issued.key_pem, issued.cert_pem)],
        root_certificates=ca.cert_pem if require_client_cert else None,
        require_client_auth=require_client_cert,
    )
    port = server.add_secure_port(f"{LISTEN_HOST}:0", credentials)
    server.start()
    try:
        yield TlsGrpcServer(server=server, port=port, ca=ca, health=health_servicer)
    finally:
        server.stop(grace=None).wait(5)
