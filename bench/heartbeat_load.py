"""Heartbeat load: N simulated probes, each with its own identity and mTLS connection, heartbeating
against one real survey6-server, next to a bare gRPC server measured in the same run.

    .venv/bin/python bench/heartbeat_load.py --quick                 # 200 probes, 20 s window
    .venv/bin/python bench/heartbeat_load.py --probes 10000          # the enrolment goal

A throwaway ``survey6-server`` is initialised and started on loopback ports. N probes join through
its Enrolment service (one EC P-256 key and CSR each, one bootstrap token with N usages), and their
identities are shared among several load processes (asyncio, grpc.aio), each probe with its own
channel and TLS session. Every probe heartbeats every ``--interval`` seconds (+-10 % jitter, first
at a random phase) and backs off after a failure as survey6-probe does. After ``--warmup`` seconds,
a window of ``--duration`` seconds is measured: heartbeats completed per second, the latency of each
call (and counted from the time it was due, which adds any lateness of the load processes), failed
calls, and the CPU time of the server, of the load processes and of the whole machine. Then the
server stops (SIGTERM: its final write-behind flush) and its registry is checked: each heartbeat
carries its probe's id and a sequence number, so one recorded under the wrong probe, or an
acknowledged one missing, shows. The same load then runs against bench/heartbeat_echo.py (a
grpc.aio server that only answers, and one with the thread-pool model survey6-server uses) with the
same identities, CA and server certificate.

Server and load processes share this machine's CPUs: the results say how many there were.
Loopback only; everything started here is stopped by its process id and the temporary directory
(keys included) is removed. Results: a table on stdout and a JSON file under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from heartbeat_cpu import CpuWindow, machine_busy_percent
from heartbeat_driver import (
    HEARTBEAT_DEADLINE_S,
    Plan,
    ProbeIdentity,
    ProbeTally,
    WorkerReport,
    raise_open_files_limit,
    run_worker,
)
from heartbeat_echo import EchoServer
from heartbeat_fleet import (
    Survey6Server,
    check_registry,
    enrol,
    established_connections,
    token_usage,
)

import survey6

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_PROBES = 10_000
QUICK_PROBES = 200
DEFAULT_DURATION_S = 60.0
QUICK_DURATION_S = 20.0
DEFAULT_WARMUP_S = 10.0
QUICK_WARMUP_S = 6.0
HEARTBEAT_INTERVAL_S = 3.0  # survey6's default
MAX_PROBES = 20_000
MAX_DURATION_S = 600.0
ENROL_CONCURRENCY = 8
READY_TIMEOUT_S = 300.0  # spawning the load processes and every TLS handshake
DONE_GRACE_S = HEARTBEAT_DEADLINE_S + 30.0
START_DELAY_S = 1.0
PAUSE_BETWEEN_RUNS_S = 2.0
OPEN_FILES_MARGIN = 1024
ANCHORS = ("aio", "sync")
IDLE_CHECK_S = 3.0  # how long the machine's own load is measured before the run
BUSY_WARNING_PERCENT = 20.0


class Stop(Exception):
    """SIGTERM: unwind through every ``finally`` like Ctrl-C does."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--probes", type=int, help=f"simulated probes [{DEFAULT_PROBES}; --quick {QUICK_PROBES}]"
    )
    parser.add_argument("--duration", type=float, help=f"measured seconds [{DEFAULT_DURATION_S:g}]")
    parser.add_argument(
        "--warmup", type=float, help=f"seconds of heartbeats before the window [{DEFAULT_WARMUP_S:g}]"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PROBES} probes, {QUICK_DURATION_S:g} s")
    parser.add_argument("--workers", type=int, default=4, help="load processes [%(default)s]")
    parser.add_argument(
        "--interval", type=float, default=HEARTBEAT_INTERVAL_S, help="heartbeat interval, s [%(default)s]"
    )
    parser.add_argument(
        "--anchor", action="append", choices=ANCHORS, help="bare servers to measure too [aio and sync]"
    )
    parser.add_argument("--no-anchor", action="store_true", help="measure survey6-server only")
    parser.add_argument(
        "--enrol-concurrency", type=int, default=ENROL_CONCURRENCY, help="joins in flight [%(default)s]"
    )
    parser.add_argument(
        "--output", type=Path, help="JSON results file [bench/results/heartbeat_load-TIME.json]"
    )
    parser.add_argument(
        "--survey6-server", type=Path, help="the survey6-server command [next to this Python]"
    )
    args = parser.parse_args(argv)
    args.probes = args.probes or (QUICK_PROBES if args.quick else DEFAULT_PROBES)
    args.duration = args.duration or (QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S)
    args.warmup = (
        args.warmup if args.warmup is not None else (QUICK_WARMUP_S if args.quick else DEFAULT_WARMUP_S)
    )
    args.anchors = [] if args.no_anchor else (args.anchor or list(ANCHORS))
    args.survey6_server = args.survey6_server or Path(sys.executable).parent / "survey6-server"
    if not 1 <= args.probes <= MAX_PROBES:
        parser.error(f"--probes must be 1..{MAX_PROBES}")
    if not 0 < args.duration <= MAX_DURATION_S or not 0 <= args.warmup <= MAX_DURATION_S:
        parser.error(f"--duration and --warmup must be at most {MAX_DURATION_S:g} seconds")
    if not 1 <= args.workers <= min(64, args.probes) or args.interval <= 0:
        parser.error("--workers must be 1..64 (and no more than --probes); --interval above 0")
    return args


