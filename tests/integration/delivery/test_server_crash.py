"""A server killed in the middle of an upload: the probe resumes from the server's offset after the
restart, and the file lands once, intact. Everything on loopback: the probe captures IPv6 on lo
(its own gRPC traffic is IPv4) and `upload-now` overrides the idle-window rule."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sqlite3
import time
from pathlib import Path

from support.fleet_processes import ProbeAgent, ServerProcess, wait_for
from support.probe_process import TEST_UDP_PORT

SLOW_UPLOADS = {
    "SURVEY6_DELIVERY__LINK_CAPACITY_BPS": "1000000",  # uploads at half of it: about 60 kB/s
    # The monitor watches an interface that carries nothing: on lo it would count every process's
    # loopback traffic (other tests on a shared machine) and slow the upload to its floor.
    "SURVEY6_DELIVERY__INTERFACE": "s6-no-such-if",
    "SURVEY6_DELIVERY__CHUNK_BYTES": "16KiB",
    "SURVEY6_CAPTURE__ROTATE_INTERVAL_S": "2",
}


def test_upload_resumes_after_the_server_is_killed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, heartbeat_interval_s=0.5)
    server.env["SURVEY6_HTTP_LISTEN"] = "127.0.0.1:0"  # not the web UI's fixed port: others may hold it
    agent = ProbeAgent(tmp_path, "probe")
    agent.env.update(SLOW_UPLOADS)
    server.start()
    try:
        assert agent.join(server, server.token()).returncode == 0
        agent.start()
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            for index in range(400):  # about 500 kB of capture: several seconds of upload
                sock.sendto(index.to_bytes(8, "big") + bytes(1192), ("::1", TEST_UDP_PORT))
        # The packets' file, not an empty one sealed before they came (rotation every 2 s).
        ready_dir = agent.spool / "ready"
        ready = wait_for(lambda: [p for p in ready_dir.glob("*.pcap") if p.stat().st_size > 100_000], 15,
                         "a sealed file with the packets")  # fmt: skip
        big = max(ready, key=lambda p: p.stat().st_size)
        sha256 = json.loads(big.with_suffix(".json").read_text())["sha256_hex"]
        assert server.cli("probes", "command", agent.probe_id, "upload-now").returncode == 0
        part = wait_for(
            lambda: [p for p in (server.data_dir / "receiving").rglob("*.part") if p.stat().st_size > 0],
            30,
            "an upload in progress",
        )[0]
        server.stop(kill=True)
        held = part.stat().st_size
        assert 0 < held < big.stat().st_size
        time.sleep(2)
        server.start()
        wait_for(lambda: not big.exists(), 90, "the file to be delivered after the restart")
        landed = [p for p in (server.data_dir / "landing").rglob("*.pcap") if p.name == big.name]
        assert len(landed) == 1
        assert hashlib.sha256(landed[0].read_bytes()).hexdigest() == sha256
        with sqlite3.connect(server.data_dir / "registry.sqlite3") as db:
            rows = db.execute(
                "SELECT COUNT(*) FROM captured_files WHERE probe_id = ? AND sequence = ?",
                (agent.probe_id, int(big.stem)),
            ).fetchone()
        assert rows == (1,)
        log = agent.log_path.read_text()
        assert "server unavailable for uploads" in log  # it noticed, kept the file, and came back
        resumed = re.search(rf"resuming the upload of {int(big.stem)} at offset (\d+)", log)
        assert resumed is not None and int(resumed.group(1)) > 0  # not sent again from the start
    finally:
        agent.cleanup()
        server.stop()
