"""What the web UI needs from the running server, handed to :func:`create_app`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from sqlalchemy.orm import Session, sessionmaker

from survey6.server.fleet import Fleet
from survey6.server.setup import pki_dir


@dataclass(frozen=True)
class WebServices:
    """The server process's registry and live fleet, shared with the web UI (never copied)."""

    sessions: sessionmaker[Session]
    fleet: Fleet
    # Where the session key lives (``web-secret.key``) and the PKI the join command refers to.
    data_dir: Path
    # sha256:<hex> of the CA's SPKI, for the join commands.
    ca_cert_hash: str
    # HOST:PORT of the enrolment endpoint, for the join commands (asked when one is made: the
    # port may be bound after the web UI).
    join_address: Callable[[], str]
    # Jobs waiting in the ingest queue (Redis); raises when Redis cannot be asked.
    queue_depth: Callable[[], int] | None = field(default=None)


def default_join_address(data_dir: Path, enrol_port: int) -> str:
    """The server certificate's common name (its first server name) and the enrolment port."""
    certificate = x509.load_pem_x509_certificate((pki_dir(data_dir) / "server.crt").read_bytes())
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    host = str(names[0].value) if names else "localhost"
    return f"[{host}]:{enrol_port}" if ":" in host else f"{host}:{enrol_port}"
