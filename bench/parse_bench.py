"""Parse benchmark: survey6's pcap → Arrow parser against dpkt and tshark on the same file, in one run.

    .venv/bin/python bench/parse_bench.py                      # 1,000,000 packets, 3 repetitions
    .venv/bin/python bench/parse_bench.py --packets 2000000 --markdown bench/parse_results.md
    .venv/bin/python bench/parse_bench.py --quick              # 50,000 packets, 1 repetition

A seeded generator writes one classic pcap (Ethernet, ns timestamps) into a temporary directory: an
IMIX-like mix of IPv6 TCP, UDP (some DNS), ICMPv6 and SCTP, some 802.1Q-tagged, some behind extension
headers (hop-by-hop, routing, fragment, destination options), and a little IPv4. Each parser reads that
same file from the page cache and extracts the same fields for every IPv6 packet:

- survey6: ``parse_file`` (an Arrow table of every column in ``schema.PACKET_SCHEMA``);
- dpkt: ``pcap.Reader`` + ``Ethernet`` (which decodes IPv6, its extension headers and TCP/UDP/ICMPv6)
  per packet, the fields appended to lists, DNS decoded for port 53/5353 as survey6 does;
- tshark (when installed): ``-T fields`` of the same fields, output discarded, with name resolution,
  TCP reassembly and IPv6 defragmentation off (field extraction only, as the other two do).

Reported: packets per second (wall clock) and CPU seconds, the median of the repetitions, and
survey6's speed as a multiple of each other parser. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pyarrow as pa

from survey6.aggregator.datasets import write_packets
from survey6.aggregator.engines import open_engine
from survey6.aggregator.enrich import enrich_file
from survey6.aggregator.parse import parse_file
from survey6.aggregator.settings import AggregatorSettings, SparkSettings
from survey6.wire.v1 import capture_pb2

BENCH_METADATA = capture_pb2.CaptureMetadata(probe_id="p-bench", sequence=1)
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_PACKETS = 1_000_000
QUICK_PACKETS = 50_000
DEFAULT_REPETITIONS = 3
SEED = 6
T0_NS = 1_700_000_000_000_000_000
PACKET_GAP_NS = 1_000  # 1 M packets/s of capture time
TEMPLATES = 4096  # distinct packets; the file repeats them with fresh timestamps
# IMIX-like IP payload sizes (bytes) and their weights: acks and small requests, mid, full frames.
PAYLOAD_SIZES = ((0, 7), (536, 4), (1200, 1))
DNS_NAMES = ("www.example.org", "mail.example.net", "cdn.example.com", "ntp.example")
MACS = bytes.fromhex("020000000002020000000001")  # destination, source: locally administered
TSHARK_FIELDS = (
    "frame.time_epoch ipv6.src ipv6.dst ipv6.tclass ipv6.flow ipv6.plen ipv6.nxt ipv6.hlim tcp.srcport "
    "tcp.dstport tcp.flags udp.srcport udp.dstport sctp.srcport sctp.dstport icmpv6.type icmpv6.code "
    "ipv6.fraghdr.ident ipv6.fraghdr.offset ipv6.fraghdr.more "
    "dns.qry.name dns.qry.type dns.flags.rcode dns.flags.response"
).split()
TSHARK_OPTIONS = ("-n", "-o", "tcp.desegment_tcp_streams:FALSE", "-o", "ipv6.defragment:FALSE")


REPORT_NOTES = (
    "The input mixes IPv6 TCP (55 %), UDP DNS (10 %), other UDP, ICMPv6 and SCTP; 5 % of the packets",
    "carry destination options + fragment headers, 5 % an 802.1Q tag, 2 % are IPv4. Each parser reads",
    "the same file from the page cache: survey6 builds every column of its Arrow schema (extension-header",
    "lists and DNS included); dpkt decodes Ethernet, IPv6 and TCP/UDP/ICMPv6/SCTP per packet, plus DNS on",
    "ports 53/5353; tshark prints the same fields with `-T fields` (no name resolution, TCP reassembly or",
    "IPv6 defragmentation). The parsers take turns within each repetition, so a busy spell on the machine",
    "(see the load average) falls on all of them. CPU s counts tshark's own process.",
)


# --- the capture file ----------------------------------------------------------------------------


def _ipv6(rng: random.Random, next_header: int, payload: bytes) -> bytes:
    first = (6 << 28) | (rng.randrange(64) << 22) | rng.randrange(1 << 20)
    src = bytes.fromhex("20010db8") + rng.randbytes(12)
    dst = bytes.fromhex("20010db8ffff") + rng.randbytes(10)
    return (
        struct.pack("!IHBB", first, len(payload), next_header, rng.choice((64, 128, 255)))
        + src
        + dst
        + payload
    )


def _dns(rng: random.Random) -> bytes:
    name = b"".join(bytes([len(p)]) + p.encode() for p in rng.choice(DNS_NAMES).split(".")) + b"\0"
    flags = rng.choice((0x0100, 0x8180, 0x8183))
    return struct.pack("!6H", rng.getrandbits(16), flags, 1, 0, 0, 0) + name + struct.pack("!HH", 28, 1)


def _template(rng: random.Random) -> bytes:
    size = rng.choices([s for s, _ in PAYLOAD_SIZES], [w for _, w in PAYLOAD_SIZES])[0]
    body = rng.randbytes(size)
    kind = rng.random()
    if kind < 0.55:
        next_header = 6
        header = struct.pack(
            "!HHIIHHHH", rng.randrange(1024, 65536), 443, 1, 2, 0x5010 | rng.randrange(64), 512, 0, 0
        )
        l4 = header + body
    elif kind < 0.65:
        next_header, dns = 17, _dns(rng)
        l4 = struct.pack("!HHHH", rng.randrange(1024, 65536), 53, 8 + len(dns), 0) + dns
    elif kind < 0.88:
        next_header = 17
        l4 = (
            struct.pack("!HHHH", rng.randrange(1024, 65536), rng.choice((443, 123, 4500)), 8 + size, 0) + body
        )
    elif kind < 0.97:
        next_header, l4 = 58, struct.pack("!BBHI", rng.choice((128, 129, 135, 136, 1)), 0, 0, 0) + body[:64]
    else:
        next_header, l4 = 132, struct.pack("!HHII", 2905, 2905, 1, 0) + body[:64]
    if rng.random() < 0.05:  # an extension-header chain in front of the upper layer
        l4 = bytes([44, 0]) + bytes(6) + struct.pack("!BBHI", next_header, 0, 1, rng.getrandbits(32)) + l4
        l4 = bytes([60, 0, 1, 4]) + bytes(4) + l4
        next_header = 0
    packet = _ipv6(rng, next_header, l4)
    ethertype = b"\x86\xdd"
    if rng.random() < 0.02:
        packet, ethertype = bytes.fromhex("4500001c000100004011f7c4c6120001c6120002") + bytes(8), b"\x08\x00"
    if rng.random() < 0.05:
        ethertype = b"\x81\x00\x00\x64" + ethertype
    return MACS + ethertype + packet


def write_capture(path: Path, packets: int) -> int:
    """A nanosecond Ethernet pcap of ``packets`` records; returns its size in bytes."""
    rng = random.Random(SEED)
    templates = [_template(rng) for _ in range(TEMPLATES)]
    record = struct.Struct("<IIII").pack
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
        picks = np.random.default_rng(SEED).integers(0, TEMPLATES, packets).tolist()
        batch: list[bytes] = []
        for i, pick in enumerate(picks):
            frame = templates[pick]
            sec, ns = divmod(T0_NS + i * PACKET_GAP_NS, 1_000_000_000)
            batch.append(record(sec, ns, len(frame), len(frame)))
            batch.append(frame)
            if len(batch) >= 65536:
                f.write(b"".join(batch))
                batch.clear()
        f.write(b"".join(batch))
    return path.stat().st_size


# --- the parsers ---------------------------------------------------------------------------------


def run_survey6(path: Path) -> int:
    table: pa.Table = parse_file(path).table
    return int(table.num_rows)


def run_survey6_parquet(path: Path) -> int:
    """pcap → enriched ``packets`` Parquet (zstd), as ``survey6-aggregate run`` ingests a file."""
    output = path.parent / "datasets"
    shutil.rmtree(output, ignore_errors=True)
    table = enrich_file(path, BENCH_METADATA).table
    write_packets(table, output, sha256_hex="0" * 64, sequence=1)
    return int(table.num_rows)


def run_dpkt(path: Path) -> int:
    columns: list[list[Any]] = [[] for _ in range(14)]
    (times, srcs, dsts, tcs, flows, plens, nxts, hlims, sports, dports, flags, icmps, names, rcodes) = columns
    with open(path, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip6.IP6):
                continue
            times.append(ts)
            srcs.append(ip.src)
            dsts.append(ip.dst)
            tcs.append(ip.fc)
            flows.append(ip.flow)
            plens.append(ip.plen)
            nxts.append(ip.nxt)
            hlims.append(ip.hlim)
            l4 = ip.data
            ported = isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP | dpkt.sctp.SCTP)
            sports.append(l4.sport if ported else None)
            dports.append(l4.dport if ported else None)
            flags.append(l4.flags if isinstance(l4, dpkt.tcp.TCP) else None)
            icmps.append((l4.type, l4.code) if isinstance(l4, dpkt.icmp6.ICMP6) else None)
            name = rcode = None
            if isinstance(l4, dpkt.udp.UDP) and (l4.sport in (53, 5353) or l4.dport in (53, 5353)):
                try:
                    dns = dpkt.dns.DNS(l4.data)
                    name, rcode = (dns.qd[0].name if dns.qd else None), dns.rcode
                except (dpkt.UnpackError, IndexError):
                    pass
            names.append(name)
            rcodes.append(rcode)
    return len(times)


def run_tshark(path: Path) -> int:
    command = ["tshark", *TSHARK_OPTIONS, "-r", str(path), "-T", "fields"]
    for name in TSHARK_FIELDS:
        command += ["-e", name]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        # One line per frame; an IPv6 frame has its source address in the second field.
        rows = sum(1 for line in proc.stdout if line.split(b"\t", 2)[1])
    if proc.returncode != 0:
        raise RuntimeError(f"tshark exited with {proc.returncode}")
    return rows


def time_aggregate(path: Path, engine_name: str, work: Path) -> dict[str, float]:
    """Seconds to start an engine and to build every derived dataset of the file's partitions, twice
    (the second build shows the warm cost; Spark's first one includes its JIT and planning warm-up)."""
    output = work / "datasets"
    shutil.rmtree(output, ignore_errors=True)
    partitions = write_packets(
        enrich_file(path, BENCH_METADATA).table, output, sha256_hex="0" * 64, sequence=1
    )
    settings = AggregatorSettings(engine=engine_name, spark=SparkSettings(master="local[*]"))  # type: ignore[arg-type]
    started = time.perf_counter()
    engine = open_engine(settings)
    figures = {"start_s": time.perf_counter() - started}
    try:
        for label in ("first_build_s", "second_build_s"):
            started = time.perf_counter()
            for partition in partitions:
                engine.build(output, partition, settings.datasets)
            figures[label] = time.perf_counter() - started
    finally:
        engine.close()
    print(f"  aggregate, {engine_name}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
    return figures


@dataclass
class Timing:
    parser: str
    rows: int
    wall_s: list[float]
    cpu_s: list[float]

    @property
    def median_wall_s(self) -> float:
        return statistics.median(self.wall_s)

    def packets_per_s(self, packets: int) -> float:
        return packets / self.median_wall_s


def measure(timing: Timing, run: Callable[[Path], int], path: Path) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    timing.rows = run(path)
    timing.wall_s.append(time.perf_counter() - started)
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    timing.cpu_s.append(
        sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, usage, strict=True))
    )
    print(f"  {timing.parser}: {timing.wall_s[-1]:.2f} s, {timing.rows} IPv6 rows", flush=True)


