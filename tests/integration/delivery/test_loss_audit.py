"""Spool losses end to end: a drop-oldest spool fills up while the server is down, the loss records
reach the server once it is back (exactly once, acknowledged), and ``survey6-server audit`` accounts
for every sequence: the dropped ones as recorded losses, none as a gap, every identity holding.

Server in namespace A (fd00::1), probe in namespace B capturing on the veth link, frames sent onto it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.fleet_processes import ProbeAgent, ServerProcess, wait_for
from support.netns import NetnsPair

pytestmark = pytest.mark.netns

FRAME_BYTES = 1000
FRAMES = 1500  # about 24 files of 64 KiB: several times the quota
FRAME_RATE_PPS = 600
STOP_FRAMES = 6000  # 6 s at 1000 frames/s: enough for two stops while they flow
STOP_RATE_PPS = 1000
ENV = {
    "SURVEY6_SPOOL__QUOTA_BYTES": "300KiB",
    "SURVEY6_CAPTURE__ROTATE_MAX_BYTES": "64KiB",
    "SURVEY6_CAPTURE__ROTATE_INTERVAL_S": "2",
    # Any link state counts as idle: delivery starts as soon as the server answers.
    "SURVEY6_DELIVERY__LINK_CAPACITY_BPS": "10000000000",
    "SURVEY6_DELIVERY__IDLE_HOLD_S": "0",
    "SURVEY6_DELIVERY__SMOOTHING_S": "1",
    "SURVEY6_HEARTBEAT__INTERVAL_S": "1",
}


@pytest.fixture(params=["drop-oldest"])
def fleet(
    request: pytest.FixtureRequest, netns_pair: NetnsPair, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ProbeAgent]]:
    server = ServerProcess(tmp_path, netns=netns_pair.ns_a, host=netns_pair.addr_a, heartbeat_interval_s=1.0)
    agent = ProbeAgent(tmp_path, "probe", netns=netns_pair.ns_b, interfaces=(netns_pair.if_b,))
    agent.env.update(ENV)
    agent.env["SURVEY6_SPOOL__FULL_POLICY"] = request.param
    server.start()
    try:
        joined = agent.join(server, server.token())
        assert joined.returncode == 0, joined.stderr
        yield server, agent
    finally:
        agent.cleanup()
        server.stop()


def loss_log(agent: ProbeAgent) -> list[dict[str, Any]]:
    path = agent.spool / "losses.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def spool_state(agent: ProbeAgent) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((agent.spool / "state.json").read_text())
    return state


def ready(agent: ProbeAgent) -> list[Path]:
    return sorted((agent.spool / "ready").glob("*.pcap"))


def audit(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    result = server.cli("audit", "--json")
    assert result.returncode in (0, 3, 4), result.stderr
    return result.returncode, json.loads(result.stdout)


def fill_while_the_server_is_down(server: ServerProcess, agent: ProbeAgent, netns_pair: NetnsPair) -> None:
    """Sends the frames while the server is down (losses wait on the probe), then starts it again and
    waits until every loss is acknowledged and every sealed file landed; then stops the capture, so
    that its newest file is sealed and delivered too and no run is left open."""
    server.stop()
    agent.start()
    sender = subprocess.Popen(
        netns_pair.frames_argv("ipv6", FRAMES, size=FRAME_BYTES, rate=FRAME_RATE_PPS),
        stdout=subprocess.DEVNULL,
    )
    try:
        assert sender.wait(timeout=60) == 0
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    wait_for(lambda: loss_log(agent), 30, "a loss")
    assert spool_state(agent)["losses_acknowledged_through"] == 0
    server.start()
    wait_for(
        lambda: (
            spool_state(agent)["losses_acknowledged_through"] >= len(loss_log(agent)) and not ready(agent)
        ),
        90,
        "the losses to be acknowledged and the backlog to land",
    )
    suspended = agent.cli("suspend")
    assert suspended.returncode == 0, suspended.stderr


def settled_audit(server: ServerProcess, agent: ProbeAgent) -> tuple[int, dict[str, Any]]:
    """The audit once nothing is on its way: no file in the spool, no loss or sample outstanding."""

    def settled() -> tuple[int, dict[str, Any]] | None:
        if ready(agent):
            return None
        code, document = audit(server)
        probe = document["probes"][0]
        if probe["sequences"]["pending_on_probe"] or probe["terms"]["losses_pending_on_probe"]:
            return None
        kernel = next(i for i in probe["identities"] if i["name"] == "kernel")
        if any(run["status"] == "open" for run in kernel["runs"]):
            return None  # the suspended state has not been sampled yet
        return code, document

    result: tuple[int, dict[str, Any]] = wait_for(settled, 60, "the audit to settle")
    return result


def assert_accounted(code: int, document: dict[str, Any], agent: ProbeAgent) -> dict[str, Any]:
    probe: dict[str, Any] = document["probes"][0]
    assert probe["sequences"]["gaps"] == [], json.dumps(probe, indent=2)
    assert all(i["holds"] for i in probe["identities"]), json.dumps(probe["identities"], indent=2)
    assert code == 0 and document["ok"], json.dumps(probe, indent=2)
    # Every record was stored once, however often it was sent.
    log = loss_log(agent)
    assert probe["terms"]["lost_dropped_files"] == sum(
        r["packets"] for r in log if r["kind"] == "dropped-file"
    )
    assert probe["terms"]["lost_not_written"] == sum(r["packets"] for r in log if r["kind"] == "not-written")
    # Every frame sent reached the kernel's count (the link's own chatter may add a few).
    assert probe["terms"]["kernel_received"] >= FRAMES
    return probe


def test_dropped_files_reach_the_audit_as_recorded_losses_and_leave_no_gap(
    fleet: tuple[ServerProcess, ProbeAgent], netns_pair: NetnsPair
) -> None:
    server, agent = fleet
    fill_while_the_server_is_down(server, agent, netns_pair)
    dropped = sorted(r["sequence"] for r in loss_log(agent) if r["kind"] == "dropped-file")
    assert dropped
    code, document = settled_audit(server, agent)
    probe = assert_accounted(code, document, agent)
    landed = {s for a, b in probe["sequences"]["landed"] for s in range(a, b + 1)}
    listed = {s for a, b in probe["sequences"]["dropped_by_policy"] for s in range(a, b + 1)}
    assert set(dropped) == listed and not listed & landed
    assert agent.stop() == 0


@pytest.mark.parametrize("fleet", ["pause"], indirect=True)
def test_packets_read_while_paused_are_placed_in_the_next_files_kernel_window(
    fleet: tuple[ServerProcess, ProbeAgent], netns_pair: NetnsPair
) -> None:
    server, agent = fleet
    fill_while_the_server_is_down(server, agent, netns_pair)
    log = loss_log(agent)
    assert log and all(r["kind"] == "not-written" for r in log), log
    code, document = settled_audit(server, agent)
    probe = assert_accounted(code, document, agent)
    assert probe["sequences"]["dropped_by_policy"] == []
    runs = next(i for i in probe["identities"] if i["name"] == "kernel")["runs"]
    # The paused packets are in a closed run that balances only with them.
    assert sum(run["lost_not_written"] for run in runs) == probe["terms"]["lost_not_written"] > 0
    assert agent.stop() == 0


@pytest.mark.parametrize("fleet", ["pause"], indirect=True)
def test_packets_a_stop_leaves_in_the_kernel_ring_are_recorded_losses(
    fleet: tuple[ServerProcess, ProbeAgent], netns_pair: NetnsPair
) -> None:
    server, agent = fleet
    agent.env["SURVEY6_SPOOL__QUOTA_BYTES"] = "1GiB"  # nothing lost to the spool: only to the stops
    agent.start()
    sender = subprocess.Popen(
        netns_pair.frames_argv("ipv6", STOP_FRAMES, size=200, rate=STOP_RATE_PPS), stdout=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: ready(agent) or loss_log(agent) == [], 10, "capture under traffic")
        # A suspend and a whole restart while the frames flow: each stop leaves the ring's packets.
        time.sleep(1.5)
        assert agent.cli("suspend").returncode == 0
        time.sleep(0.5)
        assert agent.cli("resume").returncode == 0
        time.sleep(1.0)
        assert agent.stop() == 0
        agent.start()
        assert sender.wait(timeout=60) == 0
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    wait_for(lambda: not ready(agent), 60, "the backlog to land")
    assert agent.cli("suspend").returncode == 0
    code, document = settled_audit(server, agent)
    probe = assert_accounted(code, document, agent)
    log = loss_log(agent)
    assert log and all(r["kind"] == "left-in-ring" for r in log), log
    assert probe["terms"]["lost_left_in_ring"] == sum(r["packets"] for r in log)
    assert agent.stop() == 0
