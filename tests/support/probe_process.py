"""``survey6-probe capture`` as a real process inside a test namespace, and readers for what it wrote."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import dpkt

from support.netns import NetnsPair

PROBE = str(Path(sys.executable).with_name("survey6-probe"))
START_TIMEOUT_S = 20.0
TEST_UDP_PORT = 33_333  # frames.py
STOP_TIMEOUT_S = 30.0


class ProbeCapture:
    """Runs the capture command in host B of a namespace pair, capturing on B's veth end."""

    def __init__(self, pair: NetnsPair, spool: Path, *args: str) -> None:
        self.argv = ["ip", "netns", "exec", pair.ns_b, PROBE, "capture", "-i", pair.if_b, "-o", str(spool),
                     *args]  # fmt: skip
        self.process: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr = ""

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    self.wait()
                    raise RuntimeError(f"capture exited early: {self.stderr}") from None
                continue
            if _message(line) == "capturing":
                return
        raise RuntimeError("capture did not start in time")

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout.append(line)
            self.lines.put(line)

    def stop(self, sig: int = signal.SIGINT) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.wait()

    def wait(self) -> int:
        assert self.process is not None
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._pump_thread.join(timeout=5)
        assert self.process.stderr is not None and self.process.stdout is not None
        self.stderr = self.process.stderr.read()
        self.process.stderr.close()
        self.process.stdout.close()
        return self.process.returncode

    def kill_if_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.wait()


def _message(line: str) -> str:
    try:
        return str(json.loads(line).get("msg", ""))
    except (ValueError, AttributeError):
        return ""


@dataclass
class SealedFile:
    pcap: Path
    metadata: dict[str, object]
    indexes: list[int]  # the index in each test frame's UDP payload, in file order
    records: int
    other_ipv6: int  # IPv6 packets that are not test frames: the link's own chatter (MLD reports)


def read_spool(spool: Path) -> list[SealedFile]:
    """Every sealed file in the spool's ready/ area, in sequence order, with its packets' indexes."""
    files = []
    for pcap in sorted((spool / "ready").glob("*.pcap")):
        metadata = json.loads(pcap.with_suffix(".json").read_text())
        indexes, records, other = [], 0, 0
        with open(pcap, "rb") as stream:
            for _ts, frame in dpkt.pcap.Reader(stream):
                records += 1
                index = udp_index(frame)
                if index >= 0:
                    indexes.append(index)
                elif is_ipv6(frame):
                    other += 1
                else:
                    raise AssertionError(
                        f"{pcap.name}: captured a packet that is not IPv6: {frame[:40].hex()}"
                    )
        files.append(SealedFile(pcap, metadata, indexes, records, other))
    return files


def is_ipv6(frame: bytes) -> bool:
    return isinstance(dpkt.ethernet.Ethernet(frame).data, dpkt.ip6.IP6)


def udp_index(frame: bytes) -> int:
    """The 8-byte index at the start of the UDP payload of an Ethernet (optionally VLAN) IPv6 frame."""
    eth = dpkt.ethernet.Ethernet(frame)
    ip6 = eth.data
    if not isinstance(ip6, dpkt.ip6.IP6) or not isinstance(ip6.data, dpkt.udp.UDP):
        return -1
    if ip6.data.dport != TEST_UDP_PORT:
        return -1
    return int.from_bytes(bytes(ip6.data.data)[:8], "big")
