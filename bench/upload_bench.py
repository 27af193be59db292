"""Upload throughput on loopback next to a bare grpc.aio client-streaming echo, and the share of the
link the uploader uses during a busy period.

    sudo .venv/bin/python bench/upload_bench.py --quick        # 2 x 16 MiB files, 1 repetition, short
    sudo .venv/bin/python bench/upload_bench.py                # 4 x 64 MiB files, 3 repetitions
    sudo .venv/bin/python bench/upload_bench.py --work-dir /dev/shm --no-share   # server and spool on tmpfs

Throughput. A throwaway ``survey6-server`` (init, run on free loopback ports, its own Redis) and one
probe identity joined with ``survey6-probe join``. Large sealed capture files (real pcaps with valid
sidecars, sealed by survey6's Spool) are delivered by survey6's ``Uploader`` in override mode
(``upload_now``) with a LinkMonitor whose capacity is so large that its token bucket never waits;
the time runs from the uploader's start to the last file leaving the spool on a DURABLE receipt (the
server checked CRC-32 and SHA-256, fsynced and landed each file and recorded it in its registry).
In the same run, with the same files, chunk sizes, certificates and mutual TLS:

- anchor: a bare grpc.aio client streaming the files to a bare grpc.aio server that counts bytes
  (bench/upload_echo.py: no CRC, no hashing, no disk);
- to tell where time goes: the bare client against survey6-server (with CRC, which it checks), the
  survey6 Uploader against the echo servers, and a thread-pool echo server (survey6-server's model).

Link share (needs root and ``ip``). The server then runs in a network namespace behind a veth pair;
the uploader's LinkMonitor watches the host's end, is told the link has ``--capacity-bps`` and the
uploader may use ``--share`` of the headroom, while paced UDP background traffic arrives on the
link. What the uploader sends is sampled every 100 ms: see bench/upload_share.py.

Everything started here is stopped by its process id; the namespace and the temporary directory
(keys included) are removed. Results: tables on stdout and a JSON file under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from upload_echo import EchoServer, bare_put
from upload_link import CountingMonitor, VethLink
from upload_setup import BenchSpool, Master, Redis, Server, join_probe, machine_busy_s, write_masters
from upload_share import ShareConfig, ShareContext, run_scenario

from survey6.probe.agent import MAX_MESSAGE_BYTES
from survey6.probe.settings import DeliverySettings
from survey6.probe.uploader import Uploader
from survey6.wire.v1 import upload_pb2, upload_pb2_grpc

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
MIB = 1 << 20
UNLIMITED_BPS = 1e13  # the LinkMonitor's capacity in the throughput trials: its bucket never waits
READY_TIMEOUT_S = 30.0
MIN_TRIAL_RATE_BYTES_PER_S = 5e6  # a trial slower than this is given up (bounds the run)
BARE_SEQUENCE_BASE = 1_000_000  # sequences of the bare client's files, apart from the spool's
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
ANCHOR = "bare->echo-aio"
CELLS = {
    # name: (client, server)
    "uploader->survey6": ("uploader", "survey6"),
    "bare->echo-aio": ("bare", "echo-aio"),
    "bare->survey6": ("bare", "survey6"),
    "uploader->echo-aio": ("uploader", "echo-aio"),
    "bare->echo-sync": ("bare", "echo-sync"),
    "uploader->echo-sync": ("uploader", "echo-sync"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 x 16 MiB files, 1 repetition, short share runs"
    )
    parser.add_argument("--files", type=int, help="files per throughput trial [4; quick 2]")
    parser.add_argument("--file-mib", type=int, help="size of each file in MiB [64; quick 16]")
    parser.add_argument(
        "--chunk-kib", type=int, nargs="+", default=[1024, 256], help="chunk sizes [1024 256]"
    )
    parser.add_argument("--repetitions", type=int, help="repetitions of every cell [3; quick 1]")
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS), help="[all]")
    parser.add_argument("--work-dir", type=Path, help="where the temporary directory goes [system temp]")
    parser.add_argument("--no-share", action="store_true", help="skip the link-share part (no root needed)")
    parser.add_argument("--no-throughput", action="store_true", help="skip the throughput part")
    parser.add_argument(
        "--capacity-bps", type=float, default=80e6, help="link capacity C told to the monitor"
    )
    parser.add_argument("--share", type=float, default=0.5, help="delivery.upload_share_ratio s [0.5]")
    parser.add_argument("--background-bps", type=float, default=24e6, help="background on the link [24e6]")
    parser.add_argument("--share-chunk-kib", type=int, default=256, help="chunk size of the share runs [256]")
    parser.add_argument("--warmup-s", type=float, help="background before upload-now [15; quick 5]")
    parser.add_argument("--upload-s", type=float, help="upload time per share scenario [20; quick 5]")
    parser.add_argument("--small-file-kib", type=int, default=1024, help="file size of small-files [1024]")
    parser.add_argument(
        "--quiet-percent", type=float, default=25.0, help="wait before each trial until the machine is"
        " less busy than this (percent of one CPU, over 0.5 s) [25]"
    )  # fmt: skip
    parser.add_argument("--quiet-wait-s", type=float, default=60.0, help="but at most this long [60]")
    parser.add_argument(
        "--disturbed-other-s", type=float, default=0.2, help="a trial during which the rest of the"
        " machine used more CPU than this is disturbed: kept, marked, and run again [0.2]"
    )  # fmt: skip
    parser.add_argument("--retries", type=int, default=2, help="runs again of a disturbed trial [2]")
    parser.add_argument("--output", type=Path, help="JSON results [bench/results/upload_bench-TIME.json]")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE",
        help="a SURVEY6_* setting for the server, e.g. SURVEY6_UPLOADS__WRITEBACK_BYTES=0 (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    quick = args.quick
    args.files = args.files or (2 if quick else 4)
    args.file_mib = args.file_mib or (16 if quick else 64)
    args.repetitions = args.repetitions or (1 if quick else 3)
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (5.0 if quick else 15.0)
    args.upload_s = args.upload_s if args.upload_s is not None else (5.0 if quick else 20.0)
    return args


# -- CPU accounting ---------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def busy_percent(seconds: float) -> float:
    """How busy the whole machine is over the next `seconds`, in percent of one CPU."""
    before, started = machine_busy_s(), time.monotonic()
    time.sleep(seconds)
    return 100 * (machine_busy_s() - before) / (time.monotonic() - started)


def wait_quiet(threshold_percent: float, max_wait_s: float) -> tuple[float, float]:
    """Waits (at most max_wait_s) until the machine is less busy than the threshold over 0.5 s, so a
    trial does not start while other people's work holds the CPUs; returns (waited s, busy %)."""
    started = time.monotonic()
    busy = busy_percent(0.5)
    while busy >= threshold_percent and time.monotonic() - started < max_wait_s:
        busy = busy_percent(0.5)
    return round(time.monotonic() - started, 1), round(busy)


