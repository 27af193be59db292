"""TLS facts both sides compute the same way: the CA pin of ``--ca-cert-hash``.

Needs ``cryptography`` (in the probe and server extras).
"""

from __future__ import annotations

import hashlib

CA_HASH_PREFIX = "sha256:"


def spki_sha256(cert_der_or_pem: bytes) -> str:
    """``sha256:<hex>`` of a certificate's SubjectPublicKeyInfo, as kubeadm pins its CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if cert_der_or_pem.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificate(cert_der_or_pem)
    else:
        cert = x509.load_der_x509_certificate(cert_der_or_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CA_HASH_PREFIX + hashlib.sha256(spki).hexdigest()
