"""The survey6 side of bench/heartbeat_load.py: a real ``survey6-server`` process, the enrolment of
N probe identities through its Enrolment service, and the check of its registry afterwards."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from heartbeat_driver import ProbeIdentity, ProbeTally, raise_open_files_limit

from survey6.wire.v1 import capture_pb2, enrolment_pb2, enrolment_pb2_grpc

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
JOIN_DEADLINE_S = 30.0
JOIN_ATTEMPTS = 3
LISTENING = '"msg": "server listening"'
STATE_CHANGE = re.compile(r"probe \S+: (\w+ -> \w+)$")


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")


class Survey6Server:
    """``survey6-server`` with a throwaway data directory, on loopback ports it picks itself."""

    def __init__(self, root: Path, command: Path, open_files: int, env: dict[str, str]) -> None:
        self.data_dir = root / "server"
        self.log_path = root / "server.log"
        self.command = str(command)
        self.open_files = open_files
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.enrol_port = 0
        self.control_port = 0

    @property
    def pki(self) -> Path:
        return self.data_dir / "pki"

    @property
    def database(self) -> Path:
        return self.data_dir / "registry.sqlite3"

    def _cli(self, *args: str) -> str:
        argv = [self.command, *args, "--data-dir", str(self.data_dir)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"survey6-server {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def init(self) -> None:
        self._cli("init", "--server-name", "localhost", "--server-name", "127.0.0.1")

    def token(self, usages: int) -> str:
        return self._cli("token", "create", "--usages", str(usages), "--ttl", "2h").strip()

    def start(self) -> None:
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [
                    self.command,
                    "run",
                    "--data-dir",
                    str(self.data_dir),
                    "--enrol-listen",
                    "127.0.0.1:0",
                    "--grpc-listen",
                    "127.0.0.1:0",
                    "--http-listen",
                    "127.0.0.1:0",
                ],
                stdout=log,
                stderr=log,
                env=self.env,
                preexec_fn=self._before_exec,
            )
        finally:
            log.close()
        line = wait_for(self._listening_line, START_TIMEOUT_S, "survey6-server to listen")
        self.enrol_port, self.control_port = int(line["enrol_port"]), int(line["control_port"])

    def _before_exec(self) -> None:
        raise_open_files_limit(self.open_files)  # one descriptor per probe connection

    def _listening_line(self) -> dict[str, Any] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"survey6-server exited with {self.process.returncode}: see its log")
        for line in self.log_path.read_text(errors="replace").splitlines():
            if LISTENING in line:
                return dict(json.loads(line))
        return None

    def log_summary(self) -> dict[str, Any]:
        """What the server logged: lines by level, probe state changes, the first warning or error."""
        levels: Counter[str] = Counter()
        changes: Counter[str] = Counter()
        first_problem = None
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                levels["unparsed"] += 1
                continue
            levels[entry.get("level", "?")] += 1
            change = STATE_CHANGE.match(entry.get("msg", ""))
            if change:
                changes[change.group(1)] += 1
            if first_problem is None and entry.get("level") in ("warning", "error", "critical"):
                first_problem = (entry.get("msg", "") + " " + entry.get("exc", ""))[:500]
        return {
            "lines_by_level": dict(levels),
            "state_changes": dict(changes),
            "first_problem": first_problem,
        }

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> float:
        """SIGTERM, as a service manager would; returns the seconds it took to exit (final flush)."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"survey6-server did not stop within {STOP_TIMEOUT_S:g} s; killed") from None
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# -- enrolment ---------------------------------------------------------------------------------------


@dataclass
class EnrolmentReport:
    requested: int
    enrolled: int = 0
    failed: int = 0
    retried: int = 0
    seconds: float = 0.0
    failures: dict[str, int] | None = None


def _key_and_csr(index: int) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{index}")]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


async def enrol(
    target: str, ca_pem: bytes, token: str, count: int, concurrency: int
) -> tuple[list[ProbeIdentity], EnrolmentReport]:
    """Joins ``count`` probes, each with its own key, through one server-TLS channel."""
    report = EnrolmentReport(requested=count, failures={})
    identities: list[ProbeIdentity | None] = [None] * count
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    async with grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca_pem)) as channel:
        stub = enrolment_pb2_grpc.EnrolmentStub(channel)

        async def join(index: int) -> None:
            key_pem, csr_pem = _key_and_csr(index)
            request = enrolment_pb2.JoinRequest(
                token=token,
                host=capture_pb2.HostFacts(hostname=f"bench-{index}", software_version="bench"),
                labels={"site": "bench", "slot": str(index)},
                csr_pem=csr_pem,
            )
            async with gate:
                for attempt in range(JOIN_ATTEMPTS):
                    try:
                        response = await stub.Join(request, timeout=JOIN_DEADLINE_S)
                    except grpc.aio.AioRpcError as exc:
                        assert report.failures is not None
                        name = f"{exc.code().name}: {exc.details()}"[:120]
                        report.failures[name] = report.failures.get(name, 0) + 1
                        report.retried += attempt + 1 < JOIN_ATTEMPTS
                        continue
                    identities[index] = ProbeIdentity(
                        response.probe_id, key_pem, response.client_certificate_pem
                    )
                    return

        await asyncio.gather(*(join(i) for i in range(count)))
    report.seconds = time.monotonic() - started
    enrolled = [i for i in identities if i is not None]
    report.enrolled, report.failed = len(enrolled), count - len(enrolled)
    return enrolled, report


