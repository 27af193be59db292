"""Facts about the probe host and its interfaces, read from /proc, /sys and os-release."""

from __future__ import annotations

import ipaddress
import logging
import os
import platform
import socket
from pathlib import Path

from survey6 import __version__
from survey6.wire.v1 import capture_pb2

log = logging.getLogger(__name__)

SYS_CLASS_NET = Path("/sys/class/net")
PROC_IF_INET6 = Path("/proc/net/if_inet6")
OS_RELEASE = Path("/etc/os-release")


def host_facts(interfaces: list[str], link_types: dict[str, int] | None = None) -> capture_pb2.HostFacts:
    """Host name, OS, kernel, software version and the facts of each named interface."""
    return capture_pb2.HostFacts(
        hostname=socket.gethostname(),
        os_name=_os_name(),
        kernel_release=platform.release(),
        machine=platform.machine(),
        software_version=__version__,
        interfaces=[interface_facts(name, (link_types or {}).get(name, 0)) for name in interfaces],
    )


def interface_facts(name: str, link_type: int = 0) -> capture_pb2.InterfaceFacts:
    """MAC address, IPv6 prefixes and link speed of one interface; unknown facts stay empty."""
    return capture_pb2.InterfaceFacts(
        name=name,
        mac_address=_read_text(SYS_CLASS_NET / name / "address").lower(),
        link_type=link_type,
        ipv6_prefixes=ipv6_prefixes(name),
        link_speed_mbps=link_speed_mbps(name),
    )


def link_speed_mbps(name: str) -> int:
    """The driver's link speed; 0 when it reports none (veth, many virtual NICs, a link down)."""
    try:
        speed = int(_read_text(SYS_CLASS_NET / name / "speed") or "0")
    except ValueError:
        return 0
    return max(speed, 0)  # some drivers report -1 for "unknown"


def ipv6_prefixes(name: str) -> list[str]:
    """The prefixes (network/length) of the interface's IPv6 addresses, link-local excluded."""
    prefixes: list[str] = []
    try:
        lines = PROC_IF_INET6.read_text().splitlines()
    except OSError:
        return prefixes  # IPv6 disabled on this host
    for line in lines:
        fields = line.split()
        if len(fields) != 6 or fields[5] != name:
            continue
        address = ipaddress.IPv6Address(int(fields[0], 16))
        if address.is_link_local:
            continue
        network = ipaddress.IPv6Network((address, int(fields[2], 16)), strict=False)
        if str(network) not in prefixes:
            prefixes.append(str(network))
    return prefixes


def interface_counters(name: str) -> tuple[int, int]:
    """Received and transmitted bytes of an interface since boot; (0, 0) when unreadable."""
    stats = SYS_CLASS_NET / name / "statistics"
    try:
        return int(_read_text(stats / "rx_bytes")), int(_read_text(stats / "tx_bytes"))
    except ValueError:
        return 0, 0


def _os_name() -> str:
    try:
        for line in OS_RELEASE.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "PRETTY_NAME":
                return value.strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def interface_exists(name: str) -> bool:
    return os.path.exists(SYS_CLASS_NET / name)
