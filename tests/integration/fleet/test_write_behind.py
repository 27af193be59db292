"""Heartbeats written behind by a real server process: after a stop (SIGTERM, final flush) the
registry holds the time of every probe's last acknowledged heartbeat, health reports and history
under the right probe only, and its state changes in order, for probes each with their own
identity and mTLS connection."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.fleet_processes import ServerProcess
from survey6.wire.v1 import control_pb2, control_pb2_grpc, enrolment_pb2, enrolment_pb2_grpc

PROBES = 12
HEARTBEATS = 6
DEADLINE_S = 30.0


def enrol(server: ServerProcess, ca_pem: bytes) -> list[tuple[str, bytes, bytes]]:
    """(probe id, key PEM, certificate PEM) of PROBES probes joined with one token."""
    token = server.token("--usages", str(PROBES))
    identities = []
    with grpc.secure_channel(server.enrol_address, grpc.ssl_channel_credentials(ca_pem)) as channel:
        stub = enrolment_pb2_grpc.EnrolmentStub(channel)
        for _ in range(PROBES):
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p")]))
                .sign(key, hashes.SHA256())
            )
            response = stub.Join(
                enrolment_pb2.JoinRequest(token=token, csr_pem=csr.public_bytes(serialization.Encoding.PEM)),
                timeout=DEADLINE_S,
            )
            key_pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            identities.append((response.probe_id, key_pem, response.client_certificate_pem))
    return identities


def heartbeats(server: ServerProcess, ca_pem: bytes, identity: tuple[str, bytes, bytes]) -> dt.datetime:
    """Sends HEARTBEATS numbered heartbeats naming the probe; returns when the last one was sent."""
    probe_id, key_pem, cert_pem = identity
    credentials = grpc.ssl_channel_credentials(ca_pem, private_key=key_pem, certificate_chain=cert_pem)
    with grpc.secure_channel(server.control_address, credentials) as channel:
        stub = control_pb2_grpc.ProbeControlStub(channel)
        for seq in range(1, HEARTBEATS + 1):
            request = control_pb2.HeartbeatRequest(capture_state=control_pb2.CAPTURE_STATE_CAPTURING)
            request.interfaces.add(name=f"own-{probe_id}", captured_packets_total=seq)
            sent = dt.datetime.now(dt.UTC)
            stub.Heartbeat(request, timeout=DEADLINE_S)
    return sent


def test_every_heartbeat_lands_under_its_own_probe_after_a_stop(server: ServerProcess) -> None:
    ca_pem = (server.data_dir / "pki" / "ca.crt").read_bytes()
    identities = enrol(server, ca_pem)
    with ThreadPoolExecutor(PROBES) as pool:
        last_sent = list(pool.map(lambda i: heartbeats(server, ca_pem, i), identities))
    server.stop()  # SIGTERM: the final flush writes what the last round had not
    with sqlite3.connect(server.data_dir / "registry.sqlite3") as db:
        rows = {
            probe_id: (state, dt.datetime.fromisoformat(at).replace(tzinfo=dt.UTC), json.loads(health))
            for probe_id, state, at, health in db.execute(
                "SELECT id, state, last_heartbeat_at, last_health FROM probes"
            )
        }
        events = db.execute(
            "SELECT probe_id, old_state, new_state, at FROM events WHERE kind = 'state' ORDER BY id"
        ).fetchall()
        samples = db.execute("SELECT probe_id, captured_packets_total FROM heartbeat_samples").fetchall()
    assert len(rows) == PROBES
    for (probe_id, _, _), sent in zip(identities, last_sent, strict=True):
        state, at, health = rows[probe_id]
        assert at >= sent  # the last heartbeat was recorded (when it arrived, on the same clock)
        interface = health["interfaces"][0]  # the report sampled with the history
        assert interface["name"] == f"own-{probe_id}"
        assert 1 <= int(interface["captured_packets_total"]) <= HEARTBEATS
        assert state == "online"
        own = [e for e in events if e[0] == probe_id]
        assert [(e[1], e[2]) for e in own][:1] == [("offline", "online")]
        assert [e[3] for e in own] == sorted(e[3] for e in own)  # written in the order they happened
    # every probe has history (its first flush is sampled), only of heartbeats it sent
    by_probe = _group(samples)
    assert set(by_probe) == {i[0] for i in identities}
    assert all(1 <= min(seqs) and max(seqs) <= HEARTBEATS for seqs in by_probe.values())


def _group(rows: list[tuple[str, int]]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for probe_id, seq in rows:
        grouped.setdefault(probe_id, []).append(int(seq))
    return grouped
