"""The link-share part of bench/upload_bench.py: a veth link to a network namespace where the server
runs, paced background traffic on it, and a sampler of what the uploader sends.

The host end of the veth pair is the probe's link: the uploader's LinkMonitor reads its counters, the
upload leaves through it (tx), and the background traffic, sent from the namespace to a UDP socket on
the host, arrives on it (rx). IPv6 is disabled on both ends so the link carries nothing else but ARP.

    python bench/upload_link.py send HOST PORT RATE_BPS SECONDS    # the background sender (in the namespace)

The sender paces UDP datagrams whose frames are FRAME_BYTES long on the veth (Ethernet + IPv4 + UDP
+ payload, as the interface counters count them), in ticks of TICK_S, and prints what it sent as JSON.
"""

from __future__ import annotations

import json
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from survey6.probe.linkmonitor import LinkMonitor

COMMAND_TIMEOUT_S = 30.0
FRAME_BYTES = 1400  # background frames as the veth counts them
FRAME_OVERHEAD_BYTES = 14 + 20 + 8  # Ethernet, IPv4 and UDP headers
TICK_S = 0.002
SAMPLE_INTERVAL_S = 0.1
SENDER_EXTRA_S = 15.0  # the sender's own duration plus this is when the harness gives up on it


def run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


class VethLink:
    """Namespace ``ns`` joined to the host by a veth pair: ``host_if`` (host_addr) <-> ``ns_if`` (ns_addr)."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.ns = f"s6u-{self.tag}"
        self.host_if = f"s6u{self.tag}h"  # interface names are limited to 15 characters
        self.ns_if = f"s6u{self.tag}n"
        used = run(["ip", "-4", "-o", "addr", "show"])
        subnet = next(n for n in random.sample(range(256), 256) if f" 10.254.{n}." not in used)
        self.host_addr, self.ns_addr = f"10.254.{subnet}.1", f"10.254.{subnet}.2"
        self.created = False

    def create(self) -> None:
        run(["ip", "netns", "add", self.ns])
        self.created = True
        run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.ns])
        # Before the link comes up, so that not even one MLD report or router solicitation is sent.
        run(["sysctl", "-q", "-w", f"net.ipv6.conf.{self.host_if}.disable_ipv6=1"])
        run(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                "sysctl",
                "-q",
                "-w",
                f"net.ipv6.conf.{self.ns_if}.disable_ipv6=1",
            ]
        )
        run(["ip", "addr", "add", f"{self.host_addr}/30", "dev", self.host_if])
        run(["ip", "-n", self.ns, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if])
        run(["ip", "link", "set", self.host_if, "up"])
        run(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        run(["ip", "-n", self.ns, "link", "set", self.ns_if, "up"])

    def destroy(self) -> None:
        if self.created:
            # Deleting the namespace deletes its end of the veth pair, and with it the host's end.
            subprocess.run(["ip", "netns", "delete", self.ns], capture_output=True, timeout=COMMAND_TIMEOUT_S)
            self.created = False

    def counters(self) -> tuple[int, int]:
        """Bytes received and transmitted by the host's end so far."""
        stats = Path("/sys/class/net") / self.host_if / "statistics"
        return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())


# -- background traffic -----------------------------------------------------------------------------


class Background:
    """The sender below run in the namespace towards a UDP socket on the host (nothing reads it: the
    datagrams are counted on arrival and dropped, and no ICMP error goes back)."""

    def __init__(self, link: VethLink, rate_bps: float, seconds: float) -> None:
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sink.bind((link.host_addr, 0))
        port = self.sink.getsockname()[1]
        self.seconds = seconds
        self.argv = ["ip", "netns", "exec", link.ns, sys.executable, str(Path(__file__).resolve()), "send",
                     link.host_addr, str(port), f"{rate_bps:.0f}", f"{seconds:.3f}"]  # fmt: skip
        self.process: subprocess.Popen[str] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        # No preexec_fn: Popen then spawns without fork(), so gRPC's fork handlers stay out of it. The
        # sender stops by itself after its duration; stop() kills it earlier by its id.
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started_at = time.monotonic()

    def result(self) -> dict[str, Any]:
        """Waits for the sender; returns what it reports (frames, frame bytes, seconds, rate_bps)."""
        assert self.process is not None
        try:
            out, err = self.process.communicate(timeout=self.seconds + SENDER_EXTRA_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise RuntimeError("the background sender overran its time") from None
        finally:
            self.sink.close()
        if self.process.returncode != 0:
            raise RuntimeError(f"background sender failed: {err.strip()}")
        return dict(json.loads(out))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.sink.close()


def send(host: str, port: int, rate_bps: float, seconds: float) -> dict[str, Any]:
    payload = bytes(FRAME_BYTES - FRAME_OVERHEAD_BYTES)
    frames_per_s = rate_bps / (FRAME_BYTES * 8)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sent = errors = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * frames_per_s) + 1
        while sent < due:
            try:
                sock.send(payload)
            except OSError:
                errors += 1
            sent += 1
        time.sleep(TICK_S)
    elapsed = time.monotonic() - started
    return {
        "frames": sent,
        "send_errors": errors,
        "frame_bytes": FRAME_BYTES,
        "seconds": round(elapsed, 3),
        "rate_bps": round(sent * FRAME_BYTES * 8 / elapsed),
    }


# -- what the uploader sends ------------------------------------------------------------------------


class CountingMonitor(LinkMonitor):
    """survey6's LinkMonitor, also keeping the running total of the bytes the uploader reported."""

    own_total = 0

    def add_own_bytes(self, count: int) -> None:
        super().add_own_bytes(count)
        self.own_total += count


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the scenario started
    rx_bytes: int  # host end of the link: background (and the server's ACKs)
    tx_bytes: int  # host end of the link: the upload as the interface counts it
    app_bytes: int  # file bytes the uploader released to gRPC (its token bucket's unit)
    limit_bytes_per_s: float  # the rate the uploader allowed itself at that moment
    utilisation: float | None  # the monitor's smoothed utilisation, without the uploader's own bytes


class Sampler(threading.Thread):
    def __init__(
        self,
        link: VethLink,
        monitor: CountingMonitor,
        limit: Callable[[], float],
        origin: float,
    ) -> None:
        super().__init__(name="share-sampler", daemon=True)
        self.link, self.monitor, self.limit, self.origin = link, monitor, limit, origin
        self.samples: list[Sample] = []
        self.done = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.done.is_set():
            rx, tx = self.link.counters()
            now = time.monotonic()
            self.samples.append(
                Sample(
                    now - self.origin, rx, tx, self.monitor.own_total, self.limit(), self.monitor.utilisation
                )
            )
            next_at += SAMPLE_INTERVAL_S
            self.done.wait(max(next_at - time.monotonic(), 0.0))

    def stop(self) -> list[dict[str, Any]]:
        self.done.set()
        self.join(timeout=5)
        return [asdict(s) for s in self.samples]


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "send":
        sys.exit(f"usage: {sys.argv[0]} send HOST PORT RATE_BPS SECONDS")
    report = send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    print(json.dumps(report), flush=True)
