"""Metadata values that go into the catalog's signed 64-bit columns are bounded before an upload lands:
a value beyond is a clear refusal, not a write that fails (INTERNAL) and is retried forever."""

from __future__ import annotations

import pytest

from survey6.common.capture_metadata import MAX_STORED_INT, SCHEMA_VERSION, validate
from survey6.common.errors import MetadataError
from survey6.wire.v1 import capture_pb2


def metadata() -> capture_pb2.CaptureMetadata:
    return capture_pb2.CaptureMetadata(
        sequence=1,
        packets=1,
        captured_bytes=100,
        file_size_bytes=24 + 16 + 100,
        sha256_hex="ab" * 32,
        interface=capture_pb2.InterfaceFacts(name="eth0"),
        kernel_delta=capture_pb2.KernelCounters(received_packets=MAX_STORED_INT),
        repaired_truncated_bytes=MAX_STORED_INT,
        file_format="pcap",
        schema_version=SCHEMA_VERSION,
    )


def test_the_largest_storable_values_pass() -> None:
    validate(metadata())


@pytest.mark.parametrize(
    "field", ["received_packets", "dropped_packets", "interface_dropped_packets", "repaired_truncated_bytes"]
)
def test_a_value_too_large_for_its_column_is_refused(field: str) -> None:
    bad = metadata()
    if field == "repaired_truncated_bytes":
        bad.repaired_truncated_bytes = MAX_STORED_INT + 1
    else:
        setattr(bad.kernel_delta, field, 2**64 - 1)
    with pytest.raises(MetadataError, match=f"{field} is larger than"):
        validate(bad)
