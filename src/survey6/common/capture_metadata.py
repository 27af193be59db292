"""Capture metadata (``survey6.v1.CaptureMetadata``) as JSON, and the checks every reader applies.

The probe writes it as a sidecar next to each sealed pcap and sends it as the upload header; the
server stores it next to the landed file. The JSON is protobuf's canonical mapping with the proto
field names, so the sidecar and the wire message can never drift apart. See
``docs/capture-metadata.md``. Needs nothing but protobuf.
"""

from __future__ import annotations

import json
import re

from google.protobuf import json_format

from survey6.common.errors import MetadataError
from survey6.wire.v1 import capture_pb2

SCHEMA_VERSION = 1
PCAP_GLOBAL_HEADER_BYTES = 24
PCAP_RECORD_HEADER_BYTES = 16
SIDECAR_SUFFIX = ".json"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_FILE_FORMATS = frozenset({"pcap", "pcapng"})
# The registry and the aggregator's ledger store these uint64 fields as signed 64-bit integers.
MAX_STORED_INT = (1 << 63) - 1
_STORED_INT_FIELDS = ("sequence", "packets", "captured_bytes", "file_size_bytes")
_STORED_KERNEL_FIELDS = ("received_packets", "dropped_packets", "interface_dropped_packets")
MAX_REASON_CHARS = 200


def to_json(metadata: capture_pb2.CaptureMetadata) -> str:
    return json_format.MessageToJson(
        metadata, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=2
    )


def from_json(text: str | bytes, source: str = "metadata") -> capture_pb2.CaptureMetadata:
    """Parses and validates a sidecar (bytes must be UTF-8).

    Raises:
        MetadataError: not JSON, unknown fields, wrong types, or inconsistent values.
    """
    metadata = capture_pb2.CaptureMetadata()
    try:
        json_format.Parse(text, metadata, ignore_unknown_fields=False)
    except (json_format.ParseError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{source}: not valid capture metadata: {_one_line(str(exc))}") from exc
    validate(metadata, source)
    return metadata


def _one_line(reason: str) -> str:
    """protobuf's reason without the list of every field it appends on a second line, and cut short:
    the input's own text (a field name, a value) may be in it, and every error is one line."""
    lines = reason.strip().splitlines() or [""]
    first = lines[0]
    return first if len(first) <= MAX_REASON_CHARS else first[:MAX_REASON_CHARS] + "…"


def validate(metadata: capture_pb2.CaptureMetadata, source: str = "metadata") -> None:
    """Checks the values a sealed file's metadata must have.

    Raises:
        MetadataError: naming the first field that is wrong.
    """
    problems = [
        f"{name} {getattr(metadata, name)} is larger than {MAX_STORED_INT}"
        for name in _STORED_INT_FIELDS
        if getattr(metadata, name) > MAX_STORED_INT
    ]
    # These go into 64-bit columns of the catalog too (docs/audit.md).
    for name in _STORED_KERNEL_FIELDS:
        if getattr(metadata.kernel_delta, name) > MAX_STORED_INT:
            problems.append(f"kernel_delta.{name} is larger than {MAX_STORED_INT}")
    if metadata.repaired_truncated_bytes > MAX_STORED_INT:
        problems.append(f"repaired_truncated_bytes is larger than {MAX_STORED_INT}")
    if metadata.schema_version != SCHEMA_VERSION:
        problems.append(f"schema_version {metadata.schema_version} is not {SCHEMA_VERSION}")
    if metadata.sequence < 1:
        problems.append("sequence must be 1 or more")
    if not _SHA256_HEX.match(metadata.sha256_hex):
        problems.append("sha256_hex must be 64 lower-case hex digits")
    if metadata.file_format not in _FILE_FORMATS:
        problems.append(f"file_format {metadata.file_format!r} is not pcap or pcapng")
    if metadata.file_format == "pcap":
        expected = PCAP_GLOBAL_HEADER_BYTES + PCAP_RECORD_HEADER_BYTES * metadata.packets
        if metadata.file_size_bytes != expected + metadata.captured_bytes:
            problems.append("file_size_bytes does not match packets and captured_bytes")
    if metadata.packets and metadata.first_packet_time_ns > metadata.last_packet_time_ns:
        problems.append("first_packet_time_ns is after last_packet_time_ns")
    if metadata.window_end_ns < metadata.window_start_ns:
        problems.append("window_end_ns is before window_start_ns")
    if not metadata.HasField("interface") or not metadata.interface.name:
        problems.append("interface.name is missing")
    if problems:
        raise MetadataError(f"{source}: invalid capture metadata: {problems[0]}")
