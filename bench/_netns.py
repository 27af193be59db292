"""A private, silent veth link between two network namespaces, and the flood sender that runs on it.

The link carries no IPv6 of its own: IPv6 is disabled on both ends, so neither host sends router
solicitations, MLD reports or neighbour discovery, and the receiving host drops every IPv6 frame the
moment it arrives (no routing, no ICMPv6 error). Every frame a capture sees on it is a flood frame.
Namespaces are deleted by ``destroy()``, which the caller runs in a ``finally``.
"""

from __future__ import annotations

import ctypes
import json
import secrets
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMMAND_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1
FLOOD_SOURCE = Path(__file__).with_name("flood.c")
FLOOD_EXTRA_S = 10.0  # the flood's own time limit plus this is when the harness gives up on it


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the harness dies, so nothing outlives a crashed run."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run(argv: list[str], timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class LinkCounters:
    """Packets the sender's end transmitted and the capture end received (kernel interface counters)."""

    tx_packets: int
    tx_dropped: int
    rx_packets: int
    rx_dropped: int

    def since(self, earlier: LinkCounters) -> LinkCounters:
        return LinkCounters(
            self.tx_packets - earlier.tx_packets,
            self.tx_dropped - earlier.tx_dropped,
            self.rx_packets - earlier.rx_packets,
            self.rx_dropped - earlier.rx_dropped,
        )


@dataclass
class Link:
    """Namespace ``send`` (interface ``send_if``) joined by a veth pair to ``capture`` (``capture_if``)."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    created: list[str] = field(default_factory=list)

    @property
    def send_ns(self) -> str:
        return f"s6b-{self.tag}-a"

    @property
    def capture_ns(self) -> str:
        return f"s6b-{self.tag}-b"

    @property
    def send_if(self) -> str:
        return f"s6b{self.tag}a"  # interface names are limited to 15 characters

    @property
    def capture_if(self) -> str:
        return f"s6b{self.tag}b"

    def create(self) -> None:
        for ns in (self.send_ns, self.capture_ns):
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
        run(["ip", "link", "add", self.send_if, "netns", self.send_ns, "type", "veth",
             "peer", "name", self.capture_if, "netns", self.capture_ns])  # fmt: skip
        for ns, ifname in ((self.send_ns, self.send_if), (self.capture_ns, self.capture_if)):
            # Before the link comes up, so that not even one MLD report or solicitation is sent.
            self.exec(ns, ["sysctl", "-q", "-w", f"net.ipv6.conf.{ifname}.disable_ipv6=1"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", ifname, "up"])

    def destroy(self) -> None:
        # Deleting a namespace deletes its end of the veth pair, and with it the peer.
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=COMMAND_TIMEOUT_S)
        self.created.clear()

    def exec(self, ns: str, argv: list[str]) -> str:
        return run(["ip", "netns", "exec", ns, *argv])

    def capture_mac(self) -> str:
        return self.exec(self.capture_ns, ["cat", f"/sys/class/net/{self.capture_if}/address"]).strip()

    def counters(self) -> LinkCounters:
        tx = self._stats(self.send_ns, self.send_if)["tx"]
        rx = self._stats(self.capture_ns, self.capture_if)["rx"]
        return LinkCounters(tx["packets"], tx["dropped"], rx["packets"], rx["dropped"])

    @staticmethod
    def _stats(ns: str, ifname: str) -> dict[str, Any]:
        [entry] = json.loads(run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", ifname]))
        stats: dict[str, Any] = entry["stats64"]
        return stats


def build_flood(work_dir: Path) -> Path:
    """Compiles bench/flood.c into ``work_dir``; returns the executable."""
    binary = work_dir / "flood"
    run(["gcc", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(FLOOD_SOURCE)], timeout_s=120)
    return binary


@dataclass(frozen=True)
class FloodResult:
    sent: int
    elapsed_s: float
    rate_pps: float
    send_errors: int


def flood(
    link: Link, binary: Path, *, frame_bytes: int, rate_pps: int, count: int, max_s: float, cpu: int
) -> FloodResult:
    """Runs one bounded flood from the sending namespace, pinned to ``cpu``; returns what was sent."""
    argv = ["ip", "netns", "exec", link.send_ns, "taskset", "-c", str(cpu), str(binary), link.send_if,
            link.capture_mac(), str(frame_bytes), str(rate_pps), str(count), f"{max_s:.3f}"]  # fmt: skip
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=max_s + FLOOD_EXTRA_S, preexec_fn=die_with_parent
    )
    if result.returncode != 0:
        raise RuntimeError(f"flood failed ({result.returncode}): {result.stderr.strip()}")
    out = json.loads(result.stdout)
    return FloodResult(out["sent"], out["elapsed_ns"] / 1e9, out["rate_pps"], out["send_errors"])
