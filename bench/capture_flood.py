"""Capture flood: tcpdump and ``survey6-probe capture`` on the same bounded flood, in the same run.

    sudo .venv/bin/python bench/capture_flood.py            # 3 repetitions of each scenario
    sudo .venv/bin/python bench/capture_flood.py --quick    # a 1-second smoke run

Two network namespaces are joined by a veth pair (IPv6 disabled on it, so it is silent). A small C
sender (bench/flood.c, compiled with gcc into a temporary directory) writes a paced, bounded flood of
IPv6/UDP frames from one namespace; in the other, tcpdump and then survey6-probe (order alternating
between repetitions) capture it with the same filter, snap length and 64 MiB kernel ring. Each run
reports packets sent, packets captured, kernel drops and the capturer's CPU time per captured packet.
The sender is pinned to one CPU and the capturer to another. A run without any capturer measures
what the link carries on its own. Before each capture, as much memory as it will fill is touched and
freed (see ``warm_memory``). Namespaces, processes and files are removed at the end, whatever
happened. Needs root. Results: a table on stdout and a JSON file under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import mmap
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _capturers import Capturer, Survey6, Tcpdump
from _netns import FloodResult, Link, LinkCounters, build_flood, flood

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_FLOOD_S = 5.0
QUICK_FLOOD_S = 1.0
DEFAULT_REPETITIONS = 3
MAX_REPETITIONS = 10
MAX_FLOOD_S = 60.0
SENDER_CPU = 0
CAPTURE_CPU = 1
# tcpdump's libpcap read timeout is 1 s: its last, partly filled ring block reaches it only then.
SETTLE_MIN_S = 1.5
PAUSE_BETWEEN_RUNS_S = 1.0
FREE_SPACE_MARGIN_BYTES = 2 << 30  # 2 GiB more than one capture needs (survey6 keeps 1 GiB free)
PCAP_RECORD_OVERHEAD_BYTES = 16
RING_BYTES = 64 << 20  # 64 MiB, the kernel ring of either capturer
WARM_CHUNK_BYTES = 1 << 20  # 1 MiB
WARM_MARGIN_RATIO = 1.25
REQUIRED_TOOLS = ("ip", "taskset", "tcpdump", "gcc")


@dataclass(frozen=True)
class Scenario:
    name: str
    frame_bytes: int
    rate_pps: int


SCENARIOS = {
    "64B": Scenario("64B", 64, 1_000_000),
    "1400B": Scenario("1400B", 1400, 300_000),
}


class Stop(Exception):
    """SIGTERM: unwind through every ``finally`` like Ctrl-C does."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Must run as root: network namespaces, raw sockets."
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repetition of 1-second floods")
    parser.add_argument("--repetitions", type=int, help=f"runs per scenario and tool [{DEFAULT_REPETITIONS}]")
    parser.add_argument(
        "--duration", type=float, help=f"seconds of flood (rate x seconds packets) [{DEFAULT_FLOOD_S:g}]"
    )
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="only this (repeatable)"
    )
    parser.add_argument("--sender-cpu", type=int, default=SENDER_CPU, help="CPU of the sender [%(default)s]")
    parser.add_argument(
        "--capture-cpu", type=int, default=CAPTURE_CPU, help="CPU of the capturer [%(default)s]"
    )
    parser.add_argument(
        "--no-warm-memory",
        dest="warm_memory",
        action="store_false",
        help="do not touch memory before each capture (see warm_memory in this file)",
    )
    parser.add_argument("--work-dir", type=Path, help="where captures are written [system temp directory]")
    parser.add_argument(
        "--output", type=Path, help="JSON results file [bench/results/capture_flood-TIME.json]"
    )
    parser.add_argument("--survey6-probe", type=Path, help="the survey6-probe command [next to this Python]")
    args = parser.parse_args(argv)
    if args.repetitions is None:
        args.repetitions = 1 if args.quick else DEFAULT_REPETITIONS
    if args.duration is None:
        args.duration = QUICK_FLOOD_S if args.quick else DEFAULT_FLOOD_S
    args.scenarios = [SCENARIOS[name] for name in (args.scenario or SCENARIOS)]
    args.survey6_probe = args.survey6_probe or Path(sys.executable).parent / "survey6-probe"
    if not 1 <= args.repetitions <= MAX_REPETITIONS:
        parser.error(f"--repetitions must be 1..{MAX_REPETITIONS}")
    if not 0 < args.duration <= MAX_FLOOD_S:
        parser.error(f"--duration must be more than 0 and at most {MAX_FLOOD_S:g} seconds")
    return args


