"""``survey6-server audit``: its exit status says whether every packet is accounted for."""

from __future__ import annotations

import json
from pathlib import Path

from support.fleet_processes import SERVER, run
from survey6.server import catalog
from survey6.server.registry import db
from survey6.server.registry.models import Probe, utcnow
from survey6.wire.v1 import capture_pb2

PROBE = "p-0a1b2c3d4e5f"


def init(tmp_path: Path) -> Path:
    data_dir = tmp_path / "server"
    result = run([SERVER, "init", "--data-dir", str(data_dir), "--server-name", "localhost"])
    assert result.returncode == 0, result.stderr
    return data_dir


def add(data_dir: Path, sequence: int, packets: int, received: int) -> None:
    engine = db.make_engine(db.sqlite_url(data_dir))
    try:
        with db.session_factory(engine).begin() as session:
            if session.get(Probe, PROBE) is None:
                session.add(
                    Probe(
                        id=PROBE,
                        hostname="h",
                        cert_serial="s",
                        cert_not_after=utcnow(),
                        last_health={"spool": {"last_sealed_sequence": "3"}},
                    )
                )
                session.flush()
            metadata = capture_pb2.CaptureMetadata(
                sequence=sequence,
                packets=packets,
                interface=capture_pb2.InterfaceFacts(name="eth0"),
                kernel_delta=capture_pb2.KernelCounters(received_packets=received),
            )
            row = catalog.add_received(
                session, PROBE, metadata, sha256_hex="a" * 64, size_bytes=100, landing_path="x"
            )
            catalog.mark_stored(session, row.id)
    finally:
        engine.dispose()


def audit(data_dir: Path, *args: str) -> tuple[int, str, str]:
    result = run([SERVER, "audit", "--data-dir", str(data_dir), *args])
    return result.returncode, result.stdout, result.stderr


def test_exit_status_follows_the_identities_and_gaps(tmp_path: Path) -> None:
    data_dir = init(tmp_path)
    code, out, _ = audit(data_dir, "--json")
    assert code == 0 and json.loads(out)["summary"]["probes"] == 0

    add(data_dir, 1, 5, 5)
    add(data_dir, 3, 5, 5)
    code, out, _ = audit(data_dir)
    assert code == 4, out  # sequence 2: a gap
    assert "gaps" in out and "NOT OK" in out
    code, out, _ = audit(data_dir, "--json", "--probe", PROBE)
    document = json.loads(out)
    assert code == document["exit_code"] == 4 and document["probes"][0]["sequences"]["gaps"] == [[2, 2]]

    add(data_dir, 2, 5, 4)  # the gap filled, but the kernel saw fewer packets than were written
    code, out, _ = audit(data_dir)
    assert code == 3, out
    assert "kernel  FAILS" in out


def test_errors_are_one_line(tmp_path: Path) -> None:
    code, _, err = audit(tmp_path / "nothing-here")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "init" in err
    data_dir = init(tmp_path)
    code, _, err = audit(data_dir, "--probe", "p-000000000000")
    assert code == 1 and err.strip() == "survey6-server: error: no probe with id 'p-000000000000'"
    code, _, _ = audit(data_dir, "--no-such-flag")
    assert code == 2
