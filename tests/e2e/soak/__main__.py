"""``python -m e2e.soak`` (with ``tests`` on the path; ``./scripts/soak`` does that): one soak run.

Exit status: 0 the run passed, 1 it could not run (one line on stderr), 3 it ran and found failures
(listed in the report and on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from e2e.soak.lab import LabError
from e2e.soak.plan import SoakPlan
from e2e.soak.runner import recheck, run_soak
from e2e.soak.summary import format_summary

EXIT_FAILURES = 3
MAX_MINUTES = 24 * 60.0


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop and clean up."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/soak",
        description="The survey6 soak: probes, server, Redis and worker in network namespaces, counted "
        "traffic, faults at random times from a seed; checks that every lost packet is explained by a "
        "fault and that the server's audit holds. Needs root.",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="minutes of traffic (default: the short run, each fault kind once, ~2.5 min)",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the fault schedule (default 7)")
    parser.add_argument("--probes", type=int, default=3, help="number of probes (default 3)")
    parser.add_argument("--report", type=Path, metavar="FILE", help="write the JSON report here (required)")
    parser.add_argument(
        "--recheck",
        type=Path,
        metavar="WORK_DIR",
        help="compute the report of a finished run again from its kept --work-dir (give its --minutes and "
        "--seed too) and exit",
    )
    parser.add_argument(
        "--summarise",
        type=Path,
        metavar="FILE",
        help="print the tables of an earlier run's report and exit (no root needed)",
    )
    parser.add_argument(
        "--work-dir", type=Path, metavar="DIR", help="keep everything here (default: a temp dir, removed)"
    )
    args = parser.parse_args(argv)
    if args.summarise is None and args.report is None:
        parser.error("--report is required")
    if args.minutes is not None and not 1 <= args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be between 1 and {MAX_MINUTES:.0f}")
    if args.probes < 2:
        parser.error("--probes must be at least 2")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.summarise is not None:
        try:
            print(format_summary(json.loads(args.summarise.read_text())))
        except (OSError, ValueError, KeyError) as exc:
            print(f"soak: error: cannot read report {args.summarise}: {exc}", file=sys.stderr)
            return 1
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    plan = SoakPlan.build(args.seed, args.minutes, args.probes)
    if args.recheck is not None:
        try:
            return finish(recheck(args.recheck, plan), args.report)
        except (OSError, ValueError, KeyError, LabError) as exc:
            print(f"soak: error: cannot recheck {args.recheck}: {exc}", file=sys.stderr)
            return 1

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="survey6-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = run_soak(plan, work)
    except (LabError, Interrupted) as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleanup is done; nothing may interrupt the report
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return finish(report, args.report)


def finish(report: dict[str, Any], path: Path) -> int:
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(format_summary(report))
    for failure in report["failures"]:
        print(f"soak: FAILED: {failure}", file=sys.stderr)
    totals = report["totals"]
    print(f"soak: {len(report['faults'])} faults, sent {totals['sent']}, "
          f"in Parquet {totals['in_parquet']}, missing {totals['missing']} "
          f"({totals['unexplained']} unexplained); report {path}")  # fmt: skip
    return EXIT_FAILURES if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