@dataclass
class CpuMark:
    client: float
    server: float
    machine: float

    @classmethod
    def now(cls, server_pid: int) -> CpuMark:
        return cls(time.process_time(), process_cpu_s(server_pid), machine_busy_s())


# -- throughput trials ------------------------------------------------------------------------------


@dataclass
class Trial:
    cell: str
    chunk_kib: int
    repetition: int
    files: int
    bytes: int
    seconds: float
    mb_per_s: float
    client_cpu_s: float
    server_cpu_s: float
    other_cpu_s: float  # the rest of the machine's busy time (kernel work not charged, other people)
    per_file_s: list[float]
    quiet_wait_s: float = 0.0  # waited for the machine to calm down before the trial
    busy_before_percent: float = 0.0  # the machine's busy CPU just before, percent of one CPU
    durable_after_s: list[float] | None = None  # survey6-server: each file's last byte to its receipt
    disturbed: bool = False  # other CPU above --disturbed-other-s: left out of the table if a rerun was not


def uploader_run(
    spool: BenchSpool,
    target: str,
    credentials: grpc.ChannelCredentials,
    probe_id: str,
    masters: list[Master],
    chunk_bytes: int,
    server_pid: int,
) -> tuple[float, CpuMark, CpuMark, list[float]]:
    """survey6's Uploader delivers the masters from the spool; returns seconds, CPU marks, per file."""
    spool.empty()
    spool.fill(masters)
    total = sum(m.size_bytes for m in masters)
    monitor = CountingMonitor("lo", capacity_bps=UNLIMITED_BPS, idle_threshold_ratio=0.1, idle_hold_s=30.0,
                              smoothing_s=5.0)  # fmt: skip
    settings = DeliverySettings(chunk_bytes=chunk_bytes)
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    with grpc.secure_channel(target, credentials, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT_S)  # TLS handshake not timed
        uploader = Uploader(spool, upload_pb2_grpc.UploadStub(channel), monitor, settings, probe_id)
        uploader.request_upload_now()
        thread = threading.Thread(target=uploader.run, name="uploader", daemon=True)
        os.sync()
        before = CpuMark.now(server_pid)
        started = time.monotonic()
        thread.start()
        deadline = started + 60 + total / MIN_TRIAL_RATE_BYTES_PER_S
        while len(spool.delivered_at) < len(masters) and time.monotonic() < deadline:
            time.sleep(0.002)
        after = CpuMark.now(server_pid)
        uploader.request_stop()
        thread.join(timeout=60)
    if len(spool.delivered_at) < len(masters):
        raise RuntimeError(f"uploader delivered {len(spool.delivered_at)} of {len(masters)} files in time;"
                           f" last error: {uploader.status.last_error!r}")  # fmt: skip
    marks = [started, *spool.delivered_at]
    per_file = [round(b - a, 3) for a, b in zip(marks, marks[1:], strict=False)]
    return spool.delivered_at[-1] - started, before, after, per_file


