"""Bounded IPv6 UDP sender and receiver, run inside test namespaces.

    udp_tool.py send --dst fd00::2 --port 9000 --count 1000 [--size 64] [--rate 0] [--timeout 30]
    udp_tool.py receive --port 9000 --count 1000 [--timeout 20]

Every loop is bounded by a count and a deadline and stops by itself.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

READY_LINE = "ready"


def send(dst: str, port: int, count: int, size: int, rate_pps: float, timeout_s: float) -> int:
    payload = bytearray(max(size, 8))
    deadline = time.monotonic() + timeout_s
    interval = 1.0 / rate_pps if rate_pps > 0 else 0.0
    sent = 0
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.connect((dst, port))
        next_at = time.monotonic()
        while sent < count and time.monotonic() < deadline:
            payload[0:8] = sent.to_bytes(8, "big")  # sequence number, for order checks
            try:
                sock.send(payload)
            except (BlockingIOError, ConnectionRefusedError, OSError):
                time.sleep(0.001)  # send buffer full, or an ICMP error from the peer: retry
                continue
            sent += 1
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    return sent


def receive(port: int, count: int, timeout_s: float) -> int:
    received = 0
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("::", port))
        print(READY_LINE, flush=True)
        while received < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                sock.recv(65535)
            except TimeoutError:
                break
            received += 1
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("send")
    s.add_argument("--dst", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--rate", type=float, default=0.0, help="packets per second; 0 = as fast as possible")
    s.add_argument("--timeout", type=float, default=60.0)
    r = sub.add_parser("receive")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    if args.mode == "send":
        print(send(args.dst, args.port, args.count, args.size, args.rate, args.timeout))
    else:
        print(receive(args.port, args.count, args.timeout))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
