"""The accounting identity (docs/audit.md): where every packet of every probe went.

Pure functions over registry rows: :func:`audit_probe` takes one probe's catalog rows and loss
records and returns its report; :func:`audit_fleet` reads the registry and reports on every probe.
The CLI (``survey6-server audit``), the probe page, ``/audit`` and ``/api/audit`` all show what
:func:`audit_fleet` returns, so they cannot disagree.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from survey6.server import catalog
from survey6.server.errors import UnknownProbeError
from survey6.server.registry.models import CapturedFile, HeartbeatSample, Probe, SpoolLoss, utcnow

SCHEMA_VERSION = 1
DROPPED_FILE = "dropped-file"
NOT_WRITTEN = "not-written"
LEFT_IN_RING = "left-in-ring"
# Packets the kernel counted in a file's window that no file holds.
_UNWRITTEN = frozenset({NOT_WRITTEN, LEFT_IN_RING})
TRUNCATED_RECORD = "truncated-record"
_KNOWN_KINDS = frozenset({DROPPED_FILE, NOT_WRITTEN, LEFT_IN_RING, TRUNCATED_RECORD})
EXIT_OK = 0
EXIT_IDENTITY_FAILS = 3
EXIT_GAPS = 4
_NOT_YET_INGESTED = frozenset({catalog.RECEIVED, catalog.STORED, catalog.QUEUED})
# What ends a run of files, on either side; all but "start" and "file" leave a run's carry-over
# unknowable, so a difference there is "open", not a failure.
_OPEN_BOUNDARIES = frozenset({"pending", "gap", "frontier", "unknown"})
_CAPTURING = frozenset({"CAPTURE_STATE_CAPTURING", "CAPTURE_STATE_SPOOL_FULL"})


# The columns of a catalog row and of a loss record the audit reads (load_facts selects only these;
# ORM rows have them too).
_FILE_COLUMNS = (
    CapturedFile.probe_id,
    CapturedFile.sequence,
    CapturedFile.interface,
    CapturedFile.packets,
    CapturedFile.state,
    CapturedFile.kernel_received,
    CapturedFile.kernel_dropped,
    CapturedFile.kernel_interface_dropped,
    CapturedFile.repaired_truncated_bytes,
    CapturedFile.dataset_rows,
    CapturedFile.skipped_packets,
    CapturedFile.quarantined_packets,
)
_LOSS_COLUMNS = (
    SpoolLoss.probe_id,
    SpoolLoss.loss_id,
    SpoolLoss.kind,
    SpoolLoss.sequence,
    SpoolLoss.packets,
    SpoolLoss.interface,
    SpoolLoss.after_sequence,
    SpoolLoss.kernel_received,
    SpoolLoss.kernel_dropped,
    SpoolLoss.kernel_interface_dropped,
)

_FileRow: Any = NamedTuple("_FileRow", [(c.key, Any) for c in _FILE_COLUMNS])  # type: ignore[misc]
_LossRow: Any = NamedTuple("_LossRow", [(c.key, Any) for c in _LOSS_COLUMNS])  # type: ignore[misc]


@dataclass
class ProbeFacts:
    """What the audit of one probe reads: its registry row, catalog rows and loss records (ORM rows,
    or rows with the columns in ``_FILE_COLUMNS`` and ``_LOSS_COLUMNS``)."""

    probe: Probe
    files: list[Any]
    losses: list[Any]
    health_at: dt.datetime | None = None


@dataclass
class _Item:
    """One known file in sequence order, as the kernel identity sees it."""

    sequence: int
    interface: str
    written: int
    received: int | None
    dropped: int | None


@dataclass
class _Run:
    interface: str
    before: str
    items: list[_Item] = field(default_factory=list)
    after: str = "frontier"
    lost_not_written: int = 0

    def report(self) -> dict[str, Any]:
        received = sum(i.received or 0 for i in self.items)
        written = sum(i.written for i in self.items)
        dropped = sum(i.dropped or 0 for i in self.items)
        difference = received - (written + dropped + self.lost_not_written)
        if difference == 0:
            status = "holds"
        elif self.before in _OPEN_BOUNDARIES or self.after in _OPEN_BOUNDARIES:
            status = "open"
        else:
            status = "fails"
        return {
            "interface": self.interface,
            "first_sequence": self.items[0].sequence,
            "last_sequence": self.items[-1].sequence,
            "files": len(self.items),
            "received": received,
            "written": written,
            "dropped": dropped,
            "lost_not_written": self.lost_not_written,
            "difference": difference,
            "status": status,
        }


def ranges(sequences: Iterable[int]) -> list[list[int]]:
    """Sorted sequence numbers as inclusive ``[first, last]`` ranges."""
    result: list[list[int]] = []
    for sequence in sorted(set(sequences)):
        if result and result[-1][1] == sequence - 1:
            result[-1][1] = sequence
        else:
            result.append([sequence, sequence])
    return result


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _identity(name: str, equation: str, left: int, right: int, losses_pending: bool) -> dict[str, Any]:
    status = "holds" if left == right else "pending" if losses_pending else "fails"
    return {
        "name": name,
        "equation": equation,
        "holds": left == right,
        "status": status,
        "left": left,
        "right": right,
        "difference": left - right,
    }


def audit_probe(facts: ProbeFacts) -> dict[str, Any]:
    """The audit report of one probe (docs/audit.md, "Per probe")."""
    spool = (facts.probe.last_health or {}).get("spool") or {}
    last_sealed = _int(spool.get("last_sealed_sequence"))
    backlog_first = _int(spool.get("backlog_first_sequence"))
    files = {f.sequence: f for f in facts.files}
    dropped: dict[int, Any] = {}
    truncated: dict[int, int] = {}
    not_written: list[Any] = []
    unknown_kind: list[Any] = []
    for loss in facts.losses:
        if loss.kind == DROPPED_FILE and loss.sequence:
            dropped.setdefault(loss.sequence, loss)
        elif loss.kind == TRUNCATED_RECORD and loss.sequence:
            truncated[loss.sequence] = truncated.get(loss.sequence, 0) + loss.packets
        elif loss.kind in _UNWRITTEN:
            not_written.append(loss)
        elif loss.kind not in _KNOWN_KINDS:
            unknown_kind.append(loss)  # a newer probe's kind, or "invalid" (server/losses.py)
    known = sorted(set(files) | set(dropped))
    highest = max([last_sealed, *known[-1:], *truncated], default=0)
    # Not landed nor dropped: still on the probe from here on (sealed after the last report we
    # have, or in its spool), a gap below.
    pending_from = min(last_sealed + 1, backlog_first or last_sealed + 1)
    pending, gaps = _unknown_spans(known, highest, pending_from)
    settled = set(files) | set(dropped)
    stored_through = max((loss.loss_id for loss in facts.losses), default=0)
    terms = _terms(files, dropped, truncated, not_written, settled)
    terms["losses_pending_on_probe"] = max(_int(spool.get("losses_recorded_total")) - stored_through, 0)
    terms["lost_unknown_kind"] = sum(loss.packets for loss in unknown_kind)
    terms["unknown_kind_records"] = len(unknown_kind)
    # A record still on the probe can be what is missing: a difference is pending until it arrives.
    losses_pending = terms["losses_pending_on_probe"] > 0
    # While the probe captures, the newest file's carry-over sits in a file not sealed yet.
    capturing = (facts.probe.last_health or {}).get("capture_state") in _CAPTURING
    kernel = _kernel_identity(
        files, dropped, not_written, known, highest, pending_from, capturing, losses_pending
    )
    identities = [
        kernel,
        _identity(
            "written",
            "written = landed + lost_dropped_files + lost_truncated_records",
            terms["written"],
            terms["landed"] + terms["lost_dropped_files"] + terms["lost_truncated_records"],
            losses_pending,
        ),
        _identity(
            "landed",
            "landed = dataset_rows + skipped_by_parser + quarantined + ingest_failed + not_yet_ingested"
            " + ingested_uncounted",
            terms["landed"],
            terms["dataset_rows"]
            + terms["skipped_by_parser"]
            + terms["quarantined"]
            + terms["ingest_failed"]
            + terms["not_yet_ingested"]
            + terms["ingested_uncounted"],
            False,
        ),
    ]
    by_state = _by_ingest_state(files)
    return {
        "probe_id": facts.probe.id,
        "hostname": facts.probe.hostname,
        "state": facts.probe.state,
        "ok": all(i["status"] != "fails" for i in identities) and not gaps and not unknown_kind,
        "health_at": facts.health_at.isoformat() if facts.health_at else None,
        "sequences": {
            "highest": highest,
            "landed": ranges(files),
            **{name: ranges(sequences) for name, sequences in by_state.items()},
            "dropped_by_policy": ranges(dropped),
            "truncated": ranges(truncated),
            "pending_on_probe": pending,
            "gaps": gaps,
        },
        "terms": terms,
        "identities": identities,
    }


def _unknown_spans(
    known: list[int], highest: int, pending_from: int
) -> tuple[list[list[int]], list[list[int]]]:
    """The sequences from 1 to `highest` not in `known` (sorted), as ranges: those from
    `pending_from` on (pending on the probe), and those below (gaps)."""
    pending: list[list[int]] = []
    gaps: list[list[int]] = []
    for first, last in [*_holes(known), [known[-1] + 1 if known else 1, highest]]:
        if first > last:
            continue
        if first < pending_from:
            gaps.append([first, min(last, pending_from - 1)])
        if last >= pending_from:
            pending.append([max(first, pending_from), last])
    return pending, gaps


def _holes(known: list[int]) -> list[list[int]]:
    """The ranges missing from sorted `known`, from 1 up to its last element."""
    holes: list[list[int]] = []
    previous = 0
    for sequence in known:
        if sequence > previous + 1:
            holes.append([previous + 1, sequence - 1])
        previous = sequence
    return holes


def _by_ingest_state(files: dict[int, Any]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {
        "ingested": [],
        "quarantined": [],
        "ingest_failed": [],
        "not_yet_ingested": [],
    }
    for sequence, row in files.items():
        groups[_ingest_group(row)].append(sequence)
    return groups


def _ingest_group(row: Any) -> str:
    if row.state == catalog.INGESTED:
        return "ingested"
    if row.state == catalog.FAILED:
        return "quarantined" if row.quarantined_packets is not None else "ingest_failed"
    return "not_yet_ingested"


def _terms(
    files: dict[int, Any],
    dropped: dict[int, Any],
    truncated: dict[int, int],
    not_written: list[Any],
    settled: set[int],
) -> dict[str, int]:
    terms = dict.fromkeys(
        (
            "kernel_received",
            "kernel_dropped",
            "kernel_interface_dropped",
            "kernel_unknown_files",
            "written",
            "landed",
            "lost_dropped_files",
            "lost_truncated_records",
            "lost_not_written",
            "lost_left_in_ring",
            "dataset_rows",
            "skipped_by_parser",
            "quarantined",
            "ingest_failed",
            "not_yet_ingested",
            "ingested_uncounted",
        ),
        0,
    )
    for row in files.values():
        _add_kernel(terms, row.kernel_received, row.kernel_dropped, row.kernel_interface_dropped)
        # The capture wrote the record a crash cut; the file as landed no longer holds it.
        terms["written"] += row.packets + (1 if row.repaired_truncated_bytes > 0 else 0)
        terms["landed"] += row.packets
        group = _ingest_group(row)
        if group == "ingested" and row.dataset_rows is None:
            terms["ingested_uncounted"] += row.packets  # ingested before the counts were reported
        elif group == "ingested":
            terms["dataset_rows"] += row.dataset_rows or 0
            terms["skipped_by_parser"] += row.skipped_packets or 0
        elif group == "quarantined":
            terms["quarantined"] += row.quarantined_packets or 0
        else:
            terms[group] += row.packets
    for sequence, loss in dropped.items():
        if sequence not in files:  # landed as well: counted once, the loss record is then wrong
            _add_kernel(terms, loss.kernel_received, loss.kernel_dropped, loss.kernel_interface_dropped)
            terms["written"] += loss.packets + truncated.get(sequence, 0)
        terms["lost_dropped_files"] += loss.packets
    terms["lost_truncated_records"] = sum(n for s, n in truncated.items() if s in settled)
    terms["lost_not_written"] = sum(loss.packets for loss in not_written if loss.kind == NOT_WRITTEN)
    terms["lost_left_in_ring"] = sum(loss.packets for loss in not_written if loss.kind == LEFT_IN_RING)
    return terms


def _add_kernel(terms: dict[str, int], received: int | None, dropped: int | None, ifdrop: int | None) -> None:
    if received is None:
        terms["kernel_unknown_files"] += 1
        return
    terms["kernel_received"] += received
    terms["kernel_dropped"] += dropped or 0
    terms["kernel_interface_dropped"] += ifdrop or 0


def _kernel_identity(
    files: dict[int, Any],
    dropped: dict[int, Any],
    not_written: list[Any],
    known: list[int],
    highest: int,
    pending_from: int,
    capturing: bool,
    losses_pending: bool,
) -> dict[str, Any]:
    items: dict[int, _Item | None] = {}  # None: a known file whose kernel counts are unknown
    for sequence in known:
        row = files.get(sequence) or dropped[sequence]
        items[sequence] = (
            _Item(sequence, row.interface, row.packets, row.kernel_received, row.kernel_dropped)
            if row.kernel_received is not None
            else None
        )
    runs = _runs(items, known, highest, pending_from, "frontier" if capturing else "end")
    _place_not_written(runs, items, known, not_written)
    reports = [run.report() for run in runs]
    if losses_pending:
        for report in reports:
            if report["status"] == "fails":
                report["status"] = "pending"  # the missing packets may be in a record not here yet
    closed = [r for r in reports if r["status"] not in ("open", "pending")]
    left = sum(r["received"] for r in closed)
    right = sum(r["written"] + r["dropped"] + r["lost_not_written"] for r in closed)
    statuses = {r["status"] for r in reports}
    status = "fails" if "fails" in statuses else "pending" if "pending" in statuses else "holds"
    return {
        "name": "kernel",
        "equation": "kernel_received = written + kernel_dropped + lost_not_written + lost_left_in_ring"
        " (per run)",
        "holds": status == "holds",
        "status": status,
        "left": left,
        "right": right,
        "difference": left - right,
        "runs": reports,
    }


def _runs(
    items: dict[int, _Item | None], known: list[int], highest: int, pending_from: int, end: str
) -> list[_Run]:
    """Splits the known files into runs per interface (docs/audit.md, "Identities"); `end` is
    what follows the newest files: ``frontier`` while the probe captures, else ``end``. A run ends
    at a sequence nobody knows of (pending on the probe or a gap) or a file with unknown counts."""

    def unknown(sequence: int) -> str:
        return "pending" if sequence >= pending_from else "gap"

    runs: list[_Run] = []
    current: dict[str, _Run] = {}
    boundary = "start"
    previous = 0
    for sequence in [*known, highest + 1]:
        if sequence > previous + 1 and previous + 1 <= highest:  # sequences nobody knows of
            for run in current.values():
                run.after = unknown(previous + 1)
            current = {}
            boundary = unknown(min(sequence, highest + 1) - 1)
        previous = sequence
        if sequence > highest:
            break
        item = items[sequence]
        if item is None:
            boundary = "unknown"
            for run in current.values():
                run.after = boundary
            current = {}
            continue
        if item.interface not in current:
            current[item.interface] = _Run(item.interface, boundary)
            runs.append(current[item.interface])
        current[item.interface].items.append(item)
    for run in current.values():
        run.after = end
    return runs


def _place_not_written(
    runs: list[_Run], items: dict[int, _Item | None], known: list[int], not_written: list[Any]
) -> None:
    """Adds each not-written or left-in-ring loss to the run holding its interface's next file
    (whose kernel window counted the lost packets). A loss whose next file is not known yet stays
    unplaced: the run that will hold it borders that unknown file and is open until then."""
    run_of = {item.sequence: run for run in runs for item in run.items}
    interfaces = {run.interface for run in runs}
    for loss in not_written:
        if loss.after_sequence is None:
            continue
        index = bisect.bisect_right(known, loss.after_sequence)
        expected = loss.after_sequence + 1
        while index < len(known) and known[index] == expected:
            item = items[expected]
            if item is None:
                break
            if item.interface == loss.interface or (not loss.interface and len(interfaces) == 1):
                run_of[expected].lost_not_written += loss.packets
                break
            index += 1
            expected += 1


def exit_code(probes: list[dict[str, Any]]) -> int:
    """0, or 3 when an identity fails, or 4 when only gaps or losses of unknown kinds are left
    (docs/audit.md)."""
    if any(i["status"] == "fails" for p in probes for i in p["identities"]):
        return EXIT_IDENTITY_FAILS
    if any(p["sequences"]["gaps"] or p["terms"]["unknown_kind_records"] for p in probes):
        return EXIT_GAPS  # unaccounted for, though no identity fails
    return EXIT_OK


def report(facts: list[ProbeFacts], now: dt.datetime | None = None) -> dict[str, Any]:
    """The whole audit document (docs/audit.md, "The JSON")."""
    probes = [audit_probe(f) for f in sorted(facts, key=lambda f: f.probe.id)]
    code = exit_code(probes)
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": (now or utcnow()).isoformat(),
        "ok": code == EXIT_OK,
        "exit_code": code,
        "summary": {
            "probes": len(probes),
            "probes_ok": sum(1 for p in probes if p["ok"]),
            "identities_failed": sum(1 for p in probes for i in p["identities"] if i["status"] == "fails"),
            "gap_sequences": sum(b - a + 1 for p in probes for a, b in p["sequences"]["gaps"]),
        },
        "probes": probes,
    }


def load_facts(session: Session, probe_id: str | None = None) -> list[ProbeFacts]:
    """Reads what the audit needs for every probe, or for one.

    Raises:
        UnknownProbeError: `probe_id` names no probe.
    """
    query = select(Probe).order_by(Probe.id)
    if probe_id is not None:
        query = query.where(Probe.id == probe_id)
    probes = list(session.scalars(query))
    if probe_id is not None and not probes:
        raise UnknownProbeError(f"no probe with id {probe_id!r}")
    wanted = [p.id for p in probes]
    files: dict[str, list[Any]] = {p: [] for p in wanted}
    losses: dict[str, list[Any]] = {p: [] for p in wanted}
    # Only the columns the audit reads, as plain rows: ORM objects cost ten times the time and memory.
    file_query = select(*_FILE_COLUMNS).order_by(CapturedFile.sequence)
    loss_query = select(*_LOSS_COLUMNS).order_by(SpoolLoss.loss_id)
    sample_query = select(HeartbeatSample.probe_id, func.max(HeartbeatSample.at)).group_by(
        HeartbeatSample.probe_id
    )
    if probe_id is not None:
        file_query = file_query.where(CapturedFile.probe_id == probe_id)
        loss_query = loss_query.where(SpoolLoss.probe_id == probe_id)
        sample_query = sample_query.where(HeartbeatSample.probe_id == probe_id)
    # Plain named tuples: a Row's attributes cost a lookup each, and the audit reads them often.
    # Through the connection: the ORM's row processing would double the time.
    connection = session.connection()
    row: Any
    loss: Any
    for row in map(_FileRow._make, connection.execute(file_query)):
        files.setdefault(row.probe_id, []).append(row)
    for loss in map(_LossRow._make, connection.execute(loss_query)):
        losses.setdefault(loss.probe_id, []).append(loss)
    sampled = {pid: at for pid, at in session.execute(sample_query)}
    return [ProbeFacts(p, files[p.id], losses[p.id], sampled.get(p.id)) for p in probes]


def audit_fleet(
    session: Session, probe_id: str | None = None, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The audit of every probe (or of one) in the registry: what the CLI and the web UI show.

    Raises:
        UnknownProbeError: `probe_id` names no probe.
    """
    return report(load_facts(session, probe_id), now)