def bare_run(
    target: str,
    credentials: grpc.ChannelCredentials,
    masters: list[Master],
    chunk_bytes: int,
    first_sequence: int,
    server_pid: int,
    to_survey6: bool,
) -> tuple[float, CpuMark, CpuMark, list[float]]:
    files = [(m.path, m.with_sequence(first_sequence + i)) for i, m in enumerate(masters)]
    os.sync()
    before = CpuMark.now(server_pid)
    seconds, receipts = bare_put(target, credentials, files, chunk_bytes, crc=to_survey6)
    after = CpuMark.now(server_pid)
    for (_, metadata), receipt in zip(files, receipts, strict=True):
        durable = receipt.durability == upload_pb2.DURABILITY_DURABLE
        if receipt.size_bytes != metadata.file_size_bytes or (to_survey6 and not durable):
            raise RuntimeError(f"bare client: unexpected receipt {receipt} for file {metadata.sequence}")
        if to_survey6 and receipt.sha256_hex != metadata.sha256_hex:
            raise RuntimeError(f"bare client: survey6-server computed another sha256 for {metadata.sequence}")
    return seconds, before, after, []


def run_throughput(
    args: argparse.Namespace,
    root: Path,
    server: Server,
    spool: BenchSpool,
    probe_id: str,
    credentials: grpc.ChannelCredentials,
    masters: list[Master],
) -> list[Trial]:
    total = sum(m.size_bytes for m in masters)
    bound_s = 600 + len(args.cells) * len(args.chunk_kib) * args.repetitions * (60 + total / 5e6)
    echoes = {mode: EchoServer(mode, root, server.pki, bound_s) for mode in ("aio", "sync")}
    trials: list[Trial] = []
    sequence = BARE_SEQUENCE_BASE
    try:
        for echo in echoes.values():
            echo.start()
        targets = {"survey6": (server.control_target, server.pid)}
        targets.update({f"echo-{mode}": (echo.target, echo.pid) for mode, echo in echoes.items()})
        for repetition in range(1, args.repetitions + 1):
            for chunk_kib in args.chunk_kib:
                cells = _rotated(args.cells, repetition - 1)
                for cell, attempt in ((c, a) for c in cells for a in range(1 + args.retries)):
                    if attempt and not trials[-1].disturbed:
                        continue  # the last run of this cell was clean
                    client, server_name = CELLS[cell]
                    target, pid = targets[server_name]
                    waited, busy = wait_quiet(args.quiet_percent, args.quiet_wait_s)
                    log_mark = server.log_lines()
                    if client == "uploader":
                        run = uploader_run(
                            spool, target, credentials, probe_id, masters, chunk_kib << 10, pid
                        )
                    else:
                        run = bare_run(target, credentials, masters, chunk_kib << 10, sequence, pid,
                                       server_name == "survey6")  # fmt: skip
                        sequence += len(masters)
                    trials.append(_trial(cell, chunk_kib, repetition, len(masters), total, *run))
                    trials[-1].quiet_wait_s, trials[-1].busy_before_percent = waited, busy
                    trials[-1].disturbed = trials[-1].other_cpu_s > args.disturbed_other_s
                    if server_name == "survey6":
                        trials[-1].durable_after_s = server.durable_after_s(log_mark)
                    print(_trial_line(trials[-1]), flush=True)
                    if server_name == "survey6":
                        server.clear_landing()
    finally:
        for echo in echoes.values():
            echo.stop()
    return trials


