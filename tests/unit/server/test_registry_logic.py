"""Tokens, commands, liveness and the CA against a real (temporary) SQLite registry."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy.orm import Session, sessionmaker

from survey6.server import liveness, tokens
from survey6.server.commands import queue_command
from survey6.server.enrolment import join
from survey6.server.errors import CommandError, EnrolmentError, TokenError, UnknownProbeError
from survey6.server.pki import CertificateAuthority
from survey6.server.registry import db
from survey6.server.registry.models import BootstrapToken, Probe, utcnow
from survey6.wire.v1 import control_pb2, enrolment_pb2


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(db.sqlite_url(tmp_path))
    db.upgrade(engine)
    yield db.session_factory(engine)
    engine.dispose()


def csr_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin-please")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_token_format_and_single_use(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        token = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=1)
    assert tokens.TOKEN_PATTERN.match(token)
    with sessions.begin() as s:
        assert tokens.consume_token(s, token) == token[:6]
        stored = s.get(BootstrapToken, token[:6])
        assert stored is not None and token[7:] not in stored.secret_sha256  # only a hash is kept
    with sessions.begin() as s, pytest.raises(TokenError, match="used up"):
        tokens.consume_token(s, token)


def test_expired_and_revoked_tokens(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        token = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=None)
        s.get(BootstrapToken, token[:6]).expires_at = utcnow() - dt.timedelta(seconds=1)  # type: ignore[union-attr]
    with sessions.begin() as s, pytest.raises(TokenError, match="expired"):
        tokens.consume_token(s, token)
    with sessions.begin() as s:
        other = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=None)
        tokens.revoke_token(s, other)
    with sessions.begin() as s, pytest.raises(TokenError, match="revoked"):
        tokens.consume_token(s, other)
    with sessions.begin() as s:
        assert {t.status(utcnow()) for t in tokens.list_tokens(s)} == {"expired", "revoked"}
        s.get(BootstrapToken, token[:6]).expires_at = utcnow() - dt.timedelta(days=2)  # type: ignore[union-attr]
    with sessions.begin() as s:
        assert [t.token_id for t in tokens.list_tokens(s)] == [other[:6]]  # long expired: cleaned up


@pytest.mark.parametrize(
    "bad", ["", "abcdef", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcde!", "a" * 1000]
)
def test_malformed_tokens(sessions: sessionmaker[Session], bad: str) -> None:
    with sessions.begin() as s, pytest.raises(TokenError, match="malformed"):
        tokens.consume_token(s, bad)


def test_bad_token_parameters(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        with pytest.raises(TokenError):
            tokens.create_token(s, ttl=dt.timedelta(0), usages=None)
        with pytest.raises(TokenError):
            tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=0)
        with pytest.raises(TokenError, match="no token"):
            tokens.revoke_token(s, "zzzzzz")


def test_join_assigns_the_id_and_ignores_the_requested_subject(sessions: sessionmaker[Session]) -> None:
    ca = CertificateAuthority.create("test CA")
    with sessions.begin() as s:
        token = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=None)
    request = enrolment_pb2.JoinRequest(token=token, csr_pem=csr_pem(), labels={"site": "x"})
    request.host.hostname = "probe-host"
    with sessions.begin() as s:
        enrolled = join(s, ca, request)
    cert = x509.load_pem_x509_certificate(enrolled.certificate.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == enrolled.probe.id
    assert cert.issuer == ca.cert.subject
    with sessions() as s:
        assert s.get(Probe, enrolled.probe.id) is not None


@pytest.mark.parametrize("csr", [b"garbage", b"", "rsa"])
def test_join_refuses_bad_csrs(sessions: sessionmaker[Session], csr: bytes | str) -> None:
    ca = CertificateAuthority.create("test CA")
    with sessions.begin() as s:
        token = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=None)
    pem = csr_pem(rsa.generate_private_key(65537, 2048)) if csr == "rsa" else csr
    with sessions.begin() as s, pytest.raises(EnrolmentError):
        join(s, ca, enrolment_pb2.JoinRequest(token=token, csr_pem=pem))  # type: ignore[arg-type]


def test_commands_are_validated(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        s.add(Probe(id="p-1", hostname="h", cert_serial="1", cert_not_after=utcnow()))
    with sessions.begin() as s:
        assert queue_command(s, "p-1", "suspend")
        assert queue_command(s, "p-1", "config-change", {"snaplen_bytes": 128})
        with pytest.raises(CommandError, match="unknown command"):
            queue_command(s, "p-1", "reboot")
        with pytest.raises(CommandError, match="config change keys"):
            queue_command(s, "p-1", "config-change", {"nonsense": 1})
        with pytest.raises(CommandError, match="bad config change"):
            queue_command(s, "p-1", "config-change", {"snaplen_bytes": "big"})
        with pytest.raises(UnknownProbeError):
            queue_command(s, "p-2", "suspend")


def test_liveness_states() -> None:
    now = utcnow()
    ago = lambda s: now - dt.timedelta(seconds=s)  # noqa: E731
    kwargs = {"stale_after_s": 10.0, "offline_after_s": 60.0}
    capturing = control_pb2.CAPTURE_STATE_CAPTURING
    assert liveness.liveness_state(now, ago(1), capturing, left=False, **kwargs) == "online"
    assert liveness.liveness_state(now, ago(11), capturing, left=False, **kwargs) == "stale"
    assert liveness.liveness_state(now, ago(61), capturing, left=False, **kwargs) == "offline"
    assert liveness.liveness_state(now, None, capturing, left=False, **kwargs) == "offline"
    suspended = control_pb2.CAPTURE_STATE_SUSPENDED
    assert liveness.liveness_state(now, ago(1), suspended, left=False, **kwargs) == "suspended"
    assert liveness.liveness_state(now, ago(1), capturing, left=True, **kwargs) == "left"


def test_capture_health_tells_dropping_from_capturing() -> None:
    def beat(dropped: int, state: int = control_pb2.CAPTURE_STATE_CAPTURING) -> control_pb2.HeartbeatRequest:
        request = control_pb2.HeartbeatRequest(capture_state=state)  # type: ignore[arg-type]
        request.interfaces.add(name="eth0", dropped_packets_total=dropped)
        return request

    assert liveness.capture_health(beat(5), beat(5)) == "capturing"
    assert liveness.capture_health(beat(6), beat(5)) == "dropping"
    assert liveness.capture_health(beat(0, control_pb2.CAPTURE_STATE_SPOOL_FULL), None) == "spool full"