# -- one load run --------------------------------------------------------------------------------


def _receive(conn: Connection, timeout_s: float, expected: str) -> tuple[Any, ...]:
    if not conn.poll(timeout_s):
        raise RuntimeError(f"a load process sent no {expected!r} within {timeout_s:g} s")
    message = conn.recv()
    if message[0] != expected:
        raise RuntimeError(f"a load process failed: {message[1:]}")
    return tuple(message)


def run_load(
    name: str,
    target: str,
    server_pid: int,
    port: int,
    identities: list[ProbeIdentity],
    ca: bytes,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], list[ProbeTally]]:
    """Drives ``identities`` against ``target``; returns the figures and each probe's tally."""
    context = multiprocessing.get_context("spawn")  # no fork after gRPC has started in this process
    plan = Plan(target=target, ca_pem=ca, interval_s=args.interval)
    open_files = len(identities) // args.workers + OPEN_FILES_MARGIN
    workers, pipes = [], []
    try:
        for index in range(args.workers):
            ours, theirs = context.Pipe()
            shard = identities[index :: args.workers]
            worker = context.Process(
                target=run_worker, args=(plan, shard, theirs, open_files), name=f"load-{index}", daemon=True
            )
            worker.start()
            theirs.close()
            workers.append(worker)
            pipes.append(ours)
        ready_by = time.monotonic() + READY_TIMEOUT_S
        ready = [_receive(p, max(0.0, ready_by - time.monotonic()), "ready") for p in pipes]
        start = time.time() + START_DELAY_S
        window_start, window_end = start + args.warmup, start + args.warmup + args.duration
        for pipe in pipes:
            pipe.send(("go", start, window_end))
        cpu = CpuWindow(server_pid, [w.pid for w in workers if w.pid is not None])
        time.sleep(max(0.0, window_start - time.time()))
        before, connections = cpu.snapshot(), established_connections(port)
        time.sleep(max(0.0, window_end - time.time()))
        after = cpu.snapshot()
        reports: list[WorkerReport] = [_receive(p, DONE_GRACE_S, "done")[1] for p in pipes]
        for worker in workers:
            worker.join(timeout=DONE_GRACE_S)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()
        for pipe in pipes:
            pipe.close()
    figures = summarise(name, reports, args, (window_start - start, window_end - start))
    figures.update(CpuWindow.percentages(before, after))
    figures["server_cpu_ms_per_heartbeat"] = round(1000 * figures["server_cpu_s"] / max(1, figures["ok"]), 3)
    figures["server_connections"] = connections
    figures["connect"] = {
        "connected": sum(r[1] for r in ready),
        "failed": sum(r[2] for r in ready),
        "slowest_process_s": round(max(r.connect_s for r in reports), 1),
    }
    return figures, [t for r in reports for t in r.probes]


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": round(ordered[-1], 2)}