# --- the report ----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if "model name" in line
            ),
            model,
        )
    tshark = shutil.which("tshark")
    version = (
        subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        if tshark
        else "-"
    )
    memory_kib = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "0",
    )
    return {
        "cpu": model,
        "cpus": str(os.cpu_count()),
        "memory": f"{int(memory_kib) // (1 << 20)} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "dpkt": dpkt.__version__,
        "tshark": version,
        # The machine may be shared: a busy one slows every parser, the single-threaded ones most.
        "load average at the start (1, 5, 15 min)": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def markdown(
    packets: int,
    size: int,
    timings: list[Timing],
    details: dict[str, str],
    repetitions: int,
    aggregate: dict[str, dict[str, float]],
) -> str:
    ours = timings[0]
    lines = [
        "# Parse benchmark results",
        "",
        f"`bench/parse_bench.py --packets {packets}`, {repetitions} repetition(s), median; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        f"Input: {packets:,} packets, {size / 1e6:.0f} MB, ns Ethernet pcap, {ours.rows:,} of them IPv6.",
        "",
        "| parser | packets/s | wall s | CPU s | dpkt's time ÷ this, wall | dpkt's time ÷ this, CPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    # Every row against dpkt, the anchor: survey6 → Arrow, survey6 → Parquet, and tshark (< 1: slower).
    anchor = next((t for t in timings if t.parser == "dpkt"), ours)
    anchor_cpu = statistics.median(anchor.cpu_s)
    for t in timings:
        cpu = statistics.median(t.cpu_s)
        same = t is anchor
        by_wall = anchor.median_wall_s / t.median_wall_s
        by_cpu = anchor_cpu / cpu
        lines.append(
            f"| {t.parser} | {t.packets_per_s(packets):,.0f} | {t.median_wall_s:.2f} | {cpu:.2f} | "
            f"{'—' if same else f'{by_wall:.2f}×'} | {'—' if same else f'{by_cpu:.2f}×'} |"
        )
    if aggregate:
        lines += [
            "",
            "Aggregate stage: every derived dataset of the file's partition built from its `packets` files",
            "(one run; seconds):",
            "",
            "| engine | start | first build | second build |",
            "|---|---:|---:|---:|",
        ]
        for name, f in aggregate.items():
            lines.append(
                f"| {name} | {f['start_s']:.1f} | {f['first_build_s']:.1f} | {f['second_build_s']:.1f} |"
            )
    lines += ["", *REPORT_NOTES, "", "Machine:", ""] + [f"- {key}: {value}" for key, value in details.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--packets", type=int, default=DEFAULT_PACKETS)
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PACKETS} packets, 1 repetition")
    parser.add_argument("--no-tshark", action="store_true", help="skip tshark even when installed")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where the capture is written (a temp dir)"
    )
    parser.add_argument(
        "--no-aggregate", action="store_true", help="skip the aggregate stage (DuckDB and Spark builds)"
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args()
    packets, repetitions = (QUICK_PACKETS, 1) if args.quick else (args.packets, args.repetitions)
    if packets < 1 or repetitions < 1:
        parser.error("--packets and --repetitions must be 1 or more")

    with tempfile.TemporaryDirectory(prefix="survey6-parse-bench-", dir=args.work_dir) as tmp:
        path = Path(tmp) / "bench.pcap"
        print(f"writing {packets:,} packets ...", flush=True)
        size = write_capture(path, packets)
        path.read_bytes()  # into the page cache, so no parser pays for the first read
        runners: list[tuple[str, Callable[[Path], int]]] = [
            ("survey6", run_survey6),
            ("survey6 → Parquet", run_survey6_parquet),
            ("dpkt", run_dpkt),
        ]
        if shutil.which("tshark") and not args.no_tshark:
            runners.append(("tshark -T fields", run_tshark))
        else:
            print("tshark: not installed or skipped", flush=True)
        details = machine()
        timings = [Timing(name, 0, [], []) for name, _ in runners]
        for _ in range(repetitions):  # interleaved, so a busy spell on the machine hits every parser
            for timing, (_, run) in zip(timings, runners, strict=True):
                measure(timing, run, path)
        aggregate: dict[str, dict[str, float]] = {}
        if not args.no_aggregate:
            for engine_name in ("duckdb", "spark"):
                aggregate[engine_name] = time_aggregate(path, engine_name, Path(tmp))

    report = markdown(packets, size, timings, details, repetitions, aggregate)
    print(report)
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "packets": packets,
        "bytes": size,
        "machine": details,
        "timings": [asdict(t) for t in timings],
        "aggregate": aggregate,
    }
    (RESULTS_DIR / f"parse_bench-{stamp}.json").write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
