"""The survey6 side of bench/upload_bench.py: a throwaway Redis and ``survey6-server`` as processes, one
probe joined with ``survey6-probe join``, and a spool of sealed capture files made of real pcaps.

Everything here is started by process id and stopped by that id; the caller removes the temporary
directory. Capture files are written once as "masters" and hard-linked into the spool for each trial
(the uploader deletes its link when the server's receipt says durable; the master stays).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from survey6.probe import identity
from survey6.probe.spool import Spool
from survey6.wire.v1 import capture_pb2

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 120.0
LISTENING = '"msg": "server listening"'
PR_SET_PDEATHSIG = 1

PCAP_MAGIC_US = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN_BYTES = 262_144
FRAME_BYTES = 1400  # Ethernet + IPv6 + UDP + payload: a typical large packet
RECORD_HEADER_BYTES = 16
PCAP_HEADER_BYTES = 24
FIRST_PACKET_NS = 1_714_979_289_000_000_000  # 2024-05-06T07:08:09Z
PACKET_GAP_NS = 100_000  # 10,000 packets/s in the file's timestamps
WINDOW_NS = 60_000_000_000  # the capture window a file claims (rotate at 60 s)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy since boot (all CPUs)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the harness dies, so nothing outlives a crashed run."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")


def stop_process(process: subprocess.Popen[bytes] | None, what: str) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; only this process, by its id."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        print(f"warning: {what} did not stop within {STOP_TIMEOUT_S:g} s; killed", file=sys.stderr)


# -- Redis ------------------------------------------------------------------------------------------


class Redis:
    """A throwaway redis-server on a free loopback port (the server's ingest queue); None when absent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_tcp_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> bool:
        binary = shutil.which("redis-server")
        if binary is None:
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no"]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        wait_for(self._answers, START_TIMEOUT_S, "redis-server to answer")
        return True

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process, "redis-server")
        self.process = None


# -- survey6-server ---------------------------------------------------------------------------------