def summarise(
    name: str, reports: list[WorkerReport], args: argparse.Namespace, window: tuple[float, float]
) -> dict[str, Any]:
    low, high = window
    latency, from_schedule, warmup = [], [], []
    seconds: dict[int, list[float]] = {}
    for report in reports:
        for at, ms, late_ms in zip(report.done_at_s, report.latency_ms, report.from_schedule_ms, strict=True):
            if low <= at < high:
                latency.append(ms)
                from_schedule.append(late_ms)
                seconds.setdefault(int(at - low), []).append(ms)
            elif at < low:
                warmup.append(ms)
    failures = [f for r in reports for f in r.failures]
    per_second = [{"s": s, "ok": len(v), "p99_ms": percentiles(v)["p99"]} for s, v in sorted(seconds.items())]
    return {
        "target": name,
        "probes": sum(len(r.probes) for r in reports),
        "offered_heartbeats_per_s": round(sum(len(r.probes) for r in reports) / args.interval, 1),
        "ok": len(latency),
        "heartbeats_per_s": round(len(latency) / (high - low), 1),
        "latency_ms": percentiles(latency),
        "from_schedule_ms": percentiles(from_schedule),
        "warmup_latency_ms": percentiles(warmup),
        "failed_in_window": dict(Counter(code for at, code in failures if low <= at < high)),
        "failed_in_run": dict(Counter(code for _, code in failures)),
        "sent_in_run": sum(t.last_sent_seq for r in reports for t in r.probes),
        "worst_second_p99_ms": max((s["p99_ms"] or 0.0 for s in per_second), default=None),
        "per_second": per_second,
    }


# -- the whole benchmark -------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return ((result.stdout or result.stderr).strip().splitlines() or ["unknown"])[0]


def machine_info() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "survey6": survey6.__version__,
        "survey6_commit": _first_line(["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"]),
        "note": "server and load processes share these CPUs",
    }


def run_survey6(root: Path, args: argparse.Namespace, open_files: int) -> tuple[dict[str, Any], Any, Path]:
    env = {"SURVEY6_LIVENESS__HEARTBEAT_INTERVAL_S": str(args.interval)}
    server = Survey6Server(root, args.survey6_server, open_files, env)
    try:
        server.init()
        token = server.token(args.probes)
        server.start()
        ca = (server.pki / "ca.crt").read_bytes()
        print(f"enrolling {args.probes} probes ...", flush=True)
        identities, enrolment = asyncio.run(
            enrol(f"127.0.0.1:{server.enrol_port}", ca, token, args.probes, args.enrol_concurrency)
        )
        print(
            f"  {enrolment.enrolled} enrolled in {enrolment.seconds:.1f} s, {enrolment.failed} failed",
            flush=True,
        )
        if not identities:
            raise RuntimeError(f"no probe could enrol: {enrolment.failures}")
        print(
            f"survey6-server: {len(identities)} probes for {args.warmup:g}+{args.duration:g} s ...",
            flush=True,
        )
        target = f"127.0.0.1:{server.control_port}"
        figures, tallies = run_load("survey6", target, server.pid, server.control_port, identities, ca, args)
        figures["server_stop_s"] = round(server.stop(), 2)
        figures["registry"] = check_registry(server.database, tallies)
        figures["registry"]["token"] = token_usage(server.database)
        figures["server_log"] = server.log_summary()
        figures["enrolment"] = vars(enrolment)
        return figures, identities, server.pki
    finally:
        server.kill()


