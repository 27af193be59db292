"""Heartbeats, states and commands with real server and probe processes (liveness thresholds:
heartbeat 0.5 s, stale after 1.5 s, offline after 3 s)."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

from support.fleet_processes import ProbeAgent, ServerProcess, wait_for
from support.probe_process import TEST_UDP_PORT, read_spool

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
    wait_for(lambda: server.state_of(agent.probe_id) == "stale", 10, "stale")
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
