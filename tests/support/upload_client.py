"""Upload tests' helpers: a real Join for an identity, real pcap files, chunk streams, and a handle on
the in-process server under test (its landing zone, catalog and queue)."""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rq import Queue

from support.frames import frame
from survey6.server import catalog, tokens
from survey6.server.app import ServerApp
from survey6.server.queue import QUEUE_NAME
from survey6.server.registry.models import CapturedFile
from survey6.wire.v1 import capture_pb2, enrolment_pb2, enrolment_pb2_grpc, upload_pb2, upload_pb2_grpc

DEADLINE_S = 30.0
CHUNK_BYTES = 64 << 10  # 64 KiB: small enough that test files take several chunks
PCAP_MAGIC_US = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN_BYTES = 262_144
SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")
# 2024-05-06T07:08:09Z: the landed file goes under 2024/05/06.
FIRST_PACKET_NS = 1_714_979_289_000_000_000


@dataclass(frozen=True)
class ProbeIdentity:
    probe_id: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


def enrol(enrol_target: str, ca_pem: bytes, token: str, hostname: str = "upload-test") -> ProbeIdentity:
    """Joins like a probe does (a CSR authenticated by the token) and returns the identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .sign(key, hashes.SHA256())
    )
    request = enrolment_pb2.JoinRequest(token=token, csr_pem=csr.public_bytes(serialization.Encoding.PEM))
    request.host.hostname = hostname
    with grpc.secure_channel(enrol_target, grpc.ssl_channel_credentials(ca_pem)) as channel:
        response = enrolment_pb2_grpc.EnrolmentStub(channel).Join(request, timeout=DEADLINE_S)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ProbeIdentity(response.probe_id, key_pem, response.client_certificate_pem, ca_pem)


def upload_channel(control_target: str, ca_pem: bytes, identity: ProbeIdentity | None) -> grpc.Channel:
    """A channel to the control port: mTLS with the identity, or TLS without a client certificate."""
    if identity is None:
        return grpc.secure_channel(control_target, grpc.ssl_channel_credentials(ca_pem))
    return grpc.secure_channel(control_target, identity.credentials())


@dataclass(frozen=True)
class Capture:
    data: bytes
    metadata: capture_pb2.CaptureMetadata

    @property
    def sha256_hex(self) -> str:
        return self.metadata.sha256_hex

    def offset_request(self) -> upload_pb2.OffsetRequest:
        return upload_pb2.OffsetRequest(
            sequence=self.metadata.sequence,
            sha256_hex=self.metadata.sha256_hex,
            file_size_bytes=self.metadata.file_size_bytes,
        )


def make_capture(
    sequence: int, packets: int = 200, payload_bytes: int = 900, first_ns: int = FIRST_PACKET_NS
) -> Capture:
    """A real microsecond pcap of IPv6/UDP Ethernet frames and metadata that validates."""
    records = []
    captured = 0
    for index in range(packets):
        packet = frame("ipv6", index, payload_bytes, SRC_MAC, DST_MAC)
        at_us = first_ns // 1000 + index * 1000
        records.append(struct.pack("<IIII", at_us // 1_000_000, at_us % 1_000_000, len(packet), len(packet)))
        records.append(packet)
        captured += len(packet)
    header = struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, SNAPLEN_BYTES, LINKTYPE_ETHERNET)
    data = header + b"".join(records)
    last_ns = first_ns + max(packets - 1, 0) * 1_000_000
    metadata = capture_pb2.CaptureMetadata(
        sequence=sequence,
        snaplen_bytes=SNAPLEN_BYTES,
        filter="ip6 or (vlan and ip6)",
        first_packet_time_ns=first_ns if packets else 0,
        last_packet_time_ns=last_ns if packets else 0,
        window_start_ns=first_ns - first_ns % 60_000_000_000,
        window_end_ns=first_ns - first_ns % 60_000_000_000 + 60_000_000_000,
        packets=packets,
        captured_bytes=captured,
        file_size_bytes=len(data),
        sha256_hex=hashlib.sha256(data).hexdigest(),
        link_utilisation_mean_ratio=-1,
        link_utilisation_peak_ratio=-1,
        file_format="pcap",
        schema_version=1,
        labels={"site": "test"},
    )
    metadata.interface.name = "eth0"
    metadata.interface.link_type = LINKTYPE_ETHERNET
    metadata.host.hostname = "upload-test"
    return Capture(data, metadata)


def header(
    capture: Capture, start: int = 0, metadata: capture_pb2.CaptureMetadata | None = None
) -> upload_pb2.UploadChunk:
    return upload_pb2.UploadChunk(
        header=upload_pb2.UploadHeader(metadata=metadata or capture.metadata, start_offset_bytes=start)
    )


def data_chunk(data: bytes, crc: int | None = None) -> upload_pb2.UploadChunk:
    return upload_pb2.UploadChunk(data=data, data_crc32=zlib.crc32(data) if crc is None else crc)


def data_chunks(data: bytes, start: int = 0, end: int | None = None) -> Iterator[upload_pb2.UploadChunk]:
    stop = len(data) if end is None else end
    for offset in range(start, stop, CHUNK_BYTES):
        yield data_chunk(data[offset : min(offset + CHUNK_BYTES, stop)])


def stream(capture: Capture, start: int = 0, end: int | None = None) -> list[upload_pb2.UploadChunk]:
    """The whole Put stream: the header, then the file from `start` to `end`."""
    return [header(capture, start), *data_chunks(capture.data, start, end)]


def put(
    upload: upload_pb2_grpc.UploadStub, chunks: Iterable[upload_pb2.UploadChunk]
) -> upload_pb2.UploadReceipt:
    return upload.Put(iter(chunks), timeout=DEADLINE_S)


def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    """Calls `call()` and returns the status code and details it failed with (OK, "" otherwise)."""
    assert callable(call)
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@dataclass
class UploadServer:
    app: ServerApp
    redis_url: str
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.control_port}"

    @property
    def landing(self) -> Path:
        return self.app.layout.landing

    @property
    def receiving(self) -> Path:
        return self.app.layout.receiving

    def enrol(self) -> ProbeIdentity:
        with self.app.sessions.begin() as session:
            token = tokens.create_token(session, ttl=dt.timedelta(hours=1), usages=1)
        return enrol(f"127.0.0.1:{self.app.enrol_port}", self.app.ca.cert_pem, token)

    def stub(self, identity: ProbeIdentity | None) -> upload_pb2_grpc.UploadStub:
        channel = upload_channel(self.target, self.app.ca.cert_pem, identity)
        self.channels.append(channel)
        return upload_pb2_grpc.UploadStub(channel)

    def row(self, probe_id: str, sequence: int) -> CapturedFile | None:
        with self.app.sessions() as session:
            return catalog.find(session, probe_id, sequence)

    def state(self, probe_id: str, sequence: int) -> str | None:
        row = self.row(probe_id, sequence)
        return None if row is None else row.state

    def queue(self) -> Queue:
        return Queue(QUEUE_NAME, connection=redis.Redis.from_url(self.redis_url))

    def landed_files(self) -> list[Path]:
        return sorted(p for p in self.landing.rglob("*") if p.is_file())
