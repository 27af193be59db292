"""The two capturers under test, run the same way: tcpdump and ``survey6-probe capture``.

Each runs in the capture namespace, pinned to one CPU, writing into its own directory. Its CPU time
is counted from the moment it says it is ready (so start-up, e.g. Python's imports, is left out) to
its exit (so flushing and sealing at the end are in): per-thread ``schedstat`` run time at ready,
``wait4`` rusage (user + system, all threads) at exit; both are the scheduler's nanosecond run time.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import signal
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from _netns import Link, die_with_parent

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.05
IDLE_POLL_S = 0.25
IDLE_CPU_RATIO = 0.02  # below 2 % of one CPU over a poll the capturer has drained its ring
IDLE_MAX_S = 30.0
FILTER = "ip6 or (vlan and ip6)"
SNAPLEN_BYTES = 262_144
BUFFER_KIB = 65_536  # 64 MiB kernel ring for both capturers
PCAP_GLOBAL_HEADER_BYTES = 24
PCAP_RECORD_HEADER_BYTES = 16
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\x4d\x3c\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\xa1\xb2\x3c\x4d": ">",
}


@dataclass
class CaptureResult:
    """What one capturer reported and cost over one flood."""

    tool: str
    captured: int = 0
    kernel_received: int = 0
    kernel_dropped: int = 0
    interface_dropped: int = 0
    files: int = 0
    cpu_s: float = 0.0  # user + system, from ready to exit
    user_s: float = 0.0  # the split is approximate: the ready snapshot of it counts in 10 ms ticks
    system_s: float = 0.0
    startup_cpu_s: float = 0.0
    stop_s: float = 0.0  # from SIGINT to exit
    exit_status: int = 0
    notes: list[str] = field(default_factory=list)


def count_pcap_records(path: Path) -> int:
    """Records in a classic pcap file, by walking the record headers (no third-party reader)."""
    size = path.stat().st_size
    if size <= PCAP_GLOBAL_HEADER_BYTES:
        return 0
    with open(path, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        order = PCAP_MAGICS.get(bytes(data[:4]))
        if order is None:
            raise ValueError(f"{path.name}: not a classic pcap file")
        caplen = struct.Struct(order + "I").unpack_from
        pos, count = PCAP_GLOBAL_HEADER_BYTES, 0
        while pos + PCAP_RECORD_HEADER_BYTES <= size:
            pos += PCAP_RECORD_HEADER_BYTES + caplen(data, pos + 8)[0]
            count += 1
    if pos != size:
        raise ValueError(f"{path.name}: last record is cut short ({pos} != {size})")
    return count


def run_time_s(pid: int) -> float:
    """Scheduler run time of all live threads of a process (schedstat, nanoseconds)."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended while we looked
    return total_ns / 1e9