# -- the registry afterwards -----------------------------------------------------------------------


def token_usage(database: Path) -> dict[str, Any]:
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT token_id, usages_left, used_count FROM bootstrap_tokens").fetchall()
    return {token_id: {"usages_left": left, "used_count": used} for token_id, left, used in rows}


def _recorded(health_json: str | None) -> tuple[str, int] | None:
    """(interface name, sequence number) of the heartbeat a probe row's health report is from."""
    interfaces = json.loads(health_json or "{}").get("interfaces") or []
    if not interfaces:
        return None
    return str(interfaces[0].get("name", "")), int(interfaces[0].get("captured_packets_total", 0))


def _unix_s(stored: str | None) -> float | None:
    """A registry time (UTC, stored without a zone) as Unix seconds."""
    if stored is None:
        return None
    return datetime.datetime.fromisoformat(stored).replace(tzinfo=datetime.UTC).timestamp()


def check_registry(database: Path, tallies: list[ProbeTally]) -> dict[str, Any]:
    """Compares what every simulated probe sent and had acknowledged with what the registry holds.

    Each heartbeat carries ``bench-<probe id>`` as its interface name and its sequence number as
    ``captured_packets_total``. A probe row whose health report holds another probe's name is a
    misattribution, and so is a history sample whose sequence the probe never sent or that goes
    backwards. The server writes the time of every probe's last heartbeat, and its whole report
    with each history sample: a probe whose recorded last heartbeat is older than the send time of
    its last acknowledged one (same machine, same clock) lost that heartbeat. State events must
    be in time order for each probe.
    """
    with sqlite3.connect(database) as db:
        probes = {
            probe_id: (_unix_s(at), health)
            for probe_id, at, health in db.execute("SELECT id, last_heartbeat_at, last_health FROM probes")
        }
        samples: dict[str, list[int]] = {}
        for probe_id, seq in db.execute(
            "SELECT probe_id, captured_packets_total FROM heartbeat_samples ORDER BY id"
        ):
            samples.setdefault(probe_id, []).append(int(seq))
        events: dict[str, list[str]] = {}
        for probe_id, at in db.execute("SELECT probe_id, at FROM events WHERE kind = 'state' ORDER BY id"):
            events.setdefault(probe_id, []).append(at)
    checks = (
        "missing_from_registry",
        "no_last_heartbeat_at",
        "misattributed_last_health",
        "lost_last_acknowledged",
        "recorded_but_never_sent",
        "misattributed_samples",
        "events_out_of_order",
    )
    result: Counter[str] = Counter(dict.fromkeys(checks, 0))
    for tally in tallies:
        result["probes"] += 1
        at, health = probes.get(tally.probe_id, (None, None))
        recorded = _recorded(health)
        own = samples.pop(tally.probe_id, [])
        result["samples"] += len(own)
        times = events.pop(tally.probe_id, [])
        result["state_events"] += len(times)
        if tally.probe_id not in probes:
            result["missing_from_registry"] += 1
        elif tally.ok and at is None:
            result["no_last_heartbeat_at"] += 1
        if recorded is not None and recorded[0] != f"bench-{tally.probe_id}":
            result["misattributed_last_health"] += 1
        if tally.ok and (at is None or at < tally.last_ok_sent_wall_s):
            result["lost_last_acknowledged"] += 1
        if recorded is not None and recorded[1] > tally.last_sent_seq:
            result["recorded_but_never_sent"] += 1
        if any(b <= a for a, b in zip(own, own[1:], strict=False)) or any(
            s > tally.last_sent_seq for s in own
        ):
            result["misattributed_samples"] += 1
        if times != sorted(times):
            result["events_out_of_order"] += 1
    result["samples_of_unknown_probes"] = sum(len(v) for v in samples.values())
    return dict(result)


def established_connections(port: int) -> int:
    """Established TCP connections whose local end is 127.0.0.1:``port`` (the server's side). gRPC
    may use dual-stack sockets, where that address shows as ``::ffff:127.0.0.1`` in ``tcp6``."""
    suffix = f"0100007F:{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(suffix) and fields[3] == "01":
                count += 1
    return count