def environment_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces, raw sockets, capture): "
                        "sudo .venv/bin/python bench/capture_flood.py")  # fmt: skip
    problems += [f"{tool} not found on PATH" for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not os.access(args.survey6_probe, os.X_OK):
        problems.append(f"no survey6-probe at {args.survey6_probe} (give --survey6-probe)")
    cpus = os.cpu_count() or 1
    if max(args.sender_cpu, args.capture_cpu) >= cpus:
        problems.append(f"this machine has {cpus} CPU(s): choose --sender-cpu/--capture-cpu below {cpus}")
    return problems


def free_space_problem(work_dir: Path, args: argparse.Namespace) -> str | None:
    largest = max(s.rate_pps * (s.frame_bytes + PCAP_RECORD_OVERHEAD_BYTES) for s in args.scenarios)
    needed = int(largest * args.duration) + FREE_SPACE_MARGIN_BYTES
    free = shutil.disk_usage(work_dir).free
    if free < needed:
        return f"{free >> 20} MiB free in the work directory; {needed >> 20} MiB needed (give --work-dir)"
    return None


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return ((result.stdout or result.stderr).strip().splitlines() or ["unknown"])[0]


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "unknown")  # fmt: skip
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "libpcap": _first_line(["dpkg-query", "-W", "-f", "${Version}\n", "libpcap0.8"]),
        "tcpdump": _first_line(["tcpdump", "--version"]),
        "gcc": _first_line(["gcc", "--version"]),
        "python": platform.python_version(),
        "survey6": _first_line([str(args.survey6_probe), "--version"]),
        "survey6_commit": _first_line(["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"]),
    }


# -- one run ---------------------------------------------------------------------------------------


