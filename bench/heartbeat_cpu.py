"""CPU accounting for bench/heartbeat_load.py, from /proc: a server process, the load processes and
the whole machine over the measured window, so that other work on the machine shows too."""

from __future__ import annotations

import os
import time
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all CPUs together."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # guest time is already counted in user time
    idle = values[3] + values[4]  # idle + iowait
    return (total - idle) / CLOCK_TICKS_PER_S, total / CLOCK_TICKS_PER_S


def machine_busy_percent(seconds: float) -> float:
    """How busy the machine is over the next ``seconds``, in percent of one CPU (200 = two busy)."""
    busy, total = machine_cpu_s()
    started = time.monotonic()
    time.sleep(seconds)
    busy_after, _ = machine_cpu_s()
    return round(100 * (busy_after - busy) / (time.monotonic() - started), 1)


class CpuWindow:
    """Snapshots taken at the start and the end of the window; percentages are of one CPU."""

    def __init__(self, server_pid: int, load_pids: list[int]) -> None:
        self.server_pid, self.load_pids = server_pid, load_pids

    def snapshot(self) -> tuple[float, float, float, float]:
        busy, _ = machine_cpu_s()
        load = sum(process_cpu_s(pid) for pid in self.load_pids)
        return time.monotonic(), process_cpu_s(self.server_pid), load, busy

    @staticmethod
    def percentages(before: tuple[float, ...], after: tuple[float, ...]) -> dict[str, float]:
        wall = after[0] - before[0]
        server, load, busy = ((after[i] - before[i]) / wall * 100 for i in (1, 2, 3))
        return {
            "server_cpu_s": round(after[1] - before[1], 2),
            "server_cpu_percent": round(server, 1),
            "load_cpu_percent": round(load, 1),
            "machine_busy_percent": round(busy, 1),
            # Anything else that ran meanwhile: this script's parent, the kernel's softirq work
            # not charged to a process, and other people's work on a shared machine.
            "other_cpu_percent": round(busy - server - load, 1),
        }
