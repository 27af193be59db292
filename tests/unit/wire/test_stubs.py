"""The committed wire stubs are exactly what ./scripts/gen-proto makes from proto/."""

from __future__ import annotations

import subprocess
from pathlib import Path

from survey6.wire.v1 import capture_pb2, control_pb2, upload_pb2


def test_committed_stubs_match_a_fresh_generation(repo_root: Path, tmp_path: Path) -> None:
    subprocess.run([str(repo_root / "scripts" / "gen-proto"), str(tmp_path)], check=True, capture_output=True)
    committed_dir = repo_root / "src" / "survey6" / "wire" / "v1"
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir() if "_pb2" in p.name}
    committed = {p.name: p.read_bytes() for p in committed_dir.iterdir() if "_pb2" in p.name}
    assert sorted(fresh) == sorted(committed), "run ./scripts/gen-proto and commit the result"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated stubs {stale}: run ./scripts/gen-proto and commit the result"


def test_messages_round_trip_with_units_in_field_names() -> None:
    metadata = capture_pb2.CaptureMetadata(
        probe_id="p-1",
        sequence=42,
        packets=10,
        captured_bytes=640,
        sha256_hex="00" * 32,
        labels={"site": "ams"},
        kernel_delta=capture_pb2.KernelCounters(received_packets=10, dropped_packets=0),
    )
    chunk = upload_pb2.UploadChunk(header=upload_pb2.UploadHeader(metadata=metadata, start_offset_bytes=0))
    decoded = upload_pb2.UploadChunk.FromString(chunk.SerializeToString())
    assert decoded.header.metadata == metadata
    heartbeat = control_pb2.HeartbeatResponse(
        commands=[control_pb2.Command(command_id="c1", suspend=control_pb2.SuspendCapture())]
    )
    assert control_pb2.HeartbeatResponse.FromString(heartbeat.SerializeToString()).commands[0].WhichOneof(
        "action"
    ) == ("suspend")