def cpu_busy_s(cpu: int) -> float:
    """Seconds one CPU has spent busy (not idle, not waiting for I/O) since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(value) for value in line.split()[1:]]
            return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def load_average_1m() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def memory_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def warm_memory(size_bytes: int) -> float:
    """Writes, then frees, this much anonymous memory; returns the seconds it took.

    On a virtual machine whose free memory goes back to the host (virtio-balloon free page
    reporting), the first write to each page costs a host fault: a capturer filling gigabytes of
    fresh page cache then runs at the speed of those faults, not its own. Touching the memory just
    before a run hands the capturer pages that are already backed, as on a host that has been
    capturing for a while. Both capturers get the same treatment.
    """
    size_bytes = min(size_bytes, memory_available_bytes() // 2) // WARM_CHUNK_BYTES * WARM_CHUNK_BYTES
    started = time.monotonic()
    chunk = bytes(WARM_CHUNK_BYTES)
    with mmap.mmap(-1, size_bytes) as memory:
        for _ in range(size_bytes // WARM_CHUNK_BYTES):
            memory.write(chunk)
    return time.monotonic() - started


def make_capturer(
    tool: str, link: Link, run_dir: Path, args: argparse.Namespace, count: int
) -> Capturer | None:
    bound = count * 2 + 1000  # packets or seconds after which a capturer we failed to stop ends itself
    if tool == "tcpdump":
        return Tcpdump(link, run_dir, args.capture_cpu, bound)
    if tool == "survey6":
        return Survey6(
            link, run_dir, args.capture_cpu, bound, probe=args.survey6_probe, run_s=args.duration * 4 + 120
        )
    return None


def run_one(
    link: Link, binary: Path, scenario: Scenario, tool: str, work_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    count = int(scenario.rate_pps * args.duration)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{scenario.name}-{tool}-", dir=work_dir))
    capturer = make_capturer(tool, link, run_dir, args, count)
    warm_s = None
    try:
        if capturer is not None:
            if args.warm_memory:
                capture_bytes = count * (scenario.frame_bytes + PCAP_RECORD_OVERHEAD_BYTES) + RING_BYTES
                warm_s = warm_memory(int(capture_bytes * WARM_MARGIN_RATIO))
            capturer.start()
        load = load_average_1m()
        before, busy_before = link.counters(), cpu_busy_s(args.capture_cpu)
        own_before = capturer.run_time_s() if capturer is not None else 0.0
        sent = flood(link, binary, frame_bytes=scenario.frame_bytes, rate_pps=scenario.rate_pps,
                     count=count, max_s=args.duration * 2 + 1, cpu=args.sender_cpu)  # fmt: skip
        if capturer is not None:
            capturer.wait_idle(SETTLE_MIN_S)
        moved = link.counters().since(before)
        own = capturer.run_time_s() - own_before if capturer is not None else 0.0
        # Whatever else ran on the capturer's CPU meanwhile: other processes on a shared machine.
        others_s = cpu_busy_s(args.capture_cpu) - busy_before - own
        if capturer is not None:
            capturer.stop()
            capturer.collect()
    finally:
        if capturer is not None:
            capturer.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
        os.sync()  # no write-back of this run's files during the next one
    extra = {"warm_memory_s": warm_s, "load_average_1m": load, "capture_cpu_others_s": others_s}
    return {**row(scenario, tool, sent, moved, capturer), **extra}


def row(
    scenario: Scenario, tool: str, sent: FloodResult, moved: LinkCounters, capturer: Capturer | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"scenario": scenario.name, "tool": tool, "frame_bytes": scenario.frame_bytes,
                           "target_pps": scenario.rate_pps}  # fmt: skip
    out.update({f"flood_{key}": value for key, value in asdict(sent).items()})
    out.update({f"link_{key}": value for key, value in asdict(moved).items()})
    if capturer is None:
        return out
    result = asdict(capturer.result)
    result.pop("tool")
    out.update(result)
    out["captured_ratio"] = result["captured"] / sent.sent if sent.sent else 0.0
    out["cpu_us_per_packet"] = result["cpu_s"] * 1e6 / result["captured"] if result["captured"] else None
    # Arrived at the capture end but neither written nor reported dropped by the capturer.
    out["unaccounted"] = moved.rx_packets - result["captured"] - result["kernel_dropped"]
    out["lossless"] = result["captured"] == moved.rx_packets == sent.sent and result["kernel_dropped"] == 0
    return out


def run_all(args: argparse.Namespace, work_dir: Path, bin_dir: Path) -> list[dict[str, Any]]:
    binary = build_flood(bin_dir)  # not in the work directory, which may be a noexec tmpfs
    link = Link()
    rows = []
    try:
        link.create()
        for scenario in args.scenarios:
            for repetition in range(1, args.repetitions + 1):
                order = ["tcpdump", "survey6"] if repetition % 2 else ["survey6", "tcpdump"]
                for tool in ["none", *order]:
                    print(f"  {scenario.name} #{repetition} {tool} ...", file=sys.stderr, flush=True)
                    rows.append(
                        {"repetition": repetition, **run_one(link, binary, scenario, tool, work_dir, args)}
                    )
                    time.sleep(PAUSE_BETWEEN_RUNS_S)
    finally:
        link.destroy()
    return rows


# -- the report --------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(r["scenario"] for r in rows):
        runs = [r for r in rows if r["scenario"] == name]
        per_tool = {}
        for tool in ("none", "tcpdump", "survey6"):
            mine = [r for r in runs if r["tool"] == tool]
            per_tool[tool] = {
                "runs": len(mine),
                "send_rate_pps": _median([r["flood_rate_pps"] for r in mine]),
                "captured_ratio": _median([r["captured_ratio"] for r in mine if "captured_ratio" in r]),
                "kernel_dropped": _median([r["kernel_dropped"] for r in mine if "kernel_dropped" in r]),
                "cpu_us_per_packet": _median(
                    [r["cpu_us_per_packet"] for r in mine if r.get("cpu_us_per_packet")]
                ),
                "lossless_runs": sum(1 for r in mine if r.get("lossless")),
            }
        pairs = {}
        for r in runs:
            pairs.setdefault(r["repetition"], {})[r["tool"]] = r
        cpu_ratios, both, tcpdump_lossless = [], 0, 0
        for pair in pairs.values():
            t, s = pair.get("tcpdump"), pair.get("survey6")
            if t and s and t.get("cpu_us_per_packet") and s.get("cpu_us_per_packet"):
                cpu_ratios.append(s["cpu_us_per_packet"] / t["cpu_us_per_packet"])
            if t and s and t["lossless"]:
                tcpdump_lossless += 1
                both += int(s["lossless"])
        summary[name] = {
            **per_tool,
            "cpu_ratio_survey6_to_tcpdump": _median(cpu_ratios),
            "cpu_ratios_per_repetition": cpu_ratios,
            "survey6_lossless_where_tcpdump_was": f"{both}/{tcpdump_lossless}",
        }
    return summary


COLUMNS = [  # (title, width, format of the row value)
    ("scenario", 8, lambda r: r["scenario"]),
    ("rep", 3, lambda r: str(r["repetition"])),
    ("tool", 8, lambda r: r["tool"]),
    ("sent", 9, lambda r: f"{r['flood_sent']:,}"),
    ("kpps", 6, lambda r: f"{r['flood_rate_pps'] / 1e3:.0f}"),
    ("arrived", 9, lambda r: f"{r['link_rx_packets']:,}"),
    ("captured", 9, lambda r: f"{r['captured']:,}" if "captured" in r else "-"),
    ("capt/sent", 9, lambda r: f"{r['captured_ratio']:.4f}" if "captured" in r else "-"),
    ("k.recv", 9, lambda r: f"{r['kernel_received']:,}" if "captured" in r else "-"),
    ("k.drops", 8, lambda r: f"{r['kernel_dropped']:,}" if "captured" in r else "-"),
    ("unacct", 7, lambda r: f"{r['unaccounted']:,}" if "captured" in r else "-"),
    ("cpu s", 6, lambda r: f"{r['cpu_s']:.3f}" if "captured" in r else "-"),
    ("µs/pkt", 7, lambda r: f"{r['cpu_us_per_packet']:.3f}" if r.get("cpu_us_per_packet") else "-"),
    ("files", 5, lambda r: str(r["files"]) if "captured" in r else "-"),
    ("stop s", 6, lambda r: f"{r['stop_s']:.2f}" if "captured" in r else "-"),
    ("others", 6, lambda r: f"{r['capture_cpu_others_s']:.2f}"),
    ("load", 5, lambda r: f"{r['load_average_1m']:.1f}"),
]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print("  ".join(f"{title:>{width}}" for title, width, _ in COLUMNS))
    for r in rows:
        print("  ".join(f"{get(r):>{width}}" for _, width, get in COLUMNS))
        for note in r.get("notes", []):
            print(f"      note ({r['tool']}): {note}")
    print()
    for name, s in summary.items():
        t, v = s["tcpdump"], s["survey6"]
        print(f"{name}: median send rate without capture {_fmt(s['none']['send_rate_pps'], ',.0f')} pps")
        for tool, m in (("tcpdump", t), ("survey6", v)):
            print(f"  {tool:8} captured/sent {_fmt(m['captured_ratio'], '.4f')}  "
                  f"kernel drops {_fmt(m['kernel_dropped'], ',.0f')}  "
                  f"CPU {_fmt(m['cpu_us_per_packet'], '.3f')} µs/packet  "
                  f"lossless runs {m['lossless_runs']}/{m['runs']}  (medians)")  # fmt: skip
        print(f"  survey6/tcpdump CPU per packet {_fmt(s['cpu_ratio_survey6_to_tcpdump'], '.2f')}; "
              f"survey6 lossless where tcpdump was: {s['survey6_lossless_where_tcpdump_was']}")  # fmt: skip


def write_results(
    path: Path, args: argparse.Namespace, rows: list[dict[str, Any]], summary: dict[str, Any]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"duration_s": args.duration, "repetitions": args.repetitions, "quick": args.quick,
                "warm_memory": args.warm_memory,
                "sender_cpu": args.sender_cpu, "capture_cpu": args.capture_cpu,
                "scenarios": [asdict(s) for s in args.scenarios]}  # fmt: skip
    document = {"benchmark": "capture_flood", "machine": machine_info(args), "settings": settings,
                "summary": summary, "runs": rows}  # fmt: skip
    path.write_text(json.dumps(document, indent=2) + "\n")


def _on_sigterm(signum: int, frame: object) -> None:
    raise Stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problems = environment_problems(args)
    if problems:
        for problem in problems:
            print(f"capture_flood: {problem}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _on_sigterm)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or RESULTS_DIR / f"capture_flood-{stamp}.json"
    work_dir = Path(tempfile.mkdtemp(prefix="s6bench-", dir=args.work_dir))
    bin_dir = Path(tempfile.mkdtemp(prefix="s6bench-bin-"))
    try:
        if problem := free_space_problem(work_dir, args):
            print(f"capture_flood: {problem}", file=sys.stderr)
            return 1
        rows = run_all(args, work_dir, bin_dir)
    except (KeyboardInterrupt, Stop):
        print("capture_flood: interrupted; namespaces and files removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        shutil.rmtree(bin_dir, ignore_errors=True)
    summary = summarise(rows)
    print_report(rows, summary)
    write_results(output, args, rows, summary)
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
