"""The soak's machine room: namespaces, links, the spool mount and every process, owned so that
cleanup removes exactly what was made.

    [srv ns]  bridge fdXX::1 ── server (enrol, control, web on 127.0.0.1), Redis, aggregator worker
      │ veth per probe (management: heartbeats, uploads)
    [probe ns i]  m<i> fdXX::1<i>       c<i>  <- captured (no address: a mirror port)
                                         │ veth per probe
    [net ns]                             t<i>  <- the traffic generator's frames

The capture links carry nothing but the generator's frames (no link-local addresses, no router or
neighbour discovery), so every packet a probe captures is one the generator counted.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent  # the virtualenv's bin/: survey6-* live next to its python
COMMAND_TIMEOUT_S = 60.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.2
ENROL_PORT = 32000  # in a namespace of our own every port is free
CONTROL_PORT = 32001
HTTP_PORT = 8080
REDIS_PORT = 6379
ROTATE_INTERVAL_S = 2
SPOOL_MIN_FREE_BYTES = 256 << 10  # the small spool's floor: capture applies its policy below it
FAKETIME_GLOB = "/usr/lib/*/faketime/libfaketimeMT.so.1"  # Debian's faketime package, any architecture
SILENT_LINK = ("addr_gen_mode=1", "accept_ra=0", "router_solicitations=0", "dad_transmits=0")


class LabError(Exception):
    """Something the soak needs did not work; the message says what."""


def faketime_library() -> Path:
    found = sorted(Path("/").glob(FAKETIME_GLOB.lstrip("/")))
    if not found:
        raise LabError("libfaketime is not installed (Debian package faketime; ./scripts/setup installs it)")
    return found[0]


def run(argv: list[str], *, check: bool = True, env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                                env={**os.environ, **(env or {})})  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv[:5])} failed: {exc}") from exc
    if check and result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise LabError(f"{' '.join(argv[:6])} ... failed: {lines[-1] if lines else result.returncode}")
    return result.stdout


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_INTERVAL_S)
    raise LabError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def log_has(path: Path, text: str, after: int = 0) -> bool:
    try:
        with open(path, "rb") as stream:
            stream.seek(after)
            return text.encode() in stream.read()
    except OSError:
        return False


class Lab:
    """Namespaces, links, the tmpfs spool, and the processes of one soak run."""

    def __init__(self, work: Path, probes: int) -> None:
        self.work = work
        self.tag = secrets.token_hex(2)
        self.ns_srv = f"s6soak-{self.tag}-srv"
        self.ns_net = f"s6soak-{self.tag}-net"
        self.ns_probes = [f"s6soak-{self.tag}-p{i}" for i in range(probes)]
        # A random ULA /64 (RFC 4193) for management, so that it cannot clash with anything else here.
        base = ipaddress.IPv6Address(bytes([0xFD]) + secrets.token_bytes(5) + bytes([0, 1]) + bytes(8))
        self.srv_address = str(base + 1)
        self.probe_addresses = [str(base + 0x10 + i) for i in range(probes)]
        self.namespaces: list[str] = []
        self.mounts: list[Path] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started_pids: list[int] = []
        self.ca_hash = ""
        self.probe_ids: list[str] = []

    # -- names ----------------------------------------------------------------------------------

    def capture_if(self, i: int) -> str:
        return f"s6c{self.tag}{i}"

    def traffic_if(self, i: int) -> str:
        return f"s6t{self.tag}{i}"

    def mgmt_if(self, i: int) -> str:
        return f"s6m{self.tag}{i}"

    def bridge_port(self, i: int) -> str:
        return f"s6b{self.tag}{i}"

    def log_path(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def probe_dir(self, i: int) -> Path:
        return self.work / f"probe{i}"

    def spool_dir(self, i: int) -> Path:
        return self.probe_dir(i) / "spool"

    def state_dir(self, i: int) -> Path:
        return self.probe_dir(i) / "state"

    @property
    def server_dir(self) -> Path:
        return self.work / "server"

    @property
    def datasets_dir(self) -> Path:
        return self.work / "datasets"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{REDIS_PORT}/0"

    def faketime_file(self, i: int) -> Path:
        return self.probe_dir(i) / "faketime"

    # -- network --------------------------------------------------------------------------------

    def ns(self, ns: str, *argv: str, check: bool = True) -> str:
        return run(["ip", "netns", "exec", ns, *argv], check=check)

    def create_network(self) -> None:
        for ns in (self.ns_srv, self.ns_net, *self.ns_probes):
            run(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            self.ns(ns, "ip", "link", "set", "lo", "up")
        self.ns(self.ns_srv, "ip", "link", "add", "s6br", "type", "bridge")
        self.ns(self.ns_srv, "sysctl", "-q", "-w", "net.ipv6.conf.s6br.dad_transmits=0")
        self.ns(self.ns_srv, "ip", "-6", "addr", "add", f"{self.srv_address}/64", "dev", "s6br", "nodad")
        self.ns(self.ns_srv, "ip", "link", "set", "s6br", "up")
        for i, ns_probe in enumerate(self.ns_probes):
            run(["ip", "link", "add", self.mgmt_if(i), "netns", ns_probe, "type", "veth",
                 "peer", "name", self.bridge_port(i), "netns", self.ns_srv])  # fmt: skip
            run(["ip", "link", "add", self.capture_if(i), "netns", ns_probe, "type", "veth",
                 "peer", "name", self.traffic_if(i), "netns", self.ns_net])  # fmt: skip
            for ns, link in ((ns_probe, self.capture_if(i)), (self.ns_net, self.traffic_if(i))):
                for sysctl in SILENT_LINK:
                    self.ns(ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{link}.{sysctl}")
                self.ns(ns, "ip", "link", "set", link, "up")
            self.ns(ns_probe, "sysctl", "-q", "-w", f"net.ipv6.conf.{self.mgmt_if(i)}.dad_transmits=0")
            self.ns(ns_probe, "ip", "-6", "addr", "add", f"{self.probe_addresses[i]}/64",
                    "dev", self.mgmt_if(i), "nodad")  # fmt: skip
            self.ns(ns_probe, "ip", "link", "set", self.mgmt_if(i), "up")
            self.ns(self.ns_srv, "ip", "link", "set", self.bridge_port(i), "master", "s6br", "up")

    def link(self, i: int, up: bool) -> None:
        """The capture link of probe `i` down or up (from the probe's side, as a pulled cable)."""
        self.ns(self.ns_probes[i], "ip", "link", "set", self.capture_if(i), "up" if up else "down")

    def server_reachable(self, i: int, reachable: bool) -> None:
        """A blackhole route to the server in probe `i`'s namespace only: every packet to it fails."""
        verb = "del" if reachable else "add"
        self.ns(self.ns_probes[i], "ip", "-6", "route", verb, "blackhole", f"{self.srv_address}/128")

    def mount_small_spool(self, i: int, size_bytes: int) -> None:
        path = self.spool_dir(i)
        path.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "s6soak-spool", str(path)])
        self.mounts.append(path)

    # -- processes ------------------------------------------------------------------------------

    def start(self, name: str, argv: list[str], *, ns: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:  # fmt: skip
        path = self.log_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as stream:
            # `ip netns exec` execs the command: the PID is the process itself, and a kill reaches it.
            process = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=stream, stderr=stream,
                                       stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                       start_new_session=True)  # fmt: skip
        self.processes[name] = process
        self.started_pids.append(process.pid)
        return process

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", name, STOP_TIMEOUT_S)
            process.kill()
            process.wait()

    def alive(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def start_redis(self) -> None:
        redis = shutil.which("redis-server")
        if redis is None:
            raise LabError("redis-server is not installed")
        (self.work / "redis").mkdir(exist_ok=True)
        # With an append-only file, as a deployment keeps its queue: the fault is a stop and start of
        # Redis, not the loss of its data (jobs already enqueued live only in Redis).
        argv = [redis, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                "--dir", str(self.work / "redis")]  # fmt: skip
        self.start("redis", argv, ns=self.ns_srv)
        wait_for(lambda: "PONG" in self.ns(self.ns_srv, shutil.which("redis-cli") or "redis-cli", "-p",
                                           str(REDIS_PORT), "ping", check=False),
                 START_TIMEOUT_S, "Redis to answer")  # fmt: skip

    def init_server(self) -> None:
        out = run([str(BIN / "survey6-server"), "init", "--data-dir", str(self.server_dir),
                   "--server-name", self.srv_address])  # fmt: skip
        match = re.search(r"sha256:[0-9a-f]{64}", out)
        if match is None:
            raise LabError("survey6-server init did not print the CA hash")
        self.ca_hash = match.group(0)

    def start_server(self) -> None:
        path = self.log_path("server")
        before = path.stat().st_size if path.exists() else 0
        env = {"SURVEY6_LIVENESS__HEARTBEAT_INTERVAL_S": "1", "SURVEY6_QUEUE__DRAIN_INTERVAL_S": "1"}
        self.start("server", [str(BIN / "survey6-server"), "run", "--data-dir", str(self.server_dir),
                              "--enrol-listen", f"[{self.srv_address}]:{ENROL_PORT}",
                              "--grpc-listen", f"[{self.srv_address}]:{CONTROL_PORT}",
                              "--http-listen", f"127.0.0.1:{HTTP_PORT}", "--redis-url", self.redis_url],
                   ns=self.ns_srv, env=env)  # fmt: skip
        wait_for(lambda: log_has(path, '"msg": "server listening"', before) or not self.alive("server"),
                 START_TIMEOUT_S, "the server to listen")  # fmt: skip
        if not self.alive("server"):
            raise LabError(f"the server exited at start; see {path}")

    def start_worker(self) -> None:
        argv = [str(BIN / "survey6-aggregate"), "worker", "--redis-url", self.redis_url,
                "--output", str(self.datasets_dir), "--state-dir", str(self.work / "aggregator")]  # fmt: skip
        self.start("worker", argv, ns=self.ns_srv)

    def join_probe(self, i: int) -> None:
        token = run([str(BIN / "survey6-server"), "token", "create", "--data-dir", str(self.server_dir),
                     "--ttl", "10m", "--usages", "1", "--description", "soak"]).strip()  # fmt: skip
        self.ns(self.ns_probes[i], str(BIN / "survey6-probe"), "join", f"[{self.srv_address}]:{ENROL_PORT}",
                "--token", token, "--ca-cert-hash", self.ca_hash, "--state-dir", str(self.state_dir(i)),
                "--label", "site=soak", "--label", f"probe={i}")  # fmt: skip
        identity = json.loads((self.state_dir(i) / "identity" / "identity.json").read_text())
        self.probe_ids.append(str(identity["probe_id"]))

    def probe_env(self, i: int, small_spool: bool) -> dict[str, str]:
        env = {
            "SURVEY6_SPOOL__DIR": str(self.spool_dir(i)),
            "SURVEY6_CAPTURE__INTERFACES": self.capture_if(i),
            "SURVEY6_CAPTURE__ROTATE_INTERVAL_S": str(ROTATE_INTERVAL_S),
            "SURVEY6_HEARTBEAT__INTERVAL_S": "1",
            # A link this fast is always idle under the soak's traffic: files go as soon as sealed.
            "SURVEY6_DELIVERY__LINK_CAPACITY_BPS": str(10**9),
            "SURVEY6_DELIVERY__IDLE_HOLD_S": "1",
            "SURVEY6_DELIVERY__SMOOTHING_S": "1",
            "SURVEY6_SPOOL__MIN_FREE_BYTES": str(SPOOL_MIN_FREE_BYTES if small_spool else 0),
            "SURVEY6_SPOOL__FULL_POLICY": "drop-oldest" if small_spool else "pause",
        }
        # Every probe runs under libfaketime with a zero offset, so that a clock step is a change of the
        # file it re-reads; only the wall clock moves (the monotonic clock is left alone, as a step would).
        self.faketime_file(i).write_text("+0\n")
        env.update({
            "LD_PRELOAD": str(faketime_library()),
            "FAKETIME_TIMESTAMP_FILE": str(self.faketime_file(i)),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_DONT_RESET": "1",
        })  # fmt: skip
        return env

    def start_probe(self, i: int, small_spool: bool) -> float:
        """Starts probe `i` and returns when it captures (time.time())."""
        name = f"probe{i}"
        path = self.log_path(name)
        before = path.stat().st_size if path.exists() else 0
        self.start(name, [str(BIN / "survey6-probe"), "run", "--state-dir", str(self.state_dir(i))],
                   ns=self.ns_probes[i], env=self.probe_env(i, small_spool))  # fmt: skip
        wait_for(lambda: log_has(path, '"msg": "capturing"', before) or not self.alive(name),
                 START_TIMEOUT_S, f"probe {i} to capture")  # fmt: skip
        if not self.alive(name):
            raise LabError(f"probe {i} exited at start; see {path}")
        return time.time()

    def probe_cli(self, i: int, *args: str) -> str:
        return run([str(BIN / "survey6-probe"), *args, "--state-dir", str(self.state_dir(i))])

    def server_cli(self, *args: str, check: bool = True) -> str:
        return run([str(BIN / "survey6-server"), *args, "--data-dir", str(self.server_dir)], check=check)

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus metrics (read from inside its namespace); empty when it does not answer."""
        code = ("import sys, urllib.request\n"
                f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{HTTP_PORT}/metrics', timeout=5)"
                ".read().decode())")  # fmt: skip
        try:
            text = self.ns(self.ns_srv, sys.executable, "-c", code)
        except LabError:
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

    # -- cleanup --------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Stops every process (newest first), unmounts, deletes the namespaces; never raises."""
        for name in reversed(list(self.processes)):
            try:
                self.stop(name)
            except Exception:  # cleanup goes on whatever one step did
                log.exception("stopping %s", name)
        for path in reversed(self.mounts):
            # What the small spool held at the end outlives the mount, for a look after a failure.
            try:
                shutil.copytree(path, path.with_name(f"{path.name}-at-end"), dirs_exist_ok=True)
            except OSError:
                log.exception("copying %s", path)
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=COMMAND_TIMEOUT_S)
        self.mounts.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=COMMAND_TIMEOUT_S)
        self.namespaces.clear()