def render_text(document: dict[str, Any]) -> str:
    """The report as a table for people (``survey6-server audit`` without ``--json``)."""
    lines = []
    for probe in document["probes"]:
        verdict = "OK" if probe["ok"] else "NOT OK"
        lines.append(f"probe {probe['probe_id']} ({probe['hostname']}, {probe['state']}): {verdict}")
        for identity in probe["identities"]:
            mark = {"holds": "holds", "pending": "pending"}.get(identity["status"], "FAILS")
            lines.append(
                f"  {identity['name']:<8}{mark:<7}{identity['left']:>14} = {identity['right']:<14}"
                f"  {identity['equation']}"
            )
            for run in identity.get("runs", []):
                if run["status"] != "holds":
                    lines.append(
                        f"           run {run['interface'] or '?'} #{run['first_sequence']}-"
                        f"#{run['last_sequence']}: {run['status']}, received {run['received']}, written"
                        f" {run['written']}, dropped {run['dropped']}, not written {run['lost_not_written']}"
                    )
        terms = probe["terms"]
        lines.append("  " + ", ".join(f"{name} {value}" for name, value in terms.items() if value))
        for name, spans in probe["sequences"].items():
            if name != "highest" and spans:
                lines.append(f"  {name:<18}{format_ranges(spans)}")
        lines.append("")
    summary = document["summary"]
    lines.append(
        f"{summary['probes_ok']} of {summary['probes']} probes OK; {summary['identities_failed']} identities"
        f" fail; {summary['gap_sequences']} sequence numbers are gaps"
    )
    return "\n".join(lines)


def format_ranges(spans: list[list[int]], limit: int = 12) -> str:
    """``1-9, 13, 15-42``, the first `limit` ranges and how many more."""
    shown = [str(a) if a == b else f"{a}-{b}" for a, b in spans[:limit]]
    if len(spans) > limit:
        shown.append(f"... ({len(spans) - limit} more ranges)")
    return ", ".join(shown)
