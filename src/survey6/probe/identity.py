"""The probe's identity: joining a server the way a node joins with ``kubeadm join``, and what it
keeps afterwards (key, certificate, CA, probe id) in ``<state-dir>/identity/``, readable by the
probe's user only.

Joining pins the server's CA before any secret leaves the host: the server's certificate chain is
read without verification, the CA certificate in it must hash (SPKI, SHA-256) to the
``--ca-cert-hash`` the operator copied from the server, and only then is the token sent, over TLS
verified against that CA.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from survey6.common.files import write_atomically
from survey6.common.tls import CA_HASH_PREFIX, spki_sha256
from survey6.probe import hostinfo
from survey6.probe.errors import CaHashMismatchError, JoinError, NotEnrolledError
from survey6.wire.v1 import enrolment_pb2, enrolment_pb2_grpc

CONNECT_TIMEOUT_S = 10.0
JOIN_DEADLINE_S = 30.0
PRIVATE_FILE_MODE = 0o600


@dataclass
class Identity:
    probe_id: str
    server_host: str
    enrol_port: int
    control_port: int
    heartbeat_interval_ms: int
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def control_target(self) -> str:
        return join_host_port(self.server_host, self.control_port)


@dataclass(frozen=True)
class Credentials:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


def split_host_port(target: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` → (host, port).

    Raises:
        JoinError: not HOST:PORT.
    """
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise JoinError(f"server address {target!r} is not HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def identity_dir(state_dir: Path) -> Path:
    return state_dir / "identity"


def fetch_pinned_ca(host: str, port: int, ca_cert_hash: str) -> bytes:
    """Reads the server's certificate chain (unverified) and returns the PEM of the certificate in it
    whose SPKI hash is `ca_cert_hash`.

    Raises:
        JoinError: the server cannot be reached or speaks no TLS.
        CaHashMismatchError: no certificate in the chain matches the pin.
    """
    if not ca_cert_hash.startswith(CA_HASH_PREFIX) or len(ca_cert_hash) != len(CA_HASH_PREFIX) + 64:
        raise CaHashMismatchError(f"--ca-cert-hash must look like {CA_HASH_PREFIX}<64 hex digits>")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # nothing is trusted from this connection but the pinned hash
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                chain = _unverified_chain(tls)
    except (OSError, ssl.SSLError) as exc:
        raise JoinError(f"cannot reach the server at {join_host_port(host, port)}: {exc}") from exc
    for der in chain:
        if spki_sha256(der) == ca_cert_hash.lower():
            return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    raise CaHashMismatchError(
        f"the server at {join_host_port(host, port)} does not present a CA with hash {ca_cert_hash}; "
        "the token was not sent"
    )


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:  # Python 3.13+: DER bytes
        return [bytes(der) for der in public()]
    # Python 3.10-3.12 have the same method privately, returning certificate objects.
    import _ssl

    private = tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    return [certificate.public_bytes(_ssl.ENCODING_DER) for certificate in private or []]


def join(
    target: str,
    *,
    token: str,
    ca_cert_hash: str,
    state_dir: Path,
    labels: dict[str, str],
    interfaces: list[str],
) -> Identity:
    """Enrols with the server and stores the identity.

    Raises:
        CaHashMismatchError: the server's CA is not the pinned one (no token sent).
        JoinError: the server refused the token or could not be reached.
    """
    host, port = split_host_port(target)
    ca_pem = fetch_pinned_ca(host, port, ca_cert_hash)
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .sign(key, hashes.SHA256())
    )
    request = enrolment_pb2.JoinRequest(
        token=token,
        host=hostinfo.host_facts(interfaces),
        labels=labels,
        csr_pem=csr.public_bytes(serialization.Encoding.PEM),
    )
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca_pem)) as channel:
        try:
            response = enrolment_pb2_grpc.EnrolmentStub(channel).Join(request, timeout=JOIN_DEADLINE_S)
        except grpc.RpcError as exc:
            raise JoinError(f"join refused by {target}: {exc.details()}") from exc
    identity = Identity(
        probe_id=response.probe_id,
        server_host=host,
        enrol_port=port,
        control_port=response.control_port,
        heartbeat_interval_ms=response.heartbeat_interval_ms,
        labels=labels,
    )
    save(state_dir, identity, key, response.client_certificate_pem, ca_pem)
    return identity


def save(
    state_dir: Path, identity: Identity, key: ec.EllipticCurvePrivateKey, cert_pem: bytes, ca_pem: bytes
) -> None:
    directory = identity_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for name, data in (("probe.key", key_pem), ("probe.crt", cert_pem), ("ca.crt", ca_pem)):
        write_atomically(directory / name, data, mode=PRIVATE_FILE_MODE)
    write_atomically(directory / "identity.json", json.dumps(asdict(identity), indent=2).encode())


def load(state_dir: Path) -> tuple[Identity, Credentials]:
    """The stored identity.

    Raises:
        NotEnrolledError: the probe never joined (or left).
    """
    directory = identity_dir(state_dir)
    try:
        raw = json.loads((directory / "identity.json").read_text())
        identity = Identity(**raw)
        credentials = Credentials(
            key_pem=(directory / "probe.key").read_bytes(),
            cert_pem=(directory / "probe.crt").read_bytes(),
            ca_pem=(directory / "ca.crt").read_bytes(),
        )
    except FileNotFoundError as exc:
        raise NotEnrolledError(
            f"this probe has not joined a server (no identity in {directory}): run `survey6-probe join`"
        ) from exc
    except (OSError, ValueError, TypeError) as exc:
        raise NotEnrolledError(f"the identity in {directory} is unreadable: {exc}") from exc
    return identity, credentials


def forget(state_dir: Path) -> None:
    """Removes the identity after leaving: the key is of no use any more."""
    directory = identity_dir(state_dir)
    for name in ("probe.key", "probe.crt", "identity.json", "ca.crt"):
        (directory / name).unlink(missing_ok=True)
