"""A token's use count holds under parallel joins, against a real server process over real TLS."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.fleet_processes import ServerProcess
from survey6.wire.v1 import enrolment_pb2, enrolment_pb2_grpc

JOINS = 20
USAGES = 5
JOIN_DEADLINE_S = 60.0


def csr_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parallel")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_parallel_joins_use_a_token_exactly_as_often_as_allowed(server: ServerProcess) -> None:
    token = server.token("--usages", str(USAGES))
    ca_pem = (server.data_dir / "pki" / "ca.crt").read_bytes()
    requests = [enrolment_pb2.JoinRequest(token=token, csr_pem=csr_pem()) for _ in range(JOINS)]
    start = threading.Barrier(JOINS)

    def join(request: enrolment_pb2.JoinRequest) -> str:
        # A channel (and TLS connection) each, all sent at once: joins in flight together.
        with grpc.secure_channel(server.enrol_address, grpc.ssl_channel_credentials(ca_pem)) as channel:
            stub = enrolment_pb2_grpc.EnrolmentStub(channel)
            grpc.channel_ready_future(channel).result(timeout=JOIN_DEADLINE_S)
            start.wait()
            try:
                return stub.Join(request, timeout=JOIN_DEADLINE_S).probe_id
            except grpc.RpcError as exc:
                return f"{exc.code().name}: {exc.details()}"

    with ThreadPoolExecutor(JOINS) as pool:
        outcomes = list(pool.map(join, requests))
    joined = [o for o in outcomes if o.startswith("p-")]
    refused = [o for o in outcomes if not o.startswith("p-")]
    assert len(joined) == USAGES, outcomes
    assert set(refused) == {f"PERMISSION_DENIED: token refused: token {token[:6]} has been used up"}
    assert sorted(p["probe_id"] for p in server.probes()) == sorted(joined)
    listed = json.loads(server.cli("token", "list", "--json").stdout)
    assert (listed[0]["usages_left"], listed[0]["used_count"]) == (0, USAGES)
