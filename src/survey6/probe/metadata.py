"""The capture metadata sidecar: one JSON file next to each sealed pcap (format and checks in
``survey6.common.capture_metadata``)."""

from __future__ import annotations

from pathlib import Path

from survey6.common.capture_metadata import SCHEMA_VERSION, from_json, to_json, validate
from survey6.common.errors import MetadataError
from survey6.common.files import write_atomically
from survey6.wire.v1 import capture_pb2

__all__ = [
    "SCHEMA_VERSION",
    "from_json",
    "read_sidecar",
    "sidecar_path",
    "to_json",
    "validate",
    "write_sidecar",
]

SIDECAR_SUFFIX = ".json"


def sidecar_path(capture_path: Path) -> Path:
    return capture_path.with_suffix(SIDECAR_SUFFIX)


def write_sidecar(path: Path, metadata: capture_pb2.CaptureMetadata) -> None:
    """Writes a sidecar atomically and durably: temp file, fsync, rename."""
    validate(metadata, str(path))
    write_atomically(path, to_json(metadata).encode())


def read_sidecar(path: Path) -> capture_pb2.CaptureMetadata:
    """Reads and validates a sidecar.

    Raises:
        MetadataError: unreadable or invalid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{path}: cannot read capture metadata: {exc}") from exc
    return from_json(text, str(path))