def run_anchor(
    mode: str, root: Path, pki: Path, identities: list[ProbeIdentity], args: argparse.Namespace
) -> dict[str, Any]:
    bound_s = READY_TIMEOUT_S + args.warmup + args.duration + DONE_GRACE_S + 60
    echo = EchoServer(mode, root, pki, bound_s)
    try:
        echo.start()
        assert echo.process is not None
        print(
            f"echo-{mode}: {len(identities)} probes for {args.warmup:g}+{args.duration:g} s ...", flush=True
        )
        ca = (pki / "ca.crt").read_bytes()
        figures, _ = run_load(
            f"echo-{mode}", f"127.0.0.1:{echo.port}", echo.process.pid, echo.port, identities, ca, args
        )
        return figures
    finally:
        echo.stop()


ROW = "{:<10}{:>7}{:>9}{:>9}{:>9}{:>9}{:>11}{:>8}{:>10}{:>9}{:>9}{:>9}"


def print_table(runs: list[dict[str, Any]]) -> None:
    print(
        ROW.format(
            "target",
            "probes",
            "offered",
            "hb/s",
            "p50 ms",
            "p99 ms",
            "p99 sched",
            "errors",
            "srv CPU%",
            "ms CPU",
            "busy %",
            "other %",
        )
    )
    for run in runs:
        errors = sum(run["failed_in_window"].values())
        print(
            ROW.format(
                run["target"],
                run["probes"],
                run["offered_heartbeats_per_s"],
                run["heartbeats_per_s"],
                run["latency_ms"]["p50"],
                run["latency_ms"]["p99"],
                run["from_schedule_ms"]["p99"],
                errors,
                run["server_cpu_percent"],
                run["server_cpu_ms_per_heartbeat"],
                run["machine_busy_percent"],
                run["other_cpu_percent"],
            )
        )


def ratios(survey6_run: dict[str, Any], anchor: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    return {
        "heartbeats_per_s": ratio(survey6_run["heartbeats_per_s"], anchor["heartbeats_per_s"]),
        "p50": ratio(survey6_run["latency_ms"]["p50"], anchor["latency_ms"]["p50"]),
        "p99": ratio(survey6_run["latency_ms"]["p99"], anchor["latency_ms"]["p99"]),
        "server_cpu_per_heartbeat": ratio(
            survey6_run["server_cpu_ms_per_heartbeat"], anchor["server_cpu_ms_per_heartbeat"]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    open_files = raise_open_files_limit(args.probes + OPEN_FILES_MARGIN)  # inherited by every child
    root = Path(tempfile.mkdtemp(prefix="heartbeat-load-"))
    os.chmod(root, 0o700)  # the probes' private keys live here
    result: dict[str, Any] = {
        "machine": machine_info(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    busy = result["machine"]["busy_before_percent"] = machine_busy_percent(IDLE_CHECK_S)
    if busy > BUSY_WARNING_PERCENT:
        print(f"warning: the machine was {busy:g} % busy (of one CPU) before the run", file=sys.stderr)
    result["parameters"] = {
        k: v
        for k, v in vars(args).items()
        if k in ("probes", "duration", "warmup", "workers", "interval", "anchors")
    }
    runs: list[dict[str, Any]] = []
    try:
        survey6_run, identities, pki = run_survey6(root, args, open_files)
        runs.append(survey6_run)
        for mode in args.anchors:
            time.sleep(PAUSE_BETWEEN_RUNS_S)
            runs.append(run_anchor(mode, root, pki, identities, args))
    except (KeyboardInterrupt, Stop):
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["runs"] = runs
    result["ratios_to"] = {run["target"]: ratios(runs[0], run) for run in runs[1:]}
    output = (
        args.output or RESULTS_DIR / f"heartbeat_load-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(
        f"{os.cpu_count()} CPUs shared by the server and {args.workers} load processes; "
        f"window {args.duration:g} s after {args.warmup:g} s warm-up; interval {args.interval:g} s"
    )
    print_table(runs)
    print(f"registry: {json.dumps(runs[0]['registry'])}")
    for name, values in result["ratios_to"].items():
        print(f"survey6 / {name}: {json.dumps(values)}")
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