def _rotated(cells: list[str], by: int) -> list[str]:
    """Each repetition starts at another cell, so no cell always runs first or after the same one."""
    by %= len(cells)
    return cells[by:] + cells[:by]


def _trial(
    cell: str,
    chunk_kib: int,
    repetition: int,
    files: int,
    total: int,
    seconds: float,
    before: CpuMark,
    after: CpuMark,
    per_file: list[float],
) -> Trial:
    client, server = after.client - before.client, after.server - before.server
    other = after.machine - before.machine - client - server
    rate = round(total / seconds / 1e6, 1)
    return Trial(cell, chunk_kib, repetition, files, total, round(seconds, 3), rate,
                 round(client, 2), round(server, 2), round(other, 2), per_file)  # fmt: skip


def _trial_line(t: Trial) -> str:
    tail = f"  tail {statistics.median(t.durable_after_s) * 1000:.0f} ms" if t.durable_after_s else ""
    return (f"  rep {t.repetition} chunk {t.chunk_kib:>4} KiB  {t.cell:<20} {t.mb_per_s:7.1f} MB/s"
            f"  client CPU {t.client_cpu_s:5.2f} s  server CPU {t.server_cpu_s:5.2f} s"
            f"  other {t.other_cpu_s:5.2f} s  (busy before {t.busy_before_percent:.0f} %,"
            f" waited {t.quiet_wait_s:g} s){tail}{'  DISTURBED' if t.disturbed else ''}")  # fmt: skip


def throughput_table(all_trials: list[Trial]) -> list[dict[str, Any]]:
    """Per cell and chunk size: median MB/s (min-max), CPU per GB, and the median of the per-repetition
    ratios to the anchor (the bare aio client and server, same chunk size, same repetition).

    One trial counts per cell, chunk size and repetition: its last run, which is the undisturbed
    one unless every rerun was disturbed too (those are counted in the row)."""
    last = {(t.cell, t.chunk_kib, t.repetition): t for t in all_trials}
    trials = list(last.values())
    anchor = {(t.chunk_kib, t.repetition): t.mb_per_s for t in trials if t.cell == ANCHOR}
    rows = []
    for cell in dict.fromkeys(t.cell for t in trials):
        for chunk in dict.fromkeys(t.chunk_kib for t in trials):
            group = [t for t in trials if t.cell == cell and t.chunk_kib == chunk]
            if not group:
                continue
            reruns = sum(t.cell == cell and t.chunk_kib == chunk for t in all_trials) - len(group)
            rates = [t.mb_per_s for t in group]
            gigabytes = [t.bytes / 1e9 for t in group]
            ratios = [
                t.mb_per_s / anchor[(chunk, t.repetition)] for t in group if (chunk, t.repetition) in anchor
            ]
            rows.append(
                {
                    "cell": cell,
                    "chunk_kib": chunk,
                    "runs": len(group),
                    "disturbed_runs_rerun": reruns,
                    "disturbed_runs_kept": sum(t.disturbed for t in group),
                    "mb_per_s_median": round(statistics.median(rates), 1),
                    "mb_per_s_min": min(rates),
                    "mb_per_s_max": max(rates),
                    "client_cpu_s_per_gb": _median_per(group, gigabytes, lambda t: t.client_cpu_s),
                    "server_cpu_s_per_gb": _median_per(group, gigabytes, lambda t: t.server_cpu_s),
                    # Not per GB: other people's work on a shared machine goes with time, not bytes.
                    "other_cpu_percent": round(
                        statistics.median(100 * t.other_cpu_s / t.seconds for t in group)
                    ),
                    "ratio_to_anchor_median": round(statistics.median(ratios), 3) if ratios else None,
                    "ratio_to_anchor_min_max": [round(min(ratios), 3), round(max(ratios), 3)]
                    if ratios
                    else None,
                    "durable_after_ms_median": _median_tail_ms(group),
                }
            )
    return rows


