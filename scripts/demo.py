"""The whole survey6 pipeline on this machine, in one command (run through ``./scripts/demo``).

Starts Redis, the server, an aggregator worker and a probe in a network namespace; sends bounded,
realistic IPv6 traffic (TCP SYN scans of a /64, DNS, ICMPv6 echo, neighbour discovery) across the
veth link the probe captures; waits for the link to go idle and the uploads; lets the worker build the
datasets; prints a summary and the web UI's address and login. Ctrl-C stops everything it started and
removes what it created; a second Ctrl-C kills at once.

Layout (two namespaces, two veth pairs):

    [net ns] fd00::1 (+ scanners fd00::5ca:1, fd00::5ca:2) ──veth── fd00::2 [probe ns]  <- captured
                                                          (+ fd00:0:0:1::/64 local: the scanned range)
    [probe ns] <mgmt ULA>::2 ──veth── <mgmt ULA>::1 [this host]: server, Redis, worker, web UI

The probe's uploads go over the management link, so the captured link carries only the traffic.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

BIN = Path(sys.executable).parent  # the virtualenv's bin/: survey6-* live next to its python
TRAFFIC = Path(__file__).resolve().with_name("demo_traffic.py")
DEFAULT_DURATION_S = 20.0
MAX_DURATION_S = 120.0  # keeps the traffic bounded whatever is asked
START_TIMEOUT_S = 60.0
DELIVERY_TIMEOUT_S = 120.0
INGEST_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.2
PROGRESS_INTERVAL_S = 5.0
COMMAND_TIMEOUT_S = 60.0
TAIL_LINES = 8

LINK_CAPACITY_BPS = 1_000_000  # what the probe is told its link carries (a veth has no real speed)
LINK_COUNTERS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes")
# The probe is told its link carries 1 Mbit/s: the ~200 kbit/s of demo traffic make it busy, and it
# turns idle (under 10 %) a few seconds after the traffic stops.
PROBE_ENV = {
    "SURVEY6_DELIVERY__LINK_CAPACITY_BPS": str(LINK_CAPACITY_BPS),
    "SURVEY6_DELIVERY__IDLE_HOLD_S": "2",
    "SURVEY6_DELIVERY__SMOOTHING_S": "1",
    "SURVEY6_CAPTURE__ROTATE_INTERVAL_S": "5",
    "SURVEY6_SPOOL__MIN_FREE_BYTES": "0",
    "SURVEY6_HEARTBEAT__INTERVAL_S": "1",
    "SURVEY6_LOGGING__LEVEL": "DEBUG",  # the uploader's decisions: the summary shows why uploads started
}
SERVER_ENV = {"SURVEY6_LIVENESS__HEARTBEAT_INTERVAL_S": "1", "SURVEY6_QUEUE__DRAIN_INTERVAL_S": "1"}

TRAFFIC_PREFIX_LEN = 64
NET_ADDRESS = "fd00::1"
PROBE_ADDRESS = "fd00::2"
SCANNERS = ("fd00::5ca:1", "fd00::5ca:2")
SCAN_PREFIX = "fd00:0:0:1::"
TOP_SOURCES = 5

T = TypeVar("T")


class DemoError(Exception):
    """Anything that stops the demo; its message is the one line the user sees."""


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop and clean up."""


def run(argv: list[str], *, env: dict[str, str] | None = None, check: bool = True) -> str:
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env={**os.environ, **(env or {})}
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DemoError(f"{Path(argv[0]).name} failed: {exc}") from exc
    if check and result.returncode != 0:
        reason = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise DemoError(f"{' '.join(argv[:4])} ... failed: {reason[-1] if reason else result.returncode}")
    return result.stdout


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in lines)


