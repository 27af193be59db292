"""One soak run from start to report: build the lab, send the traffic, inject the faults, deliver and
ingest everything, then hold the artifacts and the server's audit against what was sent.

The report (JSON) has the plan, the fault events with their windows, per probe the packets sent,
captured, landed and in Parquet with every loss attributed to a fault, the audit's verdict, and a
list of ``failures`` (empty when the run passed). docs/RELIABILITY.md explains how to read it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from e2e.soak import verify
from e2e.soak.faults import Injector
from e2e.soak.lab import BIN, Lab, LabError, faketime_library, wait_for
from e2e.soak.lab import run as run_cli
from e2e.soak.plan import COOLDOWN_S, SoakPlan

log = logging.getLogger(__name__)

TRAFFIC_SCRIPT = Path(__file__).with_name("traffic.py")
DRAIN_S = 1.0  # after the last frame, for the kernel rings to hand everything to the captures
DELIVERY_TIMEOUT_S = 300.0
INGEST_TIMEOUT_S = 600.0
AUDIT_SETTLE_TIMEOUT_S = 120.0


def preflight() -> None:
    if os.geteuid() != 0:
        raise LabError("the soak must run as root: it creates network namespaces and mounts a tmpfs")
    for tool in ("ip", "sysctl", "mount", "umount", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is not installed")
    faketime_library()
    for command in ("survey6-server", "survey6-probe", "survey6-aggregate"):
        if not (BIN / command).exists():
            raise LabError(f"{BIN / command} is missing; run ./scripts/setup first")


def run_soak(plan: SoakPlan, work: Path) -> dict[str, Any]:
    """Runs the whole soak in `work` (which it fills) and returns the report; cleans up the lab always."""
    preflight()
    lab = Lab(work, plan.probes)
    started = datetime.now(UTC)
    try:
        return _run(lab, plan, work, started)
    finally:
        lab.cleanup()


def _run(lab: Lab, plan: SoakPlan, work: Path, started: datetime) -> dict[str, Any]:
    lab.create_network()
    lab.mount_small_spool(plan.small_spool_probe, plan.small_spool_bytes)
    lab.start_redis()
    lab.init_server()
    lab.start_server()
    lab.start_worker()
    for i in range(plan.probes):
        lab.join_probe(i)
    for i in range(plan.probes):
        lab.start_probe(i, small_spool=i == plan.small_spool_probe)
    log.info("lab up: %d probes %s; traffic for %.0f s", plan.probes, lab.probe_ids, plan.traffic_s)

    config = {"links": [{"probe": i, "interface": lab.traffic_if(i)} for i in range(plan.probes)],
              "rate_pps": plan.rate_pps, "duration_s": plan.traffic_s + plan.slack_s,
              "log": str(work / "sent.log"),
              "seed": plan.seed}  # fmt: skip
    (work / "traffic.json").write_text(json.dumps(config))
    argv = [sys.executable, str(TRAFFIC_SCRIPT), "--config", str(work / "traffic.json")]
    traffic = lab.start("traffic", argv, ns=lab.ns_net)
    wait_for(lambda: "sending" in lab.log_path("traffic").read_text(errors="replace"), 30, "the traffic")
    traffic_start = time.time()
    injector = Injector(lab, plan, work / "faults.jsonl")
    injector.run(traffic_start, traffic_start + plan.traffic_s + plan.slack_s, lambda: traffic.poll() is None)
    if plan.slack_s:
        # The short run's traffic lasts until its faults are over (they may run late), then a cooldown.
        injector.hold(COOLDOWN_S)
        traffic.terminate()
    while traffic.poll() is None:
        injector.check()
        if time.time() > traffic_start + plan.traffic_s + plan.slack_s + 60:
            raise LabError("the traffic generator did not finish in time")
        time.sleep(0.5)
    traffic_summary = json.loads(lab.log_path("traffic").read_text().splitlines()[-1])
    time.sleep(DRAIN_S)
    log.info("traffic done: %s; delivering", traffic_summary["sent"])

    _deliver_everything(lab, plan, injector)
    audit = _settled_audit(lab)
    spools = [lab.spool_dir(i) for i in range(plan.probes)]
    probes = check_probes(work, lab.probe_ids, spools, injector.events)
    report = assemble(plan, started, injector.events, traffic_summary, probes, audit, injector.notes)
    report["lab"] = {"namespaces": list(lab.namespaces), "mounts": [str(m) for m in lab.mounts],
                     "pids": list(lab.started_pids)}  # fmt: skip
    return report


def assemble(
    plan: SoakPlan,
    started: datetime,
    events: list[dict[str, Any]],
    traffic: dict[str, Any],
    probes: dict[str, Any],
    audit: dict[str, Any] | None,
    notes: list[str],
) -> dict[str, Any]:
    report = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": plan.to_json(),
        "faults": events,
        "faults_by_kind": _by_kind(events),
        "traffic": traffic,
        "probes": probes,
        "totals": {k: sum(p[k] for p in probes.values())
                   for k in ("sent", "captured", "landed", "in_parquet", "missing", "unexplained")},
        "audit": audit,
        "notes": notes,
    }  # fmt: skip
    report["failures"] = failures(report)
    return report


def _deliver_everything(lab: Lab, plan: SoakPlan, injector: Injector) -> None:
    """Suspends capture (the open files are sealed), asks each probe to upload now, waits for the
    spools to empty and for the worker to ingest every landed file."""
    for i in range(plan.probes):
        lab.probe_cli(i, "suspend")
    for probe_id in lab.probe_ids:
        lab.server_cli("probes", "command", probe_id, "upload-now")

    def left_in_spools() -> dict[int, int]:
        injector.check()
        left = {}
        for i in range(plan.probes):
            spool = lab.spool_dir(i)
            left[i] = len(list((spool / "ready").glob("*.pcap"))) + len(list((spool / "open").glob("*.part")))
        return {i: n for i, n in left.items() if n}

    try:
        wait_for(lambda: not left_in_spools(), DELIVERY_TIMEOUT_S, "the probes to deliver their spools")
    except LabError as exc:
        raise LabError(f"{exc}: files left {left_in_spools()}; {_probe_states(lab, plan)}") from exc
    landed = len(list((lab.server_dir / "landing").rglob("*.pcap")))

    def done() -> float:
        injector.check()
        metrics = lab.metrics()
        return sum(metrics.get(f'survey6_catalog_files{{state="{s}"}}', 0) for s in ("ingested", "failed"))

    try:
        wait_for(lambda: done() >= landed, INGEST_TIMEOUT_S, f"the worker to ingest {landed} files")
    except LabError as exc:
        raise LabError(f"{exc}: {done():.0f} done") from exc


def _probe_states(lab: Lab, plan: SoakPlan) -> str:
    """What each probe says about itself, for an error message."""
    states = []
    for i in range(plan.probes):
        try:
            status = json.loads(lab.probe_cli(i, "status", "--json"))
        except (LabError, ValueError) as exc:
            states.append(f"probe {i}: no status ({exc})")
            continue
        keys = ("capture_state", "server_reachable", "heartbeat_failures", "backlog_files")
        states.append(f"probe {i}: " + ", ".join(f"{k}={status.get(k)}" for k in keys))
    return "; ".join(states)


def audit_available() -> bool:
    result = subprocess.run([str(BIN / "survey6-server"), "audit", "--help"], capture_output=True, timeout=60)
    return result.returncode == 0


def run_audit(server_dir: Path) -> dict[str, Any]:
    argv = [str(BIN / "survey6-server"), "audit", "--data-dir", str(server_dir), "--json"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode not in (0, 3, 4):
        raise LabError(f"survey6-server audit failed ({result.returncode}): {result.stderr.strip()[-300:]}")
    report: dict[str, Any] = json.loads(result.stdout)
    report["cli_exit_code"] = result.returncode
    return report


def _settled_audit(lab: Lab) -> dict[str, Any] | None:
    """The audit once every loss record has reached the server and every file is ingested; None when
    the server has no audit command."""
    if not audit_available():
        return None

    def settled() -> dict[str, Any] | None:
        report = run_audit(lab.server_dir)
        for probe in report["probes"]:
            seq, terms = probe["sequences"], probe["terms"]
            if terms["losses_pending_on_probe"] or seq["not_yet_ingested"] or seq["pending_on_probe"]:
                return None
        return report

    try:
        result: dict[str, Any] = wait_for(settled, AUDIT_SETTLE_TIMEOUT_S, "the audit to settle")
        return result
    except LabError:
        return run_audit(lab.server_dir)  # as it stands: the check names what is still pending


def check_probes(work: Path, probe_ids: list[str], spools: list[Path], events: list[dict[str, Any]]
                 ) -> dict[str, Any]:  # fmt: skip
    """The soak's own oracle over a work directory's artifacts (see verify.py), probe by probe."""
    send_log = verify.SendLog(work / "sent.log")
    facts = {probe_id: verify.ProbeFacts() for probe_id in probe_ids}
    for probe_id, spool in zip(probe_ids, spools, strict=True):
        verify.read_landed(work / "server", probe_id, facts[probe_id])
        facts[probe_id].losses = verify.read_losses(spool)
    verify.read_parquet(work / "datasets", facts)
    return {
        probe_id: {"index": i, **verify.explain(i, facts[probe_id], send_log, events)}
        for i, probe_id in enumerate(probe_ids)
    }


def recheck(work: Path, plan: SoakPlan) -> dict[str, Any]:
    """The report of a finished run, computed again from its kept work directory (no root needed)."""
    listed = json.loads(run_cli([str(BIN / "survey6-server"), "probes", "list", "--data-dir",
                                 str(work / "server"), "--json"]))  # fmt: skip
    probe_ids = [p["probe_id"] for p in sorted(listed, key=lambda p: int(p["labels"]["probe"]))]
    spools = []
    for i in range(len(probe_ids)):
        at_end = work / f"probe{i}" / "spool-at-end"  # the small spool's copy, made before unmounting
        spools.append(at_end if at_end.exists() else work / f"probe{i}" / "spool")
    events = [json.loads(line) for line in (work / "faults.jsonl").read_text().splitlines() if line]
    traffic = json.loads((work / "logs" / "traffic.log").read_text().splitlines()[-1])
    audit = run_audit(work / "server") if audit_available() else None
    started = datetime.fromtimestamp((work / "sent.log").stat().st_ctime, UTC)
    notes = ["computed again from the work directory; the run's own notes are in its first report"]
    return assemble(
        plan, started, events, traffic, check_probes(work, probe_ids, spools, events), audit, notes
    )


def _by_kind(events: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        counts[event["kind"]] = counts.get(event["kind"], 0) + 1
    return counts


def failures(report: dict[str, Any]) -> list[str]:
    """Everything the run must not show; empty when it passed."""
    problems: list[str] = []
    events = report["faults"]
    for probe_id, p in report["probes"].items():
        name = f"probe {p['index']} ({probe_id})"
        if p["unexplained"]:
            problems.append(f"{name}: {p['unexplained']} packets lost outside any fault that can lose them, "
                            f"ids {p['unexplained_ids']} sent at {p['unexplained_send_times']}")  # fmt: skip
        if p["duplicates"] or p["not_sent_but_seen"]:
            problems.append(f"{name}: {p['duplicates']} duplicate rows, unknown ids {p['not_sent_but_seen']}")
        if (
            not p["captured"]
            == p["landed"]
            == p["pcap_records"]
            == p["in_parquet"]
            == p["soak_rows_in_parquet"]
        ):
            problems.append(f"{name}: captured {p['captured']}, landed {p['landed']} (pcap records "
                            f"{p['pcap_records']}), in Parquet {p['in_parquet']} "
                            f"({p['soak_rows_in_parquet']} soak rows) differ")  # fmt: skip
        if p["missing_in_spool_full_windows"] != p["recorded_spool_losses"]:
            problems.append(f"{name}: {p['missing_in_spool_full_windows']} packets missing while its "
                            f"spool was full, but {p['recorded_spool_losses']} recorded lost")  # fmt: skip
        if p["sent"] != p["captured"] + p["missing"]:
            problems.append(f"{name}: sent {p['sent']} != captured {p['captured']} + missing {p['missing']}")
        # A crash may cut one record per killed process, and the probe records it; nothing else may.
        kills = sum(1 for e in events if e["probe"] == p["index"] and e["kind"] == "probe-kill")
        if p["recorded_losses"].get("truncated-record", 0) > kills:
            problems.append(f"{name}: {p['recorded_losses']['truncated-record']} truncated records recorded, "
                            f"{kills} crashes injected")  # fmt: skip
        unknown = set(p["recorded_losses"]) - {"dropped-file", "not-written", "truncated-record"}
        if unknown:
            problems.append(f"{name}: losses of unexpected kinds recorded: {sorted(unknown)}")
        problems += [f"{name}: {problem}" for problem in p["sequence_problems"]]
        for item in p["missing_by_fault"]:
            if events[item["event"]]["loss"] == "none":
                problems.append(f"{name}: {item['packets']} packets lost to a fault that may lose none")
    problems += audit_failures(report["audit"], report["probes"], events)
    return problems


def audit_failures(
    audit: dict[str, Any] | None, probes: dict[str, Any], events: list[dict[str, Any]]
) -> list[str]:
    """The server's audit must hold exactly, with no gap, and agree with the soak's own counts."""
    if audit is None:
        return []
    problems = []
    if not audit["ok"] or audit["exit_code"] != 0 or audit["cli_exit_code"] != 0:
        problems.append(f"audit: not ok (exit {audit['cli_exit_code']}, summary {audit['summary']})")
    for report in audit["probes"]:
        ours = probes.get(report["probe_id"])
        if ours is None:
            continue
        name, terms, seq = f"audit of probe {ours['index']}", report["terms"], report["sequences"]
        problems += [f"{name}: identity {i['name']} fails by {i['difference']}"
                     for i in report["identities"] if not i["holds"]]  # fmt: skip
        if (
            seq["gaps"]
            or seq["pending_on_probe"]
            or seq["not_yet_ingested"]
            or terms["losses_pending_on_probe"]
        ):
            problems.append(f"{name}: gaps {seq['gaps']}, pending {seq['pending_on_probe']}, "
                            f"not ingested {seq['not_yet_ingested']}")  # fmt: skip
        if terms["dataset_rows"] != ours["in_parquet"] or terms["landed"] != ours["landed"]:
            problems.append(f"{name}: landed {terms['landed']} / rows {terms['dataset_rows']}, but the soak "
                            f"counts {ours['landed']} / {ours['in_parquet']}")  # fmt: skip
        kinds = {e["kind"] for e in events if e["probe"] == ours["index"]}
        if "probe-kill" not in kinds:  # a crashed window's kernel counts are unknown
            unseen = sum(i["packets"] for i in ours["missing_by_fault"] if i["kind"] == "link-flap")
            seen = terms["kernel_received"] + terms["kernel_interface_dropped"]
            if seen != ours["sent"] - unseen:
                problems.append(f"{name}: the kernel saw {seen} packets; the soak sent {ours['sent']}, "
                                f"{unseen} of them while the link was down")  # fmt: skip
        spool_lost = terms["lost_dropped_files"] + terms["lost_not_written"]
        if spool_lost != ours["recorded_spool_losses"]:
            problems.append(f"{name}: {spool_lost} packets lost to the spool, the probe recorded "
                            f"{ours['recorded_spool_losses']}")  # fmt: skip
    return problems
