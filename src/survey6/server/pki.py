"""The server's certificate authority: created at init, signs the server's TLS certificate and
every probe's client certificate from its CSR.

Keys are ECDSA P-256. Files in ``<data-dir>/pki/``: ``ca.key`` and ``server.key`` (0600),
``ca.crt`` and ``server.crt``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from survey6.common.tls import spki_sha256
from survey6.server.errors import EnrolmentError, NotInitialisedError

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_CERT_VALIDITY = dt.timedelta(days=825)
PROBE_CERT_VALIDITY = dt.timedelta(days=365)
CLOCK_SKEW_ALLOWANCE = dt.timedelta(minutes=5)  # certificates start a little in the past
KEY_FILE_MODE = 0o600


@dataclass(frozen=True)
class IssuedCertificate:
    cert_pem: bytes
    serial: int
    not_after: dt.datetime


class CertificateAuthority:
    """The CA key and certificate, loaded from the data directory."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def cert_hash(self) -> str:
        """The pin a probe checks: ``sha256:<hex of the CA's SubjectPublicKeyInfo>``."""
        return spki_sha256(self.cert_pem)

    @classmethod
    def create(cls, name: str) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, pki_dir: Path) -> CertificateAuthority:
        try:
            key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
        except FileNotFoundError as exc:
            raise NotInitialisedError(
                f"no CA in {pki_dir}: run `survey6-server init` for this data directory first"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise NotInitialisedError(f"{pki_dir / 'ca.key'} is not an EC private key")
        return cls(key, cert)

    def save(self, pki_dir: Path) -> None:
        pki_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_key(pki_dir / "ca.key", self.key)
        (pki_dir / "ca.crt").write_bytes(self.cert_pem)

    def issue_server_certificate(self, hostnames: list[str]) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        """A TLS server certificate for the given DNS names and IP addresses."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hostnames):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = self._leaf(key.public_key(), hostnames[0], SERVER_CERT_VALIDITY)
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        cert = builder.sign(self.key, hashes.SHA256())
        return key, cert.public_bytes(serialization.Encoding.PEM)

    def sign_probe_csr(self, csr_pem: bytes, probe_id: str) -> IssuedCertificate:
        """Signs a probe's CSR. The subject is set to the probe id: nothing the probe asked for is kept.

        Raises:
            EnrolmentError: not a PEM CSR, a bad signature, or a key type we do not accept.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise EnrolmentError("the certificate signing request is not a valid PEM CSR") from exc
        if not csr.is_signature_valid:
            raise EnrolmentError("the certificate signing request's signature is invalid")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise EnrolmentError("the certificate signing request must use an EC key")
        builder = self._leaf(public_key, probe_id, PROBE_CERT_VALIDITY)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedCertificate(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc,
        )

    def _leaf(
        self, public_key: ec.EllipticCurvePublicKey, common_name: str, validity: dt.timedelta
    ) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
        )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Writes a key readable by its owner only, created with that mode (never world-readable)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_FILE_MODE)
    with os.fdopen(fd, "wb") as stream:
        stream.write(pem)
    os.chmod(path, KEY_FILE_MODE)


def default_server_names() -> list[str]:
    """Names a server certificate covers by default: this host and loopback."""
    names = [socket.getfqdn(), socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    return [n for n in dict.fromkeys(names) if n]


def certificate_serial(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number
