"""Raw Ethernet frames onto one interface of a test namespace, to check what the capture filter keeps.

    frames.py --interface IF --dst-mac MAC --kind ipv6|vlan-ipv6|ipv4|arp --count N [--start S] [--rate R]

Frames are written with an AF_PACKET socket straight onto the veth link: they never leave the link,
whatever addresses they carry (only ULA fd00::/64 for IPv6 and the benchmarking range 198.18.0.0/15
for IPv4 are used). Each IPv6 frame carries a UDP datagram whose first 8 payload bytes are its
index, from --start, so tests can check order.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import time

ETH_P_IPV6 = 0x86DD
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
UDP_PORT = 33_333
VLAN_ID = 100
SRC_V6 = ipaddress.IPv6Address("fd00::1").packed
# Not host B's address: B (no forwarding) drops these silently, so no ICMPv6 error adds to the count.
DST_V6 = ipaddress.IPv6Address("fd00::ff").packed
SRC_V4 = ipaddress.IPv4Address("198.18.0.1").packed
DST_V4 = ipaddress.IPv4Address("198.18.0.2").packed


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv6_udp(index: int, size: int) -> bytes:
    payload = index.to_bytes(8, "big") + bytes(max(size - 8, 0))
    length = 8 + len(payload)
    pseudo = SRC_V6 + DST_V6 + struct.pack("!I3xB", length, 17)
    udp = struct.pack("!HHHH", UDP_PORT, UDP_PORT, length, 0) + payload
    udp = udp[:6] + struct.pack("!H", _checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    header = struct.pack("!IHBB", 6 << 28, length, 17, 64) + SRC_V6 + DST_V6
    return header + udp


def ipv4_udp(index: int, size: int) -> bytes:
    payload = index.to_bytes(8, "big") + bytes(max(size - 8, 0))
    udp = struct.pack("!HHHH", UDP_PORT, UDP_PORT, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, index & 0xFFFF, 0, 64, 17, 0, SRC_V4, DST_V4)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def arp_request(src_mac: bytes) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, src_mac, SRC_V4, b"\0" * 6, DST_V4)


def frame(kind: str, index: int, size: int, src_mac: bytes, dst_mac: bytes) -> bytes:
    if kind == "ipv6":
        return dst_mac + src_mac + struct.pack("!H", ETH_P_IPV6) + ipv6_udp(index, size)
    if kind == "vlan-ipv6":
        tag = struct.pack("!HHH", ETH_P_8021Q, VLAN_ID, ETH_P_IPV6)
        return dst_mac + src_mac + tag + ipv6_udp(index, size)
    if kind == "ipv4":
        return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + ipv4_udp(index, size)
    if kind == "arp":
        return b"\xff" * 6 + src_mac + struct.pack("!H", ETH_P_ARP) + arp_request(src_mac)
    raise ValueError(kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--dst-mac", required=True)
    parser.add_argument("--kind", required=True, choices=["ipv6", "vlan-ipv6", "ipv4", "arp"])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0, help="frames per second; 0 = as fast as possible")
    args = parser.parse_args()
    with open(f"/sys/class/net/{args.interface}/address") as stream:
        src_mac = bytes.fromhex(stream.read().strip().replace(":", ""))
    dst_mac = bytes.fromhex(args.dst_mac.replace(":", ""))
    sent = 0
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    next_at = time.monotonic()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((args.interface, 0))
        for index in range(args.start, args.start + args.count):
            sock.send(frame(args.kind, index, args.size, src_mac, dst_mac))
            sent += 1
            if interval:
                next_at += interval
                time.sleep(max(next_at - time.monotonic(), 0))
    print(sent)


if __name__ == "__main__":
    main()
