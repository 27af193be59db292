"""A web UI over a real registry (a temporary SQLite) and a real in-memory fleet, used through Flask's
test client; probes join through the real enrolment code with a real token and CSR."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from survey6.server import catalog, tokens
from survey6.server.enrolment import join
from survey6.server.fleet import Fleet
from survey6.server.pki import CertificateAuthority
from survey6.server.registry import db
from survey6.server.registry.models import utcnow
from survey6.server.settings import LivenessSettings, ServerSettings
from survey6.server.setup import initialise, pki_dir
from survey6.server.web import WebSettings, create_app
from survey6.server.web.services import WebServices, default_join_address
from survey6.server.web.users import add_user
from survey6.wire.v1 import capture_pb2, control_pb2, enrolment_pb2

ADMIN = ("admin", "admin-password-1")
VIEWER = ("watcher", "viewer-password-1")
ENROL_PORT = 32000
_CSRF_FIELD = re.compile(r'<input type="hidden" name="csrf_token" value="([^"]+)">')


class SettableClock:
    """The fleet's clock: the real time, unless a test sets one (to space heartbeats apart)."""

    def __init__(self) -> None:
        self.at: dt.datetime | None = None

    def __call__(self) -> dt.datetime:
        return self.at or utcnow()


@dataclass
class WebEnv:
    data_dir: Path
    sessions: sessionmaker[Session]
    fleet: Fleet
    clock: SettableClock
    ca: CertificateAuthority
    app: Flask = field(init=False)

    def __post_init__(self) -> None:
        self.app = self.make_app(WebSettings())

    def make_app(self, web: WebSettings) -> Flask:
        return create_app(self.services(), ServerSettings(data_dir=self.data_dir), web)

    def services(self) -> WebServices:
        return WebServices(
            sessions=self.sessions,
            fleet=self.fleet,
            data_dir=self.data_dir,
            ca_cert_hash=self.ca.cert_hash,
            join_address=lambda: default_join_address(self.data_dir, ENROL_PORT),
        )

    def enrol(self, hostname: str = "probe-host", labels: dict[str, str] | None = None) -> str:
        """Joins a probe as the enrolment service does; returns its id."""
        with self.sessions.begin() as session:
            token = tokens.create_token(session, ttl=dt.timedelta(hours=1), usages=1)
        request = enrolment_pb2.JoinRequest(
            token=token,
            host=capture_pb2.HostFacts(hostname=hostname),
            labels=labels or {"site": "test"},
            csr_pem=csr_pem(),
        )
        with self.sessions.begin() as session:
            enrolled = join(session, self.ca, request)
        self.fleet.add_enrolled(enrolled.probe)
        return enrolled.probe.id

    def client(self, address: str = "127.0.0.1") -> FlaskClient:
        """A client without a session, coming from `address`."""
        client = self.app.test_client()
        client.environ_base["REMOTE_ADDR"] = address
        return client

    def logged_in(self, user: tuple[str, str], address: str = "127.0.0.1") -> tuple[FlaskClient, str]:
        """A client with a session of `user`, and that session's CSRF token."""
        client = self.client(address)
        return client, log_in(client, user)

    def heartbeat(self, probe_id: str, **fields: Any) -> list[control_pb2.Command]:
        """A heartbeat as the control service hands it to the fleet, then the write-behind flush."""
        commands = self.fleet.heartbeat(probe_id, heartbeat_request(**fields))
        self.fleet.flush()
        return commands

    def land(
        self, probe_id: str, sequence: int, *, size: int = 1000, state: str = "stored", detail: str = ""
    ) -> None:
        """A file as the upload store records it: received, then stored, then (maybe) further on."""
        metadata = capture_pb2.CaptureMetadata(
            sequence=sequence, packets=10, first_packet_time_ns=1_700_000_000 * 10**9, last_packet_time_ns=0
        )
        with self.sessions.begin() as session:
            row = catalog.add_received(
                session,
                probe_id,
                metadata,
                sha256_hex="ab" * 32,
                size_bytes=size,
                landing_path=f"{sequence}.pcap",
            )
            catalog.mark_stored(session, row.id)
            if state != catalog.STORED:
                catalog.set_state(session, probe_id, sequence, state, detail)


def heartbeat_request(
    *,
    state: control_pb2.CaptureState.ValueType = control_pb2.CAPTURE_STATE_CAPTURING,
    captured: int = 1000,
    received: int = 1010,
    dropped: int = 10,
    rate: float = 50.0,
    backlog_files: int = 2,
    backlog_bytes: int = 3 << 20,
    utilisation: float = 0.25,
    last_upload_ns: int = 0,
) -> control_pb2.HeartbeatRequest:
    return control_pb2.HeartbeatRequest(
        software_version="test",
        capture_state=state,
        interfaces=[
            control_pb2.InterfaceHealth(
                name="eth0",
                received_packets_total=received,
                dropped_packets_total=dropped,
                captured_packets_total=captured,
                captured_packets_per_s=rate,
                link_utilisation_ratio=utilisation,
            )
        ],
        spool=control_pb2.SpoolHealth(backlog_files=backlog_files, backlog_bytes=backlog_bytes),
        upload=control_pb2.UploadHealth(last_upload_ns=last_upload_ns),
    )


def csr_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def csrf_of(client: FlaskClient, page: str) -> str:
    """The session's CSRF token, as a page carries it."""
    match = _CSRF_FIELD.search(client.get(page).get_data(as_text=True))
    assert match, f"{page} carries no CSRF token"
    return match.group(1)


def log_in(client: FlaskClient, user: tuple[str, str]) -> str:
    """Logs in; returns the CSRF token of the new session."""
    token = csrf_of(client, "/login")
    response = client.post("/login", data={"username": user[0], "password": user[1], "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)
    return csrf_of(client, "/probes")


@contextmanager
def open_web_env(data_dir: Path) -> Iterator[WebEnv]:
    """A freshly initialised data directory with an admin and a viewer, its registry and fleet."""
    initialise(data_dir, server_names=["localhost"], admin_password=ADMIN[1])
    engine = db.make_engine(db.sqlite_url(data_dir))
    sessions = db.session_factory(engine)
    with sessions.begin() as session:
        add_user(session, VIEWER[0], VIEWER[1], "viewer")
    clock = SettableClock()
    fleet = Fleet(sessions, LivenessSettings(), clock)
    fleet.load()
    try:
        yield WebEnv(data_dir, sessions, fleet, clock, CertificateAuthority.load(pki_dir(data_dir)))
    finally:
        engine.dispose()
