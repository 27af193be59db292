"""Counted IPv6 traffic for the soak, run as a script in the traffic namespace (standard library only).

    traffic.py --config FILE

FILE (JSON): {"links": [{"probe": 0, "interface": "t0"}, ...], "rate_pps": 200, "duration_s": 120,
"log": "sent.log", "seed": 7}. For each link, frames go out of ``interface`` to the probe's capture
interface at ``rate_pps``: TCP SYNs of a scan, DNS queries and ICMPv6 echo requests, as a mirror
port shows them (addressed to another host's MAC, so the probe's kernel neither answers nor keeps
them; the capture sees them all). Every frame carries its id, 1, 2, 3 ... per probe, in the IPv6
flow label, and comes from a source in ``fd00:5a::/64``, so that a packet in a capture or in Parquet
names itself. The log gets one line per batch: ``probe first_id last_id time_ns errors``. SIGTERM
stops the sending early; the last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import struct
import sys
import time
from typing import Any

SOURCE_PREFIX = bytes.fromhex("fd00005a000000000000")  # fd00:5a::/64 (first 10 bytes of 16)
SCANNER_IID = bytes.fromhex("05ca0001")
CLIENT_IID = bytes.fromhex("00530001")
MIRROR_DST_MAC = bytes.fromhex("025a000000fe")  # "another host": the probe's kernel drops what it sees
SOURCE_MAC = bytes.fromhex("025a00000001")
ETH_P_IPV6 = 0x86DD
MAX_ID = (1 << 20) - 1  # the flow label's 20 bits
TICK_S = 0.02
HOP_LIMIT = 64
SCAN_PORTS = (22, 80, 443, 8080, 3389)
DNS_NAMES = ("www.example.com", "mail.example.org", "time.example.net", "updates.example.com")
ECHO_PAYLOAD_BYTES = 56


def destination(probe: int, iid: int) -> bytes:
    """An address in the probe's surveyed /64, fd00:5a:<probe + 1>::/64."""
    return bytes.fromhex(f"fd00005a{probe + 1:04x}0000") + iid.to_bytes(8, "big")


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv6_frame(flow_id: int, src: bytes, dst: bytes, next_header: int, payload: bytes) -> bytes:
    pseudo = src + dst + struct.pack("!I3xB", len(payload), next_header)
    csum_offset = {6: 16, 17: 6, 58: 2}[next_header]
    total = checksum(pseudo + payload)
    payload = payload[:csum_offset] + struct.pack("!H", total) + payload[csum_offset + 2 :]
    header = struct.pack("!IHBB", (6 << 28) | flow_id, len(payload), next_header, HOP_LIMIT) + src + dst
    return MIRROR_DST_MAC + SOURCE_MAC + struct.pack("!H", ETH_P_IPV6) + header + payload


def frame(probe: int, flow_id: int, rng: random.Random) -> bytes:
    """One frame of the mix: 70 % scan SYNs, 20 % DNS queries, 10 % echo requests."""
    roll = rng.random()
    if roll < 0.7:
        src = SOURCE_PREFIX + bytes(2) + SCANNER_IID
        tcp = struct.pack("!HHIIBBHHH", 40_000 + probe, SCAN_PORTS[flow_id % len(SCAN_PORTS)],
                          rng.getrandbits(32), 0, 6 << 4, 0x02, 1024, 0, 0)  # fmt: skip
        return ipv6_frame(flow_id, src, destination(probe, flow_id), 6, tcp + struct.pack("!BBH", 2, 4, 1460))
    src = SOURCE_PREFIX + bytes(2) + CLIENT_IID
    if roll < 0.9:
        name = DNS_NAMES[flow_id % len(DNS_NAMES)]
        qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        dns = struct.pack("!HHHHHH", flow_id & 0xFFFF, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 28, 1)
        udp = struct.pack("!HHHH", 50_000 + probe, 53, 8 + len(dns), 0) + dns
        return ipv6_frame(flow_id, src, destination(probe, 0x53), 17, udp)
    echo = struct.pack("!BBHHH", 128, 0, 0, probe, flow_id & 0xFFFF) + bytes(ECHO_PAYLOAD_BYTES)
    return ipv6_frame(flow_id, src, destination(probe, 1), 58, echo)


class Link:
    def __init__(self, probe: int, interface: str, seed: int) -> None:
        self.probe = probe
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.bind((interface, 0))
        self.rng = random.Random(seed * 1000 + probe)
        self.sent = 0
        self.errors = 0

    def send_until(self, target: int, log: Any) -> None:
        first = self.sent + 1
        errors = 0
        while self.sent < min(target, MAX_ID):
            self.sent += 1
            try:
                self.sock.send(frame(self.probe, self.sent, self.rng))
            except OSError:
                errors += 1  # a link that is down: the id is sent all the same, and lost
        if self.sent >= first:
            self.errors += errors
            log.write(f"{self.probe} {first} {self.sent} {time.time_ns()} {errors}\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    config = json.loads(open(args.config, encoding="utf-8").read())
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        links = [
            Link(int(link["probe"]), str(link["interface"]), int(config["seed"])) for link in config["links"]
        ]
    except OSError as exc:
        print(f"soak traffic: error: {exc}", file=sys.stderr)
        return 1
    rate = float(config["rate_pps"])
    start = time.monotonic()
    end = start + float(config["duration_s"])
    with open(config["log"], "a", encoding="utf-8", buffering=1) as log:
        print("sending", flush=True)
        while not stopping and (now := time.monotonic()) < end:
            for link in links:
                link.send_until(int((now - start) * rate), log)
            time.sleep(TICK_S)
    for link in links:
        link.sock.close()
    summary = {"sent": {str(link.probe): link.sent for link in links},
               "send_errors": {str(link.probe): link.errors for link in links},
               "duration_s": round(time.monotonic() - start, 3)}  # fmt: skip
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