def user_system_s(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process, all threads (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick_s, int(fields[12]) * tick_s  # utime and stime: fields 14 and 15


class Capturer:
    """One capturer process: start, wait until ready, let it drain, stop, read its results."""

    tool = ""
    ready_marker = ""

    def __init__(self, link: Link, work_dir: Path, cpu: int, max_packets: int) -> None:
        self.link = link
        self.dir = work_dir / self.tool
        self.cpu = cpu
        self.max_packets = max_packets
        self.proc: subprocess.Popen[bytes] | None = None
        self.result = CaptureResult(self.tool)
        self._cpu_at_ready = 0.0
        self._split_at_ready = (0.0, 0.0)

    # -- to be provided per tool ---------------------------------------------------------------
    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def collect(self) -> None:
        raise NotImplementedError

    # -- the common run --------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.dir / "output.log"

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        argv = ["ip", "netns", "exec", self.link.capture_ns, "taskset", "-c", str(self.cpu), *self.argv()]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(), preexec_fn=die_with_parent
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.ready_marker not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.tool} did not start: {self.log_tail()}")
            time.sleep(POLL_S)
        self._cpu_at_ready = run_time_s(self.proc.pid)
        self._split_at_ready = user_system_s(self.proc.pid)
        self.result.startup_cpu_s = self._cpu_at_ready

    def run_time_s(self) -> float:
        assert self.proc is not None
        return run_time_s(self.proc.pid)

    def wait_idle(self, min_s: float) -> None:
        """Waits at least ``min_s``, then until the capturer uses (almost) no CPU: its ring is empty."""
        assert self.proc is not None
        time.sleep(min_s)
        deadline = time.monotonic() + IDLE_MAX_S
        before = run_time_s(self.proc.pid)
        while time.monotonic() < deadline:
            time.sleep(IDLE_POLL_S)
            now = run_time_s(self.proc.pid)
            if now - before < IDLE_CPU_RATIO * IDLE_POLL_S:
                return
            before = now
        self.result.notes.append(f"still busy {IDLE_MAX_S:.0f} s after the flood")

    def stop(self) -> None:
        """SIGINT, then waits for the exit (SIGKILL after STOP_TIMEOUT_S); reaps with rusage."""
        if self.proc is None or self.proc.returncode is not None:
            return
        pid = self.proc.pid
        started = time.monotonic()
        os.kill(pid, signal.SIGINT)
        while True:
            waited, status, usage = os.wait4(pid, os.WNOHANG)
            if waited:
                break
            if time.monotonic() - started > STOP_TIMEOUT_S:
                os.kill(pid, signal.SIGKILL)
                waited, status, usage = os.wait4(pid, 0)
                self.result.notes.append(f"did not exit within {STOP_TIMEOUT_S:.0f} s of SIGINT; killed")
                break
            time.sleep(POLL_S / 5)
        self.result.stop_s = time.monotonic() - started
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.result.exit_status = self.proc.returncode
        self.result.cpu_s = usage.ru_utime + usage.ru_stime - self._cpu_at_ready
        self.result.user_s = usage.ru_utime - self._split_at_ready[0]
        self.result.system_s = usage.ru_stime - self._split_at_ready[1]
        if self.result.exit_status != 0:
            self.result.notes.append(f"exit status {self.result.exit_status}: {self.log_tail()}")

    def kill(self) -> None:
        """Last resort in a ``finally``: our own child, by PID."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])


class Tcpdump(Capturer):
    tool = "tcpdump"
    ready_marker = "listening on"
    _STAT = re.compile(
        r"^(\d+) packets (captured|received by filter|dropped by kernel|dropped by interface)$"
    )

    def argv(self) -> list[str]:
        # -c bounds a run the harness failed to stop; it is never reached in a normal run.
        output = str(self.dir / "capture.pcap")
        return ["tcpdump", "-n", "-i", self.link.capture_if, "-w", output, "-s", str(SNAPLEN_BYTES),
                "-B", str(BUFFER_KIB), "-c", str(self.max_packets), FILTER]  # fmt: skip

    def collect(self) -> None:
        stats = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if match := self._STAT.match(line.strip()):
                stats[match.group(2)] = int(match.group(1))
        self.result.captured = count_pcap_records(self.dir / "capture.pcap")
        self.result.files = 1
        self.result.kernel_received = stats.get("received by filter", 0)
        self.result.kernel_dropped = stats.get("dropped by kernel", 0)
        self.result.interface_dropped = stats.get("dropped by interface", 0)
        if stats.get("captured") != self.result.captured:
            self.result.notes.append(
                f"tcpdump said {stats.get('captured')} captured, file has {self.result.captured}"
            )


class Survey6(Capturer):
    tool = "survey6"
    ready_marker = '"capturing"'

    def __init__(
        self, link: Link, work_dir: Path, cpu: int, max_packets: int, *, probe: Path, run_s: float
    ) -> None:
        super().__init__(link, work_dir, cpu, max_packets)
        self.probe = probe
        self.run_s = run_s

    def argv(self) -> list[str]:
        # --duration bounds a run the harness failed to stop; it is never reached in a normal run.
        # An empty config file: no /etc/survey6/probe.toml of this machine changes what is measured.
        config = self.dir / "probe.toml"
        config.write_text("")
        return [str(self.probe), "--config", str(config), "capture", "-i", self.link.capture_if,
                "-o", str(self.dir / "spool"),
                "--snaplen", str(SNAPLEN_BYTES), "--buffer-size", f"{BUFFER_KIB}KiB", "--filter", FILTER,
                "--duration", f"{self.run_s:.0f}s"]  # fmt: skip

    def env(self) -> dict[str, str]:
        # Only what the command needs: no SURVEY6_* settings from the caller's environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SURVEY6_")}
        env["SURVEY6_LOGGING__FORMAT"] = "json"
        return env

    def collect(self) -> None:
        ready = self.dir / "spool" / "ready"
        for sidecar in sorted(ready.glob("*.json")):
            meta = json.loads(sidecar.read_text())
            kernel = meta.get("kernel_delta", {})
            packets = int(meta.get("packets", 0))
            in_file = count_pcap_records(sidecar.with_suffix(".pcap"))
            if in_file != packets:
                self.result.notes.append(
                    f"{sidecar.stem}: sidecar says {packets} packets, file has {in_file}"
                )
            self.result.captured += in_file
            self.result.files += 1
            self.result.kernel_received += int(kernel.get("received_packets", 0))
            self.result.kernel_dropped += int(kernel.get("dropped_packets", 0))
            self.result.interface_dropped += int(kernel.get("interface_dropped_packets", 0))
        leftovers = [p.name for p in (self.dir / "spool").glob("open/*") if p.is_file()]
        if leftovers:
            self.result.notes.append(f"left in open/: {', '.join(leftovers)}")
        losses = self.dir / "spool" / "losses.jsonl"
        if losses.exists() and losses.read_text().strip():
            self.result.notes.append(f"spool losses: {losses.read_text().strip()[:200]}")
