"""Maps an mTLS call to its probe. The TLS layer has already verified the client certificate
against the CA; here its serial is looked up, so a probe that left (or was revoked) is refused
even while its certificate is still within its validity."""

from __future__ import annotations

import functools
from typing import cast

import grpc
from cryptography import x509

from survey6.server.fleet import Fleet, ProbeEntry

PEM_CERT_KEY = "x509_pem_cert"
# Parsed certificates kept (PEM -> serial). Every call of a probe presents the same PEM, and
# parsing it is most of the cost of mapping a call to its probe; the TLS layer lets in only
# certificates of this CA, so the cache holds the fleet's (one entry each, under 1 KiB).
SERIAL_CACHE_ENTRIES = 1 << 16


def probe_of(context: grpc.ServicerContext, fleet: Fleet) -> ProbeEntry:
    """The calling probe; aborts the call when there is none (the abort raises)."""
    # At run time each value is a list of bytes (the stubs say bytes).
    values = cast(list[bytes], context.auth_context().get(PEM_CERT_KEY) or [])
    pem = values[0] if values else None
    if pem is None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required: join first")
    entry = fleet.by_serial(serial_of(pem))
    if entry is None:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "this certificate belongs to no enrolled probe")
    if entry.left:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"probe {entry.probe_id} has left; join again")
    return entry


@functools.lru_cache(maxsize=SERIAL_CACHE_ENTRIES)
def serial_of(pem: bytes) -> str:
    """The hex serial of a PEM certificate, as the registry stores it."""
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")
