"""Two network namespaces joined by a veth pair: a private IPv6 link for capture tests.

Host A has fd00::1/64, host B fd00::2/64. The link is kept quiet so that tests can count every
packet on it: no link-local addresses (so no router solicitations or MLD from them), no duplicate
address detection, and static neighbour entries (so no neighbour discovery). Namespaces are
removed when the fixture ends, whatever the test did.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ADDRESS_A = "fd00::1"
ADDRESS_B = "fd00::2"
PREFIX_LEN = 64
SETTLE_S = 0.2  # the link's own start-up chatter (MLD reports) is over by then
UDP_TOOL = Path(__file__).with_name("udp_tool.py")
FRAMES_TOOL = Path(__file__).with_name("frames.py")


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


@dataclass
class NetnsPair:
    """The two namespaces, their veth interface names and addresses."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    created: list[str] = field(default_factory=list)

    @property
    def ns_a(self) -> str:
        return f"s6t-{self.tag}-a"

    @property
    def ns_b(self) -> str:
        return f"s6t-{self.tag}-b"

    @property
    def if_a(self) -> str:
        return f"s6{self.tag}a"  # interface names are limited to 15 characters

    @property
    def if_b(self) -> str:
        return f"s6{self.tag}b"

    addr_a: str = ADDRESS_A
    addr_b: str = ADDRESS_B

    def create(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("network namespace tests need root (CAP_SYS_ADMIN); CI runs as root")
        for ns in (self.ns_a, self.ns_b):
            _run(["ip", "netns", "add", ns])
            self.created.append(ns)
        _run(["ip", "link", "add", self.if_a, "netns", self.ns_a, "type", "veth",
              "peer", "name", self.if_b, "netns", self.ns_b])  # fmt: skip
        macs = {}
        for ns, ifname, addr in ((self.ns_a, self.if_a, self.addr_a), (self.ns_b, self.if_b, self.addr_b)):
            for sysctl in (
                f"net.ipv6.conf.{ifname}.addr_gen_mode=1",  # no link-local address
                f"net.ipv6.conf.{ifname}.router_solicitations=0",
                f"net.ipv6.conf.{ifname}.accept_ra=0",
                f"net.ipv6.conf.{ifname}.dad_transmits=0",
                # Unsolicited MLD reports (sent even with multicast off) all go out within milliseconds
                # of set-up instead of trickling in for seconds while a test counts packets.
                f"net.ipv6.conf.{ifname}.mldv1_unsolicited_report_interval=1",
                f"net.ipv6.conf.{ifname}.mldv2_unsolicited_report_interval=1",
            ):
                self.exec(ns, ["sysctl", "-q", "-w", sysctl])
            self.exec(ns, ["ip", "link", "set", "lo", "up"])
            self.exec(ns, ["ip", "-6", "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", ifname, "nodad"])
            self.exec(ns, ["ip", "link", "set", ifname, "up"])
            macs[ifname] = self.exec(ns, ["cat", f"/sys/class/net/{ifname}/address"]).strip()
        self.exec(self.ns_a, ["ip", "-6", "neigh", "replace", self.addr_b, "lladdr", macs[self.if_b],
                              "dev", self.if_a, "nud", "permanent"])  # fmt: skip
        self.exec(self.ns_b, ["ip", "-6", "neigh", "replace", self.addr_a, "lladdr", macs[self.if_a],
                              "dev", self.if_b, "nud", "permanent"])  # fmt: skip
        time.sleep(SETTLE_S)

    def destroy(self) -> None:
        # Deleting a namespace deletes its end of the veth pair, and with it the peer.
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        self.created.clear()

    def exec(self, ns: str, argv: list[str]) -> str:
        """Runs a command inside a namespace; returns its stdout, raises on failure."""
        return _run(["ip", "netns", "exec", ns, *argv])

    def popen(self, ns: str, argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], text=True, **kwargs)  # type: ignore[call-overload]

    def udp_send(self, ns: str, dst: str, port: int, count: int, size: int = 64, **options: str) -> int:
        """Sends `count` UDP datagrams from a namespace; returns how many were sent."""
        extra = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
        out = self.exec(ns, [sys.executable, str(UDP_TOOL), "send", "--dst", dst, "--port", str(port),
                             "--count", str(count), "--size", str(size), *extra])  # fmt: skip
        return int(out.strip())

    def mac(self, ns: str, ifname: str) -> str:
        return self.exec(ns, ["cat", f"/sys/class/net/{ifname}/address"]).strip()

    def frames_argv(
        self, kind: str, count: int, *, start: int = 0, size: int = 64, rate: float = 0
    ) -> list[str]:
        return ["ip", "netns", "exec", self.ns_a, sys.executable, str(FRAMES_TOOL), "--interface", self.if_a,
                "--kind", kind, "--dst-mac", self.mac(self.ns_b, self.if_b), "--count", str(count),
                "--start", str(start), "--size", str(size), "--rate", str(rate)]  # fmt: skip

    def send_frames(self, kind: str, count: int, *, start: int = 0, size: int = 64, rate: float = 0) -> int:
        """Writes `count` raw frames of a kind from host A's interface onto the link to host B."""
        out = _run(self.frames_argv(kind, count, start=start, size=size, rate=rate))
        return int(out.strip())

    def udp_receiver(self, ns: str, port: int, count: int, timeout_s: float = 20.0) -> subprocess.Popen[str]:
        """Starts a receiver that prints how many datagrams arrived (stops at count or timeout)."""
        return self.popen(ns, [sys.executable, str(UDP_TOOL), "receive", "--port", str(port),
                               "--count", str(count), "--timeout", str(timeout_s)],
                          stdout=subprocess.PIPE)  # fmt: skip
