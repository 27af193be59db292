"""Joining: a bootstrap token authenticates a CSR; the server assigns the probe id and signs."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from google.protobuf import json_format
from sqlalchemy.orm import Session

from survey6.server.errors import EnrolmentError
from survey6.server.pki import CertificateAuthority, IssuedCertificate
from survey6.server.registry.models import Event, Probe
from survey6.server.tokens import TOKEN_PATTERN, consume_token
from survey6.wire.v1 import enrolment_pb2

MAX_LABELS = 64
MAX_LABEL_CHARS = 256


@dataclass(frozen=True)
class Enrolled:
    probe: Probe
    certificate: IssuedCertificate


def token_id_of(token: str) -> str:
    """The id of a token, for logs; ``malformed`` when it is not a token (it may hold a secret)."""
    match = TOKEN_PATTERN.match(token)
    return match.group(1) if match else "malformed"


def new_probe_id() -> str:
    return f"p-{secrets.token_hex(6)}"


def join(session: Session, ca: CertificateAuthority, request: enrolment_pb2.JoinRequest) -> Enrolled:
    """Consumes the token, signs the CSR and registers the probe (the caller commits).

    Raises:
        TokenError: the token cannot be used.
        EnrolmentError: bad labels or CSR.
    """
    token_id = consume_token(session, request.token)
    labels = dict(request.labels)
    if len(labels) > MAX_LABELS or any(
        not k or len(k) > MAX_LABEL_CHARS or len(v) > MAX_LABEL_CHARS for k, v in labels.items()
    ):
        raise EnrolmentError(f"labels: at most {MAX_LABELS}, keys non-empty, {MAX_LABEL_CHARS} chars each")
    probe_id = new_probe_id()
    certificate = ca.sign_probe_csr(request.csr_pem, probe_id)
    hostname = request.host.hostname[:255] or "unknown"
    probe = Probe(
        id=probe_id,
        hostname=hostname,
        labels=labels,
        host_facts=json_format.MessageToDict(request.host, preserving_proto_field_name=True),
        cert_serial=format(certificate.serial, "x"),
        cert_not_after=certificate.not_after,
        state="offline",
    )
    session.add(probe)
    session.flush()  # the event below refers to the probe
    session.add(
        Event(probe_id=probe_id, kind="enrolled", detail=f"joined with token {token_id} from {hostname}")
    )
    return Enrolled(probe, certificate)
