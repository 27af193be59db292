"""The soak: probes, server, Redis and worker under faults injected at random times from a seed.

Every packet the generator sent is either in Parquet exactly once or lost at a time when a fault that
can lose it was active; losses while the spool was full are exactly the ones the probe recorded; the
server's audit holds with no gap. The short run (each fault kind once, about 2.5 minutes of traffic)
is part of the suite; the long one runs with ``--soak-minutes`` (docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from e2e.soak import verify
from e2e.soak.plan import KINDS, SoakPlan
from e2e.soak.runner import audit_available, failures, run_soak
from survey6.probe.metadata import SCHEMA_VERSION
from survey6.probe.spool import Spool
from survey6.wire.v1 import capture_pb2


@pytest.mark.netns
@pytest.mark.slow
def test_every_loss_under_injected_faults_is_explained_and_the_audit_holds(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    plan = SoakPlan.build(
        request.config.getoption("--soak-seed", default=7),
        request.config.getoption("--soak-minutes", default=None),
    )
    work = tmp_path / "work"
    work.mkdir()
    report = run_soak(plan, work)
    path = Path(request.config.getoption("--soak-report", default=None) or tmp_path / "soak-report.json")
    path.write_text(json.dumps(report, indent=2) + "\n")

    assert report["failures"] == [], f"see {path}"
    # Every kind was injected, and the faults that must lose packets did: the check had work to do.
    assert set(report["faults_by_kind"]) == set(KINDS)
    probes = report["probes"].values()
    by_kind: dict[str, int] = {}
    for probe in probes:
        for item in probe["missing_by_fault"]:
            by_kind[item["kind"]] = by_kind.get(item["kind"], 0) + item["packets"]
    assert by_kind.get("probe-kill", 0) > 0 and by_kind.get("link-flap", 0) > 0
    assert by_kind.get("spool-full", 0) > 0
    assert sum(p["recorded_spool_losses"] for p in probes) == by_kind["spool-full"]
    totals = report["totals"]
    assert totals["sent"] == totals["in_parquet"] + totals["missing"] and totals["unexplained"] == 0
    if audit_available():
        assert report["audit"] is not None and report["audit"]["ok"]

    # Nothing of the lab is left: namespaces, the spool mount, processes.
    lab = report["lab"]
    assert len(lab["namespaces"]) == plan.probes + 2 and lab["mounts"]
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not set(lab["namespaces"]) & set(listed)
    assert str(work) not in Path("/proc/mounts").read_text()
    assert not [pid for pid in lab["pids"] if still_ours(pid, work)]


def still_ours(pid: int, work: Path) -> bool:
    """Whether `pid` still runs one of the soak's processes (a reused PID runs something else)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return str(work) in argv


def test_the_plan_follows_the_seed_and_keeps_faults_apart() -> None:
    short = SoakPlan.build(7)
    assert short == SoakPlan.build(7) and short != SoakPlan.build(8)
    assert sorted(f.kind for f in short.faults) == sorted(KINDS)
    long = SoakPlan.build(7, 30)
    assert {f.kind for f in long.faults} == set(KINDS) and len(long.faults) > 3 * len(KINDS)
    for plan in (short, long):
        ends = [f.at_s + f.duration_s for f in plan.faults]
        assert all(end < following.at_s for end, following in zip(ends, plan.faults[1:], strict=False))
        assert ends[-1] < plan.traffic_s
        assert all(f.probe == plan.small_spool_probe for f in plan.faults if f.kind == "spool-full")


def test_the_oracle_names_a_loss_no_fault_explains(tmp_path: Path) -> None:
    """Ids 1-100 sent at t=1000..1099 s; a link flap on probe 0 from 1020 to 1030 s."""
    log = tmp_path / "sent.log"
    log.write_text("".join(f"0 {i} {i} {(999 + i) * 10**9} 0\n" for i in range(1, 101)))
    events = [{"kind": "link-flap", "probe": 0, "loss": "unseen", "begin": 1020.0, "end": 1030.0}]
    facts = verify.ProbeFacts()
    lost_in_flap, lost_elsewhere = set(range(22, 30)), {60}
    kept = [i for i in range(1, 101) if i not in lost_in_flap | lost_elsewhere]
    facts.parquet_ids.update(kept)
    facts.captured_ids.update(kept)
    facts.parquet_rows = facts.landed_packets = facts.pcap_records = len(kept)

    result = verify.explain(0, facts, verify.SendLog(log), events)

    assert result["missing"] == 9 and result["unexplained"] == 1 and result["unexplained_ids"] == [60]
    assert result["missing_by_fault"] == [{"event": 0, "kind": "link-flap", "loss": "unseen", "packets": 8}]
    report: dict[str, Any] = {"faults": events, "probes": {"p-x": {"index": 0, **result}}, "audit": None}
    assert [f for f in failures(report) if "outside any fault" in f]
    # A spool loss the probe did not record is a failure too.
    facts.losses = [{"kind": "dropped-file", "sequence": 3, "packets": 5, "time_ns": 1025 * 10**9}]
    events[0].update(kind="spool-full", loss="recorded")
    result = verify.explain(0, facts, verify.SendLog(log), events)
    report["probes"]["p-x"] = {"index": 0, **result}
    assert result["missing_in_spool_full_windows"] == 8 and result["recorded_spool_losses"] == 5
    assert [f for f in failures(report) if "recorded lost" in f]


def test_drop_oldest_passes_over_the_file_being_uploaded(tmp_path: Path) -> None:
    """What the soak found: the full policy dropped the file the uploader was sending; the upload then
    succeeded, the file counted both delivered and lost, and the uploader thread died on it."""
    spool = Spool(tmp_path, quota_bytes=2500, min_free_bytes=0, policy="drop-oldest")
    spool.open()
    try:
        first, second = seal(spool), seal(spool)
        assert spool.begin_delivery(first)
        seal(spool)
        assert spool.make_room()  # over the quota: the oldest file not being sent goes
        assert [f.sequence for f in spool.ready_files()] == [first, 3]
        assert [e["sequence"] for e in spool.losses()] == [second]
        spool.delivered(first)
        spool.end_delivery()
        assert not spool.begin_delivery(second)  # dropped since it was listed: not sent
    finally:
        spool.close()


def seal(spool: Spool, records: int = 10, record_bytes: int = 100) -> int:
    sequence, part = spool.begin_file({"interface": "eth0"})
    size = 24 + records * (16 + record_bytes)
    part.write_bytes(b"\0" * size)
    metadata = capture_pb2.CaptureMetadata(sequence=sequence, packets=records, file_size_bytes=size,
                                           captured_bytes=records * record_bytes,
                                           interface=capture_pb2.InterfaceFacts(name="eth0"),
                                           sha256_hex="ab" * 32, file_format="pcap",
                                           schema_version=SCHEMA_VERSION)  # fmt: skip
    spool.seal(sequence, metadata)
    return sequence
