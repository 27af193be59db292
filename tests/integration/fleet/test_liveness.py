"""Heartbeats, states and commands with real server and probe processes (liveness thresholds:
heartbeat 0.5 s, stale after 1.5 s, offline after 3 s)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from support.fleet_processes import PROBE, ProbeAgent, ServerProcess, wait_for
from support.probe_process import TEST_UDP_PORT, read_spool
from survey6.wire.v1 import control_pb2, control_pb2_grpc

INTERVAL_S = 0.5


def joined_agent(
    server: ServerProcess, tmp_path: Path, agents: list[ProbeAgent], **kwargs: object
) -> ProbeAgent:
    agent = ProbeAgent(tmp_path, f"p{len(agents)}", **kwargs)  # type: ignore[arg-type]
    agents.append(agent)
    result = agent.join(server, server.token())
    assert result.returncode == 0, result.stderr
    return agent


def state_events(server: ServerProcess, probe_id: str) -> list[str]:
    with sqlite3.connect(server.data_dir / "registry.sqlite3") as db:
        rows = db.execute(
            "SELECT new_state FROM events WHERE probe_id = ? AND kind = 'state' ORDER BY id", (probe_id,)
        ).fetchall()
    return [row[0] for row in rows]


def test_online_then_stale_then_offline_then_online_again(
    server: ServerProcess, tmp_path: Path, agents: list[ProbeAgent]
) -> None:
    agent = joined_agent(server, tmp_path, agents)
    started = time.monotonic()
    agent.start()
    wait_for(lambda: server.state_of(agent.probe_id) == "online", 10, "online")
    # the first heartbeat goes out at start; online well within two intervals of it
    assert time.monotonic() - started < 10
    agent.stop(kill=True)
    # stale lasts 1.5 s here, about as long as one `probes list` takes: read the events instead
    wait_for(lambda: "stale" in state_events(server, agent.probe_id), 10, "stale")
    wait_for(lambda: server.state_of(agent.probe_id) == "offline", 10, "offline")
    agent.start()
    wait_for(lambda: server.state_of(agent.probe_id) == "online", 10, "online again")
    assert state_events(server, agent.probe_id) == ["online", "stale", "offline", "online"]


def test_suspend_stops_capture_and_resume_restarts_it(
    server: ServerProcess, tmp_path: Path, agents: list[ProbeAgent]
) -> None:
    # The probe captures IPv6 on loopback (its own gRPC traffic is IPv4, outside the filter) and
    # the test sends numbered UDP datagrams to [::1].
    agent = joined_agent(server, tmp_path, agents)
    agent.start()
    wait_for(lambda: server.state_of(agent.probe_id) == "online", 10, "online")
    send_lo_burst(100, start=0)
    assert server.cli("probes", "command", agent.probe_id, "suspend").returncode == 0
    wait_for(lambda: server.state_of(agent.probe_id) == "suspended", 10, "suspended")
    assert agent.cli("status", "--json").stdout.count('"capture_state": "suspended"') == 1
    send_lo_burst(100, start=100)  # not captured
    assert server.cli("probes", "command", agent.probe_id, "resume").returncode == 0
    wait_for(lambda: server.state_of(agent.probe_id) == "online", 10, "online after resume")
    time.sleep(0.3)
    send_lo_burst(100, start=200)
    time.sleep(0.5)
    assert agent.stop() == 0
    indexes = sorted(i for f in read_spool(agent.spool) for i in f.indexes)
    assert indexes == list(range(100)) + list(range(200, 300))
    outcomes = command_outcomes(server, agent.probe_id)
    assert outcomes == [("suspend", "succeeded"), ("resume", "succeeded")]


def send_lo_burst(count: int, *, start: int) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        for index in range(start, start + count):
            sock.sendto(index.to_bytes(8, "big") + bytes(56), ("::1", TEST_UDP_PORT))
            time.sleep(0.001)  # ICMPv6 errors for the closed port are rate-limited; keep it gentle


def command_outcomes(server: ServerProcess, probe_id: str) -> list[tuple[str, str]]:
    with sqlite3.connect(server.data_dir / "registry.sqlite3") as db:
        rows = db.execute(
            "SELECT action, outcome FROM commands WHERE probe_id = ? ORDER BY issued_at", (probe_id,)
        ).fetchall()
    return [(str(a), str(o)) for a, o in rows]


def test_leave_then_the_certificate_is_refused(
    server: ServerProcess, tmp_path: Path, agents: list[ProbeAgent]
) -> None:

    agent = joined_agent(server, tmp_path, agents)
    probe_id = agent.probe_id
    identity = agent.state_dir / "identity"
    key, cert, ca = ((identity / n).read_bytes() for n in ("probe.key", "probe.crt", "ca.crt"))
    agent.start()
    wait_for(lambda: server.state_of(probe_id) == "online", 10, "online")
    assert server.cli("probes", "command", probe_id, "leave").returncode == 0
    wait_for(lambda: agent.process is not None and agent.process.poll() is not None, 15, "the probe to exit")
    assert agent.process is not None and agent.process.returncode == 0
    assert server.state_of(probe_id) == "left"
    assert not (identity / "probe.key").exists()  # the identity is forgotten
    credentials = grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(f"localhost:{server.control_port}", credentials) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            control_pb2_grpc.ProbeControlStub(channel).Heartbeat(control_pb2.HeartbeatRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "has left" in str(caught.value.details())
    refused = server.cli("probes", "command", probe_id, "suspend")
    assert refused.returncode == 1 and "has left" in refused.stderr


def test_server_down_the_probe_keeps_capturing_and_reconnects(
    server: ServerProcess, tmp_path: Path, agents: list[ProbeAgent]
) -> None:
    agent = joined_agent(server, tmp_path, agents)
    agent.start()
    wait_for(lambda: server.state_of(agent.probe_id) == "online", 10, "online")
    server.stop(kill=True)
    send_lo_burst(50, start=0)
    status = wait_for(
        lambda: (
            (s := agent.cli("status", "--json")).returncode == 0
            and '"server_reachable": false' in s.stdout
            and s
        ),
        20,
        "the probe to notice the server is away",
    )
    assert '"capture_state": "capturing"' in status.stdout
    time.sleep(2)
    send_lo_burst(50, start=50)
    server.start()  # same data directory and ports: the registry survived the restart
    assert [p["probe_id"] for p in server.probes()] == [agent.probe_id]
    wait_for(lambda: server.state_of(agent.probe_id) == "online", 90, "online after the server returned")
    assert agent.stop() == 0
    indexes = sorted(i for f in read_spool(agent.spool) for i in f.indexes)
    assert indexes == list(range(100))  # nothing lost while the server was away


def test_local_start_status_stop_without_systemd(
    server: ServerProcess, tmp_path: Path, agents: list[ProbeAgent]
) -> None:
    agent = joined_agent(server, tmp_path, agents)
    env = {**os.environ, **agent.env}

    def probe(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [PROBE, *args, "--state-dir", str(agent.state_dir)]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=90)

    assert probe("status").returncode == 3
    started = probe("start")
    assert started.returncode == 0, started.stderr
    try:
        status = json.loads(probe("status", "--json").stdout)
        assert status["running"] and status["probe_id"] == agent.probe_id
        assert probe("start").returncode == 1  # already running
        assert probe("suspend").stdout.strip() == "capture suspended"
        wait_for(lambda: server.state_of(agent.probe_id) == "suspended", 10, "suspended")
        assert probe("resume").stdout.strip() == "capture resumed"
    finally:
        stopped = probe("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert probe("status").returncode == 3
