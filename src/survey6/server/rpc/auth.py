"""Maps an mTLS call to its probe. The TLS layer has already verified the client certificate
against the CA; here its serial is looked up, so a probe that left (or was revoked) is refused
even while its certificate is still within its validity."""

from __future__ import annotations

from typing import cast

import grpc
from cryptography import x509

from survey6.server.fleet import Fleet, ProbeEntry

PEM_CERT_KEY = "x509_pem_cert"


def probe_of(context: grpc.ServicerContext, fleet: Fleet) -> ProbeEntry:
    """The calling probe; aborts the call when there is none (the abort raises)."""
    # At run time each value is a list of bytes (the stubs say bytes).
    values = cast(list[bytes], context.auth_context().get(PEM_CERT_KEY) or [])
    pem = values[0] if values else None
    if pem is None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required: join first")
    serial = format(x509.load_pem_x509_certificate(pem).serial_number, "x")
    entry = fleet.by_serial(serial)
    if entry is None:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "this certificate belongs to no enrolled probe")
    if entry.left:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"probe {entry.probe_id} has left; join again")
    return entry
