"""Bounded, realistic IPv6 traffic for ``./scripts/demo``, run inside the demo's network namespaces.

    demo_traffic.py respond [--lifetime 600]
        In the probe's namespace: a DNS responder on UDP 53 and a listener on TCP 443, so the scan and
        the queries get real answers (the kernel answers the pings, closed ports with RST).
    demo_traffic.py generate --duration 20 --client fd00::1 --resolver fd00::2 \\
            --scanner fd00::5ca:1 --scanner fd00::5ca:2 --scan-prefix fd00:0:0:1::
        In the other namespace: TCP SYN scans of a /64 (one low-byte sweep, one random sweep), DNS
        queries and ICMPv6 echo. Prints one JSON line with what it sent and what came back.

Only standard-library sockets; every packet goes to ULA addresses on the demo's veth link.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

DNS_PORT = 53
HTTPS_PORT = 443
SCAN_PORTS = (22, 80, 443, 8080)
SCAN_RATE_PPS = 60.0  # per scanner: with the replies, about 200 kbit/s on the link, enough to make it busy
DNS_RATE_QPS = 8.0
PING_RATE_PPS = 4.0
TICK_S = 0.02
SETTLE_S = 0.5  # after the last packet sent, time for the last answers to come back
MAX_PACKETS = 50_000  # a hard bound whatever the duration asks for
ECHO_PAYLOAD_BYTES = 56  # what ping(8) sends
TCP_MSS = 1460
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
DNS_ANSWER_TTL_S = 300
RESPONDER_LIFETIME_S = 600.0  # stops by itself should the demo be killed hard

# (name, type) pairs a small office network asks for; example.* names never resolve anywhere real.
DNS_QUESTIONS = (
    ("www.example.com", 28),
    ("www.example.com", 1),
    ("mail.example.org", 15),
    ("imap.example.org", 28),
    ("_ldap._tcp.corp.example.net", 33),
    ("time.example.net", 28),
    ("updates.example.com", 28),
    ("cdn.static.example.com", 28),
    ("example.org", 16),
    ("vpn.example.net", 28),
)
DNS_TYPES = {1: "A", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV"}


def _encode_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


def dns_query(query_id: int, name: str, qtype: int) -> bytes:
    return (
        struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
        + _encode_name(name)
        + struct.pack("!HH", qtype, 1)
    )


def dns_answer(query: bytes) -> bytes | None:
    """The answer to a query: an AAAA record for AAAA questions, no data for the rest (NOERROR)."""
    if len(query) < 17:
        return None
    query_id, _flags, qdcount = struct.unpack_from("!HHH", query)
    end = 12
    while end < len(query) and query[end] != 0:
        end += query[end] + 1
    if qdcount != 1 or end + 5 > len(query):
        return None
    question = query[12 : end + 5]
    (qtype,) = struct.unpack_from("!H", query, end + 1)
    answers = b""
    if qtype == 28:
        address = ipaddress.IPv6Address("fd00:0:0:2::").packed[:8] + random.randbytes(8)
        answers = struct.pack("!HHHIH", 0xC00C, 28, 1, DNS_ANSWER_TTL_S, 16) + address
    header = struct.pack("!HHHHHH", query_id, 0x8180, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def tcp_syn(source_port: int, port: int) -> bytes:
    """A SYN with an MSS option, as nmap sends; the kernel fills in the checksum (IPV6_CHECKSUM)."""
    options = struct.pack("!BBH", 2, 4, TCP_MSS)
    header = struct.pack("!HHIIBBHHH", source_port, port, random.getrandbits(32), 0, 6 << 4, 0x02, 1024, 0, 0)
    return header + options


def echo_request(identifier: int, sequence: int) -> bytes:
    # The kernel computes ICMPv6 checksums on raw ICMPv6 sockets.
    return struct.pack("!BBHHH", ICMPV6_ECHO_REQUEST, 0, 0, identifier, sequence) + bytes(ECHO_PAYLOAD_BYTES)


class Scanner:
    """One scanning source: a low-byte sweep (::1, ::2, ...) or random interface IDs in a /64."""

    def __init__(self, source: str, prefix: str, sweep: str) -> None:
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_CHECKSUM, 16)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers are the kernel's business
        self.sock.bind((source, 0))
        self.network = int(ipaddress.IPv6Address(prefix))
        self.sweep = sweep
        self.source_port = random.randrange(40_000, 60_000)
        self.sent = 0

    def send_one(self) -> None:
        index = self.sent // len(SCAN_PORTS)
        iid = index + 1 if self.sweep == "low-byte" else random.getrandbits(64)
        target = str(ipaddress.IPv6Address(self.network | iid))
        self.sock.sendto(tcp_syn(self.source_port, SCAN_PORTS[self.sent % len(SCAN_PORTS)]), (target, 0))
        self.sent += 1


def generate(args: argparse.Namespace) -> dict[str, Any]:
    scanners = [
        Scanner(s, args.scan_prefix, "low-byte" if i == 0 else "random") for i, s in enumerate(args.scanner)
    ]
    resolver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    resolver.bind((args.client, 0))
    pinger = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    pinger.bind((args.client, 0))
    identifier = random.getrandbits(16)
    counts = {"tcp_syn": 0, "dns_queries": 0, "icmpv6_echo": 0, "dns_answers": 0, "echo_replies": 0}
    queries: dict[str, int] = {}
    start = time.monotonic()
    end = start + args.duration
    while time.monotonic() < end and sum(counts.values()) < MAX_PACKETS:
        elapsed = time.monotonic() - start
        for scanner in scanners:
            while scanner.sent < elapsed * SCAN_RATE_PPS:
                scanner.send_one()
        while counts["dns_queries"] < elapsed * DNS_RATE_QPS:
            name, qtype = DNS_QUESTIONS[counts["dns_queries"] % len(DNS_QUESTIONS)]
            resolver.sendto(dns_query(random.getrandbits(16), name, qtype), (args.resolver, DNS_PORT))
            counts["dns_queries"] += 1
            queries[f"{name} {DNS_TYPES[qtype]}"] = queries.get(f"{name} {DNS_TYPES[qtype]}", 0) + 1
        while counts["icmpv6_echo"] < elapsed * PING_RATE_PPS:
            pinger.sendto(echo_request(identifier, counts["icmpv6_echo"]), (args.resolver, 0))
            counts["icmpv6_echo"] += 1
        counts["tcp_syn"] = sum(s.sent for s in scanners)
        _collect(resolver, pinger, identifier, counts, TICK_S)
    settle_end = time.monotonic() + SETTLE_S
    while (left := settle_end - time.monotonic()) > 0:
        _collect(resolver, pinger, identifier, counts, left)
    for sock in (resolver, pinger, *(s.sock for s in scanners)):
        sock.close()
    return {"sent": counts, "dns_questions": queries, "duration_s": round(time.monotonic() - start, 3)}


def _collect(
    resolver: socket.socket, pinger: socket.socket, identifier: int, counts: dict[str, int], wait_s: float
) -> None:
    """Counts the answers that arrive within `wait_s`: DNS responses and our echo replies."""
    readable, _, _ = select.select([resolver, pinger], [], [], wait_s)
    for sock in readable:
        data = sock.recv(2048)
        if sock is resolver:
            counts["dns_answers"] += 1
        elif (
            len(data) >= 8
            and data[0] == ICMPV6_ECHO_REPLY
            and struct.unpack_from("!H", data, 4)[0] == identifier
        ):
            counts["echo_replies"] += 1


def respond(args: argparse.Namespace) -> None:
    dns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    dns.bind(("::", DNS_PORT))
    # Bound to :: so that it answers on every address of the scanned /64 (a local route in this namespace).
    https = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    https.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    https.bind(("::", HTTPS_PORT))
    https.listen(128)
    https.setblocking(False)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    deadline = time.monotonic() + args.lifetime
    while not stopping and time.monotonic() < deadline:
        try:
            readable, _, _ = select.select([dns, https], [], [], 0.5)
        except InterruptedError:
            continue
        for sock in readable:
            if sock is dns:
                query, peer = dns.recvfrom(2048)
                answer = dns_answer(query)
                if answer is not None:
                    dns.sendto(answer, peer)
            else:
                try:
                    connection, _ = https.accept()
                    connection.close()
                except BlockingIOError:
                    pass
    dns.close()
    https.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="send the traffic and print what was sent as JSON")
    gen.add_argument("--duration", type=float, required=True, help="seconds of traffic")
    gen.add_argument("--client", required=True, help="source of the DNS queries and pings")
    gen.add_argument("--resolver", required=True, help="where the DNS queries and pings go")
    gen.add_argument("--scanner", action="append", required=True, help="a scanning source (repeatable)")
    gen.add_argument("--scan-prefix", required=True, help="the /64 that is scanned, e.g. fd00:0:0:1::")
    res = commands.add_parser("respond", help="answer DNS on UDP 53 and listen on TCP 443 until SIGTERM")
    res.add_argument("--lifetime", type=float, default=RESPONDER_LIFETIME_S, help="stop after this many s")
    args = parser.parse_args()
    try:
        if args.command == "generate":
            print(json.dumps(generate(args)), flush=True)
        else:
            respond(args)
    except OSError as exc:
        print(f"demo_traffic: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
