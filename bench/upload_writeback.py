"""The server's receiving path alone: does starting writeback during the stream shorten the wait for
the DURABLE receipt?

    .venv/bin/python bench/upload_writeback.py                      # 64 MiB, 7 repetitions, 0 / 2 / 8 MiB
    .venv/bin/python bench/upload_writeback.py --work-dir /dev/shm  # the same on tmpfs

survey6's ``UploadStore.put`` (real SQLite registry, real landing zone in the work directory) receives
a 64 MiB capture file in 1 MiB chunks from memory, paced at ``--rate-mb-s`` as the network would
deliver them (no gRPC: the disk is what is measured). Each variant is a ``writeback_bytes`` setting
(0: the part file is only fsynced when the stream ends), run interleaved with the others, after
``os.sync()`` and a wait for a quiet machine. Reported per variant: the time from the last chunk to
the receipt (the final fsync, the landing's fsyncs and renames, the registry's two commits), and
the whole put. Results: a table on stdout and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from upload_bench import RESULTS_DIR, wait_quiet
from upload_setup import Master, write_master

from survey6.server.registry import db
from survey6.server.registry.models import Probe, utcnow
from survey6.server.settings import UploadSettings
from survey6.server.uploads import Layout, UploadStore
from survey6.wire.v1 import upload_pb2

MIB = 1 << 20
PROBE_ID = "p-0123456789ab"


def chunks(master: Master, sequence: int, data: bytes, rate_bytes_per_s: float, marks: list[float]
           ) -> Iterator[upload_pb2.UploadChunk]:  # fmt: skip
    """The Put stream, paced; `marks` gets the time the last chunk was handed over."""
    yield upload_pb2.UploadChunk(header=upload_pb2.UploadHeader(metadata=master.with_sequence(sequence)))
    started = time.perf_counter()
    for offset in range(0, len(data), MIB):
        due = started + offset / rate_bytes_per_s
        while (ahead := due - time.perf_counter()) > 0:
            time.sleep(ahead)
        piece = data[offset : offset + MIB]
        yield upload_pb2.UploadChunk(data=piece, data_crc32=zlib.crc32(piece))
    marks.append(time.perf_counter())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, help="where the temporary directory goes [system temp]")
    parser.add_argument("--file-mib", type=int, default=64, help="file size [64]")
    parser.add_argument("--repetitions", type=int, default=7, help="[7]")
    parser.add_argument("--writeback-mib", type=int, nargs="+", default=[0, 2, 8], help="variants [0 2 8]")
    parser.add_argument("--rate-mb-s", type=float, default=300.0, help="chunk delivery rate [300]")
    parser.add_argument("--quiet-percent", type=float, default=25.0, help="[25]")
    parser.add_argument("--quiet-wait-s", type=float, default=120.0, help="[120]")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="survey6-writeback-bench-", dir=args.work_dir))
    started = datetime.datetime.now(datetime.UTC)
    trials: list[dict[str, float]] = []
    try:
        master = write_master(root / "master.pcap", args.file_mib * MIB, seed=7)
        data = master.path.read_bytes()
        engine = db.make_engine(db.sqlite_url(root))
        db.upgrade(engine)
        sessions = db.session_factory(engine)
        with sessions.begin() as session:
            session.add(Probe(id=PROBE_ID, hostname="bench", cert_serial="1", cert_not_after=utcnow()))
        layout = Layout(receiving=root / "receiving", landing=root / "landing")
        layout.create()
        sequence = 0
        for repetition in range(args.repetitions):
            for writeback_mib in args.writeback_mib:
                store = UploadStore(sessions, layout, UploadSettings(writeback_bytes=writeback_mib * MIB))
                sequence += 1
                waited, busy = wait_quiet(args.quiet_percent, args.quiet_wait_s)
                marks: list[float] = []
                begun = time.perf_counter()
                receipt = store.put(PROBE_ID, chunks(master, sequence, data, args.rate_mb_s * 1e6, marks))
                ended = time.perf_counter()
                if receipt.durability != upload_pb2.DURABILITY_DURABLE:
                    raise RuntimeError(f"unexpected receipt {receipt}")
                trials.append({"repetition": repetition + 1, "writeback_mib": writeback_mib,
                               "put_s": round(ended - begun, 4), "tail_s": round(ended - marks[0], 4),
                               "quiet_wait_s": waited, "busy_before_percent": busy})  # fmt: skip
                print(f"  rep {repetition + 1} writeback {writeback_mib:>2} MiB  put {ended - begun:.3f} s"
                      f"  last chunk to receipt {(ended - marks[0]) * 1000:6.1f} ms"
                      f"  (busy before {busy:.0f} %, waited {waited:g} s)", flush=True)  # fmt: skip
                for landed in layout.landing.rglob("*.pcap"):
                    landed.unlink()
        engine.dispose()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n| writeback every | runs | last chunk to receipt ms, median [min–max] | put s, median |")
    print("|--:|--:|--:|--:|")
    for writeback_mib in args.writeback_mib:
        group = [t for t in trials if t["writeback_mib"] == writeback_mib]
        tails = [t["tail_s"] * 1000 for t in group]
        puts = [t["put_s"] for t in group]
        label = f"{writeback_mib} MiB" if writeback_mib else "never (fsync at the end)"
        print(f"| {label} | {len(group)} | {statistics.median(tails):.1f} [{min(tails):.1f}–{max(tails):.1f}]"
              f" | {statistics.median(puts):.3f} |")  # fmt: skip
    RESULTS_DIR.mkdir(exist_ok=True)
    output = RESULTS_DIR / f"upload_writeback-{started:%Y%m%dT%H%M%SZ}.json"
    output.write_text(json.dumps({"started": started.isoformat(timespec="seconds"),
                                  "arguments": {k: str(v) for k, v in vars(args).items()},
                                  "trials": trials}, indent=2) + "\n")  # fmt: skip
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
