from __future__ import annotations

import json
from pathlib import Path

import pytest

from survey6.probe.errors import MetadataError
from survey6.probe.metadata import SCHEMA_VERSION, from_json, read_sidecar, to_json, write_sidecar
from survey6.wire.v1 import capture_pb2


def good() -> capture_pb2.CaptureMetadata:
    return capture_pb2.CaptureMetadata(
        probe_id="p-1",
        sequence=3,
        packets=2,
        captured_bytes=200,
        file_size_bytes=24 + 2 * 16 + 200,
        sha256_hex="0f" * 32,
        first_packet_time_ns=10,
        last_packet_time_ns=20,
        window_start_ns=0,
        window_end_ns=60,
        interface=capture_pb2.InterfaceFacts(name="eth0", link_type=1),
        labels={"site": "ams"},
        file_format="pcap",
        schema_version=SCHEMA_VERSION,
    )


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "1.json"
    write_sidecar(path, good())
    assert read_sidecar(path) == good()
    assert json.loads(path.read_text())["labels"] == {"site": "ams"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sequence": 0}, "sequence"),
        ({"sha256_hex": "xyz"}, "sha256_hex"),
        ({"file_size_bytes": 1}, "file_size_bytes"),
        ({"file_format": "erf"}, "file_format"),
        ({"schema_version": 9}, "schema_version"),
        ({"first_packet_time_ns": 99}, "first_packet_time_ns"),
        ({"window_end_ns": -1}, "window_end_ns"),
    ],
)
def test_inconsistent_values_are_refused(change: dict[str, object], message: str) -> None:
    data = json.loads(to_json(good()))
    data.update(change)
    with pytest.raises(MetadataError, match=message):
        from_json(json.dumps(data), "x.json")


@pytest.mark.parametrize(
    "text", ["", "[]", "{", '{"sequence": "many"}', '{"unknown_field": 1}', '{"labels": {"a": 1}}']
)
def test_malformed_json_is_refused(text: str) -> None:
    with pytest.raises(MetadataError, match="x.json"):
        from_json(text, "x.json")


def test_writing_invalid_metadata_is_refused_before_touching_disk(tmp_path: Path) -> None:
    bad = good()
    bad.sequence = 0
    with pytest.raises(MetadataError):
        write_sidecar(tmp_path / "1.json", bad)
    assert not (tmp_path / "1.json").exists()


def test_unreadable_sidecar(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="cannot read") as caught:
        read_sidecar(tmp_path / "absent.json")
    assert isinstance(caught.value.__cause__, FileNotFoundError)