class Server:
    """``survey6-server`` with a throwaway data directory; ``start`` may run it in a network namespace."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.data_dir = root / "server"
        self.log_path = root / "server.log"
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.enrol_port = 0
        self.control_port = 0
        self.ca_hash = ""

    @property
    def pki(self) -> Path:
        return self.data_dir / "pki"

    @property
    def landing(self) -> Path:
        return self.data_dir / "landing"

    @property
    def control_target(self) -> str:
        return f"{self.host}:{self.control_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cli(self, *args: str) -> str:
        argv = [str(BIN / "survey6-server"), *args, "--data-dir", str(self.data_dir)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"survey6-server {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def init(self, names: list[str]) -> None:
        out = self.cli("init", *[arg for name in names for arg in ("--server-name", name)])
        self.ca_hash = out.split("CA certificate hash: ", 1)[1].split()[0]

    def token(self) -> str:
        return self.cli("token", "create", "--usages", "1", "--ttl", "1h").strip()

    def start(self, host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.host = host
        prefix = ["ip", "netns", "exec", netns] if netns else []  # ip execs the server: same pid
        argv = [*prefix, str(BIN / "survey6-server"), "run", "--data-dir", str(self.data_dir),
                "--enrol-listen", f"{host}:0", "--grpc-listen", f"{host}:0",
                "--http-listen", "127.0.0.1:0"]  # fmt: skip
        before = self._log_lines()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=log, env=self.env, preexec_fn=die_with_parent
            )
        line = wait_for(lambda: self._listening(before), START_TIMEOUT_S, "survey6-server to listen")
        self.enrol_port, self.control_port = int(line["enrol_port"]), int(line["control_port"])

    def _log_lines(self) -> int:
        return len(self.log_path.read_text(errors="replace").splitlines()) if self.log_path.exists() else 0

    def _listening(self, skip: int) -> dict[str, Any] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"survey6-server exited with {self.process.returncode}; see its log")
        for line in self.log_path.read_text(errors="replace").splitlines()[skip:]:
            if LISTENING in line:
                return dict(json.loads(line))
        return None

    def stop(self) -> None:
        stop_process(self.process, "survey6-server")
        self.process = None

    def log_problems(self) -> list[str]:
        """Warnings and errors the server logged (at most 20)."""
        problems = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("warning", "error", "critical"):
                problems.append(f"{entry.get('level')}: {entry.get('msg', '')}"[:300])
        return problems[:20]

    def durable_after_s(self, skip_lines: int) -> list[float]:
        """For each file landed after the first `skip_lines` log lines: the seconds from its last
        byte to its DURABLE receipt (fsyncs, move, registry), as the server logged them."""
        tails = []
        for line in self.log_path.read_text(errors="replace").splitlines()[skip_lines:]:
            if '"msg": "file landed"' in line:
                tails.append(float(json.loads(line).get("durable_after_s", "nan")))
        return tails

    def log_lines(self) -> int:
        return self._log_lines()

    def clear_landing(self) -> None:
        """Removes landed files (the catalog keeps its rows), so repeated trials do not fill the disk."""
        for path in self.landing.rglob("*"):
            if path.is_file():
                path.unlink()


def join_probe(server: Server, state_dir: Path, env: dict[str, str]) -> tuple[str, identity.Credentials]:
    """``survey6-probe join`` with a fresh token; returns the probe id and its mTLS credentials."""
    argv = [str(BIN / "survey6-probe"), "join", f"{server.host}:{server.enrol_port}", "--token",
            server.token(), "--ca-cert-hash", server.ca_hash, "--state-dir", str(state_dir),
            "--label", "site=bench"]  # fmt: skip
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env={**os.environ, **env}
    )
    if result.returncode != 0:
        raise RuntimeError(f"survey6-probe join failed: {result.stderr.strip()}")
    probe, credentials = identity.load(state_dir)
    return probe.probe_id, credentials


# -- capture files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Master:
    """A pcap written once; its metadata (sequence 0) is copied with a new sequence for each use."""

    path: Path
    metadata: capture_pb2.CaptureMetadata

    @property
    def size_bytes(self) -> int:
        return self.metadata.file_size_bytes

    def with_sequence(self, sequence: int) -> capture_pb2.CaptureMetadata:
        metadata = capture_pb2.CaptureMetadata()
        metadata.CopyFrom(self.metadata)
        metadata.sequence = sequence
        return metadata


def _frame_header(index: int) -> bytes:
    """Ethernet, IPv6 (fd00::1 -> fd00::ff) and UDP headers of a FRAME_BYTES frame."""
    payload = FRAME_BYTES - 14 - 40
    ethernet = bytes.fromhex("020000000002020000000001") + b"\x86\xdd"
    ipv6 = struct.pack("!IHBB", 6 << 28, payload, 17, 64)
    addresses = bytes.fromhex("fd00" + "00" * 13 + "01") + bytes.fromhex("fd00" + "00" * 13 + "ff")
    udp = struct.pack("!HHHH", 40000 + index % 1000, 53, payload, 0)
    return ethernet + ipv6 + addresses + udp


def write_master(path: Path, size_bytes: int, seed: int) -> Master:
    """A valid microsecond pcap of FRAME_BYTES frames with random payloads, about `size_bytes` long."""
    record_bytes = RECORD_HEADER_BYTES + FRAME_BYTES
    packets = max((size_bytes - PCAP_HEADER_BYTES) // record_bytes, 1)
    rng = random.Random(seed)
    pool = rng.randbytes(1 << 20)
    body_bytes = FRAME_BYTES - len(_frame_header(0))
    digest = hashlib.sha256()
    with open(path, "wb") as stream:
        head = struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, SNAPLEN_BYTES, LINKTYPE_ETHERNET)
        stream.write(head)
        digest.update(head)
        block: list[bytes] = []
        for index in range(packets):
            at_us = (FIRST_PACKET_NS + index * PACKET_GAP_NS) // 1000
            start = rng.randrange(len(pool) - body_bytes)
            seconds, micros = divmod(at_us, 1_000_000)
            block.append(struct.pack("<IIII", seconds, micros, FRAME_BYTES, FRAME_BYTES))
            block.append(_frame_header(index) + pool[start : start + body_bytes])
            if len(block) >= 1024 or index == packets - 1:
                data = b"".join(block)
                stream.write(data)
                digest.update(data)
                block = []
        stream.flush()
        os.fsync(stream.fileno())
    return Master(path, _metadata(packets, path.stat().st_size, digest.hexdigest()))


def _metadata(packets: int, file_size: int, sha256_hex: str) -> capture_pb2.CaptureMetadata:
    last_ns = FIRST_PACKET_NS + (packets - 1) * PACKET_GAP_NS
    window_start = FIRST_PACKET_NS - FIRST_PACKET_NS % WINDOW_NS
    metadata = capture_pb2.CaptureMetadata(
        sequence=0,
        snaplen_bytes=SNAPLEN_BYTES,
        filter="ip6 or (vlan and ip6)",
        first_packet_time_ns=FIRST_PACKET_NS,
        last_packet_time_ns=last_ns,
        window_start_ns=window_start,
        window_end_ns=max(window_start + WINDOW_NS, last_ns),
        packets=packets,
        captured_bytes=packets * FRAME_BYTES,
        file_size_bytes=file_size,
        sha256_hex=sha256_hex,
        link_utilisation_mean_ratio=-1,
        link_utilisation_peak_ratio=-1,
        file_format="pcap",
        schema_version=1,
        labels={"site": "bench"},
    )
    metadata.interface.name = "bench0"
    metadata.interface.link_type = LINKTYPE_ETHERNET
    metadata.host.hostname = "upload-bench"
    return metadata


def write_masters(directory: Path, count: int, size_bytes: int, seed: int) -> list[Master]:
    directory.mkdir(parents=True, exist_ok=True)
    return [write_master(directory / f"{seed + i}.pcap", size_bytes, seed + i) for i in range(count)]


class BenchSpool(Spool):
    """survey6's Spool, noting when each file was delivered (the uploader deletes it on a receipt)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, quota_bytes=0, min_free_bytes=0, policy="pause")
        self.delivered_at: list[float] = []

    def delivered(self, sequence: int) -> None:
        super().delivered(sequence)
        self.delivered_at.append(time.monotonic())

    def fill(self, masters: list[Master], copies: int = 1) -> list[int]:
        """Seals hard links of the masters into ready/ (copies x masters files); returns the sequences."""
        sequences = []
        for _ in range(copies):
            for master in masters:
                sequence, part = self.begin_file({"interface": "bench0"})
                os.link(master.path, part)
                self.seal(sequence, master.with_sequence(sequence))
                sequences.append(sequence)
        return sequences

    def empty(self) -> None:
        """Removes whatever is left in ready/ (an upload stopped by the harness)."""
        for ready in self.ready_files():
            ready.sidecar.unlink(missing_ok=True)
            ready.path.unlink(missing_ok=True)
        self.delivered_at.clear()
