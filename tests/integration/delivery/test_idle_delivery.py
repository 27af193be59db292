"""Idle-window delivery end to end: a server in namespace A (fd00::1), a probe in namespace B
capturing on the veth link that also carries its uploads, background traffic sent across it.

The probe is told its link carries 1 Mbit/s, so a few hundred kbit/s of test traffic make it busy
(utilisation 0.4 against an idle threshold of 0.1), and uploads go at half the idle headroom.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from support.fleet_processes import ProbeAgent, ServerProcess, wait_for
from support.netns import NetnsPair
from support.probe_process import udp_index

pytestmark = pytest.mark.netns

FRAME_BYTES = 1400
BUSY_RATE_PPS = 40  # 40 × 1.4 kB ≈ 450 kbit/s on a link said to carry 1 Mbit/s
DELIVERY_ENV = {
    "SURVEY6_DELIVERY__LINK_CAPACITY_BPS": "1000000",
    "SURVEY6_DELIVERY__IDLE_HOLD_S": "2",
    "SURVEY6_DELIVERY__SMOOTHING_S": "1",
    "SURVEY6_DELIVERY__CHUNK_BYTES": "16KiB",
    "SURVEY6_CAPTURE__ROTATE_INTERVAL_S": "6",
    "SURVEY6_LOGGING__LEVEL": "DEBUG",  # the uploader's decisions, should this test ever fail
}


@pytest.fixture
def fleet(netns_pair: NetnsPair, tmp_path: Path) -> Iterator[tuple[ServerProcess, ProbeAgent]]:
    server = ServerProcess(tmp_path, netns=netns_pair.ns_a, host=netns_pair.addr_a, heartbeat_interval_s=1.0)
    agent = ProbeAgent(tmp_path, "probe", netns=netns_pair.ns_b, interfaces=(netns_pair.if_b,))
    agent.env.update(DELIVERY_ENV)
    server.start()
    try:
        joined = agent.join(server, server.token())
        assert joined.returncode == 0, joined.stderr
        yield server, agent
    finally:
        agent.cleanup()
        server.stop()


def traffic(netns_pair: NetnsPair, count: int, start: int) -> subprocess.Popen[str]:
    argv = netns_pair.frames_argv("ipv6", count, start=start, size=FRAME_BYTES, rate=BUSY_RATE_PPS)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, text=True)


def landed(server: ServerProcess) -> list[Path]:
    return sorted((server.data_dir / "landing").rglob("*.pcap"))


def partial_uploads(server: ServerProcess) -> list[Path]:
    return [p for p in (server.data_dir / "receiving").rglob("*.part") if p.stat().st_size > 0]


def test_uploads_wait_for_idle_pause_when_busy_and_lose_nothing(
    fleet: tuple[ServerProcess, ProbeAgent], netns_pair: NetnsPair
) -> None:
    server, agent = fleet
    agent.start()
    first = traffic(netns_pair, 12 * BUSY_RATE_PPS, start=0)  # twelve busy seconds
    try:
        wait_for(lambda: list((agent.spool / "ready").glob("*.pcap")), 15, "a sealed file while busy")
        time.sleep(3)
        assert landed(server) == [], "nothing may upload while the link is busy"
        assert first.wait(timeout=60) == 0
        traffic_ended = time.monotonic()

        # Idle now: the hold time passes and the oldest file goes; catch one mid-way and make the
        # link busy again.
        wait_for(lambda: partial_uploads(server) or landed(server), 30, "an upload to start")
        started_after_s = time.monotonic() - traffic_ended
        second = traffic(netns_pair, 8 * BUSY_RATE_PPS, start=100_000)
        wait_for(lambda: "link busy: pausing the upload" in agent.log_path.read_text(), 20, "a pause")
        held = {p.name: p.stat().st_size for p in partial_uploads(server)}
        assert held, "the paused upload keeps its partial file on the server"
        time.sleep(2)
        assert {p.name: p.stat().st_size for p in partial_uploads(server)} == held  # nothing moves while busy
        assert second.wait(timeout=60) == 0
    finally:
        for process in (first, locals().get("second")):
            if isinstance(process, subprocess.Popen) and process.poll() is None:
                process.kill()
                process.wait()

    # Idle again: everything sealed so far lands, the paused file resumed from its offset.
    sealed_before_stop = wait_for(
        lambda: not list((agent.spool / "ready").glob("*.pcap")) and landed(server),
        120,
        "the backlog to drain",
    )
    assert started_after_s < 30
    assert agent.stop() == 0
    # The file open at stop was sealed on the way out; one more run delivers it.
    agent.start()
    wait_for(lambda: not list((agent.spool / "ready").glob("*.pcap")), 60, "the last file to land")
    assert agent.stop() == 0

    indexes = []
    for path in landed(server):
        with open(path, "rb") as stream:
            indexes += [udp_index(frame) for _ts, frame in dpkt.pcap.Reader(stream)]
    sent = list(range(12 * BUSY_RATE_PPS)) + list(range(100_000, 100_000 + 8 * BUSY_RATE_PPS))
    assert sorted(i for i in indexes if i >= 0) == sent  # every packet sent is in the landed pcaps, once
    assert len(sealed_before_stop) >= 3
