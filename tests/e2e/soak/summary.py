"""A soak report as Markdown tables: faults by kind, packets per probe, losses by fault, the audit.

``./scripts/soak --summarise REPORT.json`` prints it (what docs/RELIABILITY.md shows).
"""

from __future__ import annotations

from typing import Any


def format_summary(report: dict[str, Any]) -> str:
    plan, totals = report["plan"], report["totals"]
    minutes = plan["traffic_s"] / 60
    lines = [
        f"Seed {plan['seed']}, {plan['probes']} probes, {minutes:.1f} min of traffic at "
        f"{plan['rate_pps']:.0f} packets/s per probe; {report['started']} to {report['finished']}.",
        "",
        "| fault | injected | may lose | packets it explains |",
        "|---|---:|---|---:|",
    ]
    explained: dict[str, int] = {}
    for probe in report["probes"].values():
        for item in probe["missing_by_fault"]:
            explained[item["kind"]] = explained.get(item["kind"], 0) + item["packets"]
    loss_by_kind = {f["kind"]: f["loss"] for f in plan["faults"]}
    for kind, count in sorted(report["faults_by_kind"].items()):
        lines.append(f"| {kind} | {count} | {loss_by_kind.get(kind, '?')} | {explained.get(kind, 0):,} |")
    lines += [
        "",
        "| probe | sent | captured | landed | in Parquet | missing | lost while down | recorded lost "
        "(spool) | unexplained | files landed (repaired) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for probe_id, p in report["probes"].items():
        unseen = sum(i["packets"] for i in p["missing_by_fault"] if i["loss"] == "unseen")
        lines.append(
            f"| {p['index']} `{probe_id}` | {p['sent']:,} | {p['captured']:,} | {p['landed']:,} | "
            f"{p['in_parquet']:,} | {p['missing']:,} | {unseen:,} | {p['recorded_spool_losses']:,} | "
            f"{p['unexplained']} | {p['files_landed']} ({p['files_repaired']}) |"
        )
    lines.append(
        f"| all | {totals['sent']:,} | {totals['captured']:,} | {totals['landed']:,} | "
        f"{totals['in_parquet']:,} | {totals['missing']:,} | | | {totals['unexplained']} | |"
    )
    lines += ["", _audit_line(report.get("audit"))]
    if report.get("notes"):
        lines += ["", "Notes:", *(f"- {note}" for note in report["notes"])]
    failures = report.get("failures", [])
    lines += ["", f"Failures: {len(failures)}", *(f"- {failure}" for failure in failures)]
    return "\n".join(lines)


def _audit_line(audit: dict[str, Any] | None) -> str:
    if audit is None:
        return "Audit: the server had no audit command."
    summary = audit["summary"]
    return (
        f"Audit (`survey6-server audit --json`): ok={audit['ok']}, exit status {audit['cli_exit_code']}, "
        f"{summary['probes_ok']} of {summary['probes']} probes ok, {summary['identities_failed']} identities "
        f"failed, {summary['gap_sequences']} gap sequences."
    )
