"""``survey6-server init``: the CA, the server's TLS certificate, the registry and an admin account."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher

from survey6.server.errors import AlreadyInitialisedError
from survey6.server.pki import CertificateAuthority, default_server_names, write_private_key
from survey6.server.registry import db
from survey6.server.registry.models import WebUser

ADMIN_USERNAME = "admin"
GENERATED_PASSWORD_BYTES = 15  # 20 URL-safe characters


@dataclass(frozen=True)
class Initialised:
    ca_cert_hash: str
    admin_username: str
    admin_password: str | None  # None when the caller supplied it
    server_names: list[str]


def pki_dir(data_dir: Path) -> Path:
    return data_dir / "pki"


def database_url(data_dir: Path, configured: str) -> str:
    return configured or db.sqlite_url(data_dir)


def initialise(
    data_dir: Path,
    *,
    database: str = "",
    server_names: list[str] | None = None,
    admin_password: str | None = None,
) -> Initialised:
    """Creates everything a server needs in `data_dir`.

    Raises:
        AlreadyInitialisedError: a CA already exists there (a new one would orphan every probe).
    """
    pki = pki_dir(data_dir)
    if (pki / "ca.key").exists():
        raise AlreadyInitialisedError(
            f"{data_dir} is already initialised (it has a CA); refusing to replace it"
        )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = server_names or default_server_names()
    ca = CertificateAuthority.create(f"survey6 CA ({names[0]})")
    ca.save(pki)
    server_key, server_cert = ca.issue_server_certificate(names)
    write_private_key(pki / "server.key", server_key)
    (pki / "server.crt").write_bytes(server_cert)

    engine = db.make_engine(database_url(data_dir, database))
    try:
        db.upgrade(engine)
        password = admin_password or secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
        with db.session_factory(engine).begin() as session:
            if session.get(WebUser, ADMIN_USERNAME) is None:
                session.add(
                    WebUser(
                        username=ADMIN_USERNAME, password_hash=PasswordHasher().hash(password), role="admin"
                    )
                )
    finally:
        engine.dispose()
    return Initialised(
        ca_cert_hash=ca.cert_hash,
        admin_username=ADMIN_USERNAME,
        admin_password=None if admin_password else password,
        server_names=names,
    )