class Demo:
    """Everything the demo started or created, so that cleanup removes exactly that."""

    def __init__(self, work_dir: Path, tag: str) -> None:
        self.work = work_dir
        self.tag = tag
        self.ns_net = f"s6demo-{tag}-net"
        self.ns_probe = f"s6demo-{tag}-probe"
        self.if_net, self.if_cap = f"s6d{tag}n", f"s6d{tag}c"  # at most 15 characters
        self.if_mgmt, self.if_host = f"s6d{tag}m", f"s6d{tag}h"
        # A random ULA /64 per RFC 4193 for the management link, so it cannot clash with the host's own.
        # Canonical text (no leading zeros): the server certificate's name must match what probes dial.
        mgmt = ipaddress.IPv6Address(bytes([0xFD]) + secrets.token_bytes(5) + bytes([0, 1]) + bytes(8))
        self.mgmt_host, self.mgmt_probe = str(mgmt + 1), str(mgmt + 2)
        self.processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.namespaces: list[str] = []
        self.host_links: list[str] = []
        self.started_pids: list[int] = []

    # -- processes ------------------------------------------------------------------------------

    def start(
        self, name: str, argv: list[str], *, ns: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log_path = self.work / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        prefix = ["ip", "netns", "exec", ns] if ns else []
        with open(log_path, "ab") as log:
            # A session of its own: a Ctrl-C in the terminal reaches only the demo, which then stops
            # the others in order.
            process = subprocess.Popen(
                [*prefix, *argv], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )  # fmt: skip
        self.processes.append((name, process, log_path))
        self.started_pids.append(process.pid)
        return process

    def check_alive(self) -> None:
        for name, process, log_path in self.processes:
            if process.poll() is not None:
                raise DemoError(
                    f"{name} exited with status {process.returncode}; its log ends:\n{tail(log_path)}"
                )

    def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout_s: float,
        what: str,
        progress: Callable[[], str] | None = None,
    ) -> T:
        deadline = time.monotonic() + timeout_s
        next_progress = time.monotonic() + PROGRESS_INTERVAL_S
        while time.monotonic() < deadline:
            self.check_alive()
            value = predicate()
            if value:
                return value
            if progress is not None and time.monotonic() >= next_progress:
                say(f"  ... {progress()}")
                next_progress += PROGRESS_INTERVAL_S
            time.sleep(POLL_INTERVAL_S)
        raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    def stop_all(self, hard: bool = False) -> None:
        """Stops every process started, newest first: SIGTERM and a wait, SIGKILL when `hard` or late."""
        while self.processes:
            name, process, _ = self.processes.pop()
            if process.poll() is not None:
                continue
            process.kill() if hard else process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                say(f"  {name} did not stop in {STOP_TIMEOUT_S:.0f} s; killing it")
                process.kill()
                process.wait()

    def kill_all(self) -> None:
        """The second Ctrl-C: SIGKILL to everything still running, without waiting in turn."""
        for _name, process, _ in self.processes:
            if process.poll() is None:
                process.kill()

    # -- network --------------------------------------------------------------------------------

    def ns(self, ns: str, *argv: str) -> str:
        return run(["ip", "netns", "exec", ns, *argv])

    def create_network(self) -> None:
        for ns in (self.ns_net, self.ns_probe):
            run(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
        run(["ip", "link", "add", self.if_net, "netns", self.ns_net, "type", "veth",
             "peer", "name", self.if_cap, "netns", self.ns_probe])  # fmt: skip
        # Created in the host and its peer moved at once: deleting the probe namespace deletes both.
        self.host_links.append(self.if_host)
        run(
            [
                "ip",
                "link",
                "add",
                self.if_host,
                "type",
                "veth",
                "peer",
                "name",
                self.if_mgmt,
                "netns",
                self.ns_probe,
            ]
        )
        for ns in (self.ns_net, self.ns_probe):
            self.ns(ns, "ip", "link", "set", "lo", "up")
        # The traffic link behaves like a LAN segment: link-local addresses, MLD and neighbour
        # discovery happen as they would; the global addresses skip duplicate detection to be usable now.
        self.ns(
            self.ns_net,
            "ip",
            "-6",
            "addr",
            "add",
            f"{NET_ADDRESS}/{TRAFFIC_PREFIX_LEN}",
            "dev",
            self.if_net,
            "nodad",
        )
        for scanner in SCANNERS:
            self.ns(
                self.ns_net,
                "ip",
                "-6",
                "addr",
                "add",
                f"{scanner}/{TRAFFIC_PREFIX_LEN}",
                "dev",
                self.if_net,
                "nodad",
            )
        self.ns(
            self.ns_probe,
            "ip",
            "-6",
            "addr",
            "add",
            f"{PROBE_ADDRESS}/{TRAFFIC_PREFIX_LEN}",
            "dev",
            self.if_cap,
            "nodad",
        )
        self.ns(self.ns_net, "ip", "link", "set", self.if_net, "up")
        self.ns(self.ns_probe, "ip", "link", "set", self.if_cap, "up")
        self.ns(self.ns_net, "ip", "-6", "route", "add", f"{SCAN_PREFIX}/64", "via", PROBE_ADDRESS)
        # The probe's host answers for the whole scanned /64, like a server farm behind it would.
        self.ns(self.ns_probe, "ip", "-6", "route", "add", "local", f"{SCAN_PREFIX}/64", "dev", "lo")
        # The management link stays silent: no link-local address, no router solicitations.
        for sysctl in ("addr_gen_mode=1", "accept_ra=0", "router_solicitations=0", "dad_transmits=0"):
            run(["sysctl", "-q", "-w", f"net.ipv6.conf.{self.if_host}.{sysctl}"])
            self.ns(self.ns_probe, "sysctl", "-q", "-w", f"net.ipv6.conf.{self.if_mgmt}.{sysctl}")
        run(["ip", "-6", "addr", "add", f"{self.mgmt_host}/64", "dev", self.if_host, "nodad"])
        self.ns(
            self.ns_probe, "ip", "-6", "addr", "add", f"{self.mgmt_probe}/64", "dev", self.if_mgmt, "nodad"
        )
        run(["ip", "link", "set", self.if_host, "up"])
        self.ns(self.ns_probe, "ip", "link", "set", self.if_mgmt, "up")

    def delete_network(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=COMMAND_TIMEOUT_S)
        self.namespaces.clear()
        for link in self.host_links:  # normally gone with the namespace already
            if Path("/sys/class/net", link).exists():
                subprocess.run(["ip", "link", "delete", link], capture_output=True, timeout=COMMAND_TIMEOUT_S)
        self.host_links.clear()

    def link_counters(self) -> tuple[int, int]:
        """Packets and bytes the kernel counted on the captured interface, received and sent."""
        stats = f"/sys/class/net/{self.if_cap}/statistics"
        values = self.ns(self.ns_probe, "cat", *(f"{stats}/{c}" for c in LINK_COUNTERS)).split()
        return int(values[0]) + int(values[1]), int(values[2]) + int(values[3])


def say(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Run the whole survey6 pipeline on this machine: Redis, the server, a probe in a network "
        "namespace with bounded IPv6 traffic (scans, DNS, ICMPv6), an aggregator worker; then print a "
        "summary and the web UI's address. Needs root (it creates network namespaces).",
        epilog="Ctrl-C stops everything and removes what the demo created; a second Ctrl-C kills at once.",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        metavar="S",
        help=f"seconds of traffic (default {DEFAULT_DURATION_S:.0f}, at most {MAX_DURATION_S:.0f})",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="where everything goes (created; must be empty; default: a new temporary directory)",
    )
    parser.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop after the summary instead of serving the web UI until Ctrl-C",
    )
    parser.add_argument(
        "--keep-files", action="store_true", help="leave the work directory in place at the end"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the summary as JSON to FILE")
    args = parser.parse_args(argv)  # fmt: skip
    if not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be more than 0 and at most {MAX_DURATION_S:.0f} seconds")
    return args


def prepare_work_dir(requested: Path | None) -> tuple[Path, bool]:
    """Returns the work directory and whether the demo created it (else only its contents are removed)."""
    if requested is None:
        return Path(tempfile.mkdtemp(prefix="survey6-demo-")), True
    path = requested.resolve()
    if path.exists():
        if not path.is_dir() or any(path.iterdir()):
            raise DemoError(f"--work-dir {path} is not an empty directory")
        return path, False
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise DemoError(f"cannot create --work-dir {path}: {exc.strerror}") from exc
    return path, True


def remove_work_dir(path: Path, created: bool) -> None:
    if created:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir():
        shutil.rmtree(
            child, ignore_errors=True
        ) if child.is_dir() and not child.is_symlink() else child.unlink()


def preflight() -> None:
    if os.geteuid() != 0:
        raise DemoError("the demo must run as root: it creates network namespaces (try: sudo ./scripts/demo)")
    for tool in ("ip", "sysctl", "redis-server"):
        if shutil.which(tool) is None:
            raise DemoError(f"{tool} is not installed; run ./scripts/setup first")
    for command in ("survey6-server", "survey6-probe", "survey6-aggregate"):
        if not (BIN / command).exists():
            raise DemoError(f"{BIN / command} is missing; run ./scripts/setup first")


# -- the steps ------------------------------------------------------------------------------------


def start_redis(demo: Demo) -> str:
    port = free_port("127.0.0.1")
    redis_dir = demo.work / "redis"
    redis_dir.mkdir()
    demo.start("redis", [str(shutil.which("redis-server")), "--port", str(port), "--bind", "127.0.0.1",
                         "--save", "", "--appendonly", "no", "--dir", str(redis_dir)])  # fmt: skip

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    demo.wait_for(answers, START_TIMEOUT_S, "Redis to answer")
    return f"redis://127.0.0.1:{port}/0"


def start_server(demo: Demo, redis_url: str) -> dict[str, Any]:
    data_dir = demo.work / "server"
    out = run(
        [str(BIN / "survey6-server"), "init", "--data-dir", str(data_dir), "--server-name", demo.mgmt_host]
    )
    ca_hash = re.search(r"sha256:[0-9a-f]{64}", out)
    login = re.search(r"web admin: (\S+) / (\S+)", out)
    if ca_hash is None or login is None:
        raise DemoError("survey6-server init did not print the CA hash and the admin login")
    enrol = f"[{demo.mgmt_host}]:{free_port(demo.mgmt_host)}"
    control = f"[{demo.mgmt_host}]:{free_port(demo.mgmt_host)}"
    http_port = free_port("127.0.0.1")
    log = demo.work / "logs" / "server.log"
    demo.start("server", [str(BIN / "survey6-server"), "run", "--data-dir", str(data_dir),
                          "--enrol-listen", enrol, "--grpc-listen", control,
                          "--http-listen", f"127.0.0.1:{http_port}", "--redis-url", redis_url],
               env=SERVER_ENV)  # fmt: skip
    demo.wait_for(lambda: log.exists() and '"msg": "server listening"' in log.read_text(errors="replace"),
                  START_TIMEOUT_S, "the server to listen")  # fmt: skip
    return {
        "data_dir": data_dir,
        "ca_hash": ca_hash.group(0),
        "user": login.group(1),
        "password": login.group(2),
        "enrol": enrol,
        "url": f"http://127.0.0.1:{http_port}/",
    }


def join_probe(demo: Demo, server: dict[str, Any]) -> Path:
    state_dir = demo.work / "probe" / "state"
    token = run([str(BIN / "survey6-server"), "token", "create", "--data-dir", str(server["data_dir"]),
                 "--ttl", "10m", "--usages", "1", "--description", "scripts/demo"]).strip()  # fmt: skip
    demo.ns(demo.ns_probe, str(BIN / "survey6-probe"), "join", server["enrol"], "--token", token,
            "--ca-cert-hash", server["ca_hash"], "--state-dir", str(state_dir),
            "--label", "site=demo", "--label", "network=lab")  # fmt: skip
    return state_dir


def start_probe(demo: Demo, state_dir: Path) -> Path:
    spool = demo.work / "probe" / "spool"
    env = {**PROBE_ENV, "SURVEY6_SPOOL__DIR": str(spool), "SURVEY6_CAPTURE__INTERFACES": demo.if_cap}
    demo.start(
        "probe", [str(BIN / "survey6-probe"), "run", "--state-dir", str(state_dir)], ns=demo.ns_probe, env=env
    )
    log = demo.work / "logs" / "probe.log"
    demo.wait_for(
        lambda: '"msg": "capturing"' in log.read_text(errors="replace"),
        START_TIMEOUT_S,
        "the probe to capture",
    )
    return spool


def start_responder(demo: Demo) -> None:
    demo.start("responder", [sys.executable, str(TRAFFIC), "respond"], ns=demo.ns_probe)
    log = demo.work / "logs" / "responder.log"
    demo.wait_for(lambda: "ready" in log.read_text(errors="replace"), START_TIMEOUT_S, "the DNS responder")


def send_traffic(demo: Demo, duration_s: float) -> dict[str, Any]:
    argv = [sys.executable, str(TRAFFIC), "generate", "--duration", str(duration_s), "--client", NET_ADDRESS,
            "--resolver", PROBE_ADDRESS, "--scan-prefix", SCAN_PREFIX]  # fmt: skip
    for scanner in SCANNERS:
        argv += ["--scanner", scanner]
    process = demo.start("traffic", argv, ns=demo.ns_net)
    log = demo.work / "logs" / "traffic.log"
    deadline = time.monotonic() + duration_s + START_TIMEOUT_S
    while process.poll() is None:
        if time.monotonic() > deadline:
            raise DemoError("the traffic generator did not finish in time")
        time.sleep(POLL_INTERVAL_S)
    demo.processes = [p for p in demo.processes if p[1] is not process]
    lines = log.read_text(errors="replace").splitlines()
    if process.returncode != 0 or not lines:
        raise DemoError(f"the traffic generator failed (status {process.returncode}):\n{tail(log)}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def metrics(url: str) -> dict[str, float]:
    """The server's Prometheus text as {"name{labels}": value}; empty while it does not answer."""
    from urllib.error import URLError
    from urllib.request import urlopen

    try:
        with urlopen(url + "metrics", timeout=5) as response:
            text = response.read().decode()
    except (URLError, OSError):
        return {}
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                values[key] = float(value)
            except ValueError:
                continue
    return values


def catalog_files(url: str, state: str) -> int:
    return int(metrics(url).get(f'survey6_catalog_files{{state="{state}"}}', 0))


def landed(server: dict[str, Any]) -> list[Path]:
    return sorted((server["data_dir"] / "landing").rglob("*.pcap"))


def first_upload(probe_log: Path, traffic_end: float) -> dict[str, Any]:
    """When and why the first upload started after the traffic, from the probe's decision log."""
    for line in probe_log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "upload decision" and record.get("reason"):
            at = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
            return {"reason": record["reason"], "after_traffic_s": round(at - traffic_end, 1)}
    return {"reason": "unknown", "after_traffic_s": None}


def summarise(demo: Demo, server: dict[str, Any], output: Path) -> dict[str, Any]:
    import duckdb

    sidecars = [json.loads(p.with_suffix(".json").read_text()) for p in landed(server)]
    captured = sum(int(s.get("packets", 0)) for s in sidecars)
    con = duckdb.connect()
    in_parquet = 0
    top: list[dict[str, Any]] = []
    if list(output.glob("packets/*/*/*.parquet")):
        packets = f"read_parquet('{output}/packets/*/*/*.parquet', hive_partitioning = true)"
        row = con.execute(f"SELECT count(*) FROM {packets}").fetchone()
        in_parquet = int(row[0]) if row else 0
    if list(output.glob("sources_128/*/*/*.parquet")):
        sources = f"read_parquet('{output}/sources_128/*/*/*.parquet', hive_partitioning = true)"
        rows = con.execute(
            f"SELECT src, sum(packets), sum(destinations) FROM {sources} "
            f"GROUP BY src ORDER BY sum(packets) DESC, src LIMIT {TOP_SOURCES}"
        ).fetchall()
        top = [{"src": r[0], "packets": int(r[1]), "destinations": int(r[2])} for r in rows]
    con.close()
    probes = json.loads(
        run([str(BIN / "survey6-server"), "probes", "list", "--data-dir", str(server["data_dir"]), "--json"])
    )
    return {
        "probes": [{"probe_id": p["probe_id"], "state": p["state"]} for p in probes],
        "packets_captured": captured,
        "packets_in_parquet": in_parquet,
        "files_landed": len(sidecars),
        "files_quarantined": catalog_files(server["url"], "failed"),
        "top_sources": top,
    }


def print_summary(summary: dict[str, Any]) -> None:
    sent = summary["traffic"]["sent"]
    say("")
    say("== survey6 demo summary")
    probes = ", ".join(f"{p['probe_id']} ({p['state']})" for p in summary["probes"])
    say(f"probes:               {probes}")
    say(f"traffic sent:         {sent['tcp_syn']} TCP SYN, {sent['dns_queries']} DNS queries, "
        f"{sent['icmpv6_echo']} ICMPv6 echo requests "
        f"(answers: {sent['dns_answers']} DNS, {sent['echo_replies']} echo)")  # fmt: skip
    say(f"kernel count on link: {summary['kernel_link_packets']} packets (rx + tx while capturing)")
    say(f"packets captured:     {summary['packets_captured']} (from the landed files' metadata)")
    say(f"packets in Parquet:   {summary['packets_in_parquet']}"
        f"  -> {'equal' if summary['packets_equal'] else 'DIFFERENT'}")  # fmt: skip
    say(f"files landed:         {summary['files_landed']}, quarantined: {summary['files_quarantined']}")
    upload = summary["first_upload"]
    say(f"delivery:             traffic at {summary['traffic_link_ratio']:.0%} of the probe's link (busy), "
        f"first upload {upload['after_traffic_s']} s after the traffic "
        f"(reason: {upload['reason']})")  # fmt: skip
    say(f"top {TOP_SOURCES} sources:")
    for row in summary["top_sources"]:
        say(f"  {row['src']:<28} {row['packets']:>7} packets  {row['destinations']:>6} destinations")
    say(f"report:               {summary['report']}")
    login = f"{summary['web_user']} / {summary['web_password']}"
    say(f"web UI:               {summary['web_url']}  (login: {login})")


def run_demo(demo: Demo, args: argparse.Namespace) -> dict[str, Any]:
    say(f"work directory: {demo.work}")
    say("starting Redis, the network namespaces, the server")
    redis_url = start_redis(demo)
    demo.create_network()
    server = start_server(demo, redis_url)
    output = demo.work / "datasets"
    demo.start("aggregator", [str(BIN / "survey6-aggregate"), "worker", "--redis-url", redis_url,
                              "--output", str(output),
                              "--state-dir", str(demo.work / "aggregator")])  # fmt: skip
    say(f"enrolling a probe in namespace {demo.ns_probe} (captures {demo.if_cap})")
    state_dir = join_probe(demo, server)
    start_responder(demo)
    spool = start_probe(demo, state_dir)
    packets_before, bytes_before = demo.link_counters()
    traffic_start = time.time()

    say(f"sending {args.duration:g} s of IPv6 traffic from namespace {demo.ns_net}:")
    say(f"  TCP SYN scans of {SCAN_PREFIX}/64, DNS queries, ICMPv6 echo")
    traffic = send_traffic(demo, args.duration)
    traffic_end = time.time()
    # Capture stops here (the open file is sealed); what is sealed waits for an idle link to go.
    run([str(BIN / "survey6-probe"), "suspend", "--state-dir", str(state_dir)])
    packets_after, bytes_after = demo.link_counters()
    # What the link monitor compares with its threshold: the traffic's rate against the stated capacity.
    traffic_ratio = (bytes_after - bytes_before) * 8 / (traffic_end - traffic_start) / LINK_CAPACITY_BPS
    say("traffic done, capture suspended; waiting for the link to turn idle and the uploads")

    def spool_left() -> int:
        return len(list((spool / "ready").glob("*.pcap")))

    demo.wait_for(lambda: spool_left() == 0 and landed(server), DELIVERY_TIMEOUT_S, "the uploads",
                  progress=lambda: f"{spool_left()} files in the spool, {len(landed(server))} landed",
                  )  # fmt: skip
    files = len(landed(server))
    say(f"{files} files landed; waiting for the aggregator")

    def ingested() -> bool:
        done = catalog_files(server["url"], "ingested") + catalog_files(server["url"], "failed")
        return done >= files

    demo.wait_for(
        ingested,
        INGEST_TIMEOUT_S,
        "the aggregator to ingest every file",
        progress=lambda: f"{catalog_files(server['url'], 'ingested')} of {files} ingested",
    )
    report = demo.work / "report.html"
    run([str(BIN / "survey6-aggregate"), "report", "--output", str(output), "--html", str(report)])

    summary = summarise(demo, server, output)
    summary.update({
        "traffic": traffic,
        "kernel_link_packets": packets_after - packets_before,
        "traffic_link_ratio": round(traffic_ratio, 3),
        "first_upload": first_upload(demo.work / "logs" / "probe.log", traffic_end),
        "packets_equal": summary["packets_captured"] == summary["packets_in_parquet"],
        "report": str(report),
        "web_url": server["url"],
        "web_user": server["user"],
        "web_password": server["password"],
        "namespaces": [demo.ns_net, demo.ns_probe],
        "host_links": [demo.if_host],
        "pids": demo.started_pids,
        "work_dir": str(demo.work),
    })  # fmt: skip
    return summary


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signals = {"count": 0}
    demo: Demo | None = None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            raise Interrupted(signal.Signals(signum).name)
        say("second interrupt: killing everything now")
        if demo is not None:
            demo.kill_all()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    created = False
    try:
        preflight()
        work, created = prepare_work_dir(args.work_dir)
        demo = Demo(work, secrets.token_hex(2))
        summary = run_demo(demo, args)
        print_summary(summary)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
        if not summary["packets_equal"]:
            raise DemoError("packets captured and packets in Parquet differ (see the summary)")
        if not args.exit_when_done:
            say("\nthe server, the probe and the worker keep running: open the web UI above.")
            say("Ctrl-C stops everything and removes what the demo created.")
            run([str(BIN / "survey6-probe"), "resume", "--state-dir", str(work / "probe" / "state")])
            while True:
                demo.check_alive()
                time.sleep(1)
        return 0
    except Interrupted as exc:
        say(f"\n{exc}: stopping")
        return 130
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        # From here on a signal means "hurry up" (kill), never an exception in the middle of cleanup.
        signals["count"] = max(signals["count"], 1)
        if demo is not None:
            say("stopping what the demo started")
            demo.stop_all(hard=signals["count"] > 1)
            demo.delete_network()
            if args.keep_files:
                say(f"files kept in {demo.work}")
            else:
                remove_work_dir(demo.work, created)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
