"""The fleet's write-behind alone: CPU time of recording heartbeats, sweeping and flushing them to a
real (temporary) SQLite registry, per heartbeat, without gRPC or TLS.

    .venv/bin/python bench/heartbeat_flush.py --probes 2000 --rounds 10

Each round every probe heartbeats once (3 s of the fleet's clock apart), then one sweep and one
flush run, as the server does them. The first round, where every probe turns ``offline -> online``,
is reported apart. To compare with another version, run the same script with that version first on
``PYTHONPATH``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from heartbeat_driver import heartbeat_request

import survey6.server.fleet as fleet_module
from survey6.server.registry import db
from survey6.server.registry.models import Probe, utcnow
from survey6.server.settings import LivenessSettings

HEARTBEAT_INTERVAL = dt.timedelta(seconds=3)
US_PER_S = 1e6


class FleetClock:
    """The fleet's clock, moved one heartbeat interval per round."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def measure(root: Path, probes: int, rounds: int) -> dict[str, object]:
    engine = db.make_engine(db.sqlite_url(root))
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    ids = [f"p-{i:012x}" for i in range(probes)]
    with sessions.begin() as session:
        for probe_id in ids:
            session.add(
                Probe(
                    id=probe_id,
                    hostname="bench",
                    cert_serial=probe_id,
                    cert_not_after=utcnow(),
                    state="offline",
                )
            )
    clock = FleetClock()
    fleet = fleet_module.Fleet(sessions, LivenessSettings(), clock)
    fleet.load()
    spent = {"heartbeat": 0.0, "sweep": 0.0, "flush": 0.0}
    first_round_s = 0.0
    for index in range(rounds + 1):
        requests = [heartbeat_request(probe_id, index + 1, 0) for probe_id in ids]
        started = time.process_time()
        for probe_id, request in zip(ids, requests, strict=True):
            fleet.heartbeat(probe_id, request)
        beaten = time.process_time()
        fleet.sweep()
        swept = time.process_time()
        fleet.flush()
        flushed = time.process_time()
        if index == 0:
            first_round_s = flushed - started
        else:
            spent["heartbeat"] += beaten - started
            spent["sweep"] += swept - beaten
            spent["flush"] += flushed - swept
        clock.now += HEARTBEAT_INTERVAL
    engine.dispose()
    heartbeats = probes * rounds
    return {
        "survey6": str(Path(fleet_module.__file__).parents[2]),
        "probes": probes,
        "rounds": rounds,
        "first_round_us_per_probe": round(first_round_s / probes * US_PER_S, 1),
        "heartbeat_us": round(spent["heartbeat"] / heartbeats * US_PER_S, 1),
        "sweep_us_per_probe": round(spent["sweep"] / heartbeats * US_PER_S, 2),
        "flush_us_per_heartbeat": round(spent["flush"] / heartbeats * US_PER_S, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=2000, help="probes [%(default)s]")
    parser.add_argument("--rounds", type=int, default=10, help="rounds after the first [%(default)s]")
    args = parser.parse_args(argv)
    if not 1 <= args.probes <= 100_000 or not 1 <= args.rounds <= 1000:
        parser.error("--probes must be 1..100000 and --rounds 1..1000")
    root = Path(tempfile.mkdtemp(prefix="heartbeat-flush-"))
    try:
        print(json.dumps(measure(root, args.probes, args.rounds)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