def _median_tail_ms(group: list[Trial]) -> float | None:
    """survey6-server: the median time from a file's last byte to its receipt, over the group's files."""
    tails = [tail for t in group for tail in (t.durable_after_s or [])]
    return round(statistics.median(tails) * 1000, 1) if tails else None


def _median_per(group: list[Trial], gigabytes: list[float], value: Callable[[Trial], float]) -> float:
    return round(statistics.median(value(t) / gb for t, gb in zip(group, gigabytes, strict=True)), 2)


def print_throughput(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| cell | chunk | MB/s median [min–max] | × anchor | client CPU s/GB | server CPU s/GB"
        " | other CPU % | last byte to receipt ms | disturbed: rerun / kept |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        ratio = "" if r["ratio_to_anchor_median"] is None else f"{r['ratio_to_anchor_median']:.2f}"
        tail = "" if r["durable_after_ms_median"] is None else r["durable_after_ms_median"]
        print(f"| {r['cell']} | {r['chunk_kib']} KiB | {r['mb_per_s_median']:.1f} [{r['mb_per_s_min']:.1f}–"
              f"{r['mb_per_s_max']:.1f}] | {ratio} | {r['client_cpu_s_per_gb']:.2f} | "
              f"{r['server_cpu_s_per_gb']:.2f} | {r['other_cpu_percent']} | {tail} |"
              f" {r['disturbed_runs_rerun']} / {r['disturbed_runs_kept']} |")  # fmt: skip


# -- link share -------------------------------------------------------------------------------------


def run_share(
    args: argparse.Namespace,
    link: VethLink,
    server: Server,
    spool: BenchSpool,
    probe_id: str,
    credentials: grpc.ChannelCredentials,
    large: list[Master],
    small: list[Master],
) -> list[dict[str, Any]]:
    config = ShareConfig(
        capacity_bps=args.capacity_bps,
        share_ratio=args.share,
        background_bps=args.background_bps,
        chunk_bytes=args.share_chunk_kib << 10,
        warmup_s=args.warmup_s,
        upload_s=args.upload_s,
        onset_idle_s=args.warmup_s / 2,
    )
    ctx = ShareContext(link, server, spool, probe_id, credentials)
    full_rate = args.capacity_bps * args.share / 8  # the most the uploader may send, bytes/s
    large_copies = 1 + int(full_rate * (args.upload_s + args.warmup_s) // sum(m.size_bytes for m in large))
    small_copies = 1 + int(3 * full_rate * args.upload_s // sum(m.size_bytes for m in small))
    results = []
    for kind, masters, copies in (("steady", large, large_copies), ("small-files", small, small_copies),
                                  ("onset", large, large_copies)):  # fmt: skip
        print(f"  share scenario {kind}: {copies * len(masters)} files ...", flush=True)
        results.append(run_scenario(kind, ctx, config, masters, copies))
        short = {
            **_short(results[-1]["summary"]),
            "machine_busy_percent": results[-1]["machine_busy_percent"],
        }
        print("   ", json.dumps(short), flush=True)
    return results


def _short(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("seconds", "limit_share", "app_mean_share", "wire_mean_share", "settled_after_s")
    short = {k: summary[k] for k in keep if k in summary}
    short["app_max_share_1s"] = summary["windows_1s"].get("app_max_share")
    short["app_max_share_sliding_1s"] = summary["sliding_1s"].get("app_max_share")
    short["app_max_share_100ms"] = summary["windows_100ms"].get("app_max_share")
    return short


# -- the run ----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def first_line(argv: list[str]) -> str:
        try:
            return (
                subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().split("\n")[0]
            )
        except OSError:
            return ""

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "")  # fmt: skip
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "load_average_at_start": os.getloadavg(),
        "survey6_commit": first_line(["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"]),
    }


def primitives(master: Master, work_dir: Path) -> dict[str, float]:
    """What the server's work costs on this machine, measured in the same run: SHA-256 of a capture
    file from the page cache, CRC-32 of 1 MiB chunks, and writing + fsyncing the file in the work dir."""
    data = master.path.read_bytes()
    started = time.perf_counter()
    with open(master.path, "rb") as stream:
        hashlib.file_digest(stream, "sha256")
    sha256_s = time.perf_counter() - started
    started = time.perf_counter()
    for offset in range(0, len(data), MIB):
        zlib.crc32(data[offset : offset + MIB])
    crc32_s = time.perf_counter() - started
    os.sync()
    target = work_dir / "write-test"
    started = time.perf_counter()
    with open(target, "wb") as stream:
        stream.write(data)
        os.fsync(stream.fileno())
    write_s = time.perf_counter() - started
    target.unlink()
    return {
        "sha256_mb_per_s": round(len(data) / sha256_s / 1e6),
        "crc32_mb_per_s": round(len(data) / crc32_s / 1e6),
        "write_fsync_mb_per_s": round(len(data) / write_s / 1e6),
        "bytes": len(data),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    share = not args.no_share
    if share and (os.geteuid() != 0 or shutil.which("ip") is None):
        print("the link-share part needs root and `ip` (iproute2); run with sudo or pass --no-share",
              file=sys.stderr)  # fmt: skip
        return 1
    # SIGTERM unwinds like Ctrl-C, so the finally below stops the processes and removes the namespace.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = Path(tempfile.mkdtemp(prefix="survey6-upload-bench-", dir=args.work_dir))
    redis, server, link = Redis(root / "redis"), None, VethLink() if share else None
    spool = BenchSpool(root / "spool")
    started = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "machine": machine(),
                              "arguments": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    try:
        config = root / "empty.toml"
        config.write_text("")
        env = {"SURVEY6_CONFIG": str(config)}
        for item in args.server_env:
            name, _, value = item.partition("=")
            env[name] = value
        if redis.start():
            env["SURVEY6_REDIS_URL"] = redis.url
        server = Server(root, env)
        server.init(["localhost", "127.0.0.1", *([link.ns_addr] if link else [])])
        server.start()
        probe_id, creds = join_probe(server, root / "probe-state", env)
        credentials = creds.channel_credentials()
        spool.open()
        print(f"probe {probe_id} joined; writing capture files ...", flush=True)
        large = write_masters(root / "masters", args.files, args.file_mib * MIB, seed=1)
        result["primitives"] = primitives(large[0], root)
        print(f"this machine: {result['primitives']}", flush=True)
        if not args.no_throughput:
            print(f"throughput: {args.files} x {args.file_mib} MiB per trial, cells {args.cells}", flush=True)
            trials = run_throughput(args, root, server, spool, probe_id, credentials, large)
            result["trials"] = [asdict(t) for t in trials]
            result["throughput"] = throughput_table(trials)
            print_throughput(result["throughput"])
        result["server_problems_loopback"] = server.log_problems()
        if link is not None:
            small = write_masters(root / "small", 4, args.small_file_kib << 10, seed=100)
            server.stop()
            link.create()
            server.start(host=link.ns_addr, netns=link.ns)
            print(f"link share: C = {args.capacity_bps / 1e6:g} Mbit/s, s = {args.share}, background "
                  f"{args.background_bps / 1e6:g} Mbit/s on {link.host_if}", flush=True)  # fmt: skip
            result["share"] = run_share(args, link, server, spool, probe_id, credentials, large, small)
            result["server_problems_share"] = server.log_problems()
    finally:
        spool.close()
        if server is not None:
            server.stop()
        redis.stop()
        if link is not None:
            link.destroy()
        shutil.rmtree(root, ignore_errors=True)
    result["seconds"] = round((datetime.datetime.now(datetime.UTC) - started).total_seconds())
    RESULTS_DIR.mkdir(exist_ok=True)
    output = args.output or RESULTS_DIR / f"upload_bench-{started:%Y%m%dT%H%M%SZ}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
