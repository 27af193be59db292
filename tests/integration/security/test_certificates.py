"""Expired, not-yet-valid, foreign and left probes' certificates are refused on every RPC of the
control port (probe control and uploads): the real server, certificates signed with its real CA key."""

from __future__ import annotations

import datetime as dt

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from integration.security.secure_server import SecureServer
from support.pki import make_ca
from support.upload_client import ProbeIdentity, make_capture, put, status_of, stream
from survey6.wire.v1 import control_pb2, upload_pb2

NOW = dt.datetime.now(dt.UTC)
RPCS = ("Heartbeat", "AcknowledgeCommand", "Leave", "GetOffset", "Put")


def certificate(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    probe: ProbeIdentity,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    serial: int | None = None,
) -> bytes:
    """A client certificate for the probe's own key, named and numbered like its real one (unless
    `serial` says otherwise): only the validity or the issuer differ."""
    real = x509.load_pem_x509_certificate(probe.cert_pem)
    key = serialization.load_pem_private_key(probe.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(real.serial_number if serial is None else serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def credentials(
    probe: ProbeIdentity, cert_pem: bytes, key_pem: bytes | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        probe.ca_pem, private_key=key_pem or probe.key_pem, certificate_chain=cert_pem
    )


def outcomes(server: SecureServer, creds: grpc.ChannelCredentials) -> dict[str, tuple[grpc.StatusCode, str]]:
    """Every RPC of the control port with these credentials: its status and details."""
    control, upload = server.control(creds), server.uploads(creds)
    capture = make_capture(1)
    ack = control_pb2.CommandAck(command_id="any", outcome=control_pb2.COMMAND_OUTCOME_SUCCEEDED)
    calls = {
        "Heartbeat": lambda: control.Heartbeat(control_pb2.HeartbeatRequest(), timeout=10),
        "AcknowledgeCommand": lambda: control.AcknowledgeCommand(ack, timeout=10),
        "Leave": lambda: control.Leave(control_pb2.LeaveRequest(reason="test"), timeout=10),
        "GetOffset": lambda: upload.GetOffset(capture.offset_request(), timeout=10),
        "Put": lambda: put(upload, stream(capture)),
    }
    assert tuple(calls) == RPCS
    return {name: status_of(call) for name, call in calls.items()}


def assert_all_refused(
    server: SecureServer, creds: grpc.ChannelCredentials, code: grpc.StatusCode, reason: str = ""
) -> None:
    before = server.landed_files(), sorted(server.receiving.rglob("*"))
    for rpc, (got, details) in outcomes(server, creds).items():
        assert got == code, (rpc, got, details)
        assert reason in details, (rpc, details)
    assert (server.landed_files(), sorted(server.receiving.rglob("*"))) == before


def assert_still_enrolled(server: SecureServer, probe: ProbeIdentity) -> None:
    """The refusals left the probe as it was: its real certificate still works."""
    server.control(probe.credentials()).Heartbeat(control_pb2.HeartbeatRequest(), timeout=10)
    assert put(server.uploads(probe.credentials()), stream(make_capture(1))).durability == (
        upload_pb2.DURABILITY_DURABLE
    )


def test_an_expired_certificate_of_an_enrolled_probe_is_refused(server: SecureServer) -> None:
    probe = server.join()
    ca = server.app.ca
    expired = certificate(
        ca.key,
        ca.cert.subject,
        probe,
        not_before=NOW - dt.timedelta(days=2),
        not_after=NOW - dt.timedelta(days=1),
    )
    # The TLS handshake refuses it: the call never reaches the servicer.
    assert_all_refused(server, credentials(probe, expired), grpc.StatusCode.UNAVAILABLE)
    assert_still_enrolled(server, probe)


def test_a_certificate_not_yet_valid_is_refused(server: SecureServer) -> None:
    probe = server.join()
    ca = server.app.ca
    future = certificate(
        ca.key,
        ca.cert.subject,
        probe,
        not_before=NOW + dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=2),
    )
    assert_all_refused(server, credentials(probe, future), grpc.StatusCode.UNAVAILABLE)
    assert_still_enrolled(server, probe)


def test_a_certificate_of_a_foreign_ca_is_refused_even_naming_a_probe(server: SecureServer) -> None:
    probe = server.join()
    stranger = make_ca(server.app.ca.cert.subject.rfc4514_string().removeprefix("CN="))  # even the same name
    forged = certificate(
        stranger.key,
        stranger.cert.subject,
        probe,
        not_before=NOW - dt.timedelta(hours=1),
        not_after=NOW + dt.timedelta(days=1),
    )
    assert_all_refused(server, credentials(probe, forged), grpc.StatusCode.UNAVAILABLE)
    assert_still_enrolled(server, probe)


def test_a_certificate_of_this_ca_that_names_no_probe_is_refused(server: SecureServer) -> None:
    probe = server.join()
    ca = server.app.ca
    unknown = certificate(
        ca.key,
        ca.cert.subject,
        probe,
        not_before=NOW - dt.timedelta(hours=1),
        not_after=NOW + dt.timedelta(days=1),
        serial=x509.random_serial_number(),
    )
    assert_all_refused(
        server, credentials(probe, unknown), grpc.StatusCode.PERMISSION_DENIED, "belongs to no enrolled probe"
    )
    assert_still_enrolled(server, probe)


def test_the_server_certificate_is_no_client_certificate(server: SecureServer) -> None:
    pki = server.app.settings.data_dir / "pki"
    probe = server.join()
    creds = credentials(probe, (pki / "server.crt").read_bytes(), (pki / "server.key").read_bytes())
    # Signed by this CA, but for serverAuth only: the handshake refuses it as a client's.
    assert_all_refused(server, creds, grpc.StatusCode.UNAVAILABLE)
    assert_still_enrolled(server, probe)


def test_the_certificate_of_a_probe_that_left_is_refused_everywhere(server: SecureServer) -> None:
    probe = server.join()
    put(server.uploads(probe.credentials()), stream(make_capture(1), 0, 1000))  # a part it leaves behind
    server.control(probe.credentials()).Leave(control_pb2.LeaveRequest(reason="decommissioned"), timeout=10)
    landed, parts = server.landed_files(), sorted(server.receiving.rglob("*"))
    for rpc, (code, details) in outcomes(server, probe.credentials()).items():
        assert code == grpc.StatusCode.PERMISSION_DENIED, (rpc, code, details)
        assert f"probe {probe.probe_id} has left" in details, rpc
    assert server.landed_files() == landed and sorted(server.receiving.rglob("*")) == parts
    # Still within its validity, and signed by this CA: only the registry says no.
    cert = x509.load_pem_x509_certificate(probe.cert_pem)
    assert cert.not_valid_after_utc > NOW and cert.issuer == server.app.ca.cert.subject
